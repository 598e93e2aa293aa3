package pgadapter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
	"weak"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/zishang520/socket.io/v2/socket"

	"github.com/socketio-pg/pgadapter/internal/wire"
)

// Builder makes the cluster adapter of every namespace of a Socket.IO server. Give it to
// the server with io.SetAdapter(pgadapter.New(pool, opts)).
//
// One Builder owns one LISTEN connection, shared by all its namespaces (one channel
// each), and one publisher, so that every message a server publishes reaches the other
// servers in the order it was published. Its goroutines start with the first namespace
// adapter and stop when the last one closes (io.Close closes them all), at which point
// the LISTEN connection is closed too.
//
// Make it with New or NewFromURL. A zero Builder works as an invalid configuration does:
// its namespaces work on this server alone, and Err says it was not made by New.
type Builder struct {
	pool *pgxpool.Pool
	opts Options
	err  error // configuration error: adapters then work locally only
	st   statements

	mu       sync.Mutex
	adapters map[string]*Adapter // by channel
	rt       *runtime            // running machinery; nil when no adapter is open
	closed   bool
	stopped  bool // a runtime stopped with the last adapter (io.Close), none since
	// stoppedServer is the server whose runtime stopped with its last adapter: its
	// io.Close closed them all (see refusalLocked).
	stoppedServer *socket.Server
	// refused holds the servers refused as a second server of b (see refusalLocked):
	// their namespaces stay local, also once the first server has closed. They joined
	// the cluster then, while the namespaces they had made before stayed local, "/"
	// included (a tester's finding). Weak: a refused server is not kept alive.
	refused  map[weak.Pointer[socket.Server]]bool
	halting  int // runtimes stopping (see closePool)
	poolOnce sync.Once
	made     sync.Once // done by New; a zero Builder does it in init

	// applied, when set (by benchmarks, before the first adapter), sees every message
	// applied from another server, once applied (a server-side event's handlers
	// returned), on the goroutine that applied it: one of the two delivery goroutines,
	// or one left with handlers that ran long (see watchHandlers).
	applied func(*wire.Message)

	stats   counters
	reports reporter // calls the ErrorHandler and OnListenerState
	owned   bool     // the pool was made by NewFromURL, and is closed by Close

	reported atomic.Bool // configuration error reported once
	// ascii is set once notifications must be ASCII (see wire.ASCIIConnection): the
	// database's encoding cannot hold every character, or the pool's sessions speak
	// another encoding than UTF-8. They are then written with their other characters as
	// JSON escapes. Learnt from the listener's connections and the publisher's.
	ascii       atomic.Bool
	drops       everySecond // notifications the receive queue had no room for
	queueFull   everySecond // messages the publish queue had no room for
	closedSends everySecond // operations refused by closed adapters (see reportClosed)
	badNames    everySecond // namespaces refused for names that are not UTF-8 (see New)
	// stateFrom is the runtime whose listener last reported its state (stateMu).
	stateMu   sync.Mutex
	stateFrom *runtime

	// Log lines of malformed messages and gaps: at most maxMalformedLogs a second (see
	// report).
	logMu         sync.Mutex
	logWindow     time.Time
	logged        int
	logSuppressed int
}

// maxMalformedLogs bounds the log lines of malformed messages, and of gaps in other
// servers' numbers (MissedError), per second. Anyone who can connect to the database
// can NOTIFY on the adapter's channels, thousands of times a second, with any number;
// the ErrorHandler still gets every report.
const maxMalformedLogs = 10

// New returns a Builder publishing through pool. opts may be nil; its zero fields take
// their defaults. New does no I/O and never fails: an invalid configuration (see Err)
// is reported through Options.ErrorHandler and the logger, and the namespaces then work
// on this server alone, as with socket.io's in-memory adapter.
func New(pool *pgxpool.Pool, opts *Options) *Builder {
	b := &Builder{pool: pool, adapters: map[string]*Adapter{}}
	b.made.Do(func() {})
	b.opts, b.err = opts.withDefaults()
	if b.err == nil && pool == nil {
		b.err = fmt.Errorf("%w: nil pool", ErrInvalidOptions)
	}
	b.st = newStatements(b.opts.TableName)
	b.reports.log, b.reports.behind = b.opts.Logger, b.behind
	return b
}

// reportsReserve is the part of Close's bound kept for the reports (see remove).
const reportsReserve = time.Second

