package pgadapter

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"

	"github.com/socketio-pg/pgadapter/internal/wire"
)

// channelHashBytes is the length of the hash that ends a shortened channel name.
const channelHashBytes = wire.ChannelHashBytes

// ChannelName returns the NOTIFY channel of a namespace: "<prefix>#<namespace>", as
// @socket.io/postgres-adapter names it. PostgreSQL truncates channel names to 63 bytes
// (LISTEN) or refuses them (pg_notify), so a longer name, or one PostgreSQL cannot hold
// (a NUL byte, invalid UTF-8), becomes at most its first 46 bytes (without NUL bytes or
// invalid UTF-8, cut at a character boundary), "#", and 16 hex digits of the
// SHA-256 of the full name: deterministic, so every pgadapter server (and emitter)
// derives the same channel. Node servers cannot use such namespaces at all.
func ChannelName(prefix, nsp string) string { return wire.ChannelName(prefix, nsp) }

// listener owns the dedicated LISTEN connection: one goroutine connects, LISTENs to every
// wanted channel, drains notifications into inbound without ever blocking on their
// processing, pings every heartbeat interval, and reconnects with jittered
// exponential backoff when it fails.
type listener struct {
	cfg      *pgx.ConnConfig
	opts     *Options
	inbound  chan<- *pgconn.Notification
	report   func(error)
	onListen func(channel string) // called after each successful LISTEN
	// conns counts the connections that ended. Read on the listener's goroutine (in
	// onListen), it names the connection a LISTEN was made on.
	conns atomic.Uint64
	// onRefused is called when the server refuses to LISTEN to a channel for its name
	// (see isDataRefusal), once per call of listen.
	onRefused func(channel string, err error)
	// onEncoding is called with the server's encoding at each connection.
	onEncoding func(serverEncoding string)
	onDrop     func(*pgconn.Notification) // called with each notification inbound had no room for
	onState    func(up bool, pid uint32, err error)

	mu     sync.Mutex
	wanted map[string]struct{}
	// fresh: channels listen was called for since the last apply. One that was
	// unlistened and listened again in between (an adapter replaced by a new one, with
	// another uid) is still LISTENed, and its new adapter must be announced all the same.
	fresh map[string]struct{}
	// refused: wanted channels whose LISTEN the server refused for their name (a
	// character the database's encoding cannot hold), not tried again until listen is
	// called for them again. Every other channel is LISTENed all the same: one
	// namespace's name made every LISTEN fail, and the whole server deaf.
	refused map[string]struct{}
	dirty   bool          // wanted changed since the goroutine last applied it
	waiting net.Conn      // the connection being read for notifications, if any
	synced  bool          // connected and every wanted channel LISTENed
	changed chan struct{} // closed and replaced at each change of synced
	// lastErr is why the last connection failed, until the listener is synced again:
	// Ready's timeout names it (a wrong password retries for ever).
	lastErr error
	stopped chan struct{} // closed when run returns: Ready then fails at once
	waiters atomic.Int32  // calls of waitSynced waiting, for tests
	pid     atomic.Uint32 // backend pid of the LISTEN connection, 0 when down
	heard   atomic.Int64  // notifications received, ever (see runtime.watchHearing)
	// announced is set once the current connection has been reported up (owned by the
	// goroutine).
	announced bool
}

func newListener(cfg *pgx.ConnConfig, opts *Options, inbound chan<- *pgconn.Notification) *listener {
	cfg = cfg.Copy()
	// pgx hands notifications to OnNotification instead of WaitForNotification when it is
	// set, and an application's pool often sets it for LISTENs of its own: the listener
	// would then receive nothing (pgx returns a nil notification).
	cfg.OnNotification = nil
	// Channel names and payloads travel in UTF-8, as Node's servers (whose driver sets
	// this) send and expect them; PostgreSQL converts them to and from the database's
	// encoding. pgx leaves the client encoding at the database's: in an EUC_JP database
	// a namespace named in Japanese could not be LISTENed, and in a LATIN1 one Node's
	// servers and ours read each other's non-ASCII characters as other ones.
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	cfg.RuntimeParams["client_encoding"] = "UTF8"
	// Cancel waits by deadline only, so that interrupting WaitForNotification (to LISTEN a
	// new channel or to ping) leaves the connection usable. A pool configured to send
	// cancel requests would otherwise cancel nothing and break the connection.
	cfg.BuildContextWatcherHandler = func(c *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.DeadlineContextWatcherHandler{Conn: c.Conn()}
	}
	return &listener{cfg: cfg, opts: opts, inbound: inbound, wanted: map[string]struct{}{}, fresh: map[string]struct{}{}, refused: map[string]struct{}{}, changed: make(chan struct{}), stopped: make(chan struct{})}
}

