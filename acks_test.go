//go:build !race

// Broadcasts with acknowledgements go through socket.io v2.5.0's BroadcastOperator, which
// writes its expected server count after BroadcastWithAck returns and reads it, without
// synchronisation, in the callbacks that remote answers trigger on the adapter's
// goroutine: a data race inside the library that -race reports whatever the adapter does.
// These tests therefore run without -race (the README's test command runs the suite both
// ways); everything else runs under it.

package pgadapter

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zishang520/socket.io/v2/socket"

	"github.com/socketio-pg/pgadapter/internal/wire"
)

func roomOf(s string) socket.Room { return socket.Room(s) }

// emitWithAck runs a broadcast with acks and returns what its callback got.
func emitWithAck(t *testing.T, op *socket.BroadcastOperator, ev string, args ...any) ([]any, error) {
	t.Helper()
	type result struct {
		args []any
		err  error
	}
	ch := make(chan result, 1)
	op.EmitWithAck(ev, args...)(func(args []any, err error) { ch <- result{args, err} })
	select {
	case r := <-ch:
		return r.args, r.err
	case <-time.After(waitFor):
		t.Fatalf("ack callback of %q never called", ev)
		return nil, nil
	}
}

// TestAnsweredBroadcastIsForgotten: a broadcast with acks whose every answer had arrived
// stayed in the adapter, with its timer and callbacks, until its Timeout (an hour here).
func TestAnsweredBroadcastIsForgotten(t *testing.T) {
	a, b := startPair(t, testOptions(t), quiet)
	b.connect(t, "/", "cb1")
	b.connect(t, "/", "cb2")
	adapter := a.io.Sockets().Adapter().(*Adapter)
	tracked := func() int {
		adapter.mu.Lock()
		defer adapter.mu.Unlock()
		return len(adapter.requests)
	}
	for i := range 20 {
		op := a.io.Timeout(time.Hour)
		if i%2 == 1 {
			op = op.To("nobody") // every server counts zero clients
		}
		if got, err := emitWithAck(t, op, "ask", "q"); err != nil {
			t.Fatalf("broadcast %d: %v %v", i, got, err)
		}
		// The operator completed on the last answer, applied after the request was
		// removed, under the same lock.
		if n := tracked(); n != 0 {
			t.Fatalf("broadcast %d: %d request(s) still tracked once answered", i, n)
		}
	}
}

func TestBroadcastWithAcks(t *testing.T) {
	w := newWorld(t, testOptions(t))
	// A long timeout: the callback must fire as soon as every client has answered, so an
	// error here would mean the request waited for the timeout.
	const timeout = 8 * time.Second
	for _, n := range w.nodes {
		got, err := emitWithAck(t, n.io.Timeout(timeout), "ask", "q")
		if err != nil || !slices.Equal(sortedStrings(t, got), w.all()) {
			t.Fatalf("from %s: %v %v", n.name, got, err)
		}
	}
	// Only A has a client in "ra": B and C must still report a count of 0.
	got, err := emitWithAck(t, w.b.io.To("ra").Timeout(timeout), "ask")
	if err != nil || !slices.Equal(sortedStrings(t, got), []string{"a2"}) {
		t.Fatalf("room on one server: %v %v", got, err)
	}
	// No client at all.
	got, err = emitWithAck(t, w.a.io.To("nobody").Timeout(timeout), "ask")
	if err != nil || len(got) != 0 {
		t.Fatalf("no client: %v %v", got, err)
	}
	// Clients acking with no argument, and with two: one response each.
	got, err = emitWithAck(t, w.a.io.Timeout(timeout), "ack0-none")
	if err != nil || len(got) != 5 || slices.ContainsFunc(got, func(v any) bool { return v != nil }) {
		t.Fatalf("zero-argument acks: %v %v", got, err)
	}
	got, err = emitWithAck(t, w.c.io.Timeout(timeout), "ack2-many")
	if err != nil || !slices.Equal(sortedStrings(t, got), w.all()) {
		t.Fatalf("two-argument acks: %v %v", got, err)
	}
	// A socket's broadcast with ack, from Emit with a callback rather than EmitWithAck.
	done := make(chan []any, 1)
	serverSocket(t, w.b, w.clients["b1"]).Broadcast().Timeout(timeout).Emit("ask", func(args []any, err error) {
		if err != nil {
			t.Errorf("socket broadcast ack: %v", err)
		}
		done <- args
	})
	select {
	case got := <-done:
		if !slices.Equal(sortedStrings(t, got), []string{"a1", "a2", "b2", "c1"}) {
			t.Fatalf("socket broadcast acks: %v", got)
		}
	case <-time.After(waitFor):
		t.Fatal("socket broadcast ack never called")
	}
}