// init makes a zero Builder, declared rather than made by New, one whose namespaces work
// on this server alone, and which says why: its first namespace panicked on its nil pool
// (an auditor's finding). Every exported method calls it first.
func (b *Builder) init() {
	b.made.Do(func() {
		b.opts, _ = (*Options)(nil).withDefaults()
		b.err = fmt.Errorf("%w: a Builder must be made by New or NewFromURL", ErrInvalidOptions)
		b.adapters = map[string]*Adapter{}
		b.st = newStatements(b.opts.TableName)
		b.reports.log, b.reports.behind = b.opts.Logger, b.behind
	})
}

// NewFromURL connects a pool to a PostgreSQL URL ("postgres://user:pass@host:port/db?...")
// and returns a Builder that owns it: Builder.Close closes the pool after the adapters.
// It fails for an invalid URL or invalid options; it does not wait for the database.
func NewFromURL(ctx context.Context, url string, opts *Options) (*Builder, error) {
	if _, err := opts.withDefaults(); err != nil {
		return nil, err
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("pgadapter: %w", err)
	}
	b := New(pool, opts)
	if b.err != nil {
		pool.Close()
		return nil, b.err
	}
	b.owned = true
	return b, nil
}

// Err returns the configuration error that keeps the Builder from clustering, or nil.
func (b *Builder) Err() error {
	b.init()
	return b.err
}

// New implements socket.AdapterConstructor: it returns the adapter of namespace nsp.
// socket.io calls it for each namespace, including dynamic ones created later.
func (b *Builder) New(nsp socket.Namespace) socket.Adapter {
	b.init()
	if b.err != nil {
		if !b.reported.Swap(true) {
			b.report(fmt.Errorf("%w; namespaces work on this server only", b.err))
		}
		return socket.NewAdapter(nsp)
	}
	if !utf8.ValidString(nsp.Name()) {
		// Its messages would name another namespace on the other servers (see
		// ErrInvalidName), and theirs this one, on a channel made of the bytes. Reported
		// once a second at most: with dynamic namespaces, clients choose the names.
		name := nsp.Name()
		b.badNames.add(func(n int64) {
			b.report(fmt.Errorf("pgadapter: namespace %q: %w; it works on this server only (%d such so far)", name, ErrInvalidName, n))
		})
		return socket.NewAdapter(nsp)
	}
	a := newAdapter(b, nsp)
	b.mu.Lock()
	if err := b.refusalLocked(nsp); err != nil {
		b.mu.Unlock()
		return b.local(nsp, err)
	}
	if old := b.adapters[a.channel]; old != nil && old.name != a.name {
		// Two namespaces on one channel: one named after the other's shortened channel
		// (see ChannelName). The one there keeps it.
		b.mu.Unlock()
		return b.local(nsp, fmt.Errorf("pgadapter: namespace %q has the channel of namespace %q (%s); it works on this server only", nsp.Name(), old.name, a.channel))
	} else if old != nil {
		// socket.io replaced the namespace's adapter (SetAdapter called again), or made
		// another namespace of that name while the first was open (the server's table no
		// longer holds the first: see Adapter.noteCleanup). The new one takes the channel
		// over at once, on the same runtime (listening to it again announces the new
		// one), and the old one, which would otherwise keep its heartbeats, closes after.
		// Closed first, it unlistened the channel, and what arrived before the new one
		// listened was dropped, uncounted; were it the last, it stopped the runtime, and
		// New waited for that, to start another.
		a.rt = b.rt
		b.adapters[a.channel] = a
		a.rt.lis.listen(a.channel)
		b.mu.Unlock()
		if stranded := old.Nsp().Sockets().Len(); old.Nsp() != nsp && stranded > 0 {
			b.report(fmt.Errorf("pgadapter: socket.io made namespace %q again while %d socket(s) were still in the namespace of that name it had removed from its table (CleanupEmptyChildNamespaces: a defect of socket.io v2.5.0, see the README); they receive nothing from the cluster any more", nsp.Name(), stranded))
		}
		old.close()
		// Closing it ends its requests, whose callbacks may have closed the Builder
		// (and the new adapter with it).
		b.mu.Lock()
		err := b.refusalLocked(nsp)
		b.mu.Unlock()
		if err != nil {
			a.Close()
			return b.local(nsp, err)
		}
		return a
	}
	if b.rt == nil {
		b.rt = b.start()
		b.rt.server = nsp.Server()
		b.stopped, b.stoppedServer = false, nil
	}
	a.rt = b.rt
	b.adapters[a.channel] = a
	// Under b.mu, as remove's unlisten: a closing adapter's unlisten, made after this
	// listen, would otherwise leave the new adapter deaf.
	a.rt.lis.listen(a.channel)
	b.mu.Unlock()
	return a
}

