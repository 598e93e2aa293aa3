package pgadapter

import (
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	eioclient "github.com/zishang520/engine.io-client-go/engine"
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
		HeartbeatTimeout:  5 * time.Second,
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
	return newPoolURL(t, dbURL)
}

func newPoolURL(t testing.TB, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), url)
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

	mu   sync.Mutex
	sent map[string]*recorder // by client name: what this server wrote to the client, in order

	// engines fires with an engine.io connection's id once socket.io listens to it, and
	// sockets with a socket's id once socket.io has announced it ("connection"): see
	// tryConnect.
	engines, sockets signals
}

// watch records, for tryConnect, when socket.io has taken up each engine.io connection
// and each socket. It runs once n.io serves HTTP (its engine exists from then on).
func (n *node) watch() {
	// socket.io's own "connection" listener was added when the engine was bound, so it
	// has subscribed to the connection's packets when this one runs.
	n.io.Engine().On("connection", func(args ...any) {
		if c, ok := args[0].(interface{ Id() string }); ok {
			n.engines.fire(c.Id())
		}
	})
	announced := func(args ...any) {
		if s, ok := args[0].(*socket.Socket); ok {
			n.sockets.fire(string(s.Id()))
		}
	}
	n.io.Sockets().On("connection", announced)
	n.io.Sockets().On("new_namespace", func(args ...any) {
		if nsp, ok := args[0].(socket.Namespace); ok && nsp.Name() != "/" {
			nsp.On("connection", announced)
		}
	})
}

func (n *node) awaitEngine(id string, d time.Duration) bool    { return n.engines.wait(id, d) }
func (n *node) awaitAnnounced(id string, d time.Duration) bool { return n.sockets.wait(id, d) }

// signals are one-off events, by key, that a test can wait for whether they happen
// before or after it starts waiting.
type signals struct {
	mu sync.Mutex
	m  map[string]chan struct{}
}

func (s *signals) ch(key string) chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]chan struct{}{}
	}
	c := s.m[key]
	if c == nil {
		c = make(chan struct{})
		s.m[key] = c
	}
	return c
}

func (s *signals) fire(key string) {
	c := s.ch(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-c:
	default:
		close(c)
	}
}

// wait reports whether key fired within d.
func (s *signals) wait(key string, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-s.ch(key):
		return true
	case <-t.C:
		return false
	}
}

// sentTo returns the record of what n wrote to the client called name.
func (n *node) sentTo(name string) *recorder {
	n.mu.Lock()
	defer n.mu.Unlock()
	r := n.sent[name]
	if r == nil {
		r = newRecorder()
		n.sent[name] = r
	}
	return r
}

// startNode starts a server clustered with opts, on a pool of its own, and waits until
// its adapter listens.
func startNode(t testing.TB, name string, opts Options) *node {
	t.Helper()
	return startNodeOn(t, name, dbURL, opts)
}

// startNodeOn is startNode on the database at url.
func startNodeOn(t testing.TB, name, url string, opts Options) *node {
	t.Helper()
	n := newNode(t, name, newPoolURL(t, url), opts)
	n.ready(t)
	return n
}

// ready waits until n's adapter listens.
func (n *node) ready(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := n.b.Ready(ctx); err != nil {
		t.Fatalf("%s: %v", n.name, err)
	}
}

// startPair starts servers A, with opts, and B, with opts changed by setB, and waits
// until each counts the other.
func startPair(t testing.TB, opts Options, setB func(*Options)) (a, b *node) {
	t.Helper()
	a = startNode(t, "A", opts)
	bopts := opts
	setB(&bopts)
	b = startNode(t, "B", bopts)
	waitServerCount(t, []*node{a, b}, 2)
	return a, b
}

// quiet makes a server publish heartbeats only an hour apart: it says nothing unless it
// is asked, or publishes.
func quiet(o *Options) {
	o.HeartbeatInterval = time.Hour
	o.HeartbeatTimeout = 2 * time.Hour
}

// startNodeWithPool starts a server on a pool of its own, configured by configure, and
// waits until it listens.
func startNodeWithPool(t testing.TB, name string, opts Options, configure func(*pgxpool.Config)) *node {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	configure(cfg)
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	n := newNode(t, name, pool, opts)
	n.ready(t)
	return n
}

