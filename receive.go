package pgadapter

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/socketio-pg/pgadapter/internal/wire"
)

// maxConcurrentFetches bounds the attachment reads in flight.
const maxConcurrentFetches = 8

// maxFetchGroup bounds the attachments read by one query, and the messages dispatched
// while a group waits to be read.
const maxFetchGroup = 64

// delivery is one message on its way to a namespace adapter, in arrival order. An
// attachment is read concurrently with the messages around it; the delivery goroutine
// waits for it in turn, so that order is kept.
type delivery struct {
	a       *Adapter
	channel string
	msg     *wire.Message // nil for an attachment, until read
	typ     wire.Type
	fetched chan fetchResult // set for attachments
	id      int64            // the attachment's row, with the uid and created_at its header names
	uid     string
	created time.Time // zero for a header without one (Node's)
	// membersOnly: an ADAPTER_CLOSE's copy on the delivery goroutine of messages, which
	// only stops counting the server (see answer), and stops requests waiting for it
	// too once the copy on the answers' goroutine was applied (closeApplied, shared by
	// the two): requests made since then (its earlier messages, still queued, may have
	// made it counted again) wait for a server that closed.
	membersOnly  bool
	closeApplied *atomic.Bool
	// For an attachment: wanted once its delivery goroutine waits for it, and, while its
	// row is put off for memory (see rowBudget), putOff and what the row holds once read.
	wanted   atomic.Bool
	putOff   bool
	size     int64
	reserved int64 // of the budget, for the row's next read (see rowBudget.pick)
}

type fetchResult struct {
	msg *wire.Message
	err error
	// held is what msg's row holds of the runtime's rowBudget, given back once msg is
	// applied.
	held int64
	// shared is set when err is the failure of the whole query, the same error for
	// every message it read: reported once (see deliver).
	shared bool
}