// refusalLocked returns why nsp may not join the cluster through b, or nil. b.mu is held.
func (b *Builder) refusalLocked(nsp socket.Namespace) error {
	switch {
	case b.closed:
		return fmt.Errorf("pgadapter: namespace %q created after Builder.Close: %w", nsp.Name(), ErrClosed)
	case b.rt == nil && b.stoppedServer != nil && b.stoppedServer == nsp.Server():
		// io.Close closed every adapter: a namespace created afterwards (io.Of on the
		// closed server) started the machinery again, LISTEN connection and heartbeats
		// included, and the other servers counted the closed server again.
		return fmt.Errorf("pgadapter: namespace %q created after its server closed: %w; it works on this server only", nsp.Name(), ErrClosed)
	case b.refused[weak.Make(nsp.Server())]:
		return fmt.Errorf("pgadapter: namespace %q of a second socket.io server: a Builder serves one server (give each its own New); this one works on its own, as its other namespaces do", nsp.Name())
	case b.rt != nil && b.rt.server != nsp.Server():
		// Two servers given one Builder: a namespace of both would replace the first
		// one's adapter, which then published nothing, and nobody was told.
		if b.refused == nil {
			b.refused = map[weak.Pointer[socket.Server]]bool{}
		}
		b.refused[weak.Make(nsp.Server())] = true
		return fmt.Errorf("pgadapter: namespace %q of a second socket.io server: a Builder serves one server (give each its own New); this one works on its own", nsp.Name())
	}
	return nil
}

// local reports err and returns the in-memory adapter of socket.io for nsp.
func (b *Builder) local(nsp socket.Namespace, err error) socket.Adapter {
	b.report(err)
	return socket.NewAdapter(nsp)
}

// Ready waits until the LISTEN connection is up and every namespace created so far is
// listening, so that this server receives what other servers publish from now on, and,
// unless Options.SkipTableCreation is set, until the attachments table exists, so that
// an emitter may publish large messages at once (it does not create the table). It
// returns the configuration error at once, if any, the table's creation error, and
// ErrClosed once the Builder or every namespace adapter is closed. The listener retries
// a connection that fails for as long as it runs (a database restarting comes back):
// give ctx a deadline, and the error at its end wraps the last connection error too (a
// wrong password, say). Called before any namespace uses the Builder (before
// io.SetAdapter), it fails at once: there is nothing to wait for.
func (b *Builder) Ready(ctx context.Context) error {
	b.init()
	if b.err != nil {
		return b.err
	}
	b.mu.Lock()
	rt, closed := b.rt, b.closed || b.stopped
	b.mu.Unlock()
	if closed {
		return fmt.Errorf("pgadapter: Ready: %w", ErrClosed)
	}
	if rt == nil {
		return fmt.Errorf("pgadapter: no namespace uses this Builder yet (call io.SetAdapter first)")
	}
	if err := rt.lis.waitSynced(ctx); err != nil {
		return err
	}
	if b.opts.SkipTableCreation {
		return nil
	}
	// The publisher creates the table as it starts, and may not be done: Ready returned
	// before it, and an emitter publishing at once found no table.
	return rt.pub.ensureTable(ctx)
}

