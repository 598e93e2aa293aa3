package pgadapter

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/socketio-pg/pgadapter/internal/wire"
)

// maxConcurrentFetches bounds the attachment reads in flight.
const maxConcurrentFetches = 8

// delivery is one message on its way to a namespace adapter, in arrival order. An
// attachment is read concurrently with the messages around it; the delivery goroutine
// waits for it in turn, so that order is kept.
type delivery struct {
	a       *Adapter
	channel string
	msg     *wire.Message
	fetched chan fetchResult // set for attachments
}

type fetchResult struct {
	msg *wire.Message
	err error
}

// dispatch decodes notifications, drops our own messages, starts attachment reads, and
// passes everything on in arrival order.
func (rt *runtime) dispatch(ctx context.Context) {
	sem := make(chan struct{}, maxConcurrentFetches)
	for {
		var n *pgconn.Notification
		select {
		case <-ctx.Done():
			return
		case n = <-rt.inbound:
		}
		a := rt.b.adapter(n.Channel)
		if a == nil {
			continue // a channel just unlistened
		}
		if a.isOwn(n.Payload) {
			continue // our own message, echoed by PostgreSQL: not worth decoding
		}
		note, err := decodeNotification(n.Payload)
		if err != nil {
			rt.b.stats.malformed.Add(1)
			rt.b.report(&MessageError{Channel: n.Channel, Payload: n.Payload, Err: fmt.Errorf("%w: %w", ErrMalformed, err)})
			continue
		}
		if note.UID == a.uid {
			continue // our own message, echoed by PostgreSQL
		}
		rt.b.stats.receivedBytes.Add(int64(len(n.Payload)))
		if !note.HasAttachment {
			countType(&rt.b.stats.received, note.Type)
		}
		d := &delivery{a: a, channel: n.Channel, msg: note.Message}
		if note.HasAttachment {
			d.fetched = make(chan fetchResult, 1)
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			go func(id int64, uid string) {
				defer func() { <-sem }()
				d.fetched <- rt.fetch(ctx, id, uid)
			}(note.AttachmentID, note.UID)
		}
		select {
		case rt.ordered <- d:
		case <-ctx.Done():
			return
		}
	}
}

func (rt *runtime) fetch(ctx context.Context, id int64, uid string) fetchResult {
	fctx, cancel := context.WithTimeout(ctx, rt.b.opts.RequestsTimeout)
	defer cancel()
	body, err := fetchAttachment(fctx, rt.b.pool, rt.b.st, id)
	if err != nil {
		return fetchResult{err: err}
	}
	rt.b.stats.attachmentsRd.Add(1)
	rt.b.stats.receivedBytes.Add(int64(len(body)))
	var m *wire.Message
	if perr := recovered(func() { m, err = wire.DecodeAttachment(body) }); perr != nil {
		err = perr
	}
	if err != nil {
		rt.b.stats.malformed.Add(1)
		return fetchResult{err: fmt.Errorf("attachment %d: %w: %w", id, ErrMalformed, err)}
	}
	if m.UID != uid {
		rt.b.stats.malformed.Add(1)
		return fetchResult{err: fmt.Errorf("attachment %d: %w: row is from %q, header from %q", id, ErrMalformed, m.UID, uid)}
	}
	countType(&rt.b.stats.received, m.Type)
	return fetchResult{msg: m}
}

// deliver hands messages to their namespace adapter, one at a time, in arrival order.
func (rt *runtime) deliver(ctx context.Context) {
	for {
		var d *delivery
		select {
		case <-ctx.Done():
			return
		case d = <-rt.ordered:
		}
		msg := d.msg
		if d.fetched != nil {
			var r fetchResult
			select {
			case r = <-d.fetched:
			case <-ctx.Done():
				return
			}
			if r.err != nil {
				if ctx.Err() == nil {
					rt.b.report(&MessageError{Channel: d.channel, Err: r.err})
				}
				continue
			}
			msg = r.msg
		}
		if msg.Nsp != "" && msg.Nsp != d.a.name {
			rt.b.stats.malformed.Add(1)
			rt.b.report(&MessageError{Channel: d.channel, Err: fmt.Errorf("%w: message for namespace %q on the channel of %q", ErrMalformed, msg.Nsp, d.a.name)})
			continue
		}
		err := recovered(func() {
			d.a.onMessage(msg)
			if h := rt.b.applied; h != nil {
				h(msg)
			}
		})
		if err != nil {
			rt.b.report(&MessageError{Channel: d.channel, Err: fmt.Errorf("%s: %w", msg.Type, err)})
		}
	}
}

// decodeNotification is wire.DecodeNotificationRaw, with a panic in the decoder returned
// as an error: anyone who may NOTIFY on the channel chooses the payload, and a decoder
// bug must cost that one message, not the process.
func decodeNotification(payload string) (note *wire.Notification, err error) {
	if perr := recovered(func() { note, err = wire.DecodeNotificationRaw(payload) }); perr != nil {
		return nil, perr
	}
	return note, err
}

// MessageError reports a notification on one of the adapter's channels that could not be
// used: malformed (it wraps ErrMalformed), or naming an attachment that cannot be read
// (it wraps ErrAttachmentMissing or the query's error). The message is dropped; other
// traffic is unaffected.
type MessageError struct {
	Channel string
	// Payload is the notification text, when the notification itself was malformed.
	Payload string
	Err     error
}

// Error names the channel, the cause and, for a malformed notification, its first 200
// bytes.
func (e *MessageError) Error() string {
	p := e.Payload
	if len(p) > 200 {
		p = p[:200] + "…"
	}
	if p != "" {
		return fmt.Sprintf("pgadapter: channel %q: %v (payload %q)", e.Channel, e.Err, p)
	}
	return fmt.Sprintf("pgadapter: channel %q: %v", e.Channel, e.Err)
}

// Unwrap returns the cause.
func (e *MessageError) Unwrap() error { return e.Err }
