package pgadapter

import (
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"maps"
	goruntime "runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zishang520/socket.io/v2/socket"
)

// A server-side event handler runs on the goroutine that applies other servers'
// messages. One that waits there for a cluster request of its own (FetchSockets,
// ServerSideEmitWithAck), as Node code awaits one, must get its answers. Before, it
// waited RequestsTimeout and got ErrTimeout with none of the other servers' answers.
// (The handler is taken over after handlerTakeover; TestListenerWaitsForAClusterRequest
// shows that the answers do not need it.)
func TestHandlerWaitsForAClusterRequest(t *testing.T) {
	opts := testOptions(t)
	opts.RequestsTimeout = 3 * time.Second
	a, b := startPair(t, opts, func(*Options) {})
	a.connect(t, "/", "alice")
	a.io.On("question", func(args ...any) {
		args[len(args)-1].(socket.Ack)([]any{"from A"}, nil)
	})

	type result struct {
		names   []string
		answers []any
		err     error
	}
	got := make(chan result, 1)
	b.io.On("who", func(...any) {
		var r result
		r.names, r.err = fetchNamesAndWait(b.io) // waits on the delivery goroutine
		if r.err != nil {
			got <- r
			return
		}
		answered := make(chan struct{})
		b.io.ServerSideEmitWithAck("question")(func(args []any, err error) {
			r.answers, r.err = args, err
			close(answered)
		})
		<-answered
		got <- r
	})
	start := time.Now()
	if err := a.io.ServerSideEmit("who"); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-got:
		if r.err != nil || !slices.Equal(r.names, []string{"alice"}) || !slices.Equal(r.answers, []any{"from A"}) {
			t.Fatalf("after %v: sockets %v, answers %v, err %v; want [alice], [from A], no error", time.Since(start), r.names, r.answers, r.err)
		}
	case <-time.After(waitFor):
		t.Fatal("the handler never finished")
	}
}

// A server's answers and its ADAPTER_CLOSE are applied in the order it sent them: an
// answer it gave just before closing counts, even while the goroutine that applies
// answers is held up by a callback of the application's, and the ADAPTER_CLOSE's copy
// on the other delivery goroutine has already stopped counting the server.
func TestAnswerBeforeCloseCounts(t *testing.T) {
	opts := testOptions(t)
	a, b := startPair(t, opts, func(*Options) {})
	closed := make(chan struct{})
	b.io.On("question", func(args ...any) {
		args[len(args)-1].(socket.Ack)([]any{"from B"}, nil)
		go func() { b.close(); close(closed) }()
	})
	// A callback that holds A's answers goroutine until release.
	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	releaseOnce := func() { once.Do(func() { close(release) }) }
	defer releaseOnce()
	a.io.FetchSockets()(func([]*socket.RemoteSocket, error) {
		close(held)
		<-release
	})
	select {
	case <-held:
	case <-time.After(waitFor):
		t.Fatal("FetchSockets never completed")
	}
	got := make(chan []any, 1)
	errc := make(chan error, 1)
	a.io.ServerSideEmitWithAck("question")(func(args []any, err error) { got <- args; errc <- err })
	select {
	case <-closed:
	case <-time.After(waitFor):
		releaseOnce()
		t.Fatal("B never closed")
	}
	// B's ADAPTER_CLOSE reaches A's other delivery goroutine: B stops being counted.
	eventually(t, "A counts B gone", func() bool { return a.io.Sockets().Adapter().ServerCount() == 1 })
	releaseOnce()
	select {
	case args := <-got:
		if err := <-errc; err != nil || !slices.Equal(args, []any{"from B"}) {
			t.Fatalf("answers %v, err %v; want [from B]", args, err)
		}
	case <-time.After(waitFor):
		t.Fatal("ServerSideEmitWithAck never completed")
	}
}