// Close closes every namespace adapter made by b, as io.Close does, and waits for the
// goroutines to stop or ctx to end, but not for the application's code they run as they
// apply messages (handlers, request callbacks, outgoing-packet listeners), which may be
// what calls Close. Namespaces created afterwards work locally only. A Builder made by
// NewFromURL closes its pool too, once its goroutines have stopped: such code still
// running then finds it closed. When io.Close (or another Close) is closing the adapters
// on another goroutine at the same time, Close may return before that ends, and the pool
// is closed when it does; waiting for it would never end when Close is called from a
// request callback that closing runs. Closing that pool waits for pgx to end each of its
// connections: one whose query timed out in a network that no longer answers takes pgx
// up to 15 s more (a tester's partition: 17 s after io.Close); a ctx that ends first
// returns its error, and the pool goes on closing in the background.
func (b *Builder) Close(ctx context.Context) error {
	b.init()
	// Called from the ErrorHandler, which the goroutine below would wait for.
	b.reports.release()
	b.mu.Lock()
	b.closed = true
	list := make([]*Adapter, 0, len(b.adapters))
	for _, a := range b.adapters {
		list = append(list, a)
	}
	b.mu.Unlock()
	done := make(chan struct{})
	go func() {
		for _, a := range list {
			a.Close()
		}
		b.closePool()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// closeStragglers closes the adapters of b whose namespaces have no socket, once io.Close
// has closed the main namespace's: io.Close closes the namespaces of the server's table,
// and a namespace that socket.io removed from it while it was in use kept its adapter,
// and b its goroutines, LISTEN connection and heartbeats, for good (see
// Adapter.noteCleanup). Those with sockets are left to io.Close: it disconnects a
// namespace's sockets before it closes its adapter, and what their "disconnect" handlers
// broadcast was lost when "/" came first (a reviewer's finding, 8 runs of 12); the
// sockets of one outside the table leave as io.Close closes their connections, and
// socket.io's cleanup then closes its adapter.
func (b *Builder) closeStragglers() {
	b.mu.Lock()
	list := make([]*Adapter, 0, len(b.adapters))
	for _, a := range b.adapters {
		list = append(list, a)
	}
	b.mu.Unlock()
	for _, a := range list {
		if a.Nsp().Sockets().Len() == 0 {
			a.close()
		}
	}
}

// remove unregisters a closing adapter and stops the machinery with the last one.
func (b *Builder) remove(a *Adapter) {
	b.mu.Lock()
	// An adapter made since for the same channel keeps it listened.
	registered := b.adapters[a.channel] == a
	if registered {
		delete(b.adapters, a.channel)
	}
	rt := a.rt
	last := rt != nil && b.rt == rt && len(b.adapters) == 0
	if last {
		b.rt = nil
		b.stopped, b.stoppedServer = true, rt.server
		b.halting++
	}
	if rt != nil && registered {
		rt.lis.unlisten(a.channel) // under b.mu: see New
	}
	b.mu.Unlock()
	if rt == nil {
		return
	}
	if last {
		// One deadline for both waits, as documented: each with the whole bound, a
		// database that did not answer and then an ErrorHandler that did not return made
		// Close take 11 s for a bound of 8 (an auditor's finding). The goroutines get all
		// of it but a second, the reports' at least: with the whole of it, the stop's own
		// report ("did not stop in time") reached the ErrorHandler after Close returned,
		// and the log blamed the handler (a reviewer's finding).
		deadline := time.Now().Add(b.opts.RequestsTimeout + 5*time.Second)
		rt.stop(time.Until(deadline) - reportsReserve)
		// Events counted since their last report are reported now, not a second later,
		// after Close returned.
		for _, e := range []*everySecond{&b.drops, &b.queueFull, &b.closedSends, &b.badNames} {
			e.flush()
		}
		// What the runtime reported is passed on before Close returns, so that an
		// application may close what its callbacks use once Close has returned.
		if !b.reports.wait(max(time.Until(deadline), 0)) {
			b.opts.Logger.Error("pgadapter: an ErrorHandler or OnListenerState callback did not return in time")
		}
		b.mu.Lock()
		b.halting--
		b.mu.Unlock()
		b.closePool()
	}
}

// closePool closes the pool of a Builder made by NewFromURL once it is closed and no
// runtime runs or stops. An adapter closed already may still be closing on another
// goroutine (io.Close, or another Builder.Close) when Close has closed the others: its
// runtime publishes its ADAPTER_CLOSE on the pool as it stops, and the pool is closed
// when it has (the message was lost, and the other servers counted this one until their
// heartbeat timeout).
func (b *Builder) closePool() {
	b.mu.Lock()
	ready := b.owned && b.pool != nil && b.closed && b.rt == nil && b.halting == 0
	b.mu.Unlock()
	if ready {
		b.poolOnce.Do(b.pool.Close)
	}
}

func (b *Builder) adapter(channel string) *Adapter {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.adapters[channel]
}

func (b *Builder) snapshot() []*Adapter {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]*Adapter, 0, len(b.adapters))
	for _, a := range b.adapters {
		out = append(out, a)
	}
	return out
}

// report sends a background error to the logger and the ErrorHandler.
func (b *Builder) report(err error) {
	level := slog.LevelWarn
	attrs := []any{"error", err}
	var p *PanicError
	var lost *PublishError
	switch {
	case errors.Is(err, ErrClosed) && !errors.As(err, &lost):
		// What closing ends on purpose; messages it leaves unpublished are lost, and
		// keep the warning level.
		level = slog.LevelDebug
	case errors.As(err, &p):
		b.stats.panics.Add(1)
		level = slog.LevelError
		attrs = append(attrs, "stack", string(p.Stack))
	}
	if suppressed, ok := b.logAllowed(err, p != nil); !ok {
		level = slog.LevelDebug
	} else if suppressed > 0 {
		attrs = append(attrs, "suppressed", suppressed)
	}
	b.opts.Logger.Log(context.Background(), level, "pgadapter: "+strings.TrimPrefix(err.Error(), "pgadapter: "), attrs...)
	b.handle(err)
}

