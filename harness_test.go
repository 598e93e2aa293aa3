package pgadapter

import (
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	eiotransports "github.com/zishang520/engine.io-client-go/transports"
	"github.com/zishang520/engine.io/v2/types"
	client "github.com/zishang520/socket.io-client-go/socket"
	"github.com/zishang520/socket.io/v2/socket"

	"github.com/socketio-pg/pgadapter/internal/pgtest"
)

// waitFor bounds every wait in the tests.
const waitFor = 10 * time.Second

// testOptions returns Options isolated to one test (its own channel prefix and table),
// with short heartbeats so that cluster changes show quickly.
func testOptions(t testing.TB) Options {
	t.Helper()
	table := pgtest.Name("att")
	t.Cleanup(func() {
		pool := newPool(t)
		defer pool.Close()
		pool.Exec(context.Background(), "DROP TABLE IF EXISTS "+table)
	})
	return Options{
		ChannelPrefix:     pgtest.Name("t"),
		TableName:         table,
		HeartbeatInterval: 300 * time.Millisecond,
		HeartbeatTimeout:  2 * time.Second,
		Logger:            testLogger(),
	}
}

func testLogger() *slog.Logger {
	level := slog.LevelError
	if os.Getenv("PGADAPTER_TEST_LOG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

func newPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	return pool
}

// node is one Socket.IO server of a test cluster, with its own pool and port.
type node struct {
	t      testing.TB
	name   string
	io     *socket.Server
	b      *Builder
	pool   *pgxpool.Pool
	http   *httptest.Server
	errs   *recorder // errors reported through ErrorHandler
	closed bool
}

// startNode starts a server clustered with opts. Connecting sockets join the rooms listed
// in their auth ("rooms") and carry their auth "name" as data, before the connection
// completes.
func startNode(t testing.TB, name string, opts Options) *node {
	t.Helper()
	n := &node{t: t, name: name, errs: newRecorder()}
	n.pool = newPool(t)
	opts.ErrorHandler = func(err error) { n.errs.add("error", err) }
	n.b = New(n.pool, &opts)
	n.io = socket.NewServer(nil, nil)
	n.io.SetAdapter(n.b)
	n.io.Use(func(s *socket.Socket, next func(*socket.ExtendedError)) {
		auth, _ := s.Handshake().Auth.(map[string]any)
		if rooms, ok := auth["rooms"].([]any); ok {
			for _, r := range rooms {
				s.Join(socket.Room(r.(string)))
			}
		}
		s.SetData(map[string]any{"name": auth["name"], "node": name})
		next(nil)
	})
	n.http = httptest.NewServer(n.io.ServeHandler(nil))
	t.Cleanup(n.close)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := n.b.Ready(ctx); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return n
}

func (n *node) close() {
	if n.closed {
		return
	}
	n.closed = true
	done := make(chan struct{})
	n.io.Close(func(error) { close(done) })
	<-done
	n.http.Close()
	n.pool.Close()
}

// cluster starts count servers and waits until each counts all of them.
func cluster(t testing.TB, count int, opts Options) []*node {
	t.Helper()
	nodes := make([]*node, count)
	for i := range nodes {
		nodes[i] = startNode(t, string(rune('A'+i)), opts)
	}
	waitServerCount(t, nodes, int64(count))
	return nodes
}

func waitServerCount(t testing.TB, nodes []*node, want int64) {
	t.Helper()
	for _, n := range nodes {
		eventually(t, fmt.Sprintf("%s counts %d servers", n.name, want), func() bool {
			return n.io.Sockets().Adapter().ServerCount() == want
		})
	}
}

// eventually polls cond until it holds, failing the test after waitFor.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// event is something a client or server observed.
type event struct {
	name string
	args []any
}

// recorder collects events and lets a test wait for them, in order of arrival.
type recorder struct {
	mu     sync.Mutex
	events []event
	notify chan struct{}
}

func newRecorder() *recorder { return &recorder{notify: make(chan struct{}, 1)} }

func (r *recorder) add(name string, args ...any) {
	r.mu.Lock()
	r.events = append(r.events, event{name, args})
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

// next waits for the first event named name, removes it and everything before it that
// has the same name... only that event is removed; others stay for later calls.
func (r *recorder) next(t testing.TB, who, name string) []any {
	t.Helper()
	deadline := time.NewTimer(waitFor)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		for i, e := range r.events {
			if e.name == name {
				r.events = slices.Delete(r.events, i, i+1)
				r.mu.Unlock()
				return e.args
			}
		}
		r.mu.Unlock()
		select {
		case <-r.notify:
		case <-deadline.C:
			t.Fatalf("%s: no %q event within %v (have %v)", who, name, waitFor, r.names())
		}
	}
}

// count returns how many events named name are held.
func (r *recorder) count(name string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, e := range r.events {
		if e.name == name {
			n++
		}
	}
	return n
}

func (r *recorder) names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.events {
		out = append(out, e.name)
	}
	return out
}

// drain removes and returns every event named name.
func (r *recorder) drain(name string) [][]any {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out [][]any
	kept := r.events[:0]
	for _, e := range r.events {
		if e.name == name {
			out = append(out, e.args)
		} else {
			kept = append(kept, e)
		}
	}
	r.events = kept
	return out
}

// tclient is a real Socket.IO client connected to one node.
type tclient struct {
	name string
	s    *client.Socket
	rec  *recorder
}

// connect opens a client to nsp on n, joining rooms, and waits until it is connected.
// Events it receives are recorded; an event whose last argument is an ack is answered
// by ackWith (nil: ack with the client's name).
func (n *node) connect(t testing.TB, nsp, name string, rooms ...string) *tclient {
	t.Helper()
	opts := client.DefaultOptions()
	opts.SetTransports(types.NewSet(eiotransports.WebSocket))
	opts.SetForceNew(true)
	opts.SetReconnection(false)
	r := make([]any, len(rooms))
	for i, room := range rooms {
		r[i] = room
	}
	opts.SetAuth(map[string]any{"name": name, "rooms": r})
	c := &tclient{name: name, rec: newRecorder()}
	manager := client.NewManager(n.http.URL, opts)
	c.s = manager.Socket(nsp, opts)
	c.s.On("connect", func(...any) { c.rec.add("connect") })
	c.s.On("disconnect", func(args ...any) { c.rec.add("disconnect", args...) })
	c.s.OnAny(func(args ...any) {
		ev := args[0].(string)
		rest := args[1:]
		if len(rest) > 0 {
			if ack, ok := rest[len(rest)-1].(socket.Ack); ok {
				rest = rest[:len(rest)-1]
				switch {
				case strings.HasPrefix(ev, "ack0"):
					ack(nil, nil)
				case strings.HasPrefix(ev, "ack2"):
					ack([]any{name, "extra"}, nil)
				default:
					ack([]any{name}, nil)
				}
			}
		}
		c.rec.add(ev, rest...)
	})
	c.s.Connect()
	t.Cleanup(func() { c.s.Disconnect(); c.s.Close() })
	c.rec.next(t, name, "connect")
	return c
}

// expect waits for event ev and returns its arguments.
func (c *tclient) expect(t testing.TB, ev string) []any {
	t.Helper()
	return c.rec.next(t, c.name, ev)
}