// dispatch decodes notifications, drops our own messages, starts attachment reads, and
// passes everything on in arrival order: answers to this server's requests, and
// ADAPTER_CLOSE, to a delivery goroutine of their own (see answer), everything else to
// the other.
//
// Attachments whose notifications arrive together are read by one query: a group grows
// while more notifications are waiting, and is read as soon as none is, or it is full, or
// dispatching would block (the delivery goroutine may be waiting for one of the group).
// Under load that is one query per tens of attachments instead of one each, for
// PostgreSQL and for this server; a lone attachment is read at once.
//
// A read starts beside one in flight only on a connection the pool holds idle (one not
// already promised to a read that has yet to acquire it). Opening a connection takes
// milliseconds (60 ms on the development machine), and every delivery behind the group
// would wait for it, while the read in flight ends in a fraction of a millisecond; the
// group goes once that read is done, bigger. Before this, a burst of attachments grew
// the receiving server's pool to its maximum, and 1 KB binary broadcasts at 1000/s
// stalled for 30-60 ms each time it grew.
func (rt *runtime) dispatch(ctx context.Context) {
	sem := make(chan struct{}, maxConcurrentFetches)
	done := make(chan struct{}, 1) // a read ended
	var pending atomic.Int32       // reads started that have not acquired their connection yet
	var group []*delivery
	since := 0 // messages dispatched since the group's first
	flush := func() bool {
		if len(group) == 0 {
			return true
		}
		for len(sem) > 0 && int(rt.b.pool.Stat().IdleConns()) <= int(pending.Load()) {
			select {
			case <-done:
			case <-ctx.Done():
				return false
			}
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return false
		}
		// Counted, so that stop waits for the read (the pool may be closed next), and
		// not started once the runtime stops: select picks either case when both are
		// ready.
		if ctx.Err() != nil || !rt.running.join() {
			<-sem
			return false
		}
		pending.Add(1)
		go func(g []*delivery) {
			defer rt.running.add(-1)
			free := func() {
				<-sem
				select {
				case done <- struct{}{}:
				default:
				}
			}
			rt.fetch(ctx, g, &pending)
			free()
			rt.fetchLater(ctx, g, sem, free, &pending)
		}(group)
		group, since = nil, 0
		return true
	}
	// An attachment is read once its delivery is in a delivery goroutine's queue: one
	// held in the backlog is read when it leaves it (a backlog of binary messages would
	// otherwise hold their bodies, or stop dispatch after a few).
	enlist := func(d *delivery) bool {
		if d.fetched == nil {
			return true
		}
		group = append(group, d)
		if len(group) >= maxFetchGroup {
			return flush()
		}
		return true
	}
	var back backlog
	ordered := func(d *delivery) bool {
		if back.len() == 0 {
			select {
			case rt.ordered <- d:
				return enlist(d)
			default:
			}
		}
		back.push(d)
		return true
	}
	// drain moves what the ordered queue has room for, without waiting.
	drain := func() bool {
		for back.len() > 0 {
			select {
			case rt.ordered <- back.peek():
				if !enlist(back.pop()) {
					return false
				}
			default:
				return true
			}
		}
		return true
	}
	// wait waits until ctx ends, a notification comes on in (nil: none is read), answer
	// (nil: none) goes into the answers' queue, or, without an answer, the backlog's
	// first delivery goes into the ordered queue; with one, it moves the backlog
	// meanwhile. It reads the attachments gathered first: a delivery goroutine may be
	// waiting for one of them. n is nil unless a notification came.
	wait := func(in <-chan *pgconn.Notification, answer *delivery) (n *pgconn.Notification, ok bool) {
		for {
			if !flush() {
				return nil, false
			}
			var out, answers chan<- *delivery // nil, blocking for ever, without a backlog or answer
			var head *delivery
			if back.len() > 0 {
				out, head = rt.ordered, back.peek()
			}
			if answer != nil {
				answers = rt.answers
			}
			select {
			case <-ctx.Done():
				return nil, false
			case out <- head:
				// And what else has room, before the group is read (a query for the
				// lot, not one each).
				if !enlist(back.pop()) || !drain() {
					return nil, false
				}
				if answer == nil {
					return nil, true // the backlog may have room to read again
				}
			case answers <- answer:
				return nil, true
			case n = <-in:
				return n, true
			}
		}
	}
	for {
		if !drain() {
			return
		}
		in := rt.inbound
		if back.len() >= rt.b.opts.ReceiveQueueSize {
			in = nil // full: read on once the delivery goroutine takes some
		}
		var n *pgconn.Notification
		select {
		case n = <-in:
		default:
			var ok bool
			if n, ok = wait(in, nil); !ok {
				return
			} else if n == nil {
				continue
			}
		}
		if len(group) > 0 {
			since++ // our own messages too: a flood of them must not hold a group back
		}
		if since >= maxFetchGroup && !flush() {
			return
		}
		d := rt.decode(n)
		if d == nil {
			continue
		}
		if !answer(d.typ) {
			if !ordered(d) {
				return
			}
			continue
		}
		if d.typ == wire.AdapterClose && d.fetched == nil {
			// Also in order with the server's other messages, for membership (see
			// Adapter.leave). One delivery waits for an attachment's read, not two.
			d.closeApplied = new(atomic.Bool)
			if !ordered(&delivery{a: d.a, channel: d.channel, msg: d.msg, typ: d.typ, membersOnly: true, closeApplied: d.closeApplied}) {
				return
			}
		}
		if !enlist(d) {
			return
		}
		select {
		case rt.answers <- d:
		default:
			// While the answers' goroutine is held (a request callback), the backlog
			// still moves: messages that came before these answers must not wait for
			// them.
			if _, ok := wait(nil, d); !ok {
				return
			}
		}
	}
}

// backlog holds, in order, the messages for the ordered delivery goroutine that its
// queue has no room for, up to ReceiveQueueSize of them: dispatch goes on reading
// meanwhile, so that answers behind them reach their own goroutine while the
// application's code holds the other (an outgoing-packet listener, a handler at the
// takeover cap). Before, dispatch waited for room in that queue, and a request of this
// server's waited behind 256 messages for its timeout.
type backlog struct {
	items []*delivery
}

func (q *backlog) len() int         { return len(q.items) }
func (q *backlog) peek() *delivery  { return q.items[0] }
func (q *backlog) push(d *delivery) { q.items = append(q.items, d) }

// pop removes the first delivery, and returns it.
func (q *backlog) pop() *delivery {
	d := q.items[0]
	q.items[0] = nil // not kept alive by the array
	q.items = q.items[1:]
	if len(q.items) == 0 {
		q.items = nil // a new array next time, not the tail of this one
	}
	return d
}

// answer reports whether messages of type t go to the answers' delivery goroutine.
// Answers only complete this server's requests, whatever comes before them, and their
// callbacks are the application's code: apart, neither they nor what holds up the other
// messages (an outgoing-packet listener, a backlog) hold up each other, and a handler
// waiting for a request of its own gets its answers (see watchHandlers). A server's
// ADAPTER_CLOSE goes with them, so that an answer it gave before closing still counts,
// and also, for membership only, with its other messages, so that it is no longer
// counted once what it sent before closing is applied.
func answer(t wire.Type) bool {
	return t.IsResponse() || t == wire.AdapterClose
}

