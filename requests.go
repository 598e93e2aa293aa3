package pgadapter

import (
	"fmt"
	"time"

	"github.com/zishang520/socket.io/v2/socket"

	"github.com/socketio-pg/pgadapter/internal/wire"
)

// request is a question this server asked the other servers of a namespace: it knows
// exactly which servers it waits for, so that an answer from a server that joined later,
// or a second answer from the same server, is ignored, and a server that leaves stops
// being waited for.
type request struct {
	kind    wire.Type           // FetchSockets, ServerSideEmit, AllRooms or Broadcast (with acks)
	waiting map[string]struct{} // servers whose answer (or client count) is still due
	members map[string]struct{} // Broadcast: servers whose client acks are accepted
	timer   *time.Timer

	sockets []socket.SocketDetails // FetchSockets: gathered so far
	onFetch func([]socket.SocketDetails, error)

	answers []any // ServerSideEmit: gathered so far
	onSSE   socket.Ack

	onCount func(uint64) // Broadcast
	onAck   socket.Ack
	onFail  func() // Broadcast: told when it ends early, failed (see oneSocket)
	single  bool
	clients uint64 // Broadcast: the clients counted so far, whose acks are due
	acked   uint64 // Broadcast: the acks passed on

	rooms   map[string]struct{} // AllRooms: gathered so far
	onRooms func(map[string]struct{}, error)
}

// track registers a request before it is published, and arranges its timeout. The
// servers to wait for are servers(), read under the same hold of a.mu as the
// registration: read before it, a server removed in between (its ADAPTER_CLOSE, a
// heartbeat timeout) stayed in the request, which waited for it until its timeout. It
// registers nothing and returns false when there is no server to wait for.
func (a *Adapter) track(id string, r *request, timeout time.Duration, servers func() map[string]struct{}) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if r.waiting = servers(); len(r.waiting) == 0 {
		return false
	}
	a.requests[id] = r
	r.timer = time.AfterFunc(timeout, func() { a.guard("request timeout", func() { a.expire(id) }) })
	return true
}

// complete hands a request what it gathered. Broadcasts have nothing to hand: their
// acks went to socket.io's BroadcastOperator as they came.
func (r *request) complete(err error) {
	switch r.kind {
	case wire.FetchSockets:
		r.onFetch(r.sockets, err)
	case wire.ServerSideEmit:
		r.onSSE(r.answers, err)
	case wire.AllRooms:
		r.onRooms(r.rooms, err)
	}
}

// take removes request id, if still there.
func (a *Adapter) take(id string) *request {
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.requests[id]
	delete(a.requests, id)
	return r
}

// expire ends a request at its timeout, with what it has. A broadcast with acks has its
// own timer in socket.io's BroadcastOperator: here it is only forgotten, so late acks
// are dropped.
func (a *Adapter) expire(id string) {
	if r := a.take(id); r != nil {
		r.complete(fmt.Errorf("%w: %s in %q: %d server(s) did not answer", ErrTimeout, r.kind, a.name, len(r.waiting)))
	}
}

// abandonOnError returns a publish callback that ends request id at once if its message
// could not be published: no server will answer it.
func (a *Adapter) abandonOnError(id string) func(error) {
	return func(err error) {
		if err == nil {
			return
		}
		// Callbacks run on a goroutine of their own: the publisher must not run user code.
		go a.guard("request not published", func() { a.finish(id, fmt.Errorf("pgadapter: request not published: %w", err)) })
	}
}

// guard runs fn, which calls a request's callback on a goroutine of the adapter's, and
// reports a panic in it instead of ending the process.
func (a *Adapter) guard(what string, fn func()) {
	if err := recovered(fn); err != nil {
		a.b.report(fmt.Errorf("pgadapter: namespace %q: %s: %w", a.name, what, err))
	}
}

// finish ends a request early with err (not published, or ended by Close), giving it
// what it has. A broadcast's client counts from the servers still due are withheld:
// socket.io's operator then ends at its timeout with an error and the answers it has.
// They were given as zero clients, as for a server that leaves before counting, and the
// caller was told, without an error, that every client had answered: a broadcast whose
// server closed while it waited, or that never reached the other servers, looked like
// one that no client there matched.
func (a *Adapter) finish(id string, err error) {
	r := a.take(id)
	if r == nil {
		return
	}
	r.timer.Stop()
	if r.kind == wire.Broadcast {
		if r.onFail != nil {
			r.onFail()
		}
		return
	}
	r.complete(err)
}

// The acks of a broadcast reach socket.io's BroadcastOperator, which completes when
// the client counts of every server and as many acks have arrived. socket.io v2.5.0's
// operator reads its expected server count without synchronisation from the goroutine
// that delivers remote answers (a data race in the library, reported by -race whatever
// the adapter does); see acks_test.go.

// doneLocked removes a request whose answers are all in, and returns its completion.
// a.mu is held.
func (a *Adapter) doneLocked(id string, r *request) func() {
	if len(r.waiting) > 0 {
		return nil
	}
	delete(a.requests, id)
	r.timer.Stop()
	return func() { r.complete(nil) }
}