// handle passes err to the ErrorHandler, on the reporter's goroutine.
func (b *Builder) handle(err error) {
	if h := b.opts.ErrorHandler; h != nil {
		size := 0
		if me := (*MessageError)(nil); errors.As(err, &me) {
			size = len(me.Payload)
		}
		b.reports.add(func() { h(err) }, size)
	}
}

// behind tells the ErrorHandler how many reports it missed while the reporter's queue
// was full: they were logged.
func (b *Builder) behind(dropped int) {
	err := fmt.Errorf("pgadapter: %d reports were not passed to the ErrorHandler: it fell behind by more than %d reports or %d MB (they were logged, or counted in Stats)", dropped, maxPendingReports, maxPendingBytes>>20)
	b.opts.Logger.Warn(err.Error())
	if h := b.opts.ErrorHandler; h != nil {
		h(err)
	}
}

// logAllowed reports whether err may be logged at its level: errors of malformed
// messages and gaps are, up to maxMalformedLogs a second together; the rest go to the
// debug level, and the next one logged says how many were (suppressed).
func (b *Builder) logAllowed(err error, panicked bool) (suppressed int, ok bool) {
	if panicked || !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrMissed) {
		return 0, true // panics are always logged at level Error
	}
	b.logMu.Lock()
	defer b.logMu.Unlock()
	if now := time.Now(); now.Sub(b.logWindow) >= time.Second {
		b.logWindow, b.logged = now, 0
	}
	if b.logged >= maxMalformedLogs {
		b.logSuppressed++
		return 0, false
	}
	b.logged++
	suppressed, b.logSuppressed = b.logSuppressed, 0
	return suppressed, true
}

// onDrop counts a notification the receive queue had no room for, and reports drops at
// most once a second so that a flood does not become a flood of reports.
func (b *Builder) onDrop() {
	b.drops.add(func(n int64) { b.report(fmt.Errorf("%w (%d dropped so far)", ErrReceiveQueueFull, n)) })
}

// everySecond counts events that come in floods (queue-full drops), and reports them at
// most once a second, with the running count: at once when none was reported in the
// last second, else a second after the last report, once for all that came meanwhile.
// Without that later report, a burst that ended within its first second (a transaction
// of 20,000 notifications, most dropped) was reported as "1 dropped so far", and the
// rest only counted in Stats.
type everySecond struct {
	n        atomic.Int64 // read without the lock by Stats
	mu       sync.Mutex
	reported int64     // n when last reported
	last     time.Time // of the last report
	pending  func(n int64)
	timer    *time.Timer // reports pending, a second after last
}

// add counts one event, and calls report with the running count now or, with the count
// then, a second after the last report (report being the last one given by then).
// Reports are made with no lock held: they log, and the application's Logger may emit,
// which can come back here (a full publish queue).
func (e *everySecond) add(report func(n int64)) {
	e.mu.Lock()
	n := e.n.Add(1)
	now := time.Now()
	if now.Sub(e.last) >= time.Second {
		e.last, e.reported = now, n
		e.mu.Unlock()
		report(n)
		return
	}
	e.pending = report
	if e.timer == nil {
		e.timer = time.AfterFunc(e.last.Add(time.Second).Sub(now), e.flush)
	}
	e.mu.Unlock()
}

// flush reports the events counted since the last report, if any, at once.
func (e *everySecond) flush() {
	e.mu.Lock()
	if e.timer != nil {
		e.timer.Stop()
		e.timer = nil
	}
	report, n := e.pending, e.n.Load()
	e.pending = nil
	if report == nil || n == e.reported {
		e.mu.Unlock()
		return
	}
	e.last, e.reported = time.Now(), n
	e.mu.Unlock()
	report(n)
}

// listenerState records and announces a change of the LISTEN connection's state.
func (b *Builder) listenerState(up bool, pid uint32, err error) {
	if up {
		b.stats.listenerConnects.Add(1)
		b.opts.Logger.Info("pgadapter: listener up", "pid", pid)
	} else if errors.Is(err, ErrClosed) {
		b.opts.Logger.Debug("pgadapter: listener closed")
	} else {
		b.opts.Logger.Warn("pgadapter: listener down", "error", err)
	}
	if h := b.opts.OnListenerState; h != nil {
		b.reports.add(func() { h(up, err) }, 0)
	}
}