// listen asks for channel to be LISTENed, now and after every reconnect.
func (l *listener) listen(channel string) { l.update(channel, true) }

// unlisten stops listening to channel.
func (l *listener) unlisten(channel string) { l.update(channel, false) }

func (l *listener) update(channel string, want bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.refused, channel) // asked for again: tried again
	if want {
		l.wanted[channel] = struct{}{}
		l.fresh[channel] = struct{}{}
	} else {
		delete(l.wanted, channel)
		delete(l.fresh, channel)
	}
	l.dirty = true
	l.setSyncedLocked(false)
	l.interruptLocked()
}

func (l *listener) setSyncedLocked(v bool) {
	if v {
		l.lastErr = nil
	}
	if l.synced != v {
		l.synced = v
		close(l.changed)
		l.changed = make(chan struct{})
	}
}

// isSynced reports whether the connection is up with every wanted channel LISTENed.
func (l *listener) isSynced() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.synced
}

// waitSynced waits until the connection is up with every wanted channel LISTENed. It
// fails with ErrClosed once the listener stops, and with ctx's error, wrapping also why
// the last connection failed if one did.
func (l *listener) waitSynced(ctx context.Context) error {
	l.waiters.Add(1)
	defer l.waiters.Add(-1)
	for {
		l.mu.Lock()
		ok, ch := l.synced, l.changed
		l.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			l.mu.Lock()
			last := l.lastErr
			l.mu.Unlock()
			if last != nil {
				return fmt.Errorf("pgadapter: listener not ready: %w; the last attempt failed: %w", ctx.Err(), last)
			}
			return fmt.Errorf("pgadapter: listener not ready: %w", ctx.Err())
		case <-l.stopped:
			return fmt.Errorf("pgadapter: listener not ready: %w", ErrClosed)
		case <-ch:
		}
	}
}

