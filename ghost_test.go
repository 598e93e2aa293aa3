package pgadapter

import (
	"context"
	"fmt"
	goruntime "runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zishang520/socket.io-go-parser/v2/parser"
	"github.com/zishang520/socket.io/v2/socket"
)

// TestSocketClosedWhileConnecting closes a client's connection at the moment socket.io
// v2.5.0 has put the socket in its namespace but its Client has not recorded it yet,
// the window in which a client's first packet makes the server close the connection.
// Without pgadapter's repair the socket stays in the namespace and its rooms for good,
// and FetchSockets on every server returns it.
func TestSocketClosedWhileConnecting(t *testing.T) {
	nodes := cluster(t, 2, testOptions(t))
	a, b := nodes[0], nodes[1]
	closedIn := make(chan string, 1)
	var reached atomic.Bool
	// The socket joins its own room in the window: after socket.io's check that the
	// connection is open, before the Client records the socket.
	a.io.Sockets().Adapter().On("join-room", func(args ...any) {
		room, id := args[0].(socket.Room), args[1].(socket.SocketId)
		if string(room) != string(id) {
			return
		}
		s, ok := a.io.Sockets().Sockets().Load(id)
		if !ok {
			return
		}
		if d, _ := s.Data().(map[string]any); d["name"] != "ghost" {
			return
		}
		reached.Store(true)
		// Wait for the Client's own close handler, which runs before this listener.
		done := make(chan struct{})
		s.Conn().Once("close", func(...any) { close(done) })
		s.Conn().Close(false)
		select {
		case <-done:
			closedIn <- string(id)
		case <-time.After(waitFor):
			t.Error("the connection did not close")
		}
	})
	// An attempt can fail before the window, in the start-up races the harness works
	// around (README, "Defects"): then it is made again.
	var id string
	for attempt := 1; id == ""; attempt++ {
		c, failure := tryConnect(t, a, "/", "ghost", []string{"ghost-room"})
		if failure == "" {
			t.Fatal("a client whose connection the server closed connected")
		}
		if reached.Load() {
			select {
			case id = <-closedIn:
			case <-time.After(waitFor):
				t.Fatal("the connection was never closed in the window")
			}
			break
		}
		t.Logf("attempt %d failed before the window: %s", attempt, failure)
		if attempt == 5 {
			t.Fatal("no attempt reached the window")
		}
		c.s.Close()
		a.forget("ghost")
	}
	// The harness's middleware records each socket's "disconnect" (name, reason).
	if got := a.errs.next(t, "A", "disconnect"); len(got) < 2 || got[0] != "ghost" || got[1] != "server namespace disconnect" {
		t.Errorf("disconnect %v", got)
	}
	if _, ok := a.io.Sockets().Sockets().Load(socket.SocketId(id)); ok {
		t.Error("the socket is still in the namespace")
	}
	rooms := a.io.Sockets().Adapter().Rooms()
	for _, r := range []socket.Room{"ghost-room", socket.Room(id)} {
		if _, ok := rooms.Load(r); ok {
			t.Errorf("room %s remains: %v", r, rooms.Keys())
		}
	}
	list, err := fetchSockets(t, b.io.In("ghost-room"))
	if err != nil || len(list) != 0 {
		t.Fatalf("FetchSockets from B: %v %v", socketNames(t, list), err)
	}
}

// TestServerLeavingAsARequestIsMade: a request read the servers to wait for, then
// registered itself, each under its own hold of the adapter's lock; a server removed in
// between (its ADAPTER_CLOSE, a heartbeat timeout) stayed in the request, which waited
// for it until its timeout (66 of 3,000 FetchSockets in a reviewer's run). Each request
// here races the removal of the one other server: it completes at once either way.
func TestServerLeavingAsARequestIsMade(t *testing.T) {
	opts := testOptions(t)
	opts.RequestsTimeout = 5 * time.Second
	a := startNode(t, "A", opts)
	adapter := a.io.Sockets().Adapter().(*Adapter)
	requests := map[string]func(done func(error)){
		"FetchSockets": func(done func(error)) {
			adapter.FetchSockets(&socket.BroadcastOptions{})(func(_ []socket.SocketDetails, err error) { done(err) })
		},
		"ServerSideEmitWithAck": func(done func(error)) {
			adapter.ServerSideEmit([]any{"q", socket.Ack(func(_ []any, err error) { done(err) })})
		},
		"AllRooms": func(done func(error)) {
			_, err := adapter.AllRooms(context.Background())
			done(err)
		},
	}
	const rounds = 500
	for name, request := range requests {
		errs := make(chan error, rounds)
		start := time.Now()
		for i := range rounds {
			uid := fmt.Sprintf("leaving-%s-%d", name, i)
			adapter.mu.Lock()
			adapter.nodes[uid] = time.Now()
			adapter.capable[uid] = true // answers AllRooms
			adapter.mu.Unlock()
			go request(func(err error) { errs <- err })
			goruntime.Gosched()
			adapter.removeNode(uid, time.Time{}) // as its ADAPTER_CLOSE does
		}
		for range rounds {
			select {
			case err := <-errs:
				if err != nil {
					t.Fatalf("%s: %v (after %v)", name, err, time.Since(start))
				}
			case <-time.After(waitFor):
				t.Fatalf("%s: a request never completed", name)
			}
		}
	}
}

// TestSnapshotServerLeft: broadcasts with acks made before socket.io's operator reads
// ServerCount share one snapshot of the servers, so that each call counts the servers its
// broadcast was sent to. A server of the snapshot that left before a later broadcast was
// made counts as zero clients for it at once; the servers known go on changing.
func TestSnapshotServerLeft(t *testing.T) {
	a := startNode(t, "A", testOptions(t))
	adapter := a.io.Sockets().Adapter().(*Adapter)
	adapter.mu.Lock()
	adapter.nodes["leaving"] = time.Now()
	adapter.mu.Unlock()
	counts := func() (func(uint64), func() []uint64) {
		var mu sync.Mutex
		var got []uint64
		return func(n uint64) { mu.Lock(); got = append(got, n); mu.Unlock() },
			func() []uint64 { mu.Lock(); defer mu.Unlock(); return slices.Clone(got) }
	}
	packet := func() *parser.Packet { return &parser.Packet{Type: parser.EVENT, Data: []any{"ev"}} }
	noAck := func([]any, error) {}
	count1, got1 := counts()
	adapter.BroadcastWithAck(packet(), &socket.BroadcastOptions{}, count1, noAck)
	adapter.removeNode("leaving", time.Time{}) // counted as zero for the first at once
	if got := got1(); !slices.Equal(got, []uint64{0, 0}) {
		t.Fatalf("first broadcast: counts %v, want this server's and the one that left", got)
	}
	count2, got2 := counts()
	adapter.BroadcastWithAck(packet(), &socket.BroadcastOptions{}, count2, noAck)
	if got := got2(); !slices.Equal(got, []uint64{0, 0}) {
		t.Fatalf("second broadcast: counts %v, want this server's and the one that left", got)
	}
	for i := range 2 {
		if n := adapter.ServerCount(); n != 2 {
			t.Fatalf("ServerCount %d of the snapshot: %d, want 2", i+1, n)
		}
	}
	if n := adapter.ServerCount(); n != 1 {
		t.Fatalf("ServerCount once the snapshot is done: %d, want 1", n)
	}
	adapter.mu.Lock()
	defer adapter.mu.Unlock()
	if len(adapter.requests) != 0 {
		t.Fatalf("%d requests left", len(adapter.requests))
	}
}