// A server that closed is not waited for by a request made while the messages it sent
// before closing were still queued: the ADAPTER_CLOSE's copy among answers is applied at
// once; if something holds this server's other messages (here, an outgoing-packet
// listener) for longer than the closed server is remembered (twice the heartbeat
// timeout), those earlier messages count it again, and a request made then waited
// RequestsTimeout for it.
func TestClosedServerCountedAgainIsNotWaitedFor(t *testing.T) {
	opts := testOptions(t)
	// Heartbeats short enough that A is forgotten soon (twice the timeout), long enough
	// that a loaded machine does not make B or C miss the other's.
	opts.HeartbeatInterval = 250 * time.Millisecond
	opts.HeartbeatTimeout = time.Second
	opts.RequestsTimeout = 3 * time.Second
	nodes := cluster(t, 3, opts)
	a, b, c := nodes[0], nodes[1], nodes[2]
	b.connect(t, "/", "cb")
	// Broadcasts "hold" and "hold-again" hold B's delivery goroutine until released.
	holds := map[string]chan struct{}{"hold": make(chan struct{}), "hold-again": make(chan struct{})}
	held := make(chan string, 2)
	for _, s := range b.socketsNamed("/", "cb") {
		s.OnAnyOutgoing(func(args ...any) {
			if name, _ := args[0].(string); holds[name] != nil {
				held <- name
				<-holds[name]
			}
		})
	}
	defer closeOpen(maps.Values(holds))
	waitHeld := func(want string) {
		t.Helper()
		select {
		case got := <-held:
			if got != want {
				t.Fatalf("held by %q, want %q", got, want)
			}
		case <-time.After(waitFor):
			t.Fatalf("never held by %q", want)
		}
	}
	type result struct {
		err   error
		count int64
	}
	got := make(chan result, 1)
	b.io.On("probe", func(...any) {
		count := b.io.Sockets().Adapter().ServerCount()
		b.io.FetchSockets()(func(_ []*socket.RemoteSocket, err error) { got <- result{err, count} })
	})
	committed := func(n *node, typ string, want int64) func() bool {
		return func() bool { return n.b.Stats().Published[typ] == want }
	}
	// In this order on B, each committed before the next is sent: PostgreSQL delivers
	// notifications in commit order.
	c.io.Emit("hold")
	waitHeld("hold")
	a.io.ServerSideEmit("from-a") // counts A again once applied
	eventually(t, "A's message committed", committed(a, "SERVER_SIDE_EMIT", 1))
	c.io.ServerSideEmit("probe")
	eventually(t, "C's probe committed", committed(c, "SERVER_SIDE_EMIT", 1))
	c.io.Emit("hold-again") // holds B after the probe's handler asked, before the ADAPTER_CLOSE
	eventually(t, "C's second hold committed", committed(c, "BROADCAST", 2))
	a.close()
	badapter := b.io.Sockets().Adapter().(*Adapter)
	eventually(t, "B forgets that A left", func() bool {
		badapter.mu.Lock()
		defer badapter.mu.Unlock()
		return len(badapter.left) == 0 && len(badapter.nodes) == 1 // C; A removed by the ADAPTER_CLOSE
	})
	close(holds["hold"])
	waitHeld("hold-again")
	// The probe's handler has run (before "hold-again") and asked.
	eventually(t, "the probe's request made", func() bool {
		badapter.mu.Lock()
		defer badapter.mu.Unlock()
		return len(badapter.requests) == 1
	})
	close(holds["hold-again"])
	var r result
	select {
	case r = <-got:
	case <-time.After(waitFor):
		t.Fatal("the probe never ran")
	}
	if r.count != 3 {
		t.Fatalf("B counted %d servers at the probe: A was not counted again, the case is not reproduced", r.count)
	}
	if r.err != nil {
		t.Fatalf("FetchSockets made while A was counted again: %v", r.err)
	}
}