// heardKey is a server of a namespace, for runtime.heard: by channel, so that the map
// holds no closed adapter.
type heardKey struct {
	channel, uid string
}

// heard tells a that a message from server uid arrived (Adapter.heard), at most a few
// times per heartbeat timeout and server: the adapter's lock is taken only when the last
// time told is an eighth of the timeout old. Run by the dispatch goroutine, which owns
// rt.heardAt.
func (rt *runtime) heard(a *Adapter, uid string) {
	if uid == wire.EmitterUID {
		return
	}
	now := time.Now()
	k := heardKey{a.channel, uid}
	if last, ok := rt.heardAt[k]; ok && now.Sub(last) < rt.b.opts.HeartbeatTimeout/8 {
		return
	}
	if len(rt.heardAt) > 4096 {
		clear(rt.heardAt) // servers and namespaces that are gone
	}
	rt.heardAt[k] = now
	a.heard(uid, now)
}

// decode turns a notification into a delivery, or nil for our own messages, channels no
// longer listened to, and malformed notifications (reported).
func (rt *runtime) decode(n *pgconn.Notification) *delivery {
	defer rt.examined.Add(1) // after the echo's count (see watchHearing)
	a := rt.b.adapter(n.Channel)
	if a == nil || a.rt != rt {
		// A channel just unlistened, or this runtime is stopping and a newer one
		// serves the channel: its own listener hears the message.
		return nil
	}
	if a.isOwn(n.Payload) {
		rt.echo(a)
		return nil // our own message, echoed by PostgreSQL: not worth decoding
	}
	note, err := decodeNotification(n.Payload)
	if err != nil {
		rt.b.stats.malformed.Add(1)
		rt.b.report(&MessageError{Channel: n.Channel, Payload: n.Payload, Err: fmt.Errorf("%w: %w", ErrMalformed, err)})
		rt.dropped(n) // if it has a number, its gap is this report's
		return nil
	}
	if note.UID == a.uid {
		rt.echo(a)
		return nil // our own message, echoed by PostgreSQL
	}
	rt.heard(a, note.UID)
	if note.Seq != 0 {
		rt.sequence(a, note.UID, note.Seq, note.Type)
	}
	rt.b.stats.receivedBytes.Add(int64(len(n.Payload)))
	d := &delivery{a: a, channel: n.Channel, msg: note.Message, typ: note.Type}
	if note.HasAttachment {
		d.fetched = make(chan fetchResult, 1)
		d.id, d.uid, d.created = note.AttachmentID, note.UID, note.CreatedAt
	} else {
		countType(&rt.b.stats.received, note.Type)
	}
	return d
}

// maxGap is the largest jump in a server's numbers taken for a gap: hours of a sender's
// full speed. A larger one is a forged number (any role can notify), and is ignored.
const maxGap = 1 << 32

// maxHeardSeq bounds how many servers an adapter keeps the last sequence number of (see
// sequence). A server that closes its namespace says so, and is forgotten then; one that
// crashed, or an invented uid, is kept until the adapter holds this many, and then all
// are forgotten: a gap across that moment goes uncounted.
const maxHeardSeq = 1024

// sequence checks seq, the number of a message from server uid on a's namespace, against
// the last one heard from it: a gap is messages that did not reach this server, which it
// reports (MissedError), less those it dropped itself (a full receive queue, reported
// already). PostgreSQL delivers a notification only to the listeners connected when it
// commits: what commits while this server's LISTEN connection is down or being made
// again, and the last commits before a fast shutdown of PostgreSQL, never arrive, and
// nothing else tells. A number at or below the last, or too far beyond it (maxGap), is
// ignored. Run by the dispatch goroutine, which owns a.heardSeq.
func (rt *runtime) sequence(a *Adapter, uid string, seq uint64, typ wire.Type) {
	last, known := a.heardSeq[uid]
	if !known {
		if typ != wire.AdapterClose {
			if a.heardSeq == nil || len(a.heardSeq) >= maxHeardSeq {
				a.heardSeq = map[string]uint64{}
			}
			a.heardSeq[uid] = seq
		}
		// The first heard: drops before it are not in a gap, and are forgotten.
		rt.takeDrops(a.channel, uid, 0, seq)
		return
	}
	if typ == wire.AdapterClose {
		delete(a.heardSeq, uid) // its last message on the namespace
	}
	if seq <= last || seq-last > maxGap {
		// Late (a batch PostgreSQL committed after a later one: its connection failed
		// once it was sent, and the sender reported it lost), or forged: the last stays,
		// or the messages between it and this one would be counted again at the next.
		return
	}
	if typ != wire.AdapterClose {
		a.heardSeq[uid] = seq
	}
	if seq == last+1 {
		return
	}
	gap := seq - last - 1
	gap -= min(gap, rt.takeDrops(a.channel, uid, last, seq))
	if gap == 0 {
		return
	}
	for { // a saturating add: forged numbers can make gaps of any size
		n := rt.b.stats.missed.Load()
		if rt.b.stats.missed.CompareAndSwap(n, n+int64(min(gap, uint64(math.MaxInt64-n)))) {
			break
		}
	}
	rt.b.report(&MissedError{Namespace: a.name, Server: uid, Missed: gap, After: last, Next: seq})
}