// runtime is the machinery of a Builder while at least one adapter is open.
type runtime struct {
	b       *Builder
	server  *socket.Server // whose namespaces it serves (see Builder.refusalLocked)
	cancel  context.CancelFunc
	running running // its goroutines, outside the application's code (see stop)
	pub     *publisher
	lis     *listener
	inbound chan *pgconn.Notification
	ordered chan *delivery // messages, for the delivery goroutine
	answers chan *delivery // answers to this server's requests, and ADAPTER_CLOSE (see dispatch)
	// A server-side event handler that holds the delivery goroutine too long is left to
	// it, and another carries on (see watchHandlers).
	inHandler      atomic.Pointer[handlerRun]
	handlerStarted chan struct{}
	takenOver      atomic.Int32 // handlers still running on a goroutine that was replaced
	capWarned      atomic.Bool

	heardAt map[heardKey]time.Time // owned by the dispatch goroutine (see heard)
	// drops counts the numbered notifications the listener dropped (a full receive
	// queue), by channel and sender, until a gap in the sender's numbers takes them
	// (see sequence).
	dropsMu  sync.Mutex
	drops    map[heardKey][]seqRange
	dropRuns int        // the runs in drops
	recent   recentRows // the attachment rows read last (see fetch)
	budget   *rowBudget // bounds the attachment rows read and not yet applied
	// Notifications examined by the dispatch goroutine, and those of them that were
	// this server's own messages (see watchHearing).
	examined, echoes atomic.Int64
	dropsBefore      int64 // the Builder's drops when this runtime started
}

func (b *Builder) start() *runtime {
	ctx, cancel := context.WithCancel(context.Background())
	rt := &runtime{b: b, cancel: cancel,
		inbound:        make(chan *pgconn.Notification, b.opts.ReceiveQueueSize),
		ordered:        make(chan *delivery, 256),
		answers:        make(chan *delivery, 256),
		handlerStarted: make(chan struct{}, 1),
		heardAt:        map[heardKey]time.Time{},
		budget:         newRowBudget(rowBudgetFor(b.opts.MaxAttachmentSize)),
		dropsBefore:    b.drops.n.Load(),
	}
	rt.pub = newPublisher(b.pool, b.st, &b.opts, b.report, &b.stats)
	rt.pub.ascii = &b.ascii
	// A channel PostgreSQL refused for its name, to LISTEN to or to notify on.
	refuse := func(channel string, err error) {
		if a := b.adapter(channel); a != nil && a.rt == rt {
			a.refuse(err)
		}
	}
	rt.pub.onRefused = refuse
	cfg := b.opts.ListenConnConfig
	if cfg == nil {
		cfg = b.pool.Config().ConnConfig
	}
	rt.lis = newListener(cfg, &b.opts, rt.inbound)
	rt.lis.onState = func(up bool, pid uint32, err error) {
		// A stopped runtime's "closed" comes after a newer runtime's listener has said
		// up: it is about a connection nobody uses any more.
		// The check and the state in one step: a stopped runtime's "closed", checked
		// before a newer listener said up and recorded after, left ListenerUp false.
		b.stateMu.Lock()
		if !up && errors.Is(err, ErrClosed) && b.stateFrom != rt {
			b.stateMu.Unlock()
			return
		}
		b.stateFrom = rt
		b.stats.listenerUp.Store(up)
		b.stateMu.Unlock()
		b.listenerState(up, pid, err)
	}
	rt.lis.report = b.report
	rt.lis.onDrop = func(n *pgconn.Notification) {
		rt.dropped(n)
		b.onDrop()
	}
	rt.lis.onListen = func(channel string) {
		if a := b.adapter(channel); a != nil && a.rt == rt {
			a.listening(rt.lis.conns.Load())
			a.announce()
		}
	}
	rt.lis.onRefused = refuse
	rt.lis.onEncoding = func(enc string) {
		if wire.ASCIIServerEncoding(enc) {
			b.ascii.Store(true) // never unset: the publisher may have learnt it from its connections
		}
	}
	pubCtx, pubCancel := context.WithCancel(context.Background())
	rt.running.add(8)
	go func() { defer rt.running.add(-1); defer pubCancel(); rt.pub.run(pubCtx) }()
	go func() { defer rt.running.add(-1); rt.lis.run(ctx) }()
	go func() { defer rt.running.add(-1); rt.dispatch(ctx) }()
	go rt.deliver(ctx, rt.ordered) // each keeps its own count (see deliver)
	go rt.deliver(ctx, rt.answers)
	go func() { defer rt.running.add(-1); rt.watchHandlers(ctx) }()
	go func() { defer rt.running.add(-1); rt.tick(ctx) }()
	go func() { defer rt.running.add(-1); rt.cleanup(ctx) }()
	return rt
}