// A remote socket's Emit with an ack behaves like a local socket's: the callback gets
// the client's arguments.
func TestRemoteSocketEmitWithAck(t *testing.T) {
	w := newWorld(t, testOptions(t))
	list, _ := fetchSockets(t, w.a.io.In("r2").Except("r1"))
	if len(list) != 1 {
		t.Fatalf("want b2 alone, got %v", socketNames(t, list))
	}
	b2 := list[0]
	answered := make(chan []any, 1)
	b2.Timeout(5*time.Second).Emit("ask", func(args []any, err error) {
		if err != nil {
			t.Errorf("remote socket ack: %v", err)
		}
		answered <- args
	})
	select {
	case args := <-answered:
		if !slices.Equal(args, []any{"b2"}) {
			t.Fatalf("remote socket ack args %#v", args)
		}
	case <-time.After(waitFor):
		t.Fatal("remote socket ack never called")
	}
}

// With the Local flag, the other servers are counted as zero clients at once: socket.io's
// operator expects ServerCount counts whatever the flag, and used to wait for the
// timeout.
func TestLocalBroadcastWithAcks(t *testing.T) {
	w := newWorld(t, testOptions(t))
	start := time.Now()
	const timeout = 8 * time.Second
	got, err := emitWithAck(t, w.a.io.Local().Timeout(timeout), "ask")
	if err != nil || !slices.Equal(sortedStrings(t, got), []string{"a1", "a2"}) {
		t.Fatalf("local broadcast with acks: %v %v", got, err)
	}
	if took := time.Since(start); took >= timeout {
		t.Fatalf("took %v: it waited for the timeout", took)
	}
	// Once each other client's server has written A's later "end", it would have
	// written "ask" before it, had the broadcast been published: its record (in order,
	// unlike what the client sees) shows it was not.
	others := []string{"b1", "b2", "c1"}
	w.fence(t, w.a, others...)
	for _, name := range others {
		if n := w.clients[name].sent.count("ask"); n != 0 {
			t.Errorf("a local broadcast of A's written to %s %d time(s)", name, n)
		}
	}
}

// A broadcast with acks is published even when this server knows no other (it lost
// sight of them, or has just started): their clients get it, as with Node's adapter,
// and the operator, which expects ServerCount counts, completes with the local acks.
func TestBroadcastWithAcksToUnknownServers(t *testing.T) {
	a, b := startPair(t, testOptions(t), quiet)
	ca := a.connect(t, "/", "ca")
	cb := b.connect(t, "/", "cb")
	adapter := a.io.Sockets().Adapter().(*Adapter)
	adapter.mu.Lock()
	clear(adapter.nodes) // as after a listener outage longer than the heartbeat timeout
	adapter.mu.Unlock()
	if n := adapter.ServerCount(); n != 1 {
		t.Fatalf("ServerCount %d", n)
	}
	got, err := emitWithAck(t, a.io.Timeout(8*time.Second), "ask")
	if err != nil || !slices.Equal(sortedStrings(t, got), []string{"ca"}) {
		t.Fatalf("acks %v %v", got, err)
	}
	cb.expect(t, "ask")
	ca.expect(t, "ask")
}

// A panic in one request's callback (socket.io's operator panics when a RemoteSocket
// emit completes with no answer) must not keep the other requests waiting for the same
// server from completing when it leaves.
func TestCallbackPanicDoesNotStrandRequests(t *testing.T) {
	opts := testOptions(t)
	opts.Logger = slog.New(slog.DiscardHandler) // the panics are expected
	a := startNode(t, "A", opts)
	adapter := a.io.Sockets().Adapter().(*Adapter)
	fetched := make(chan error, 1)
	adapter.mu.Lock()
	adapter.nodes["gone"] = time.Now()
	adapter.mu.Unlock()
	due := func() map[string]struct{} { return map[string]struct{}{"gone": {}} }
	adapter.track("r1", &request{kind: wire.Broadcast, waiting: due(), members: due(),
		onCount: func(uint64) { panic("operator") }, onAck: func([]any, error) {}}, time.Hour, due)
	adapter.track("r2", &request{kind: wire.FetchSockets, waiting: due(),
		onFetch: func(_ []socket.SocketDetails, err error) { fetched <- err }}, time.Hour, due)
	adapter.track("r3", &request{kind: wire.Broadcast, waiting: due(), members: due(),
		onCount: func(uint64) { panic("operator") }, onAck: func([]any, error) {}}, time.Hour, due)
	adapter.removeNode("gone", time.Time{})
	select {
	case err := <-fetched:
		if err != nil {
			t.Fatalf("FetchSockets: %v", err)
		}
	case <-time.After(waitFor):
		t.Fatal("FetchSockets never completed")
	}
	if n := a.errs.count("error"); n != 2 {
		t.Errorf("%d errors reported, want the 2 panics", n)
	}
}

