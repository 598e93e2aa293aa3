package pgadapter

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/zishang520/socket.io/v2/socket"
)

func TestAllRooms(t *testing.T) {
	opts := testOptions(t)
	opts.RequestsTimeout = 30 * time.Second // answers, not the timeout, must end it
	w := newWorld(t, opts)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	start := time.Now()
	rooms, err := w.a.io.Sockets().Adapter().(*Adapter).AllRooms(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []socket.Room{"r1", "r2", "ra", socket.Room(w.clients["c1"].s.Id())} {
		if !slices.Contains(rooms, want) {
			t.Errorf("AllRooms lacks %q: %v", want, rooms)
		}
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("AllRooms took %v", took)
	}
	// The package-level form, from another server; and the local-only result for a
	// namespace without servers elsewhere.
	rooms2, err := AllRooms(ctx, w.c.io.Sockets())
	if err != nil || !slices.Equal(rooms, rooms2) {
		t.Fatalf("AllRooms from C: %v %v", rooms2, err)
	}
	// A server that stops answering: the request ends at the caller's deadline with what
	// it has.
	w.b.crash(t)
	short, cancel2 := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel2()
	rooms, err = w.a.io.Sockets().Adapter().(*Adapter).AllRooms(short)
	if !errors.Is(err, context.DeadlineExceeded) || !slices.Contains(rooms, "ra") {
		t.Fatalf("with a dead server: %v %v", rooms, err)
	}
}

func TestNewFromURL(t *testing.T) {
	opts := testOptions(t)
	ctx := context.Background()
	if _, err := NewFromURL(ctx, "postgres://%zz", &opts); err == nil {
		t.Fatal("invalid URL accepted")
	}
	if _, err := NewFromURL(ctx, dbURL, &Options{PayloadThreshold: 9000}); err == nil {
		t.Fatal("invalid options accepted")
	}
	b, err := NewFromURL(ctx, dbURL, &opts)
	if err != nil {
		t.Fatal(err)
	}
	n := newServerFor(t, b, b.pool)
	other := startNode(t, "B", opts)
	waitServerCount(t, []*node{n, other}, 2)
	c := other.connect(t, "/", "c")
	n.io.Emit("via-url")
	c.expect(t, "via-url")
	if err := b.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.pool.Ping(ctx); err == nil {
		t.Fatal("the pool made by NewFromURL is still open after Close")
	}
}

func TestListenURL(t *testing.T) {
	opts := testOptions(t)
	sep := "?"
	if strings.Contains(dbURL, "?") {
		sep = "&"
	}
	opts.ListenURL = dbURL + sep + "application_name=pgadapter-listener"
	n := startNode(t, "A", opts)
	var app string
	if err := n.pool.QueryRow(context.Background(), "SELECT application_name FROM pg_stat_activity WHERE pid = $1", int32(n.b.listenerPID())).Scan(&app); err != nil {
		t.Fatal(err)
	}
	if app != "pgadapter-listener" {
		t.Fatalf("LISTEN connection has application_name %q: ListenURL not used", app)
	}
	bad := opts
	bad.ListenURL = "postgres://%zz"
	if New(n.pool, &bad).Err() == nil {
		t.Fatal("invalid ListenURL accepted")
	}
	eventually(t, "listener reported up", func() bool { return n.b.Stats().ListenerUp })
}

func TestStatsAndListenerEvents(t *testing.T) {
	opts := testOptions(t)
	a := startNode(t, "A", opts)
	events := newRecorder() // B's listener events
	opts.OnListenerState = func(up bool, err error) {
		if up {
			events.add("up")
		} else {
			events.add("down", err)
		}
	}
	b := startNode(t, "B", opts)
	waitServerCount(t, []*node{a, b}, 2)
	cb := b.connect(t, "/", "cb")
	events.next(t, "events", "up")
	for i := range 10 {
		a.io.Emit("s", i)
	}
	a.io.Emit("big", strings.Repeat("z", 9000))
	cb.expect(t, "big")
	// A counts a message once its batch's round trip has returned, which can be after B
	// has received it.
	eventually(t, "A counting its broadcasts", func() bool { return a.b.Stats().Published["BROADCAST"] >= 11 })
	sa, sb := a.b.Stats(), b.b.Stats()
	if sa.Published["BROADCAST"] != 11 || sa.AttachmentsWritten != 1 || sa.PublishedBytes == 0 {
		t.Errorf("A's stats: %+v", sa)
	}
	if sb.Received["BROADCAST"] != 11 || sb.AttachmentsRead != 1 || sb.ReceivedBytes < 9000 {
		t.Errorf("B's stats: %+v", sb)
	}
	if !sb.ListenerUp || sb.ListenerConnects != 1 || sb.Nodes["/"] != 1 || sb.Published["INITIAL_HEARTBEAT"] == 0 {
		t.Errorf("B's stats: %+v", sb)
	}
	terminate(t, a.pool, b.b.listenerPID())
	down := events.next(t, "events", "down")
	if down[0] == nil {
		t.Error("listener down without a cause")
	}
	events.next(t, "events", "up")
	if s := b.b.Stats(); s.ListenerConnects != 2 || !s.ListenerUp {
		t.Errorf("after a reconnection: %+v", s)
	}
	// Malformed input is counted.
	a.pool.Exec(context.Background(), "SELECT pg_notify($1, 'garbage')", ChannelName(opts.ChannelPrefix, "/"))
	eventually(t, "garbage counted", func() bool { return b.b.Stats().Malformed == 1 })
}

func TestPerCallTimeout(t *testing.T) {
	opts := testOptions(t)
	opts.RequestsTimeout = 30 * time.Second
	nodes := cluster(t, 2, opts)
	a := nodes[0]
	nodes[1].crash(t) // counted until the heartbeat timeout, never answers
	start := time.Now()
	_, err := fetchSockets(t, a.io.Timeout(300*time.Millisecond))
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("FetchSockets with Timeout: %v", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("the per-call timeout was not used (%v)", took)
	}
}