// broadcastDoneLocked removes a broadcast with acks once every server due has counted
// its clients and that many acks have been passed on: socket.io's operator then has all
// it waits for from other servers. Kept until its timeout, as Node keeps it, a request
// held its timer and callbacks (and, through them, the operator's answers) for as long
// as the broadcast's Timeout, an hour if so set. a.mu is held.
func (a *Adapter) broadcastDoneLocked(id string, r *request) {
	if len(r.waiting) == 0 && r.acked >= r.clients {
		delete(a.requests, id)
		r.timer.Stop()
	}
}

// onResponse applies an answer to one of this server's requests.
func (a *Adapter) onResponse(m *wire.Message) {
	id := m.RequestID()
	var run func()
	a.mu.Lock()
	r := a.requests[id]
	if r == nil {
		a.mu.Unlock()
		return // not ours, or already complete: every server sees every response
	}
	_, due := r.waiting[m.UID]
	switch d := m.Data.(type) {
	case *wire.FetchResponseData:
		if r.kind != wire.FetchSockets || !due {
			break
		}
		delete(r.waiting, m.UID)
		for _, info := range d.Sockets {
			r.sockets = append(r.sockets, newRemoteSocket(info))
		}
		run = a.doneLocked(id, r)
	case *wire.AckData:
		switch {
		case m.Type == wire.ServerSideEmitResponse && r.kind == wire.ServerSideEmit && due:
			delete(r.waiting, m.UID)
			r.answers = append(r.answers, d.Packet)
			run = a.doneLocked(id, r)
		case m.Type == wire.BroadcastAck && r.kind == wire.Broadcast:
			if _, member := r.members[m.UID]; member {
				r.acked++
				a.broadcastDoneLocked(id, r)
				run = func() { r.onAck(ackShape([]any{d.Packet}, r.single), nil) }
			}
		}
	case *wire.AllRoomsResponseData:
		if r.kind != wire.AllRooms || !due {
			break
		}
		delete(r.waiting, m.UID)
		for _, room := range d.Rooms {
			r.rooms[room] = struct{}{}
		}
		run = a.doneLocked(id, r)
	case *wire.ClientCountData:
		if r.kind != wire.Broadcast || !due {
			break
		}
		delete(r.waiting, m.UID)
		r.clients += d.ClientCount
		a.broadcastDoneLocked(id, r)
		run = func() { r.onCount(d.ClientCount) }
	}
	a.mu.Unlock()
	if run != nil {
		run()
	}
}

// removeNode forgets a server that closed (staleBefore zero) or timed out (unheard of
// since staleBefore), and stops waiting for it.
func (a *Adapter) removeNode(uid string, staleBefore time.Time) {
	a.dropNode(uid, staleBefore, true)
}

// dropNode is removeNode; with requests false, requests still wait for the server, for
// answers of its that are still on their way.
func (a *Adapter) dropNode(uid string, staleBefore time.Time, requests bool) {
	a.mu.Lock()
	runs := a.removeNodeLocked(uid, staleBefore, requests)
	a.mu.Unlock()
	a.runAll("request of a server that left", runs)
}

// removeNodeLocked is dropNode's work, with a.mu held; it returns the callbacks to run
// once a.mu is released.
func (a *Adapter) removeNodeLocked(uid string, staleBefore time.Time, requests bool) []func() {
	// The sizes before the deletion, for shrink: heartbeat's own look, once a tick,
	// misses a peak that came and went between two (a reviewer's finding).
	for i, n := range [...]int{len(a.nodes), len(a.capable), len(a.timedOut), len(a.left), len(a.inlineWarned)} {
		a.peaks[i] = max(a.peaks[i], n)
	}
	seen, known := a.nodes[uid]
	if known && !staleBefore.IsZero() && seen.After(staleBefore) {
		return nil // heard from since it was found silent
	}
	var runs []func()
	delete(a.nodes, uid)
	if staleBefore.IsZero() {
		delete(a.capable, uid) // it closed: a uid is never used again
		delete(a.timedOut, uid)
	} else {
		a.timedOut[uid] = time.Now()
	}
	delete(a.inlineWarned, uid) // warned again should it come back
	if requests {
		for id, r := range a.requests {
			if _, due := r.waiting[uid]; !due {
				continue
			}
			delete(r.waiting, uid)
			if r.kind == wire.Broadcast {
				// Counted as zero clients: its acks, if it comes back, must not be counted.
				delete(r.members, uid)
				a.broadcastDoneLocked(id, r)
				runs = append(runs, func() { r.onCount(0) })
			} else if run := a.doneLocked(id, r); run != nil {
				runs = append(runs, run)
			}
		}
	}
	if known { // logged with the callbacks, once a.mu is released: the logger is the application's
		runs = append(runs, func() {
			if staleBefore.IsZero() {
				a.b.opts.Logger.Debug("pgadapter: server left", "nsp", a.name, "uid", uid)
			} else {
				a.b.opts.Logger.Info("pgadapter: server timed out", "nsp", a.name, "uid", uid)
			}
		})
	}
	return runs
}

// closeRequests ends every waiting request with ErrClosed.
func (a *Adapter) closeRequests() {
	a.mu.Lock()
	ids := make([]string, 0, len(a.requests))
	for id := range a.requests {
		ids = append(ids, id)
	}
	a.mu.Unlock()
	for _, id := range ids {
		a.guard("request ended by Close", func() { a.finish(id, ErrClosed) })
	}
}