func (l *listener) run(ctx context.Context) {
	defer close(l.stopped)
	attempt := 0
	for {
		conn, err := l.connect(ctx)
		var listened bool
		if err == nil {
			start := time.Now()
			listened, err = l.serve(ctx, conn)
			if listened && l.onState != nil {
				if ctx.Err() != nil {
					err = ErrClosed // the adapter closed it
				}
				l.onState(false, 0, err)
			}
			l.pid.Store(0)
			l.conns.Add(1)
			l.mu.Lock()
			l.setSyncedLocked(false)
			l.mu.Unlock()
			cctx, cancel := context.WithTimeout(context.Background(), time.Second)
			conn.Close(cctx)
			cancel()
			if listened && time.Since(start) >= l.opts.HeartbeatInterval {
				// Only a connection that lasted: one ended each time just after its
				// LISTEN (an idle_session_timeout shorter than the ping's interval, a
				// proxy's, a job that terminates sessions) was reopened every 50-100 ms
				// for good, each time announcing every namespace and reporting it.
				attempt = 0
			}
		}
		if ctx.Err() != nil {
			return
		}
		l.mu.Lock()
		l.lastErr = err
		l.mu.Unlock()
		delay := backoff(attempt)
		attempt++
		// Reported once (the report is logged too), and as what happened: a connection
		// that never listened was not lost.
		what := "listener connection lost"
		if !listened {
			what = "listener cannot connect"
		}
		l.report(fmt.Errorf("pgadapter: %s, attempt %d, reconnecting in %v: %w", what, attempt, delay, err))
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// backoff is full-jitter exponential: between half and all of 100ms·2^attempt, capped
// at 5s, so that servers cut off together do not reconnect in lockstep.
func backoff(attempt int) time.Duration {
	d := 100 * time.Millisecond << min(attempt, 6)
	d = min(d, 5*time.Second)
	return d/2 + rand.N(d/2+1)
}

func (l *listener) connect(ctx context.Context) (*pgx.Conn, error) {
	cctx, cancel := context.WithTimeout(ctx, listenerTimeout(l.opts.RequestsTimeout))
	defer cancel()
	var conn *pgx.Conn
	var err error
	// pgx panics for a configuration not made by pgx.ParseConfig (a ListenConnConfig
	// built by hand): on this goroutine, that ended the process.
	if perr := recovered(func() { conn, err = pgx.ConnectConfig(cctx, l.cfg) }); perr != nil {
		return nil, fmt.Errorf("connect (is ListenConnConfig made by pgx.ParseConfig?): %w", perr)
	}
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return conn, nil
}

// serve runs one connection until it fails or ctx ends. listened reports whether every
// channel was LISTENed at least once, which resets the backoff.
func (l *listener) serve(ctx context.Context, conn *pgx.Conn) (listened bool, err error) {
	applied := map[string]struct{}{}
	l.announced = false
	l.pid.Store(conn.PgConn().PID())
	if l.onEncoding != nil {
		l.onEncoding(conn.PgConn().ParameterStatus("server_encoding"))
	}
	netConn := conn.PgConn().Conn()
	stop := context.AfterFunc(ctx, l.interrupt)
	defer stop()
	lastQuery := time.Now() // connecting was one
	for {
		l.mu.Lock()
		dirty := l.dirty || !l.synced
		l.mu.Unlock()
		if dirty {
			if err := l.apply(ctx, conn, applied); err != nil {
				return listened, err
			}
			listened = true
			lastQuery = time.Now()
		}

		// Wait for notifications until the read deadline: a heartbeat interval from
		// now, or now when interrupt is called. One deadline covers every notification
		// read meanwhile: no context, timer or watcher per notification, which at tens
		// of thousands per second was a large share of the listener's allocations.
		l.mu.Lock()
		if l.dirty {
			l.mu.Unlock()
			continue
		}
		if ctx.Err() != nil {
			l.mu.Unlock()
			return listened, ctx.Err()
		}
		netConn.SetReadDeadline(time.Now().Add(l.opts.HeartbeatInterval))
		l.waiting = netConn
		l.mu.Unlock()

		received := 0
		var err error
		for {
			var n *pgconn.Notification
			// context.Background: pgconn then sets no context watcher; the deadline
			// does its work.
			if n, err = conn.WaitForNotification(context.Background()); err != nil {
				break
			}
			if n == nil {
				continue // only with OnNotification set, which newListener clears
			}
			received++
			l.heard.Add(1)
			select {
			case l.inbound <- n:
			default:
				l.onDrop(n)
			}
		}
		l.mu.Lock()
		l.waiting = nil
		l.mu.Unlock()
		netConn.SetReadDeadline(time.Time{})

		switch {
		case ctx.Err() != nil:
			return listened, ctx.Err()
		case !pgconn.Timeout(err):
			return listened, fmt.Errorf("wait for notification: %w", err)
		case time.Since(lastQuery) < l.opts.HeartbeatInterval:
			// woken to apply a LISTEN or UNLISTEN, or the last query was recent
		default:
			// A query every heartbeat interval, whether or not notifications arrive.
			// Quiet although our own heartbeats come back on this connection, it makes
			// sure the connection is alive. Busy, it keeps it alive: PostgreSQL's
			// idle_session_timeout, and a pooler's idle timeout, count the time since
			// the client's last query, and notifications sent to it do not reset that
			// (TestListenerSurvivesIdleSessionTimeout).
			pctx, pcancel := graceful(ctx, listenerTimeout(l.opts.HeartbeatInterval)) // see apply
			err := conn.Ping(pctx)
			pcancel()
			if err != nil {
				return listened, fmt.Errorf("ping: %w", err)
			}
			lastQuery = time.Now()
		}
	}
}

// interrupt ends the current wait for notifications, if there is one, by moving the
// connection's read deadline to now: a timeout leaves a pgconn connection usable.
func (l *listener) interrupt() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.interruptLocked()
}

func (l *listener) interruptLocked() {
	if l.waiting != nil {
		l.waiting.SetReadDeadline(time.Now())
	}
}

// listenerTimeout bounds the listener's statements: its ping, by a heartbeat interval,
// and its connection and LISTENs, by RequestsTimeout, each at least minPingTimeout. With
// the interval alone, a short one (10 ms) was shorter than a ping's round trip behind a
// burst of notifications on a loaded machine: every LISTEN connection of a cluster
// reconnected again and again, losing what was sent meanwhile. With RequestsTimeout
// alone, set short for requests that must fail fast (1 ms), the listener never connected.
func listenerTimeout(d time.Duration) time.Duration { return max(d, minPingTimeout) }

// minPingTimeout is the least time a ping is given; a connection silent that long is
// taken for dead.
const minPingTimeout = time.Second

// statementGrace is how long a statement of the listener's under way when the adapter
// closes may still take (see graceful).
const statementGrace = 250 * time.Millisecond

// graceful returns a context for one statement of the listener's, which ends timeout
// from now, or statementGrace after ctx ends. Closing the adapter lets a statement under
// way (a LISTEN takes a fraction of a millisecond) finish rather than interrupt it: pgx
// interrupts by a deadline on reads and writes alike, and on a TLS connection a write
// that times out leaves it unable to write anything else, not even the Terminate of its
// close, so that the LISTEN backend stayed, for pgx's 15-second drain, after Close
// returned. One on a connection gone silent is ended all the same.
func graceful(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	c, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(statementGrace, cancel) })
	return c, func() { stop(); cancel() }
}