// dropped records a notification that was dropped unread, if it is numbered, for
// sequence: by the listener (a full receive queue), before it hands over the
// notifications that follow, or by dispatch (one it could not decode).
func (rt *runtime) dropped(n *pgconn.Notification) {
	uid, seq, ok := wire.PeekSeq(n.Payload)
	if !ok {
		return
	}
	if a := rt.b.adapter(n.Channel); a == nil || a.uid == uid {
		return // not listened to any more, or this server's own: no gap is looked for
	}
	rt.dropsMu.Lock()
	defer rt.dropsMu.Unlock()
	k := heardKey{n.Channel, uid}
	runs := rt.drops[k]
	if last := len(runs) - 1; last >= 0 && runs[last].to+1 == seq {
		runs[last].to = seq
		return
	}
	// A new run. Runs of one sender are split by the notifications the listener let
	// in between them, so that at most ReceiveQueueSize of them wait for dispatch (a
	// bound of 64 runs per sender lost the oldest of a slow receiver's, and counted
	// their drops again as missed: a tester's 1,154 of 1,325). Past the bound, only
	// forged numbers can have made them, and they are forgotten.
	if rt.drops == nil || len(rt.drops) >= maxDropsKept || rt.dropRuns >= rt.b.opts.ReceiveQueueSize+maxDropsKept {
		rt.drops, rt.dropRuns = map[heardKey][]seqRange{}, 0
		runs = nil
	}
	rt.drops[k] = append(runs, seqRange{seq, seq})
	rt.dropRuns++
}

// seqRange is a run of numbers, from and to included.
type seqRange struct{ from, to uint64 }

// maxDropsKept bounds the senders whose dropped notifications a runtime counts.
const maxDropsKept = 4096

// takeDrops returns how many notifications of uid on channel numbered after last and
// before next the listener dropped, and forgets them and any numbered before. The
// listener may have dropped later ones already: dispatch reads the notifications it
// queued before those, and they are kept for the gaps they are in. One numbered at or
// below last is a late one (see sequence), in no gap: counted, it would hide a gap
// that follows.
func (rt *runtime) takeDrops(channel, uid string, last, next uint64) uint64 {
	rt.dropsMu.Lock()
	defer rt.dropsMu.Unlock()
	k := heardKey{channel, uid}
	runs := rt.drops[k]
	var n uint64
	i := 0
	for ; i < len(runs) && runs[i].from < next; i++ {
		from, to := max(runs[i].from, last+1), min(runs[i].to, next-1)
		if from <= to {
			n += to - from + 1
		}
		if runs[i].to > next {
			runs[i].from = next + 1 // the rest is after next (only forged numbers repeat one)
			break
		}
	}
	rt.dropRuns -= i
	if runs = runs[i:]; len(runs) == 0 {
		delete(rt.drops, k)
	} else {
		rt.drops[k] = runs
	}
	return n
}

// echo records that a heard one of its own messages: the runtime hears (see
// watchHearing), a's clients may connect (see Adapter.awaitHearing), and a hears the
// others (see Adapter.heartbeat).
func (rt *runtime) echo(a *Adapter) {
	rt.echoes.Add(1)
	a.heardItself()
	a.lastEcho.Store(time.Now().UnixNano())
}

// recentRows remembers the last recentRowsKept attachment rows read, so that a row named
// again by the same header is not read again (see fetch). Every message has its own row.
// An id is given again to another row (created at another time) after a crash of
// PostgreSQL (an unlogged sequence), or once the table is made again: a row is known by
// its id, its creation time, and the creation time its notification names (Go servers'
// do; it tells a row that took the id of another apart, see decodeAttachment). They are
// forgotten when the listener's connection changes, as it does when PostgreSQL restarts.
type recentRows struct {
	mu   sync.Mutex
	ids  map[rowKey]struct{}
	ring []rowKey
	next int
	conn uint64 // the listener's connection they were heard on (see listener.conns)
}