// logRecorder is a slog.Handler that keeps what is logged.
type logRecorder struct {
	mu      sync.Mutex
	msgs    []string
	warning int // records at warning level or above
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.msgs = append(h.msgs, r.Message)
	if r.Level >= slog.LevelWarn {
		h.warning++
	}
	return nil
}
func (h *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *logRecorder) WithGroup(string) slog.Handler      { return h }

func (h *logRecorder) warnings() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.warning
}

// matching returns the messages logged that contain s.
func (h *logRecorder) matching(s string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, m := range h.msgs {
		if strings.Contains(m, s) {
			out = append(out, m)
		}
	}
	return out
}

// newServerFor starts a server with an adapter Builder made by the caller, and waits
// until it listens.
func newServerFor(t testing.TB, b *Builder, pool *pgxpool.Pool) *node {
	t.Helper()
	n := &node{t: t, name: "custom", errs: newRecorder(), sent: map[string]*recorder{}, pool: pool, b: b}
	n.io = socket.NewServer(nil, nil)
	n.io.SetAdapter(b)
	n.http = newHTTPServer(n.io)
	n.watch()
	t.Cleanup(n.close)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := b.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	return n
}

// newNode starts a server on pool without waiting for its adapter to be ready.
func newNode(t testing.TB, name string, pool *pgxpool.Pool, opts Options) *node {
	t.Helper()
	return newNodeWith(t, name, pool, opts, nil)
}

// newNodeWith is newNode with socket.io's server options so (nil: its defaults).
func newNodeWith(t testing.TB, name string, pool *pgxpool.Pool, opts Options, so *socket.ServerOptions) *node {
	t.Helper()
	n := &node{t: t, name: name, errs: newRecorder(), sent: map[string]*recorder{}, pool: pool}
	opts.ErrorHandler = func(err error) { n.errs.add("error", err) }
	n.b = New(n.pool, &opts)
	n.errs.settle = func() { n.b.reports.wait(waitFor) }
	if so == nil {
		n.io = socket.NewServer(nil, nil) // an options argument that is nil, not a nil pointer
		n.io.SetAdapter(n.b)
	} else {
		// In the options rather than set after: socket.io v2.5.0 would first build
		// adapters of its own, and with ConnectionStateRecovery those panic on Go 1.26
		// (the README's defects).
		so.SetAdapter(n.b)
		n.io = socket.NewServer(nil, so)
	}
	// Every namespace, including those created later and dynamic children, gets the
	// test middleware.
	n.io.Sockets().On("new_namespace", func(args ...any) { args[0].(socket.Namespace).Use(n.middleware) })
	n.io.Use(n.middleware)
	n.http = newHTTPServer(n.io)
	n.watch()
	t.Cleanup(n.close)
	return n
}

// middleware prepares each connecting socket: it joins the rooms listed in its auth,
// carries its name as data, answers the harness ping, and records what the server writes
// to it. It runs before the connection completes.
func (n *node) middleware(s *socket.Socket, next func(*socket.ExtendedError)) {
	auth, _ := s.Handshake().Auth.(map[string]any)
	if rooms, ok := auth["rooms"].([]any); ok {
		for _, r := range rooms {
			s.Join(socket.Room(r.(string)))
		}
	}
	s.SetData(map[string]any{"name": auth["name"], "node": n.name})
	s.On("disconnect", func(args ...any) { n.errs.add("disconnect", append([]any{auth["name"]}, args...)...) })
	s.On("harness-ping", func(args ...any) {
		if ack, ok := args[len(args)-1].(socket.Ack); ok {
			ack([]any{"pong"}, nil)
		}
	})
	// socket.io-client-go v1.1.0 hands each packet to a goroutine of its own, so a
	// client may see events out of order. What the server writes to the connection is
	// recorded here, in order: tests use it for order and for absence.
	if cname, ok := auth["name"].(string); ok {
		sent := n.sentTo(cname)
		s.OnAnyOutgoing(func(args ...any) {
			if ev, ok := args[0].(string); ok {
				sent.add(ev, args[1:]...)
			}
		})
	}
	next(nil)
}

func newHTTPServer(io *socket.Server) *httptest.Server {
	return httptest.NewServer(io.ServeHandler(nil))
}