// Handlers of one server-side event on several servers, each waiting for a cluster
// request of its own: each server answers the others' requests once its waiting handler
// is left to itself (handlerTakeover), and another goroutine applies its messages.
// Before, each handler's request waited behind the other's handler, until
// RequestsTimeout.
func TestHandlersWaitForEachOther(t *testing.T) {
	opts := testOptions(t)
	opts.RequestsTimeout = 3 * time.Second
	nodes := cluster(t, 3, opts)
	a := nodes[0]
	a.connect(t, "/", "alice")
	type result struct {
		who   string
		names []string
		err   error
	}
	got := make(chan result, 2)
	for _, n := range nodes[1:] {
		n.io.On("who", func(...any) {
			r := result{who: n.name}
			r.names, r.err = fetchNamesAndWait(n.io)
			got <- r
		})
	}
	if err := a.io.ServerSideEmit("who"); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		select {
		case r := <-got:
			if r.err != nil || !slices.Equal(r.names, []string{"alice"}) {
				t.Errorf("%s: sockets %v, err %v; want [alice]", r.who, r.names, r.err)
			}
		case <-time.After(waitFor):
			t.Fatal("a handler never finished")
		}
	}
}

// What a quick server-side event handler does is done before the next message of its
// server is applied, as Node's handlers' synchronous code is: a socket it joins to a room
// gets the broadcast to that room sent right after the event. (Handlers that run longer
// than handlerTakeover are left to themselves; this one is quick.)
func TestHandlerEffectsPrecedeLaterMessages(t *testing.T) {
	// A loaded machine can keep the handler's goroutine from a core for 20 ms, and the
	// handler is then taken over as a slow one would be: this test is about quick ones.
	defer handlerTakeover.Store(handlerTakeover.Swap(int64(time.Minute)))
	opts := testOptions(t)
	a, b := startPair(t, opts, func(*Options) {})
	cb := b.connect(t, "/", "cb")
	b.io.On("join", func(args ...any) {
		// A handler that takes a little time (a lookup, say), well within
		// handlerTakeover: the condition under test, not a synchronisation.
		time.Sleep(2 * time.Millisecond)
		b.io.Local().SocketsJoin(socket.Room(args[0].(string)))
	})
	for i := range 50 {
		room := fmt.Sprint("room-", i)
		if err := a.io.ServerSideEmit("join", room); err != nil {
			t.Fatal(err)
		}
		a.io.To(socket.Room(room)).Emit("in-room", i)
	}
	a.io.Emit("end")
	cb.expect(t, "end")
	if n := cb.sent.count("in-room"); n != 50 {
		t.Fatalf("%d of 50 broadcasts to a room joined by the event before reached the socket", n)
	}
}

// A handler that blocks while as many as may run at once are left running is taken over
// as soon as one of them returns: it was only looked at again when another handler
// started, which none could, and every message after it waited for it.
func TestTakeoverAtTheCap(t *testing.T) {
	opts := testOptions(t)
	a, b := startPair(t, opts, func(*Options) {})
	cb := b.connect(t, "/", "cb")
	releases := make([]chan struct{}, maxTakenOver+1)
	for i := range releases {
		releases[i] = make(chan struct{})
	}
	defer closeOpen(slices.Values(releases))
	b.io.On("block", func(args ...any) { <-releases[int(args[0].(float64))] })
	for i := range releases {
		if err := a.io.ServerSideEmit("block", i); err != nil {
			t.Fatal(err)
		}
	}
	a.io.Emit("probe")
	rt := b.b.rt
	eventually(t, "the last handler found overdue at the cap (and warned of)", func() bool {
		return rt.takenOver.Load() == maxTakenOver && rt.capWarned.Load()
	})
	// No proof that the probe is held: nothing can fence behind a delivery goroutine
	// that a handler holds. What shows it is held is the count above: the last handler
	// was found overdue with maxTakenOver running, so it still holds the goroutine, and
	// the probe comes after it. This only catches a probe that has already gone past.
	if n := cb.sent.count("probe"); n != 0 {
		t.Fatalf("the probe went past %d blocked handlers", maxTakenOver+1)
	}
	close(releases[0]) // a slot frees; the last handler is taken over, the probe goes
	cb.expect(t, "probe")
}

