package pgadapter

import (
	"slices"
	"testing"
	"time"

	"github.com/zishang520/socket.io/v2/socket"
)

// A server-side event handler runs on the goroutine that applies other servers'
// messages. One that waits there for a cluster request of its own (FetchSockets,
// ServerSideEmitWithAck), as Node code awaits one, must get its answers: they are not
// queued behind the handler that waits for them. Before, it waited RequestsTimeout and
// got ErrTimeout with none of the other servers' answers.
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
		fetched := make(chan struct{})
		b.io.FetchSockets()(func(s []*socket.RemoteSocket, err error) {
			for _, rs := range s {
				if m, ok := rs.Data().(map[string]any); ok {
					if name, ok := m["name"].(string); ok {
						r.names = append(r.names, name)
					}
				}
			}
			r.err = err
			close(fetched)
		})
		<-fetched // waits on the delivery goroutine, as a synchronous helper would
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
		close(release)
		t.Fatal("B never closed")
	}
	// B's ADAPTER_CLOSE reaches A's other delivery goroutine: B stops being counted.
	eventually(t, "A counts B gone", func() bool { return a.io.Sockets().Adapter().ServerCount() == 1 })
	close(release)
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
// once; if this server's handler holds its other messages for longer than the closed
// server is remembered (twice the heartbeat timeout), those earlier messages count it
// again, and a request made then waited RequestsTimeout for it.
func TestClosedServerCountedAgainIsNotWaitedFor(t *testing.T) {
	opts := testOptions(t)
	opts.HeartbeatInterval = 100 * time.Millisecond
	opts.HeartbeatTimeout = 400 * time.Millisecond
	opts.RequestsTimeout = 3 * time.Second
	nodes := cluster(t, 3, opts)
	a, b, c := nodes[0], nodes[1], nodes[2]
	release := make(chan struct{})
	held := make(chan struct{})
	b.io.On("hold", func(...any) { close(held); <-release })
	type result struct {
		err   error
		count int64
	}
	got := make(chan result, 1)
	b.io.On("probe", func(...any) {
		count := b.io.Sockets().Adapter().ServerCount()
		b.io.FetchSockets()(func(_ []*socket.RemoteSocket, err error) { got <- result{err, count} })
	})
	c.io.ServerSideEmit("hold")
	select {
	case <-held:
	case <-time.After(waitFor):
		t.Fatal("handler never ran")
	}
	auid := a.b.adapter(ChannelName(opts.ChannelPrefix, "/")).uid
	a.io.ServerSideEmit("from-a") // queued on B behind the handler, and counts A again once applied
	// Committed before the probe is sent, so it reaches B first (and the probe before
	// A's ADAPTER_CLOSE).
	eventually(t, "A's message committed", func() bool { return a.b.Stats().Published["SERVER_SIDE_EMIT"] == 1 })
	c.io.ServerSideEmit("probe")
	eventually(t, "C's probe committed", func() bool { return c.b.Stats().Published["SERVER_SIDE_EMIT"] == 2 })
	a.close()
	badapter := b.io.Sockets().Adapter().(*Adapter)
	eventually(t, "B forgets that A left", func() bool {
		badapter.mu.Lock()
		defer badapter.mu.Unlock()
		_, remembered := badapter.left[auid]
		return !remembered && len(badapter.nodes) == 1 // C, A removed by the ADAPTER_CLOSE
	})
	close(release)
	select {
	case r := <-got:
		if r.count != 3 {
			t.Fatalf("B counted %d servers at the probe: A was not counted again, the case is not reproduced", r.count)
		}
		if r.err != nil {
			t.Fatalf("FetchSockets made while A was counted again (%d servers): %v", r.count, r.err)
		}
	case <-time.After(waitFor):
		t.Fatal("FetchSockets never completed")
	}
}