func (n *node) close() {
	if n.closed {
		return
	}
	n.closed = true
	done := make(chan struct{})
	n.io.Close(func(error) { close(done) })
	select {
	case <-done:
	case <-time.After(waitFor):
		// Not Fatal: close runs from Cleanup too. The HTTP server and the pool are left
		// open: closing them waits for what the server may still hold.
		n.t.Errorf("%s: socket.io's Close did not call back within %v", n.name, waitFor)
		return
	}
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

// await waits until ch is closed (or receives), at most waitFor.
func await(t testing.TB, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(waitFor):
		t.Fatalf("timed out waiting until %s", what)
	}
}

// eventually polls cond until it holds, failing the test after waitFor.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	eventuallyWithin(t, what, waitFor, cond)
}

// eventuallyWithin is eventually with a bound of its own, for a condition slowed on
// purpose (a delaying proxy).
func eventuallyWithin(t testing.TB, what string, bound time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
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
	// settle, when set, is called before count and drain: the ErrorHandler is called
	// on a goroutine of its own, after the report, and a test counts what it was told
	// once that goroutine has passed on every report made so far.
	settle func()
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

// next waits (up to waitFor, then fails the test) for the earliest held event named
// name, removes that one event and returns its arguments; every other event, of that
// name or another, stays for later calls.
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
	if r.settle != nil {
		r.settle()
	}
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
	if r.settle != nil {
		r.settle()
	}
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
	rec  *recorder // what the client received (in any order)
	sent *recorder // what its server wrote to it (in order)
}

// connect opens a client to nsp on n, joining rooms, and waits until it is connected.
// Events it receives are recorded; an event whose last argument is an ack is answered
// with the client's name (events named "ack0…": no argument; "ack2…": two; "noack…":
// never).
//
// socket.io-client-go v1.1.0 has a start-up race: Manager.onopen emits "open", which
// makes a subscribed socket send CONNECT, before it subscribes to incoming data, so a
// quick CONNECT reply can be lost and the client never connects. tryConnect avoids it by
// opening the engine.io connection first and connecting the namespace only once the
// manager is subscribed. Should a connection still fail, the client is closed, the server
// is given time to drop its half-open socket, and the connection is tried again.
func (n *node) connect(t testing.TB, nsp, name string, rooms ...string) *tclient {
	t.Helper()
	return connectTo(t, n, nsp, name, rooms...)
}

// peer is a Socket.IO server the tests connect clients to: a Go node, or a Node.js
// server (node_peer_test.go).
type peer interface {
	label() string
	baseURL() string
	// sentTo is the record of what the server wrote to the client called name.
	sentTo(name string) *recorder
	// forget drops the record of name, after a failed connection attempt.
	forget(name string)
	// socketIDs returns the ids of the server's sockets for the client called name.
	socketIDs(t testing.TB, nsp, name string) []string
	// awaitEngine waits up to d until the server listens to the packets of the
	// engine.io connection id, and awaitAnnounced until it has announced the socket id
	// ("connection"); both report whether that happened.
	awaitEngine(id string, d time.Duration) bool
	awaitAnnounced(id string, d time.Duration) bool
}

func (n *node) label() string   { return n.name }
func (n *node) baseURL() string { return n.http.URL }
func (n *node) forget(name string) {
	n.mu.Lock()
	delete(n.sent, name)
	n.mu.Unlock()
}
func (n *node) socketIDs(_ testing.TB, nsp, name string) []string {
	var ids []string
	for _, s := range n.socketsNamed(nsp, name) {
		ids = append(ids, string(s.Id()))
	}
	return ids
}

// connectTo is node.connect for any peer.
func connectTo(t testing.TB, p peer, nsp, name string, rooms ...string) *tclient {
	t.Helper()
	for attempt := 1; ; attempt++ {
		c, failure := tryConnect(t, p, nsp, name, rooms)
		if failure == "" {
			return c
		}
		t.Logf("%s: attempt %d to connect to %s%s failed: %s (client saw %v); retrying", name, attempt, p.label(), nsp, failure, c.rec.names())
		if attempt == 5 {
			t.Fatalf("%s: not connected to %s%s after %d attempts", name, p.label(), nsp, attempt)
		}
		c.s.Disconnect()
		c.s.Close()
		eventually(t, "server drops "+name+"'s half-open socket", func() bool { return len(p.socketIDs(t, nsp, name)) == 0 })
		p.forget(name)
	}
}