// A handler that ends its goroutine (runtime.Goexit, as t.FailNow does) does not end the
// delivery of messages: another goroutine carries on, and it is reported.
func TestHandlerGoexit(t *testing.T) {
	opts := testOptions(t)
	a, b := startPair(t, opts, func(*Options) {})
	cb := b.connect(t, "/", "cb")
	b.io.On("exit", func(...any) { goruntime.Goexit() })
	if err := a.io.ServerSideEmit("exit"); err != nil {
		t.Fatal(err)
	}
	a.io.Emit("probe")
	cb.expect(t, "probe")
	if e := b.errs.next(t, "B", "error"); !strings.Contains(e[0].(error).Error(), "Goexit") {
		t.Fatalf("reported %v", e)
	}
	if n := b.b.rt.takenOver.Load(); n != 0 {
		t.Fatalf("%d handlers counted as running", n)
	}
}

// Answers to this server's requests do not wait for the goroutine that applies the other
// messages: an outgoing-packet listener that waits there for a FetchSockets of its own
// (never taken over, unlike a handler) gets its answers from the answers' goroutine.
func TestListenerWaitsForAClusterRequest(t *testing.T) {
	opts := testOptions(t)
	opts.RequestsTimeout = 3 * time.Second
	a, b := startPair(t, opts, func(*Options) {})
	a.connect(t, "/", "alice")
	b.connect(t, "/", "cb")
	type result struct {
		names []string
		err   error
	}
	got := make(chan result, 1)
	for _, s := range b.socketsNamed("/", "cb") {
		s.OnAnyOutgoing(func(args ...any) {
			if args[0] != "who" {
				return
			}
			var r result
			r.names, r.err = fetchNamesAndWait(b.io)
			got <- r
		})
	}
	a.io.Emit("who")
	select {
	case r := <-got:
		if r.err != nil || !slices.Equal(r.names, []string{"alice", "cb"}) {
			t.Fatalf("sockets %v, err %v; want [alice cb]", r.names, r.err)
		}
	case <-time.After(waitFor):
		t.Fatal("the listener never finished")
	}
}

// TestAnswersPassABacklog: the listener of TestListenerWaitsForAClusterRequest, with
// 600 messages queued behind the one it is called for, text or binary (attachments).
// Dispatch waited for room in the ordered delivery queue (256), and the answer to the
// listener's request, behind them, never reached the answers' goroutine: the request
// waited for its timeout. A first backlog held 64 attachments at most, and binary
// messages stopped it again.
func TestAnswersPassABacklog(t *testing.T) {
	for _, binary := range []bool{false, true} {
		opts := testOptions(t)
		opts.RequestsTimeout = 3 * time.Second
		a, b := startPair(t, opts, func(*Options) {})
		a.connect(t, "/", "alice")
		cb := b.connect(t, "/", "cb")
		type result struct {
			names []string
			err   error
		}
		const backlog = 600
		got := make(chan result, 1)
		for _, s := range b.socketsNamed("/", "cb") {
			s.OnAnyOutgoing(func(args ...any) {
				if args[0] != "who" {
					return
				}
				// Once A has published every message, its answer to the request comes
				// behind all of them.
				for deadline := time.Now().Add(waitFor); a.b.Stats().Published["BROADCAST"] < backlog+1; {
					if time.Now().After(deadline) {
						got <- result{err: errors.New("A did not publish")}
						return
					}
					time.Sleep(time.Millisecond)
				}
				var r result
				r.names, r.err = fetchNamesAndWait(b.io)
				got <- r
			})
		}
		a.io.Emit("who")
		for i := range backlog {
			if binary {
				a.io.Emit("n", i, []byte{1, 2, 3})
			} else {
				a.io.Emit("n", i)
			}
		}
		select {
		case r := <-got:
			if r.err != nil || !slices.Equal(r.names, []string{"alice", "cb"}) {
				t.Fatalf("binary %v: sockets %v, err %v; want [alice cb]", binary, r.names, r.err)
			}
		case <-time.After(2 * waitFor):
			t.Fatal("the listener never finished")
		}
		// In order as B wrote them (the Go client itself may reorder events, see
		// harness_test.go), and every one received.
		for i := range backlog {
			if args := cb.sent.next(t, "B", "n"); len(args) < 1 || args[0] != float64(i) {
				t.Fatalf("binary %v: message %d written as %v", binary, i, args)
			}
		}
		for range backlog {
			cb.expect(t, "n")
		}
		a.close()
		b.close()
	}
}