// running counts the goroutines of a runtime, less those running the application's
// code as they apply a message (see deliver). A WaitGroup would not do: a goroutine
// leaves the count and joins it again, while stop may be waiting.
type running struct {
	mu       sync.Mutex
	n        int
	none     chan struct{} // closed while n is 0; nil until needed
	stopping bool          // set by stop: no goroutine joins the count any more
}

// join counts one more goroutine, unless the runtime stops (stop may have seen the count
// at zero already): the caller then does not start it, or ends.
func (r *running) join() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopping {
		return false
	}
	r.n++
	return true
}

func (r *running) add(d int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n += d
	switch {
	case r.n < 0:
		panic("pgadapter: negative count of goroutines")
	case r.n == 0 && r.none != nil:
		close(r.none)
		r.none = nil
	}
}

// stop refuses joins from now on, and returns a channel closed once no goroutine is
// counted.
func (r *running) stop() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopping = true
	if r.n == 0 {
		c := make(chan struct{})
		close(c)
		return c
	}
	if r.none == nil {
		r.none = make(chan struct{})
	}
	return r.none
}

// stop publishes what is queued, then stops every goroutine and closes the LISTEN
// connection, waiting at most wait; not for the application's code that the delivery
// goroutines are running (a server-side event's handlers, a request callback, an
// outgoing-packet listener): it may be what is stopping, and it waited for itself until
// wait ran out, then reported that the goroutines did not stop. Those goroutines end
// once that code returns.
func (rt *runtime) stop(wait time.Duration) {
	rt.pub.close() // the publisher drains its queue, then returns
	rt.cancel()    // the other goroutines stop at once
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-rt.running.stop():
	case <-t.C:
		rt.b.report(errors.New("pgadapter: goroutines did not stop in time (the application's code still running on one: a request callback run as a server times out, or a heartbeat's?)"))
	}
}

// tickPeriod is how often the runtime checks for heartbeats due and servers gone silent.
func tickPeriod(o *Options) time.Duration {
	return min(time.Second, o.HeartbeatInterval/4, o.HeartbeatTimeout/4)
}

// tick publishes heartbeats for adapters that have been quiet, and forgets servers that
// have been silent too long.
func (rt *runtime) tick(ctx context.Context) {
	t := time.NewTicker(tickPeriod(&rt.b.opts))
	defer t.Stop()
	var w hearing
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			rt.watchHearing(now, &w)
			for _, a := range rt.b.snapshot() {
				if a.rt != rt {
					continue // a newer runtime's, while this one stops
				}
				// Forgetting a silent server completes the requests that waited for it,
				// which runs their callbacks.
				a.guard("heartbeat", func() { a.heartbeat(now) })
			}
		}
	}
}

// hearing is what watchHearing knows of the LISTEN connection's hearing, over a window
// that starts when it last heard this server's own messages.
type hearing struct {
	start      time.Time // the window's start; zero before the first tick
	connects   int64     // the listener's connections then: a reconnection starts anew
	echoes     int64     // this server's own messages heard then
	drops      int64     // notifications dropped by a full receive queue then
	heard      int64     // notifications received then (any)
	commits    int64     // the publisher's count of committed batches then
	midCommits int64     // ... at the window's middle, once reached
	midHeard   int64     // notifications received at the window's middle
	mid        bool
	warned     bool // reported deaf, and nothing heard since
}