// socketsNamed returns the server-side sockets of the client called name.
func (n *node) socketsNamed(nsp, name string) []*socket.Socket {
	var found []*socket.Socket
	n.io.Of(nsp, nil).Sockets().Range(func(_ socket.SocketId, s *socket.Socket) bool {
		if d, ok := s.Data().(map[string]any); ok && d["name"] == name {
			found = append(found, s)
		}
		return true
	})
	return found
}

// tryConnect makes one attempt at connect; it returns why the attempt failed, or "".
func tryConnect(t testing.TB, p peer, nsp, name string, rooms []string) (*tclient, string) {
	opts := client.DefaultOptions()
	opts.SetTransports(types.NewSet(eiotransports.WebSocket))
	if strings.HasPrefix(name, "poll") {
		// A client named poll… stays on HTTP long polling.
		opts.SetTransports(types.NewSet(eiotransports.Polling))
		opts.SetUpgrade(false)
	}
	opts.SetForceNew(true)
	opts.SetReconnection(false)
	// With autoConnect, the socket would subscribe to the manager's "open" event and also
	// connect on its own when the manager is already open: CONNECT twice, a second ghost
	// socket on the server. The manager is opened explicitly below.
	opts.SetAutoConnect(false)
	r := make([]any, len(rooms))
	for i, room := range rooms {
		r[i] = room
	}
	opts.SetAuth(map[string]any{"name": name, "rooms": r})
	c := &tclient{name: name, rec: newRecorder(), sent: p.sentTo(name)}
	manager := client.NewManager(p.baseURL(), opts)
	c.s = manager.Socket(nsp, opts)
	c.s.On("connect", func(...any) { c.rec.add("connect") })
	refused := make(chan any, 1)
	c.s.On("connect_error", func(args ...any) {
		select {
		case refused <- args:
		default:
		}
	})
	manager.On("close", func(args ...any) {
		select {
		case refused <- fmt.Sprint(append([]any{"connection closed:"}, args...)...):
		default:
		}
	})
	c.s.On("disconnect", func(args ...any) { c.rec.add("disconnect", args...) })
	c.s.OnAny(func(args ...any) {
		ev := args[0].(string)
		rest := args[1:]
		if len(rest) > 0 {
			if ack, ok := rest[len(rest)-1].(socket.Ack); ok {
				rest = rest[:len(rest)-1]
				switch {
				case strings.HasPrefix(ev, "noack"): // never answers
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
	connected := make(chan struct{}, 1)
	c.s.On("connect", func(...any) {
		select {
		case connected <- struct{}{}:
		default:
		}
	})
	// Generous: under -race, with other packages' tests and browsers on the same two
	// cores, a connect can take seconds; a slow attempt costs nothing when it succeeds.
	const attemptTimeout = 8 * time.Second
	// Open the manager first and connect the namespace from its open callback. The
	// callback runs after Manager.onopen has subscribed to incoming data, so the reply to
	// CONNECT cannot be lost; CONNECT is sent once, the "open" event having passed; and
	// it is sent from the engine's own goroutine, as it would be from that event: the
	// engine.io client's write buffer is not safe for a second writer at that moment.
	//
	// Before it sends CONNECT, the client waits until the server's socket.io listens to
	// the connection: engine.io v2.5.0's WebSocket transport reads, and drops, packets
	// from before then (README, "Defects").
	opened := make(chan error, 1)
	var called atomic.Bool
	manager.Open(func(err error) {
		called.Store(true)
		if err == nil {
			if id := manager.Engine().Id(); !p.awaitEngine(id, attemptTimeout) {
				err = fmt.Errorf("the server never took up engine.io connection %s", id)
			} else {
				c.s.Connect()
			}
		}
		opened <- err
	})
	// Manager.Open creates the engine.io socket, which starts connecting, before it
	// subscribes to the socket's "open" event: an engine that opens at once leaves the
	// manager waiting for its 20 s timeout. Such an attempt is given up soon after the
	// engine has opened.
	engineOpen := make(chan struct{}, 1)
	if eng := manager.Engine(); eng != nil {
		signal := func(...any) {
			select {
			case engineOpen <- struct{}{}:
			default: // signalled already
			}
		}
		eng.On("open", signal)
		// Not a plain send: the engine may open between On and this check, and the
		// handler have filled the channel.
		if eng.ReadyState() == eioclient.SocketStateOpen {
			signal()
		}
	}
	timeout := time.NewTimer(attemptTimeout)
	defer timeout.Stop()
	var missed <-chan time.Time
wait:
	for {
		select {
		case err := <-opened:
			if err != nil {
				return c, fmt.Sprintf("opening the connection: %v", err)
			}
			break wait
		case <-engineOpen:
			missed = time.After(2 * time.Second)
		case <-missed:
			if !called.Load() {
				return c, "the client missed its engine.io connection's open event"
			}
		case <-timeout.C:
			return c, "the connection did not open"
		}
	}
	select {
	case <-connected:
	case why := <-refused:
		return c, fmt.Sprintf("no connection: %v", why)
	case <-time.After(attemptTimeout):
		return c, fmt.Sprintf("no reply to CONNECT on engine.io connection %s", manager.Engine().Id())
	}
	// socket.io v2.5.0 answers CONNECT before its client records the socket: a packet
	// the client sends at once can find no socket, and the server then closes the
	// connection (README, "Defects"). It records the socket before it announces it.
	if !p.awaitAnnounced(c.s.Id(), attemptTimeout) {
		return c, "the server never announced socket " + c.s.Id()
	}
	// Should the client still have sent CONNECT twice: the server handles packets of a
	// connection in order, so once a later round trip completes, a second CONNECT has been
	// handled too, and either closed the connection or made a second (ghost) socket.
	pong := make(chan struct{}, 1)
	c.s.Timeout(6 * time.Second).EmitWithAck("harness-ping")(func(args []any, err error) {
		if err == nil {
			pong <- struct{}{}
		}
	})
	select {
	case <-pong:
	case <-time.After(8 * time.Second):
		return c, "no answer to harness-ping"
	}
	if ids := p.socketIDs(t, nsp, name); len(ids) != 1 || ids[0] != c.s.Id() || !c.s.Connected() {
		return c, fmt.Sprintf("client socket %s (connected: %v), server sockets %v", c.s.Id(), c.s.Connected(), ids)
	}
	c.rec.next(t, name, "connect")
	c.rec.drain("harness-ping")
	t.Cleanup(func() { c.s.Disconnect(); c.s.Close() })
	return c, ""
}

// checkWritten verifies that ev was written exactly once to each client in names and to
// no other of clients (server-side record, in order), and that each of names received it,
// with args when they are given. Volatile events are only checked as written: socket.io
// drops them while a write is in progress.
func checkWritten(t *testing.T, clients map[string]*tclient, ev string, names []string, args ...any) {
	t.Helper()
	for name, c := range clients {
		want := 0
		if slices.Contains(names, name) {
			want = 1
			if ev != "volatile" {
				got := c.expect(t, ev)
				if args != nil && !reflect.DeepEqual(normalizeBinary(got), args) {
					t.Errorf("%s got %s%#v, want %#v", name, ev, got, args)
				}
			}
		}
		if got := c.sent.count(ev); got != want {
			t.Errorf("%q written to %s %d times, want %d (written: %v)", ev, name, got, want, c.sent.names())
		}
	}
}

// expect waits for event ev and returns its arguments.
func (c *tclient) expect(t testing.TB, ev string) []any {
	t.Helper()
	return c.rec.next(t, c.name, ev)
}

// checkIdleSetting fails the test unless every session pool holds idle has setting at
// want: what a publishing transaction sets must stay local to it.
func checkIdleSetting(t testing.TB, ctx context.Context, pool *pgxpool.Pool, setting, want string) {
	t.Helper()
	sessions, err := pgtest.IdleSettings(ctx, pool, setting)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range sessions {
		if v != want {
			t.Errorf("the pool's sessions now have %s %q, want %q everywhere: the setting must stay local to the adapter's transactions", setting, sessions, want)
			return
		}
	}
}

// holdOn makes the sockets of client name on n wait, as they write event, until the
// returned function is called (once; the test's end calls it too): an application's
// outgoing-packet listener that holds the goroutine applying the cluster's messages.
func holdOn(t testing.TB, n *node, nsp, name, event string) (release func()) {
	t.Helper()
	ch := make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(ch) }) }
	t.Cleanup(release)
	for _, s := range n.socketsNamed(nsp, name) {
		s.OnAnyOutgoing(func(args ...any) {
			if args[0] == event {
				<-ch
			}
		})
	}
	return release
}