// ackPair starts servers A and B, each with a client (ca, cb), for broadcasts with acks
// while a third server joins.
func ackPair(t *testing.T, opts Options) (a, b *node, ca *tclient) {
	a, b = startPair(t, opts, func(*Options) {})
	ca = a.connect(t, "/", "ca")
	b.connect(t, "/", "cb")
	return a, b, ca
}

// socket.io's operator reads ServerCount after BroadcastWithAck returns, and expects that
// many client counts. A server that joins between the two (here, while the broadcast is
// being written to a local client) used to be counted by ServerCount but not asked, and
// the caller got a timeout although every client had answered.
func TestBroadcastWithAcksWhileAServerJoins(t *testing.T) {
	opts := testOptions(t)
	a, b, ca := ackPair(t, opts)
	var c *node
	var once sync.Once
	serverSocket(t, a, ca).OnAnyOutgoing(func(...any) {
		once.Do(func() {
			// On the caller's goroutine, inside BroadcastWithAck: a server joins, and A
			// has heard it once C has heard A's answer to its announcement. Stats,
			// read meanwhile, must not take the broadcast's ServerCount call, as
			// ServerCount would.
			a.b.Stats()
			c = startNode(t, "C", opts)
			waitServerCount(t, []*node{c}, 3)
		})
	})
	const timeout = 5 * time.Second
	start := time.Now()
	got, err := emitWithAck(t, a.io.Timeout(timeout), "ask")
	if err != nil || !slices.Equal(sortedStrings(t, got), []string{"ca", "cb"}) {
		t.Fatalf("acks %v %v (after %v)", got, err, time.Since(start))
	}
	if c == nil {
		t.Fatal("C never started")
	}
	waitServerCount(t, []*node{a, b, c}, 3) // and C is counted once the broadcast is out
}

// TestBroadcastWithAcksOutlivingTheFreeze: a broadcast whose local delivery takes long
// (more than a second here) while a server joins, and a second broadcast made from
// another goroutine meanwhile. Each ServerCount call must return the count of the
// servers its own broadcast was sent to, in whichever order the two come. Membership
// held for a second only: the first got the servers known by then, one more than it
// was sent to, and waited for a client count that never came; a snapshot taken anew for
// the second, whose call came first, then gave each the other's count.
func TestBroadcastWithAcksOutlivingTheFreeze(t *testing.T) {
	opts := testOptions(t)
	a, _, ca := ackPair(t, opts)
	adapter := a.io.Sockets().Adapter().(*Adapter)
	// The first broadcast's timer runs through C's start, the second's whole round trip
	// and the second of sleep: a few seconds under -race on a loaded machine. Its bound
	// only sets how long a failing run takes to fail.
	const timeout = 20 * time.Second
	var c *node
	var first atomic.Bool
	second := make(chan error, 2) // the goroutine's result, and the listener's verdict
	serverSocket(t, a, ca).OnAnyOutgoing(func(...any) {
		if !first.CompareAndSwap(false, true) {
			return // the second broadcast's packet
		}
		func() {
			// Inside the first BroadcastWithAck, before socket.io's operator calls
			// ServerCount: a server joins, and the delivery outlasts a second (the
			// slowness is the condition under test, not a synchronisation).
			c = startNode(t, "C", opts)
			eventually(t, "A knows C", func() bool {
				adapter.mu.Lock()
				defer adapter.mu.Unlock()
				return len(adapter.nodes) == 2
			})
			time.Sleep(1200 * time.Millisecond)
			go func() { // no t.Fatal off the test's goroutine
				a.io.Timeout(timeout).EmitWithAck("ask")(func(got []any, err error) {
					names := make([]string, 0, len(got))
					for _, g := range got {
						names = append(names, fmt.Sprint(g))
					}
					slices.Sort(names)
					if err == nil && !slices.Equal(names, []string{"ca", "cb"}) {
						err = fmt.Errorf("acks %v", got)
					}
					second <- err
				})
			}()
			select {
			case err := <-second:
				second <- err
			case <-time.After(timeout + waitFor):
				second <- errors.New("the second broadcast never completed")
			}
		}()
	})
	start := time.Now()
	got, err := emitWithAck(t, a.io.Timeout(timeout), "ask")
	if err != nil || !slices.Equal(sortedStrings(t, got), []string{"ca", "cb"}) {
		t.Fatalf("first broadcast: acks %v %v (after %v)", got, err, time.Since(start))
	}
	if c == nil {
		t.Fatal("C never started")
	}
	select { // put there by the listener, which ran inside the first broadcast
	case err := <-second:
		if err != nil {
			t.Fatalf("second broadcast: %v", err)
		}
	default:
		t.Fatal("the listener never ran")
	}
}

