package pgadapter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/zishang520/socket.io/v2/socket"

	"github.com/socketio-pg/pgadapter/emitter"
	"github.com/socketio-pg/pgadapter/internal/pgtest"
)

// emitterWorld is two servers and an emitter on the test's channel prefix and table:
//
//	A: a1 (r1), a2 (r2), ca (/chat, r1)
//	B: b1 (r1), b2, cb (/chat)
type emitterWorld struct {
	nodes   []*node
	e       *emitter.Emitter
	clients map[string]*tclient
}

func newEmitterWorld(t *testing.T) *emitterWorld {
	t.Helper()
	opts := testOptions(t)
	w := &emitterWorld{nodes: cluster(t, 2, opts), clients: map[string]*tclient{}}
	a, b := w.nodes[0], w.nodes[1]
	for _, n := range w.nodes {
		n.io.Of("/chat", nil)
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		if err := n.b.Ready(ctx); err != nil {
			t.Fatal(err)
		}
		cancel()
	}
	w.clients["a1"] = a.connect(t, "/", "a1", "r1")
	w.clients["a2"] = a.connect(t, "/", "a2", "r2")
	w.clients["b1"] = b.connect(t, "/", "b1", "r1")
	w.clients["b2"] = b.connect(t, "/", "b2")
	w.clients["ca"] = a.connect(t, "/chat", "ca", "r1")
	w.clients["cb"] = b.connect(t, "/chat", "cb")
	var err error
	w.e, err = emitter.New(a.pool, &emitter.Options{ChannelPrefix: opts.ChannelPrefix, TableName: opts.TableName})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func (w *emitterWorld) root() []string { return []string{"a1", "a2", "b1", "b2"} }

// fence publishes "end" through the emitter to every client of "/" and "/chat": the
// emitter's messages are published one after the other, so everything before it has
// been applied when it arrives.
func (w *emitterWorld) fence(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	if err := w.e.Emit(ctx, "end"); err != nil {
		t.Fatal(err)
	}
	if err := w.e.Of("/chat").Emit(ctx, "end"); err != nil {
		t.Fatal(err)
	}
	for name, c := range w.clients {
		c.sent.next(t, name+"'s server", "end")
	}
}

func (w *emitterWorld) check(t *testing.T, ev string, names ...string) {
	t.Helper()
	checkWritten(t, w.clients, ev, names)
}

func TestEmitterReachesSelectedClients(t *testing.T) {
	w := newEmitterWorld(t)
	ctx := context.Background()
	e := w.e
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(e.Emit(ctx, "all", 1, "x", map[string]any{"k": true}))
	must(e.To("r1").Emit(ctx, "r1"))
	must(e.In("r1", "r2").Emit(ctx, "r1r2"))
	must(e.Except("r1").Emit(ctx, "not-r1"))
	must(e.To("r1").Except(string(w.clients["b1"].s.Id())).Emit(ctx, "r1-not-b1"))
	must(e.Volatile().Emit(ctx, "volatile"))
	must(e.Compress(false).Emit(ctx, "uncompressed"))
	must(e.To("r1").Of("chat").Emit(ctx, "chat-r1")) // Of keeps the rooms
	must(e.Of("/chat").Emit(ctx, "chat-all"))
	w.fence(t)
	w.check(t, "all", w.root()...)
	w.check(t, "r1", "a1", "b1")
	w.check(t, "r1r2", "a1", "a2", "b1")
	w.check(t, "not-r1", "a2", "b2")
	w.check(t, "r1-not-b1", "a1")
	w.check(t, "volatile", w.root()...)
	w.check(t, "uncompressed", w.root()...)
	w.check(t, "chat-r1", "ca")
	w.check(t, "chat-all", "ca", "cb")
	if args := w.clients["b1"].sent.drain("all"); !reflect.DeepEqual(args, [][]any{{1.0, "x", map[string]any{"k": true}}}) {
		t.Fatalf("b1 was sent all%v", args)
	}

	// Large and binary payloads, through the attachments table.
	big := strings.Repeat("e", 20000)
	must(e.Emit(ctx, "big", big))
	must(e.To("r2").Emit(ctx, "bin", []byte{1, 2, 3}, map[string]any{"n": []byte{4}}, bytes.NewReader([]byte{5})))
	for _, name := range w.root() {
		if args := w.clients[name].expect(t, "big"); len(args) != 1 || args[0] != big {
			t.Fatalf("%s: big payload differs", name)
		}
	}
	args := normalizeBinary(w.clients["a2"].expect(t, "bin")).([]any)
	if !reflect.DeepEqual(args, []any{[]byte{1, 2, 3}, map[string]any{"n": []byte{4}}, []byte{5}}) {
		t.Fatalf("binary: %#v", args)
	}

	// Room operations.
	must(e.In("r1").SocketsJoin(ctx, "joined"))
	must(e.To("joined").Emit(ctx, "to-joined"))
	must(e.In("r1").SocketsLeave(ctx, "r1"))
	must(e.To("r1").Emit(ctx, "r1-after-leave"))
	w.fence(t)
	w.check(t, "to-joined", "a1", "b1")
	w.check(t, "r1-after-leave")

	// Server-side events reach every server.
	recs := []*recorder{newRecorder(), newRecorder()}
	for i, n := range w.nodes {
		n.io.On("job-done", func(args ...any) { recs[i].add("job-done", args...) })
	}
	must(e.ServerSideEmit(ctx, "job-done", 42.0, "ok"))
	for i, n := range w.nodes {
		if args := recs[i].next(t, n.name, "job-done"); !reflect.DeepEqual(args, []any{42.0, "ok"}) {
			t.Fatalf("%s got %v", n.name, args)
		}
	}

	must(e.In("r2").DisconnectSockets(ctx, true))
	w.clients["a2"].expect(t, "disconnect")
}

func TestEmitterTransactions(t *testing.T) {
	w := newEmitterWorld(t)
	ctx := context.Background()
	pool := w.nodes[0].pool
	opts := &emitter.Options{ChannelPrefix: w.nodes[0].b.opts.ChannelPrefix, TableName: w.nodes[0].b.opts.TableName}

	inTx := func(commit bool, ev string, args ...any) {
		t.Helper()
		tx, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		e, err := emitter.New(tx, opts)
		if err != nil {
			t.Fatal(err)
		}
		for range 2 {
			if err := e.Emit(ctx, ev, args...); err != nil {
				t.Fatal(err)
			}
		}
		if err := e.Emit(ctx, ev+"-big", strings.Repeat("t", 9000)); err != nil { // an attachment row too
			t.Fatal(err)
		}
		if commit {
			err = tx.Commit(ctx)
		} else {
			err = tx.Rollback(ctx)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	inTx(false, "rolled-back")
	inTx(true, "committed", 1)
	inTx(true, "committed", 1) // equal messages in one transaction, and in two
	w.fence(t)
	// PostgreSQL keeps one of equal notifications of a transaction: every one of the
	// four must have arrived nonetheless.
	for _, name := range w.root() {
		c := w.clients[name]
		for range 4 {
			c.expect(t, "committed")
		}
		if n := c.sent.count("committed"); n != 4 {
			t.Errorf("%s: committed written %d times, want 4", name, n)
		}
		if n := c.sent.count("committed-big"); n != 2 {
			t.Errorf("%s: committed-big written %d times, want 2", name, n)
		}
	}
	w.check(t, "rolled-back")
	w.check(t, "rolled-back-big")

	// A single connection works too.
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	var db emitter.DB = conn.Conn()
	e, err := emitter.New(db, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Emit(ctx, "from-conn"); err != nil {
		t.Fatal(err)
	}
	w.clients["b2"].expect(t, "from-conn")
	var _ emitter.DB = pgx.Tx(nil)

	// The nonce never takes a payload past what PostgreSQL accepts: payloads whose JSON
	// is just below the default threshold, with the nonce or without (through the table).
	for n := 7800; n <= 7960; n += 4 {
		if err := e.Emit(ctx, "near-limit", strings.Repeat("n", n)); err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		w.clients["b2"].expect(t, "near-limit")
	}
	// Nor with a threshold smaller than the nonce: the message goes through the table.
	small := *opts
	small.PayloadThreshold = 10
	e, err = emitter.New(db, &small)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Emit(ctx, "small-threshold", "x"); err != nil {
		t.Fatal(err)
	}
	w.clients["b2"].expect(t, "small-threshold")
}

// A failed attachment insert inside the caller's transaction (here, a table that does
// not exist) returns its error and leaves the transaction usable: PostgreSQL aborted
// the whole transaction, and its commit rolled back the caller's work and every message
// sent in it. The same through a *pgx.Conn inside a transaction begun with BEGIN. A row
// inserted in a transaction is dated by the insert, not by the transaction's start.
func TestEmitterInsertFailsInTransaction(t *testing.T) {
	w := newEmitterWorld(t)
	ctx := context.Background()
	pool := w.nodes[0].pool
	prefix := w.nodes[0].b.opts.ChannelPrefix
	missing := &emitter.Options{ChannelPrefix: prefix, TableName: "no_such_table_here"}
	good := &emitter.Options{ChannelPrefix: prefix, TableName: w.nodes[0].b.opts.TableName}

	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	ok, _ := emitter.New(tx, good)
	bad, _ := emitter.New(tx, missing)
	if err := ok.Emit(ctx, "before-failure"); err != nil {
		t.Fatal(err)
	}
	if err := bad.Emit(ctx, "bin", []byte{1}); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("missing table: %v", err)
	}
	if err := ok.Emit(ctx, "after-failure", []byte{2}); err != nil {
		t.Fatalf("the transaction is no longer usable: %v", err)
	}
	var younger bool
	if err := tx.QueryRow(ctx, "SELECT created_at > now() FROM "+w.nodes[0].b.st.Table+" ORDER BY id DESC LIMIT 1").Scan(&younger); err != nil || !younger {
		t.Fatalf("row dated by the transaction's start (%v, %v)", younger, err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("commit: %v", err)
	}
	w.clients["b2"].expect(t, "before-failure")
	w.clients["b2"].expect(t, "after-failure")

	// A transaction begun with Exec("BEGIN"), on a *pgx.Conn and on a *pgxpool.Conn (the
	// latter got no savepoint: the failed insert aborted the transaction).
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	for _, db := range []emitter.DB{conn.Conn(), conn} {
		if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
			t.Fatal(err)
		}
		bad, _ = emitter.New(db, missing)
		ok, _ = emitter.New(db, good)
		if err := bad.Emit(ctx, "bin", []byte{1}); err == nil {
			t.Fatalf("%T: missing table accepted", db)
		}
		if err := ok.Emit(ctx, "conn-after-failure"); err != nil {
			t.Fatalf("%T: %v", db, err)
		}
		if _, err := conn.Exec(ctx, "COMMIT"); err != nil {
			t.Fatal(err)
		}
		w.clients["b2"].expect(t, "conn-after-failure")
	}
}

// What the emitter refuses instead of sending something else, or panicking.
func TestEmitterRefusesBadNames(t *testing.T) {
	pool := newPool(t)
	defer pool.Close()
	var nilPool *pgxpool.Pool
	if _, err := emitter.New(nilPool, nil); err == nil {
		t.Error("nil *pgxpool.Pool accepted")
	}
	var nilConn *pgx.Conn
	if _, err := emitter.New(nilConn, nil); err == nil {
		t.Error("nil *pgx.Conn accepted")
	}
	e, err := emitter.New(pool, &emitter.Options{ChannelPrefix: "refusals"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for what, err := range map[string]error{
		"namespace":    e.Of("/\xff").Emit(ctx, "ev"),
		"room":         e.To("r\xfe").Emit(ctx, "ev"),
		"except":       e.Except("\xc3").Emit(ctx, "ev"),
		"joined room":  e.SocketsJoin(ctx, "ok", "bad\xff"),
		"server event": e.Of("/\xff").ServerSideEmit(ctx, "ev"),
	} {
		if !errors.Is(err, emitter.ErrInvalidName) {
			t.Errorf("%s: %v", what, err)
		}
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	r := &countingReader{}
	if err := e.Emit(cancelled, "ev", r); !errors.Is(err, context.Canceled) || r.reads != 0 {
		t.Errorf("cancelled context: %v, %d reads of the argument", err, r.reads)
	}
}

type countingReader struct{ reads int }

func (r *countingReader) Read([]byte) (int, error) { r.reads++; return 0, io.EOF }

func TestEmitterConcurrentUse(t *testing.T) {
	w := newEmitterWorld(t)
	ctx := context.Background()
	shared := w.e.To("r1")
	const goroutines, each = 16, 10
	var wg sync.WaitGroup
	errs := make(chan error, goroutines*each)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Deriving from a shared emitter must not affect the others.
			mine := shared.Except(fmt.Sprint("nobody-", g))
			for i := range each {
				errs <- mine.Emit(ctx, "burst", g, i)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	w.fence(t)
	for _, name := range []string{"a1", "b1"} {
		if n := w.clients[name].sent.count("burst"); n != goroutines*each {
			t.Fatalf("%s: %d of %d messages", name, n, goroutines*each)
		}
	}
	if n := w.clients["a2"].sent.count("burst"); n != 0 {
		t.Fatalf("a2 got %d messages meant for r1", n)
	}
}

func TestEmitterRefusals(t *testing.T) {
	pool := newPool(t)
	defer pool.Close()
	e, err := emitter.New(pool, &emitter.Options{ChannelPrefix: "refusals", TableName: "no_such_table_here"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := e.Emit(ctx, "disconnect"); !errors.Is(err, emitter.ErrReservedEvent) {
		t.Errorf("reserved event: %v", err)
	}
	if err := e.ServerSideEmit(ctx, "connection"); !errors.Is(err, emitter.ErrReservedEvent) {
		t.Errorf("reserved server event: %v", err)
	}
	if err := e.Emit(ctx, "ask", "q", socket.Ack(func([]any, error) {})); !errors.Is(err, emitter.ErrAckNotSupported) {
		t.Errorf("ack: %v", err)
	}
	if err := e.ServerSideEmit(ctx, "ask", func(...any) {}); !errors.Is(err, emitter.ErrAckNotSupported) {
		t.Errorf("server-side ack: %v", err)
	}
	if err := e.Emit(ctx, "bin", []byte{1}); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("missing table: %v", err)
	}
	small, err := emitter.New(pool, &emitter.Options{ChannelPrefix: "refusals", MaxAttachmentSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	if err := small.Emit(ctx, "bin", make([]byte, 200)); !errors.Is(err, emitter.ErrAttachmentTooLarge) {
		t.Errorf("attachment over MaxAttachmentSize: %v", err)
	}
	for what, o := range map[string]emitter.Options{
		"negative MaxAttachmentSize": {MaxAttachmentSize: -1},
		"threshold above 8000":       {PayloadThreshold: 9000},
		"table not UTF-8":            {TableName: "t\xff"}, // PostgreSQL refused every insert
		"prefix with NUL":            {ChannelPrefix: "p\x00"},
	} {
		if _, err := emitter.New(pool, &o); !errors.Is(err, emitter.ErrInvalidOptions) {
			t.Errorf("%s: %v", what, err)
		}
	}
	// A zero Emitter says it was not made by New, not that every message is too large
	// for its MaxAttachmentSize of 0.
	if err := new(emitter.Emitter).Emit(ctx, "ev"); !errors.Is(err, emitter.ErrInvalidOptions) {
		t.Errorf("zero Emitter: %v", err)
	}
	if _, err := emitter.New(nil, nil); err == nil {
		t.Error("nil DB accepted")
	}
}

// closeRecorder is a reader that records its Close.
type closeRecorder struct {
	io.Reader
	closed int
}

func (c *closeRecorder) Close() error { c.closed++; return nil }

// An io.Closer argument is closed once, whatever Emit returns: before, the calls that
// failed before reading it (a reserved event name, a cancelled context, an ack, an
// argument before it that cannot be encoded) left it open.
func TestEmitterClosesReadersOnEveryPath(t *testing.T) {
	opts := testOptions(t)
	n := startNode(t, "A", opts) // makes the attachments table, once its publisher runs
	eventually(t, "the attachments table", func() bool {
		var made bool
		err := n.pool.QueryRow(context.Background(), "SELECT to_regclass($1) IS NOT NULL", opts.TableName).Scan(&made)
		return err == nil && made
	})
	e, err := emitter.New(n.pool, &emitter.Options{ChannelPrefix: opts.ChannelPrefix, TableName: opts.TableName})
	if err != nil {
		t.Fatal(err)
	}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	ctx := context.Background()
	cases := map[string]func(r io.Reader) error{
		"reserved":        func(r io.Reader) error { return e.Emit(ctx, "disconnect", r) },
		"cancelled":       func(r io.Reader) error { return e.Emit(cancelled, "x", r) },
		"ack":             func(r io.Reader) error { return e.Emit(ctx, "x", r, func() {}) },
		"bad before":      func(r io.Reader) error { return e.Emit(ctx, "x", make(chan int), r) },
		"nested":          func(r io.Reader) error { return e.Emit(ctx, "x", make(chan int), []any{map[string]any{"r": r}}) },
		"server reserved": func(r io.Reader) error { return e.ServerSideEmit(ctx, "connection", r) },
		"published":       func(r io.Reader) error { return e.Emit(ctx, "x", r) },
		"server-side":     func(r io.Reader) error { return e.ServerSideEmit(ctx, "x", r) },
	}
	for name, emit := range cases {
		r := &closeRecorder{Reader: strings.NewReader("data")}
		err := emit(r)
		if (err == nil) != (name == "published" || name == "server-side") {
			t.Errorf("%s: %v", name, err)
		}
		if r.closed != 1 {
			t.Errorf("%s: closed %d times, want once", name, r.closed)
		}
	}
}

// A nil pointer to a reader is null, as every nil pointer is: its Read dereferenced nil.
func TestEmitterNilReaders(t *testing.T) {
	pool := newPool(t)
	defer pool.Close()
	e, err := emitter.New(pool, &emitter.Options{ChannelPrefix: "nilreaders"})
	if err != nil {
		t.Fatal(err)
	}
	for _, arg := range []any{(*bytes.Buffer)(nil), (*strings.Reader)(nil), (*bytes.Reader)(nil), []any{(*bytes.Buffer)(nil)}} {
		if err := e.Emit(context.Background(), "x", arg); err != nil {
			t.Errorf("%T: %v", arg, err)
		}
	}
}

// The emitter's attachment rows are compressed with lz4 where the server has it, as the
// servers' are (an auditor found them in pglz, PostgreSQL's default, which costs it ten
// times the CPU), through a pool; through a transaction of the caller's, whose settings
// are the caller's, they keep the session's compression.
func TestEmitterRowsCompressedAsTheServers(t *testing.T) {
	opts := testOptions(t)
	a := startNode(t, "A", opts)
	ctx := context.Background()
	lz4, session := compression(t, a.pool) // session: the server's default, pglz unless configured
	method := func() string { t.Helper(); return lastCompression(t, a.pool, opts.TableName) }
	big := strings.Repeat("compressible ", 2000)
	e, err := emitter.New(a.pool, &emitter.Options{ChannelPrefix: opts.ChannelPrefix, TableName: opts.TableName})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 { // the first asks the server, the second knows
		if err := e.Of("/derived").ServerSideEmit(ctx, "big", big, i); err != nil {
			t.Fatal(err)
		}
		if got, want := method(), map[bool]string{true: "lz4", false: session}[lz4]; got != want {
			t.Fatalf("emit %d through the pool: the row is compressed with %s, want %s", i, got, want)
		}
	}
	checkIdleSetting(t, ctx, a.pool, "default_toast_compression", session)

	tx, err := a.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	et, err := emitter.New(tx, &emitter.Options{ChannelPrefix: opts.ChannelPrefix, TableName: opts.TableName})
	if err != nil {
		t.Fatal(err)
	}
	if err := et.ServerSideEmit(ctx, "big", big); err != nil {
		t.Fatal(err)
	}
	var setting string
	if err := tx.QueryRow(ctx, "SELECT current_setting('default_toast_compression')").Scan(&setting); err != nil || setting != session {
		t.Fatalf("the caller's transaction has default_toast_compression %q (%v), want its own, %s", setting, err, session)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if got := method(); got != session {
		t.Fatalf("through a transaction: the row is compressed with %s, want the session's %s", got, session)
	}
}

// The emitter's lz4 probe (a reviewer's findings): a server without lz4, or a probe that
// fails, still gets every message, in pglz; emitters made per call on one pool ask once;
// a context that ends during the probe gives the emit its own error (pgx closed the
// connection under the emit, "conn closed"), and leaves lz4 on for the next emits.
func TestEmitterLZ4Probe(t *testing.T) {
	opts := testOptions(t)
	a := startNode(t, "A", opts)
	ctx := context.Background()
	lz4, session := compression(t, a.pool)
	if !lz4 {
		t.Skip("this PostgreSQL cannot compress with lz4")
	}
	last := func() string { t.Helper(); return lastCompression(t, a.pool, opts.TableName) }
	schema := func(name, view string) {
		t.Helper()
		if _, err := a.pool.Exec(ctx, fmt.Sprintf("DROP SCHEMA IF EXISTS %[1]s CASCADE; CREATE SCHEMA %[1]s; %[2]s", name, view)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.pool.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+name+" CASCADE") })
	}
	big := strings.Repeat("compressible ", 2000)
	eo := &emitter.Options{ChannelPrefix: opts.ChannelPrefix, TableName: opts.TableName}

	nolz4, failing := pgtest.Name("nolz4"), pgtest.Name("failing")
	schema(nolz4, "CREATE VIEW "+nolz4+".pg_settings AS SELECT 'default_toast_compression'::text AS name, ARRAY['pglz']::text[] AS enumvals")
	schema(failing, "CREATE VIEW "+failing+".pg_settings AS SELECT 'default_toast_compression'::text AS name, ARRAY[(1/(random()*0)::int)::text]::text[] AS enumvals")
	for _, s := range []string{nolz4, failing} {
		e, err := emitter.New(poolWith(t, map[string]string{"search_path": s + ", pg_catalog, public"}), eo)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 2 {
			if err := e.ServerSideEmit(ctx, "big", big, i); err != nil {
				t.Fatalf("%s: emit %d: %v", s, i, err)
			}
			if got := last(); got != session {
				t.Errorf("%s: emit %d: row in %s, want the session's %s", s, i, got, session)
			}
		}
	}

	counted := pgtest.Name("counted")
	schema(counted, "CREATE SEQUENCE "+counted+".probes; CREATE VIEW "+counted+".pg_settings AS SELECT 'default_toast_compression'::text AS name, ARRAY['pglz','lz4']::text[] AS enumvals FROM (SELECT nextval('"+counted+".probes')) n")
	p := poolWith(t, map[string]string{"search_path": counted + ", pg_catalog, public"})
	for i := range 5 { // an emitter per call
		e, err := emitter.New(p, eo)
		if err != nil {
			t.Fatal(err)
		}
		if err := e.ServerSideEmit(ctx, "big", big, i); err != nil {
			t.Fatal(err)
		}
		if got := last(); got != "lz4" {
			t.Fatalf("emitter %d: row in %s", i, got)
		}
	}
	var probes int64
	if err := a.pool.QueryRow(ctx, "SELECT last_value FROM "+counted+".probes").Scan(&probes); err != nil || probes != 1 {
		t.Fatalf("5 emitters on one pool probed %d times (%v), want once", probes, err)
	}

	slow := pgtest.Name("slow")
	schema(slow, "CREATE VIEW "+slow+".pg_settings AS SELECT 'default_toast_compression'::text AS name, ARRAY['pglz','lz4']::text[] AS enumvals FROM pg_sleep(0.3)")
	p = poolWith(t, map[string]string{"search_path": slow + ", pg_catalog, public"})
	if err := p.Ping(ctx); err != nil { // a connection ready: the probe is what takes time
		t.Fatal(err)
	}
	e, err := emitter.New(p, eo)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	err = e.Emit(short, "big", big)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("an emit whose context ended during the probe: %v, want its context's error", err)
	}
	if err := e.Emit(ctx, "big", big); err != nil {
		t.Fatal(err)
	}
	if got := last(); got != "lz4" {
		t.Errorf("the next emit: row in %s, want lz4", got)
	}
}

// compression returns whether the server can compress with lz4, and its default method.
func compression(t *testing.T, pool *pgxpool.Pool) (lz4 bool, session string) {
	t.Helper()
	ctx := context.Background()
	if err := pool.QueryRow(ctx, "SELECT coalesce(bool_or('lz4' = ANY(enumvals)), false) FROM pg_settings WHERE name = 'default_toast_compression'").Scan(&lz4); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, "SELECT current_setting('default_toast_compression')").Scan(&session); err != nil {
		t.Fatal(err)
	}
	return lz4, session
}

// lastCompression returns how the last row of table is compressed.
func lastCompression(t *testing.T, pool *pgxpool.Pool, table string) string {
	t.Helper()
	var m string
	if err := pool.QueryRow(context.Background(), "SELECT coalesce(pg_column_compression(payload), 'none') FROM "+table+" ORDER BY id DESC LIMIT 1").Scan(&m); err != nil {
		t.Fatal(err)
	}
	return m
}