// watchHearing reports a LISTEN connection that does not hear this server's own
// messages, which PostgreSQL delivers to every session listening on their channel, the
// sender's included. Connected to another database than the pool (ListenURL), or
// through a pooler in transaction mode, where the LISTEN stays on a connection the
// pooler hands to others, it is up and answers its pings, and this server misses every
// message of the others, which go on counting it: nothing said so. It is reported when
// a whole HeartbeatTimeout passed, listening, without an echo of this server's, although
// batches were committed in its first half (heartbeats are, every HeartbeatInterval):
// their echoes had the second half to come. Reported once, until an echo is heard.
//
// Echoes, not any notification: in another database where a cluster used the same
// channels, the connection heard that cluster, and the watch, which counted any
// notification, said nothing while this server delivered the other cluster's messages
// and missed its own's. Echoes are counted as notifications are examined, behind the
// receive queue: a window is judged only once everything heard by its middle has been
// examined, and not at all when the queue dropped some (an echo among them).
func (rt *runtime) watchHearing(now time.Time, w *hearing) {
	// examined before echoes: decode counts an echo before counting it examined.
	examined := rt.examined.Load()
	// Drops since this runtime started: the Builder counts those of its runtimes before.
	echoes, drops, commits := rt.echoes.Load(), rt.b.drops.n.Load()-rt.dropsBefore, rt.pub.commits.Load()
	heard, connects := rt.lis.heard.Load(), rt.b.stats.listenerConnects.Load()
	// A reconnection between two ticks loses the echoes of what was committed while it
	// lasted, and need not show as a tick that finds the listener down.
	if echoes != w.echoes || drops != w.drops || connects != w.connects || w.start.IsZero() || !rt.lis.isSynced() {
		if echoes != w.echoes && w.warned {
			rt.b.opts.Logger.Info("pgadapter: the LISTEN connection hears again")
			w.warned = false
		}
		*w = hearing{start: now, connects: connects, echoes: echoes, drops: drops, heard: heard, commits: commits, warned: w.warned}
		return
	}
	// At least minDeafTimeout: a shorter heartbeat timeout (25 ms) was shorter than the
	// scheduling delays of a loaded machine, and the connection was reported deaf while
	// it heard everything.
	timeout := max(rt.b.opts.HeartbeatTimeout, minDeafTimeout)
	if !w.mid && now.Sub(w.start) >= timeout/2 {
		w.midCommits, w.midHeard, w.mid = commits, heard, true
	}
	if !w.mid || now.Sub(w.start) < timeout || examined+drops < w.midHeard {
		return // the window's second half to come, or its echoes not examined yet
	}
	if w.midCommits > w.commits && !w.warned {
		w.warned = true
		others := ""
		if n := heard - w.heard; n > 0 {
			others = fmt.Sprintf(" (it received %d notifications of other servers)", n)
		}
		rt.b.report(fmt.Errorf("pgadapter: the LISTEN connection (backend pid %d) has received none of the %d batches this server committed in %v, which PostgreSQL sends back to it%s: it does not reach the database the pool publishes to (ListenURL naming another database, or a pooler in transaction mode?), and this server misses what the others send", rt.lis.pid.Load(), w.midCommits-w.commits, now.Sub(w.start).Round(time.Millisecond), others))
	}
	*w = hearing{start: now, connects: connects, echoes: echoes, drops: drops, heard: heard, commits: commits, warned: w.warned}
}

// minDeafTimeout is the least silence of the LISTEN connection, while this server's own
// messages commit, that watchHearing reports.
const minDeafTimeout = 2 * time.Second

// cleanup deletes old attachments every CleanupInterval. It has a goroutine of its own:
// a DELETE of many rows, or one waiting for a lock on the table, must not hold back the
// heartbeats that keep the other servers counting this one.
func (rt *runtime) cleanup(ctx context.Context) {
	o := &rt.b.opts
	if o.CleanupInterval <= 0 {
		return
	}
	t := time.NewTicker(o.CleanupInterval)
	defer t.Stop()
	batch, unlocked := cleanupBatch, false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			n, err := cleanupAttachments(ctx, rt.b.pool, rt.b.st, o.AttachmentRetention, &batch, &unlocked, cleanupBatch, o.RequestsTimeout, time.Now().Add(o.CleanupInterval))
			if err != nil && ctx.Err() == nil {
				rt.b.report(err)
			} else if n > 0 {
				o.Logger.Debug("pgadapter: deleted old attachments", "rows", n)
			}
		}
	}
}

// listenerPID returns the backend pid of the LISTEN connection, 0 when it is down.
func (b *Builder) listenerPID() uint32 {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.rt == nil {
		return 0
	}
	return b.rt.lis.pid.Load()
}

var _ socket.AdapterConstructor = (*Builder)(nil)

// reportClosed reports an operation of the application that a closed adapter did not
// publish, at most once a second: socket.io closes the adapter of a dynamic namespace
// that empties, and an application that still holds the namespace reaches only this
// server's clients through it.
func (b *Builder) reportClosed(err error) {
	b.stats.publishErrors.Add(1)
	b.closedSends.add(func(n int64) {
		// At warning level: report logs ErrClosed at debug level, as what closing
		// itself ends (requests) is expected then; this is the application's loss.
		err := fmt.Errorf("%w (%d so far)", err, n)
		b.opts.Logger.Warn("pgadapter: "+strings.TrimPrefix(err.Error(), "pgadapter: "), "error", err)
		b.handle(err)
	})
}

// reportQueue reports a message that could not be queued, at most once a second for
// ErrQueueFull, which comes in floods while PostgreSQL is unreachable.
func (b *Builder) reportQueue(err error) {
	if !errors.Is(err, ErrQueueFull) {
		b.report(err)
		return
	}
	b.queueFull.add(func(n int64) { b.report(fmt.Errorf("%w (%d dropped so far)", err, n)) })
}