// rowKey is a row read for a notification: its id, its created_at and the one its
// notification's header names (0 for none), in unix nanoseconds.
type rowKey struct{ id, header, created int64 }

const recentRowsKept = 4096

// claim records a row read for a notification heard on the listener's connection conn,
// and reports whether it is new among the rows read last.
func (r *recentRows) claim(id rowKey, conn uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if conn != r.conn {
		r.ids, r.ring, r.next, r.conn = nil, nil, 0, conn
	}
	if _, seen := r.ids[id]; seen {
		return false
	}
	if r.ids == nil {
		r.ids = make(map[rowKey]struct{}, recentRowsKept)
		r.ring = make([]rowKey, 0, recentRowsKept)
	}
	if len(r.ring) < recentRowsKept {
		r.ring = append(r.ring, id)
	} else {
		delete(r.ids, r.ring[r.next])
		r.ring[r.next] = id
		r.next = (r.next + 1) % recentRowsKept
	}
	r.ids[id] = struct{}{}
	return true
}

// fetch reads the attachments of group with one query and hands each delivery its
// message or its error, except those whose rows do not fit the runtime's rowBudget: it
// marks them putOff, to be read again (see fetchLater). It takes one from pending once
// it holds a connection.
func (rt *runtime) fetch(ctx context.Context, group []*delivery, pending *atomic.Int32) {
	ids := make([]int64, len(group))
	byID := make(map[int64][]*delivery, len(group))
	for i, d := range group {
		ids[i] = d.id
		byID[d.id] = append(byID[d.id], d)
		d.putOff = false
	}
	heardOn := rt.lis.conns.Load()
	fctx, cancel := context.WithTimeout(ctx, rt.b.opts.RequestsTimeout)
	each := func(id int64, row attachment) {
		ds, due := byID[id]
		if !due {
			return // a row given twice is handed over once
		}
		delete(byID, id)
		// What the row holds once decoded: its body, and the tree of values it
		// decodes into (a tester's 52 KB of empty maps took 3.3 MB).
		cost, why := wire.Weigh(row.body, rt.b.opts.MaxAttachmentSize)
		var n int64 // nothing for a row refused, which is not decoded
		if row.size == 0 && why == "" {
			n = int64(len(row.body)) + wire.BytesPerCost*int64(cost)
		}
		if !rt.budget.take(ds, n) {
			// Read again when it fits: its body is dropped now, rather than held
			// with the rows of every message queued before it.
			for _, d := range ds {
				d.putOff, d.size = true, n
			}
			rt.b.stats.attachmentsPutOff.Add(1)
			return
		}
		// A row is decoded once. Each message has a row of its own: several
		// notifications naming one row are forged, and a tester's 200 naming one
		// 20 MB row had every server decode and hold it 200 times (3 GB). Read
		// together or in reads close together (a reviewer's finding: split between
		// two reads, a row was delivered twice).
		for _, d := range ds {
			if rt.recent.claim(rowKey{id, d.created.UnixNano(), row.created.UnixNano()}, heardOn) {
				r := rt.decodeAttachment(d, row, why)
				if r.err == nil {
					r.held, n = n, 0
				}
				d.fetched <- r
				continue
			}
			rt.b.stats.malformed.Add(1)
			d.fetched <- fetchResult{err: fmt.Errorf("attachment %d: %w: named by another notification too", id, ErrMalformed)}
		}
		rt.budget.release(n) // not decoded, or refused
	}
	var err error
	for attempt, fruitless := 0, 0; ; attempt++ {
		var conn *pgxpool.Conn
		conn, err = rt.b.pool.Acquire(fctx)
		if attempt == 0 {
			pending.Add(-1)
		}
		if err != nil {
			err = fmt.Errorf("pgadapter: read attachments %v: %w", ids, err)
			break
		}
		due := len(byID)
		err = fetchAttachments(fctx, conn, rt.b.st, ids, rt.b.opts.MaxAttachmentSize, each)
		// A connection PostgreSQL ended (idle_session_timeout, pg_terminate_backend, a
		// restart) fails the read, which is safe to make again on another, for the rows
		// not handed over yet: each such connection lost a whole group, up to 64
		// messages (a tester's finding: 4 of 10 messages with an idle_session_timeout of
		// 200 ms, 125-319 of 2,000 when backends were terminated during a burst). Every
		// idle connection of the pool may have been ended together, and the pool hands
		// out one idle for less than a second without checking it: as many attempts in a
		// row that hand nothing over as it holds connections, and one more, each failing
		// at once, within the bound. An attempt that hands rows over starts the count
		// again (a reviewer's finding: with the count kept over a read, two sweeps of a
		// burst's connections lost a whole group of 64).
		broken := err != nil && fctx.Err() == nil && conn.Conn().IsClosed()
		conn.Release()
		if len(byID) < due {
			fruitless = 0
		} else {
			fruitless++
		}
		if !broken || fruitless > int(rt.b.pool.Stat().MaxConns()) {
			break
		}
		ids = slices.AppendSeq(ids[:0], maps.Keys(byID)) // the rows not handed over
		if len(ids) == 0 {
			err = nil
			break
		}
		rt.b.stats.attachmentRereads.Add(1)
	}
	cancel()
	rt.budget.unreserve(group)
	rt.b.stats.attachmentQueries.Add(1)
	if err != nil {
		lost := 0
		for _, d := range group {
			if _, due := byID[d.id]; due {
				lost++
			}
		}
		// One report for the query, naming how many messages it lost, rather than one
		// per message: 64 at a time while the database is away.
		err = fmt.Errorf("%d message(s) lost: %w", lost, err)
	}
	for _, d := range group {
		if _, due := byID[d.id]; !due {
			continue
		}
		rt.b.stats.attachmentErrors.Add(1)
		if err != nil {
			d.fetched <- fetchResult{err: err, shared: true}
		} else {
			d.fetched <- fetchResult{err: fmt.Errorf("attachment %d: %w", d.id, ErrAttachmentMissing)}
		}
	}
}