// TestBacklogMovesWhileAnswersWait: while a request callback holds the answers'
// goroutine and its queue is full, the messages held in the backlog, which came before
// those answers, still reach the ordered goroutine once it is free. Dispatch waited for
// room in the answers' queue, and they waited for the callback.
func TestBacklogMovesWhileAnswersWait(t *testing.T) {
	opts := testOptions(t)
	opts.RequestsTimeout = 5 * time.Second
	nodes := cluster(t, 3, opts)
	a, b, c := nodes[0], nodes[1], nodes[2]
	cb := b.connect(t, "/", "cb")
	holdOrdered, holdAnswers := make(chan struct{}), make(chan struct{})
	defer closeOpen(slices.Values([]chan struct{}{holdOrdered}))
	for _, s := range b.socketsNamed("/", "cb") {
		s.OnAnyOutgoing(func(args ...any) {
			if args[0] == "hold" {
				<-holdOrdered
			}
		})
	}
	defer close(holdAnswers)
	for _, n := range []*node{a, c} {
		n.io.On("q", func(args ...any) {
			if ack, ok := args[len(args)-1].(socket.Ack); ok {
				ack([]any{n.name}, nil)
			}
		})
	}
	// B's first request: its callback holds the answers' goroutine.
	held := make(chan struct{})
	b.io.ServerSideEmitWithAck("q")(func([]any, error) {
		close(held)
		<-holdAnswers
	})
	select {
	case <-held:
	case <-time.After(waitFor):
		t.Fatal("no answer")
	}
	// The ordered goroutine is held too, and 300 messages queue behind it, more than
	// its queue (256): the rest wait in the backlog.
	a.io.Emit("hold")
	cb.sent.next(t, "B", "hold")
	const n = 300
	for i := range n {
		a.io.Emit("n", i)
	}
	// Then C's answers to 300 requests of A's fill B's answers' queue behind the held
	// callback (every server sees every answer).
	for range 300 {
		a.io.ServerSideEmitWithAck("q")(func([]any, error) {})
	}
	answers := b.b.rt.answers
	eventually(t, "B's answers' queue is full", func() bool { return len(answers) == cap(answers) })
	close(holdOrdered)
	for i := range n {
		if args := cb.sent.next(t, "B", "n"); len(args) != 1 || args[0] != float64(i) {
			t.Fatalf("message %d written as %v", i, args)
		}
	}
}

// TestFullBacklogHoldsDispatch: with the backlog of TestAnswersPassABacklog full, dispatch
// stops reading and the receive queue overflows (reported drops), as it did without a
// backlog; once the application's code returns, delivery goes on, in order.
func TestFullBacklogHoldsDispatch(t *testing.T) {
	opts := testOptions(t)
	opts.ReceiveQueueSize = 50
	opts.Logger = slog.New(slog.DiscardHandler) // the drops are expected
	a, b := startPair(t, opts, func(*Options) {})
	cb := b.connect(t, "/", "cb")
	release := holdOn(t, b, "/", "cb", "hold")
	a.io.Emit("hold")
	cb.sent.next(t, "B", "hold")
	for i := range 2000 {
		a.io.Emit("n", i)
	}
	eventually(t, "B drops notifications", func() bool { return b.b.Stats().ReceiveDrops > 0 })
	release()
	// Once B has decoded or dropped every broadcast, its receive queue has room for one
	// more.
	eventually(t, "B reads every broadcast", func() bool {
		st := b.b.Stats()
		return st.Received["BROADCAST"]+st.ReceiveDrops >= 2001
	})
	a.io.Emit("after")
	cb.sent.next(t, "B", "after")
	written := cb.sent.drain("n") // all written before "after"
	if len(written) == 0 {
		t.Fatal("nothing delivered once released")
	}
	prev := -1
	for _, args := range written {
		if i := int(args[0].(float64)); i <= prev {
			t.Fatalf("message %d written after %d", i, prev)
		} else {
			prev = i
		}
	}
	// What B dropped, it reported as drops: not again as messages of A that never
	// arrived (A numbers its messages, and B sees the gaps the drops left).
	if st := b.b.Stats(); st.Missed != 0 {
		t.Errorf("%d drops counted again as missed messages (%d dropped)", st.Missed, st.ReceiveDrops)
	}
	t.Logf("%d of 2000 delivered, %d dropped", len(written), b.b.Stats().ReceiveDrops)
}