// RemoteSocket.Emit with an acknowledgement, to a socket that has left every server,
// calls back with nothing and no error, as Node's gives undefined. Every server counted
// zero clients, and socket.io v2.5.0's operator took the first of no answers and
// panicked, having cleared its timer: the callback was never called.
func TestRemoteSocketGoneAckCalledBack(t *testing.T) {
	a, b := startPair(t, testOptions(t), func(*Options) {})
	cb := b.connect(t, "/", "cb")
	list, err := fetchSockets(t, a.io)
	if err != nil || len(list) != 1 {
		t.Fatalf("fetched %d sockets, %v", len(list), err)
	}
	cb.s.Disconnect()
	eventually(t, "the socket gone from B", func() bool { return b.io.Sockets().Sockets().Len() == 0 })
	type result struct {
		args []any
		err  error
	}
	got := make(chan result, 1)
	list[0].Timeout(time.Minute).Emit("ask", socket.Ack(func(args []any, err error) { got <- result{args, err} }))
	select {
	case r := <-got:
		if r.err != nil || len(r.args) != 0 {
			t.Fatalf("called back with %v, %v; want nothing", r.args, r.err)
		}
	case <-time.After(waitFor):
		t.Fatal("never called back")
	}
	if n := a.errs.count("error"); n != 0 {
		t.Errorf("%d errors reported: %v", n, a.errs.drain("error"))
	}
	// One that could not be published (an argument JSON cannot carry) is not answered
	// for: the operator's timeout gives the caller an error.
	list[0].Timeout(300*time.Millisecond).Emit("ask", make(chan int), socket.Ack(func(args []any, err error) { got <- result{args, err} }))
	select {
	case r := <-got:
		if r.err == nil {
			t.Fatalf("called back with %v and no error for a message not published", r.args)
		}
	case <-time.After(waitFor):
		t.Fatal("never called back")
	}
	if n := a.errs.count("error"); n != 1 {
		t.Errorf("%d errors reported, want the publish failure: %v", n, a.errs.drain("error"))
	}
	// A socket that is there still answers.
	b.connect(t, "/", "cb2")
	list, err = fetchSockets(t, a.io)
	if err != nil || len(list) != 1 {
		t.Fatalf("fetched %d sockets, %v", len(list), err)
	}
	list[0].Timeout(time.Minute).Emit("ask", socket.Ack(func(args []any, err error) { got <- result{args, err} }))
	select {
	case r := <-got:
		if r.err != nil || len(r.args) != 1 || r.args[0] != "cb2" {
			t.Fatalf("called back with %v, %v; want the client's name", r.args, r.err)
		}
	case <-time.After(waitFor):
		t.Fatal("never called back")
	}
}

// A RemoteSocket's Emit with an ack gives the callback the client's first argument, as
// Node does, whether the socket is on this server or on another. One on this server gave
// every argument, one on another the first (only the first travels); a client that
// answered with none gave [] here and [nil] from another server.
func TestRemoteSocketAckShapeSameEverywhere(t *testing.T) {
	a, b := startPair(t, testOptions(t), func(*Options) {})
	a.connect(t, "/", "ca")
	b.connect(t, "/", "cb")
	list, err := fetchSockets(t, a.io)
	if err != nil || len(list) != 2 {
		t.Fatalf("fetched %d sockets, %v", len(list), err)
	}
	for _, rs := range list {
		name := rs.Data().(map[string]any)["name"].(string)
		for ev, want := range map[string][]any{"ack2-q": {name}, "ack0-q": {nil}, "q": {name}} {
			got := make(chan []any, 1)
			rs.Timeout(time.Minute).Emit(ev, socket.Ack(func(args []any, err error) {
				if err != nil {
					t.Errorf("%s %s: %v", name, ev, err)
				}
				got <- args
			}))
			select {
			case args := <-got:
				if !slices.Equal(args, want) {
					t.Errorf("%s, %s: called back with %#v, want %#v", name, ev, args, want)
				}
			case <-time.After(waitFor):
				t.Fatalf("%s, %s: never called back", name, ev)
			}
		}
	}
}