// fetchLater reads again the rows of group that fetch put off, as they fit the budget:
// those that fit, or that a delivery goroutine waits for, with one query, each time the
// budget may have room. Each read takes a slot of sem, given back by free; the waits in
// between take none, so that the reads of earlier groups, whose messages hold the
// budget, are not kept waiting.
func (rt *runtime) fetchLater(ctx context.Context, group []*delivery, sem chan struct{}, free func(), pending *atomic.Int32) {
	later := slices.DeleteFunc(group, func(d *delivery) bool { return !d.putOff })
	for len(later) > 0 {
		now, changed := rt.budget.pick(later)
		if len(now) == 0 {
			select {
			case <-changed:
				continue
			case <-ctx.Done():
				return
			}
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		pending.Add(1)
		rt.fetch(ctx, now, pending)
		free()
		later = slices.DeleteFunc(later, func(d *delivery) bool { return !d.putOff })
	}
}

// decodeAttachment decodes the row read for d; oversize is why its body is over
// MaxAttachmentSize, if it is (wire.Weigh).
func (rt *runtime) decodeAttachment(d *delivery, row attachment, oversize string) fetchResult {
	if !d.created.IsZero() && !row.created.Equal(d.created) {
		rt.b.stats.attachmentErrors.Add(1)
		// PostgreSQL crashed after the notification, and gave its id to a new row.
		return fetchResult{err: fmt.Errorf("attachment %d: %w: the row was created at %s, its notification's at %s (the id was given again after PostgreSQL crashed)",
			d.id, ErrAttachmentMissing, row.created.UTC().Format(time.RFC3339Nano), d.created.UTC().Format(time.RFC3339Nano))}
	}
	if row.size > 0 {
		rt.b.stats.attachmentErrors.Add(1)
		return fetchResult{err: fmt.Errorf("attachment %d: %w: %d bytes, MaxAttachmentSize %d", d.id, ErrAttachmentTooLarge, row.size, rt.b.opts.MaxAttachmentSize)}
	}
	body := row.body
	if oversize != "" {
		rt.b.stats.attachmentErrors.Add(1)
		return fetchResult{err: fmt.Errorf("attachment %d: %w: %s", d.id, ErrAttachmentTooLarge, oversize)}
	}
	rt.b.stats.attachmentsRd.Add(1)
	rt.b.stats.receivedBytes.Add(int64(len(body)))
	var m *wire.Message
	var err error
	if perr := recovered(func() { m, err = wire.DecodeAttachment(body) }); perr != nil {
		err = perr
	}
	if err != nil {
		rt.b.stats.malformed.Add(1)
		return fetchResult{err: fmt.Errorf("attachment %d: %w: %w", d.id, ErrMalformed, err)}
	}
	if m.UID != d.uid {
		rt.b.stats.malformed.Add(1)
		return fetchResult{err: fmt.Errorf("attachment %d: %w: row is from %q, header from %q", d.id, ErrMalformed, m.UID, d.uid)}
	}
	if m.Type != d.typ {
		// The header's type chose the delivery goroutine (see answer).
		rt.b.stats.malformed.Add(1)
		return fetchResult{err: fmt.Errorf("attachment %d: %w: row is a %s, header says %s", d.id, ErrMalformed, m.Type, d.typ)}
	}
	countType(&rt.b.stats.received, m.Type)
	return fetchResult{msg: m}
}

// deliver hands the messages of queue to their namespace adapter, one at a time, in
// arrival order, until ctx ends or watchHandlers gives the queue to another goroutine
// while this one runs a server-side event's handlers.
//
// It is counted in rt.running (by whoever started it), except while it applies a
// message, which runs the application's code: stop does not wait for that code, which
// may be what is stopping (a handler, a request callback or an outgoing-packet listener
// that closes its server), and a goroutine whose handlers another left to themselves
// is not counted at all.
func (rt *runtime) deliver(ctx context.Context, queue <-chan *delivery) {
	var run *handlerRun  // the handlers running, if any
	var lastShared error // the failed query last reported (see fetchResult.shared)
	ended := false       // returned, rather than ended by the application's code
	applying := false    // in the application's code, and not counted
	var held int64       // of the budget, by the message being applied
	defer func() {
		rt.budget.release(held) // the application's code ended the goroutine
		if ended {
			return
		}
		// A handler or listener ended this goroutine (runtime.Goexit; t.FailNow in a
		// test): the queue needs another, unless watchHandlers gave it one.
		if !applying {
			rt.running.add(-1)
		}
		if (run == nil || rt.endHandlers(run)) && ctx.Err() == nil && rt.running.join() {
			go rt.deliver(ctx, queue)
		}
		rt.b.report(errors.New("pgadapter: the application's code ended the goroutine that applies messages (runtime.Goexit)"))
	}()
	// next counts the goroutine again for the next message, unless the runtime stops.
	next := func() bool {
		if !rt.running.join() {
			ended = true
			return false
		}
		applying = false
		return true
	}
	for {
		var d *delivery
		select {
		case <-ctx.Done():
			ended = true
			rt.running.add(-1)
			return
		case d = <-queue:
		}
		// Outside the count from here to the next message: what follows may run the
		// application's code (the message's, the ErrorHandler), which may be what stops
		// the runtime, and must not wait for itself.
		applying = true
		rt.running.add(-1)
		msg := d.msg
		if d.fetched != nil {
			var r fetchResult
			select {
			case r = <-d.fetched:
			default:
				// Its row may have been put off for memory: it is read now, whatever
				// the budget holds (see rowBudget).
				rt.budget.want(d)
				select {
				case r = <-d.fetched:
				case <-ctx.Done():
					ended = true
					return
				}
			}
			held = r.held
			if r.err != nil {
				if ctx.Err() == nil && (!r.shared || r.err != lastShared) {
					rt.b.report(&MessageError{Channel: d.channel, Err: r.err})
				}
				if r.shared {
					lastShared = r.err
				}
				if !next() {
					return
				}
				continue
			}
			msg = r.msg
		}
		if msg.Nsp != "" && msg.Nsp != d.a.name {
			rt.budget.release(held)
			held = 0
			if !d.membersOnly { // else reported with the other copy
				rt.b.stats.malformed.Add(1)
				rt.b.report(&MessageError{Channel: d.channel, Err: fmt.Errorf("%w: message for namespace %q on the channel of %q", ErrMalformed, msg.Nsp, d.a.name)})
			}
			if !next() {
				return
			}
			continue
		}
		if msg.Type == wire.ServerSideEmit { // on the ordered queue (see answer)
			run = rt.startHandlers()
		}
		err := recovered(func() {
			if d.membersOnly {
				d.a.leave(msg.UID, d.closeApplied.Load())
				return
			}
			d.a.onMessage(msg)
			if h := rt.b.applied; h != nil {
				h(msg)
			}
		})
		rt.budget.release(held)
		held = 0
		if d.closeApplied != nil && !d.membersOnly {
			d.closeApplied.Store(true)
		}
		owner := run == nil || rt.endHandlers(run)
		run = nil
		if !owner || ctx.Err() != nil {
			// Another goroutine has the queue (watchHandlers), or the runtime stops:
			// recorded before the report below runs the ErrorHandler, which may end
			// this goroutine.
			ended = true
		}
		if err != nil {
			rt.b.report(&MessageError{Channel: d.channel, Err: fmt.Errorf("%s: %w", msg.Type, err)})
		}
		if ended || !next() {
			return
		}
	}
}

// handlerTakeover is how long, in nanoseconds, the application's handlers of a
// server-side event may hold the goroutine that applies messages before another takes
// over the queue: 20 ms. A variable for the test of quick handlers, which raises it: on a
// loaded machine a handler's goroutine can wait that long for a core, and then it is
// taken over as a slow one would be.
var handlerTakeover = newNanos(20 * time.Millisecond)

// maxTakenOver is how many handlers may be left running after handlerTakeover at once
// (beyond, the queue waits for them, as it waits for any other handler).
const maxTakenOver = 64

// newNanos returns an atomic holding d in nanoseconds: a duration that a test may
// change while other tests' goroutines could still read it.
func newNanos(d time.Duration) *atomic.Int64 {
	v := new(atomic.Int64)
	v.Store(int64(d))
	return v
}

// handlerRun is one run of the handlers of a server-side event on the delivery
// goroutine. done is taken by whichever ends it first: the goroutine, when the handlers
// return, or watchHandlers, when they take too long.
type handlerRun struct {
	start time.Time
	done  atomic.Bool
}

// watchHandlers lets the queue of messages go on without the handlers of a server-side
// event that hold its goroutine longer than handlerTakeover: a new goroutine takes the
// queue over, and the old one ends once the handlers return.
//
// Handlers run on the goroutine that applies messages, so that what a handler does
// (join a socket to a room, say) is done before the next message, as Node's handlers'
// synchronous code is. But Go code blocks where Node's awaits: a handler that queried a
// database, or waited for a cluster request of its own, held up every broadcast to this
// server's clients and every other server's request, and handlers of one event on
// several servers, each waiting for the others' answers, each waited until their
// request's timeout (TestHandlersWaitForEachOther). What such a handler does after
// handlerTakeover may come after later messages, and handlers after it may run while it
// still does.
func (rt *runtime) watchHandlers(ctx context.Context) {
	t := time.NewTimer(time.Hour)
	t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-rt.handlerStarted:
		}
		for {
			h := rt.inHandler.Load()
			if h == nil {
				break // done already; wait for the next
			}
			takeover := time.Duration(handlerTakeover.Load())
			if wait := takeover - time.Since(h.start); wait > 0 {
				t.Reset(wait)
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-t.C:
				}
				continue // the same run, or a later one
			}
			if rt.takenOver.Load() >= maxTakenOver {
				// Woken again when one of them returns (endHandlers).
				if rt.capWarned.CompareAndSwap(false, true) {
					rt.b.opts.Logger.Warn("pgadapter: server-side event handlers that block: the messages after one wait for it, since as many as are let run at once are running", "running", maxTakenOver)
				}
				break
			}
			if rt.takeOver(h) && ctx.Err() == nil && rt.running.join() {
				go rt.deliver(ctx, rt.ordered)
			}
			break
		}
		// A burst of quick handlers wakes this goroutine at most once per half
		// handlerTakeover (a handler is then found overdue up to that much later).
		t.Reset(time.Duration(handlerTakeover.Load()) / 2)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// takeOver ends run h on behalf of the goroutine running it, which will find it ended
