package pgadapter

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/zishang520/socket.io/v2/socket"

	"github.com/socketio-pg/pgadapter/internal/wire"
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
	// A context already ended: the local rooms and its error, without asking anyone
	// (the request went out all the same, and with no other server known, the error was
	// not returned: an auditor's finding). Servers' own messages are counted, not read.
	ended, end := context.WithCancel(context.Background())
	end()
	before := w.a.b.Stats().Published[wire.AllRooms.String()]
	if rooms, err := AllRooms(ended, w.a.io.Sockets()); !errors.Is(err, context.Canceled) || !slices.Contains(rooms, "ra") {
		t.Fatalf("with an ended context: %v %v", rooms, err)
	}
	// One more request, answered: the publisher sends in order, so the first, had it
	// gone out, is counted once this one is (after its commit, which the answers can
	// precede: CI saw the count unchanged right after the answers).
	if _, err := AllRooms(ctx, w.a.io.Sockets()); err != nil {
		t.Fatal(err)
	}
	published := func() int64 { return w.a.b.Stats().Published[wire.AllRooms.String()] }
	eventually(t, "the answered request counted", func() bool { return published() > before })
	if after := published(); after != before+1 {
		t.Fatalf("with an ended context, %d requests published", after-before-1)
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

// Builder.Close while io.Close is closing the adapters on another goroutine: the pool
// made by NewFromURL is closed once that closing has published the server's
// ADAPTER_CLOSE. Close found the adapters closed already, and closed the pool under the
// publisher: the message was lost ("closed pool"), and the other servers counted this
// one until their heartbeat timeout.
func TestConcurrentCloseKeepsThePool(t *testing.T) {
	opts := testOptions(t)
	opts.HeartbeatTimeout = time.Minute // only ADAPTER_CLOSE makes B forget A in time
	ctx := context.Background()
	sep := "?"
	if strings.Contains(dbURL, "?") {
		sep = "&"
	}
	b, err := NewFromURL(ctx, dbURL+sep+"pool_max_conns=2", &opts)
	if err != nil {
		t.Fatal(err)
	}
	n := newServerFor(t, b, newPool(t)) // the node's pool is not b's
	other := startNode(t, "B", opts)
	waitServerCount(t, []*node{n, other}, 2)
	adapter := n.io.Sockets().Adapter().(*Adapter)
	// Both connections held: the publisher cannot send ADAPTER_CLOSE yet.
	var held []*pgxpool.Conn
	release := func() {
		for _, c := range held {
			c.Release()
		}
		held = nil
	}
	defer release()
	for range 2 {
		c, err := b.pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	ioClosed := make(chan struct{})
	go func() { n.close(); close(ioClosed) }()
	eventually(t, "io.Close under way", adapter.closed.Load)
	closed := make(chan error, 1)
	go func() { closed <- b.Close(ctx) }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(waitFor):
		release()
		t.Fatal("Builder.Close waited for the connections held: it closed the pool under the closing server")
	}
	release()
	eventually(t, "B forgets A", func() bool { return other.io.Sockets().Adapter().ServerCount() == 1 })
	select {
	case <-ioClosed:
	case <-time.After(waitFor):
		t.Fatal("io.Close never returned")
	}
	eventually(t, "the pool closed", func() bool { return b.pool.Ping(ctx) != nil })
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
	// Closing takes the listener down, and says so.
	b.close()
	if down := events.next(t, "events", "down"); !errors.Is(down[0].(error), ErrClosed) {
		t.Errorf("listener closed with %v, want ErrClosed", down[0])
	}
	if b.b.Stats().ListenerUp {
		t.Error("ListenerUp after Close")
	}
}

// An application's pool often sets OnNotification for LISTENs of its own. pgx then hands
// every notification to it, and WaitForNotification returns none: the listener, which
// copies the pool's configuration, must clear it (it used to crash on a nil
// notification).
func TestPoolWithOnNotification(t *testing.T) {
	opts := testOptions(t)
	a := startNode(t, "A", opts)
	var theirs atomic.Int64
	b := startNodeWithPool(t, "B", opts, func(cfg *pgxpool.Config) {
		cfg.ConnConfig.OnNotification = func(*pgconn.PgConn, *pgconn.Notification) { theirs.Add(1) }
	})
	waitServerCount(t, []*node{a, b}, 2)
	cb := b.connect(t, "/", "cb")
	a.io.Emit("hello", "from A")
	if got := cb.expect(t, "hello"); !slices.Equal(got, []any{"from A"}) {
		t.Fatalf("got %v", got)
	}
	if n := theirs.Load(); n != 0 {
		t.Errorf("the application's OnNotification got %d of the adapter's notifications", n)
	}
}

// PostgreSQL's idle_session_timeout ends a session that has sent no query for that
// long, and notifications sent to it do not count: a listener that only pinged when no
// notification came was ended again and again while its cluster was busy, losing what
// was sent meanwhile. It now sends a query every heartbeat interval.
func TestListenerSurvivesIdleSessionTimeout(t *testing.T) {
	opts := testOptions(t) // heartbeats every 300 ms: notifications never stop
	a := startNode(t, "A", opts)
	cfg, err := pgx.ParseConfig(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	// Over six heartbeat intervals: a ping delayed by a loaded machine does not end
	// the session.
	cfg.RuntimeParams["idle_session_timeout"] = "2000" // ms
	events := newRecorder()
	bopts := opts
	bopts.ListenConnConfig = cfg
	bopts.OnListenerState = func(up bool, err error) {
		if !up {
			events.add("down", err)
		}
	}
	b := startNode(t, "B", bopts)
	waitServerCount(t, []*node{a, b}, 2)
	// A's heartbeats arrive every 300 ms: wait for enough of them to cover two
	// timeouts.
	start := b.b.Stats().Received["HEARTBEAT"]
	eventually(t, "14 heartbeats from A", func() bool { return b.b.Stats().Received["HEARTBEAT"] >= start+14 })
	if s := b.b.Stats(); s.ListenerConnects != 1 || events.count("down") != 0 {
		t.Fatalf("listener reconnected %d time(s), down events %v", s.ListenerConnects-1, events.drain("down"))
	}
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
	// Well below fetchSockets' own limit (waitFor) and the heartbeat timeout (5 s), at
	// which the crashed server's drop would end the request.
	if took, bound := time.Since(start), 3*time.Second; took > bound {
		t.Fatalf("the per-call timeout was not used: %v, bound %v", took, bound)
	}
}

// A server dropped by timeout that comes back with a message other than a heartbeat (a
// busy server sends none: any message stands for it) is still known to answer AllRooms:
// what it advertised was forgotten with it, and AllRooms skipped it, its rooms missing
// with no error.
func TestCapabilitiesOutliveATimeout(t *testing.T) {
	opts := testOptions(t)
	opts.RequestsTimeout = 30 * time.Second // answers, not the timeout, must end it
	a, b := startPair(t, opts, quiet)
	b.connect(t, "/", "cb", "room-on-b")
	adapter := a.io.Sockets().Adapter().(*Adapter)
	buid := b.io.Sockets().Adapter().(*Adapter).uid
	adapter.removeNode(buid, time.Now()) // as when B was silent for the heartbeat timeout
	waitServerCount(t, []*node{a}, 1)
	b.io.Emit("back") // B is known again, from a broadcast
	waitServerCount(t, []*node{a}, 2)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	rooms, err := adapter.AllRooms(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(rooms, "room-on-b") {
		t.Fatalf("AllRooms lacks B's room: %v", rooms)
	}
}

// Adapter.ServerSideEmit, called directly, refuses the names socket.io emits itself on a
// namespace, as socket.io's own ServerSideEmit does: the other servers would report the
// message malformed, and an Ack waited for its timeout (a reviewer's finding).
func TestServerSideEmitRefusesReservedNames(t *testing.T) {
	opts := testOptions(t)
	nodes := cluster(t, 2, opts)
	adapter := nodes[0].io.Sockets().Adapter()
	for _, ev := range []string{"connection", "connect", "new_namespace"} {
		called := false
		if err := adapter.ServerSideEmit([]any{ev, "x", socket.Ack(func([]any, error) { called = true })}); !errors.Is(err, ErrReservedEvent) || called {
			t.Errorf("%s: %v (ack called: %v)", ev, err, called)
		}
	}
}