// A broadcast with acks that failed, as socket.io's operator sees it: its callback gets
// an error (at the operator's timeout) with the answers it has. The other servers were
// counted as zero clients, and the caller was told, without an error, that every client
// had answered: when the message could not be published (here the attachments table is
// missing), and when the sending server closed while the answers were due (here B has
// not counted its client yet: its delivery is held).
func TestFailedBroadcastAckIsAnError(t *testing.T) {
	t.Run("not published", func(t *testing.T) {
		opts := testOptions(t)
		opts.SkipTableCreation = true // the binary message's insert fails
		a, b := startPair(t, opts, quiet)
		b.connect(t, "/", "cb")
		args, err := emitWithAck(t, a.io.Timeout(500*time.Millisecond), "ask", []byte{1})
		if err == nil {
			t.Fatalf("called back with %v and no error", args)
		}
		if a.errs.count("error") == 0 {
			t.Error("the publish failure was not reported")
		}
	})
	t.Run("closed", func(t *testing.T) {
		a, b := startPair(t, testOptions(t), quiet)
		b.connect(t, "/", "cb")
		release := make(chan struct{})
		defer close(release)
		held := make(chan struct{}, 1)
		for _, s := range b.socketsNamed("/", "cb") {
			s.OnAnyOutgoing(func(args ...any) {
				if args[0] == "hold" {
					held <- struct{}{}
					<-release
				}
			})
		}
		a.io.Emit("hold")
		select {
		case <-held:
		case <-time.After(waitFor):
			t.Fatal("B never held")
		}
		type result struct {
			args []any
			err  error
		}
		got := make(chan result, 1)
		a.io.Timeout(time.Second).EmitWithAck("ask")(func(args []any, err error) { got <- result{args, err} })
		a.io.Close(nil)
		select {
		case r := <-got:
			if r.err == nil {
				t.Fatalf("called back with %v and no error", r.args)
			}
		case <-time.After(waitFor):
			t.Fatal("never called back")
		}
	})
}

// TestClientAckingTwiceCountsOnce: a client whose ACK arrives twice is one answer.
// socket.io v2.5.0 applies a client's packets on goroutines of their own, and its onack
// loads the callback, calls it and then deletes it: both ACKs could call it. A tester's
// client that acked twice, beside one that never answered, made broadcasts complete with
// two answers of the one client and no error. The test calls the callback twice as
// those two goroutines did.
func TestClientAckingTwiceCountsOnce(t *testing.T) {
	opts := testOptions(t)
	a, b := startPair(t, opts, func(*Options) {})
	for _, n := range []*node{a, b} { // on the emitting server, and on another
		c1, c2 := n.connect(t, "/", n.name+"1"), n.connect(t, "/", n.name+"2")
		for _, c := range []*tclient{c1, c2} {
			serverSocket(t, n, c).Join(socket.Room("dup-" + n.name))
		}
		type result struct {
			args []any
			err  error
		}
		done := make(chan result, 1)
		a.io.To(socket.Room("dup-" + n.name)).Timeout(2 * time.Second).EmitWithAck("noack-dup")(func(args []any, err error) { done <- result{args, err} })
		c1.expect(t, "noack-dup")
		c2.expect(t, "noack-dup")
		var acks []socket.Ack
		serverSocket(t, n, c1).Acks().Range(func(_ uint64, ack socket.Ack) bool {
			acks = append(acks, ack)
			return true
		})
		if len(acks) != 1 {
			t.Fatalf("%s: %d acks registered for c1, want 1", n.name, len(acks))
		}
		acks[0]([]any{"once"}, nil)
		acks[0]([]any{"twice"}, nil)
		var r result
		select {
		case r = <-done:
		case <-time.After(waitFor):
			t.Fatalf("%s: the broadcast's callback was never called", n.name)
		}
		if r.err == nil || len(r.args) != 1 {
			t.Fatalf("%s: one client answered (twice), the other never: got %v, %v; want one answer and a timeout", n.name, r.args, r.err)
		}
	}
}
