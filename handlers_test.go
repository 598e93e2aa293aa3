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