// fetchNamesAndWait runs FetchSockets on io and waits for its callback, as an
// application's synchronous helper would, and returns the sockets' names (their data's
// "name"), sorted.
func fetchNamesAndWait(io *socket.Server) ([]string, error) {
	var names []string
	var ferr error
	done := make(chan struct{})
	io.FetchSockets()(func(s []*socket.RemoteSocket, err error) {
		for _, rs := range s {
			if m, ok := rs.Data().(map[string]any); ok {
				names = append(names, fmt.Sprint(m["name"]))
			}
		}
		ferr = err
		close(done)
	})
	select {
	case <-done:
	case <-time.After(2 * waitFor):
		return nil, errors.New("FetchSockets never called back")
	}
	slices.Sort(names)
	return names, ferr
}

// A handler that closes its own server (a cluster-wide shutdown command, say): Close does
// not wait for the handler that calls it. It waited for it, until RequestsTimeout and a
// margin had passed, and reported that the adapter's goroutines did not stop in time.
func TestHandlerClosesItsServer(t *testing.T) {
	opts := testOptions(t)
	opts.RequestsTimeout = 2 * time.Second
	a, b := startPair(t, opts, func(*Options) {})
	closed := make(chan struct{})
	b.io.On("shutdown", func(...any) {
		b.close()
		close(closed)
	})
	if err := a.io.ServerSideEmit("shutdown"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-closed:
	case <-time.After(waitFor):
		t.Fatal("Close never returned")
	}
	for _, e := range b.errs.drain("error") {
		if err := e[0].(error); strings.Contains(err.Error(), "did not stop in time") {
			t.Fatalf("reported %v", err)
		}
	}
}

// TestCallbacksCloseTheirServer: a request callback (on the goroutine that applies
// answers) and an outgoing-packet listener (on the one that applies the other messages)
// that close their own server. Close waited for the very goroutine it ran on, until
// RequestsTimeout and a margin had passed, and reported that the goroutines did not stop.
func TestCallbacksCloseTheirServer(t *testing.T) {
	opts := testOptions(t)
	opts.RequestsTimeout = 2 * time.Second
	for _, from := range []string{"request callback", "outgoing-packet listener"} {
		a, b := startPair(t, opts, func(*Options) {})
		closed := make(chan time.Duration, 1)
		closeB := func() {
			start := time.Now()
			b.close()
			closed <- time.Since(start)
		}
		if from == "request callback" {
			a.io.On("q", func(args ...any) {
				if ack, ok := args[len(args)-1].(socket.Ack); ok {
					ack([]any{"a"}, nil)
				}
			})
			b.io.ServerSideEmitWithAck("q")(func(_ []any, err error) {
				if err != nil { // on a timer's goroutine: nothing tested
					t.Errorf("the request failed: %v", err)
				}
				closeB()
			})
		} else {
			b.connect(t, "/", "cb")
			for _, s := range b.socketsNamed("/", "cb") {
				s.OnAnyOutgoing(func(args ...any) {
					if args[0] == "bye" {
						closeB()
					}
				})
			}
			a.io.Emit("bye")
		}
		select {
		case took := <-closed:
			if took >= opts.RequestsTimeout {
				t.Errorf("%s: Close took %v", from, took)
			}
		case <-time.After(waitFor):
			t.Fatalf("%s: Close never returned", from)
		}
		for _, e := range b.errs.drain("error") {
			if err := e[0].(error); strings.Contains(err.Error(), "did not stop in time") {
				t.Errorf("%s: reported %v", from, err)
			}
		}
		a.close()
	}
}

// closeOpen closes the channels not closed yet, so that what a test holds is released
// when it ends early.
func closeOpen(chans iter.Seq[chan struct{}]) {
	for ch := range chans {
		select {
		case <-ch:
		default:
			close(ch)
		}
	}
}