// (endHandlers) and give up the queue, and reports whether it did so first.
func (rt *runtime) takeOver(h *handlerRun) bool {
	if !h.done.CompareAndSwap(false, true) {
		return false
	}
	rt.takenOver.Add(1) // endHandlers, finding the run ended, takes it back
	rt.inHandler.CompareAndSwap(h, nil)
	return true
}

// startHandlers records that the delivery goroutine runs the handlers of a server-side
// event, for watchHandlers.
func (rt *runtime) startHandlers() *handlerRun {
	h := &handlerRun{start: time.Now()}
	rt.inHandler.Store(h)
	select {
	case rt.handlerStarted <- struct{}{}:
	default: // watchHandlers has one to look at already
	}
	return h
}

// endHandlers records that they returned, and reports whether the goroutine still owns
// the queue: false once watchHandlers gave it to another.
func (rt *runtime) endHandlers(h *handlerRun) bool {
	if !h.done.CompareAndSwap(false, true) {
		rt.takenOver.Add(-1)
		select { // at the cap, a handler may wait for this slot
		case rt.handlerStarted <- struct{}{}:
		default:
		}
		return false
	}
	rt.inHandler.CompareAndSwap(h, nil)
	return true
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
	// Channel is the NOTIFY channel the message came on.
	Channel string
	// Payload is the notification text, when the notification itself was malformed.
	Payload string
	// Err is the cause: it wraps ErrMalformed, ErrAttachmentMissing, a *PanicError, or
	// the error of the query that read the attachment.
	Err error
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