// apply brings the connection's LISTENs in line with the wanted channels.
func (l *listener) apply(ctx context.Context, conn *pgx.Conn, applied map[string]struct{}) error {
	l.mu.Lock()
	wanted := make([]string, 0, len(l.wanted))
	for ch := range l.wanted {
		wanted = append(wanted, ch)
	}
	var unwanted []string
	for ch := range applied {
		if _, ok := l.wanted[ch]; !ok {
			unwanted = append(unwanted, ch)
		}
	}
	var relisted []string // listened already, and asked for again
	for ch := range l.fresh {
		if _, ok := applied[ch]; ok {
			relisted = append(relisted, ch)
		}
	}
	refused := maps.Clone(l.refused)
	clear(l.fresh)
	l.dirty = false
	l.mu.Unlock()

	qctx, cancel := graceful(ctx, listenerTimeout(l.opts.RequestsTimeout))
	defer cancel()
	for _, ch := range unwanted {
		if err := ctx.Err(); err != nil {
			return err // between statements
		}
		if _, err := conn.Exec(qctx, "UNLISTEN "+pgx.Identifier{ch}.Sanitize()); err != nil {
			return fmt.Errorf("unlisten %q: %w", ch, err)
		}
		delete(applied, ch)
	}
	added := relisted
	type refusal struct {
		channel string
		err     error
	}
	var refusals []refusal
	for _, ch := range wanted {
		if _, ok := applied[ch]; ok {
			continue
		}
		if _, ok := refused[ch]; ok {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := conn.Exec(qctx, "LISTEN "+pgx.Identifier{ch}.Sanitize()); err != nil {
			if isDataRefusal(err) {
				// Refused for the name, on any connection: the others go on.
				refusals = append(refusals, refusal{ch, err})
				continue
			}
			return fmt.Errorf("listen %q: %w", ch, err)
		}
		applied[ch] = struct{}{}
		added = append(added, ch)
	}
	l.mu.Lock()
	kept := refusals[:0]
	for _, r := range refusals {
		// Unless unlistened since, or listened again (to be tried again).
		_, wanted := l.wanted[r.channel]
		_, again := l.fresh[r.channel]
		if wanted && !again {
			l.refused[r.channel] = struct{}{}
			kept = append(kept, r)
		}
	}
	refusals = kept
	wasUp := l.synced
	if !l.dirty {
		l.setSyncedLocked(true)
	}
	nowUp := l.synced
	l.mu.Unlock()
	if !wasUp && nowUp && l.onState != nil && !l.announced {
		l.announced = true
		l.onState(true, conn.PgConn().PID(), nil)
	}
	for _, ch := range added {
		l.onListen(ch)
	}
	for _, r := range refusals {
		if l.onRefused != nil {
			l.onRefused(r.channel, r.err)
		}
	}
	return nil
}

// isDataRefusal reports whether err is PostgreSQL refusing the data of a statement
// (SQLSTATE class 22, data exception): a character the database's encoding cannot hold
// (22P05, 22021), a payload too long (22023). The same data is refused again, on any
// connection; nothing else is wrong.
func isDataRefusal(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "22")
}
