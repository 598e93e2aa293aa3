package pgadapter

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	goruntime "runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/socketio-pg/pgadapter/internal/wire"
)

// outgoing is one encoded message waiting to be published.
type outgoing struct {
	channel string
	nsp     string
	typ     wire.Type
	enc     wire.Encoded
	prefix  string      // attachment header prefix, when enc.Attachment is set
	done    func(error) // optional; called by the publisher once the message is sent or lost
	// committed, when set, is given the time its batch commits, in unix nanoseconds: the
	// adapter's last publication, after which its heartbeat is due (Adapter.heartbeat).
	committed *atomic.Int64
	// seq is the sequence number of the message's adapter, which the publisher gives
	// the message the next of (see number). Every adapter's message has one; one
	// without is sent as it is, and PostgreSQL delivers one of equal ones in a batch.
	seq *uint64
	// taken, when set, is called once the publisher takes the message into a batch:
	// what arrives from then on was not there before it was sent (see
	// Adapter.answerAnnouncement).
	taken func()
}

const (
	maxBatchMessages = 256
	maxBatchBytes    = 1 << 20
)

// publisher sends every message of one Builder, in the order they were queued, from one
// goroutine. Messages that queue up while a round trip is under way go together in the
// next one: a pipelined batch that PostgreSQL runs as one implicit transaction, so that
// many notifications share one commit (NOTIFY's commit lock is the cluster-wide
// bottleneck). Within a transaction PostgreSQL merges notifications with the same channel
// and payload: a server's differ by their sequence numbers (see number).
type publisher struct {
	pool   *pgxpool.Pool
	st     statements
	opts   *Options
	report func(error)
	stats  *counters

	mu     sync.RWMutex // guards closed against sends on queue
	closed bool
	queue  chan outgoing
	stop   chan struct{}
	// expire ends every query of the goroutine RequestsTimeout after close (see run).
	expire      context.Context
	expireNow   context.CancelFunc
	expireTimer *time.Timer // set by close (p.mu)
	finished    bool        // run has returned (p.mu)
	// idle is set while the goroutine waits for a message on an empty queue.
	idle atomic.Bool
	// taken counts the messages the goroutine took from queue; closes holds the
	// ADAPTER_CLOSEs and INITIAL_HEARTBEATs that found queue full (see overflow), under
	// closesMu.
	taken     atomic.Uint64
	closesMu  sync.Mutex
	closes    []overflowed
	hasCloses atomic.Bool
	keptOn    map[string]int // kept messages by channel (closesMu)
	wake      chan struct{}  // signalled by overflow
	// commits counts the batches committed by this publisher (see
	// runtime.watchHearing), which judges this runtime's echoes by them; the Builder's
	// Stats.Transactions counts those of all its runtimes.
	commits atomic.Int64
	// tableReady is set once the attachments table is known to exist: by the goroutine,
	// or by Builder.Ready, which waits for it.
	tableReady atomic.Bool

	// owned by the goroutine
	lz4   wire.LZ4   // whether the server compresses with lz4
	carry []outgoing // taken from the queue, to publish before anything queued
	batch []outgoing
	// settings is the statement that begins a batch with attachments, by whether it
	// commits asynchronously (1) and compresses with lz4 (2), with its lock_timeout
	// (see lockTimeout).
	settings [4]string
	// locked is set while the attachments table may be locked: a batch with
	// attachments was refused, or failed before it ran (see probeLock).
	locked bool
	// ascii is the Builder's: set once a connection tells that notifications must be
	// ASCII (see wire.ASCIIConnection).
	ascii *atomic.Bool
	// refusedChannels are the channels PostgreSQL refused to notify for their names,
	// with its error (see refuseChannel); onRefused tells their adapters.
	refusedChannels map[string]error
	onRefused       func(channel string, err error)
	// bisectDepth is how deep sendBatch is in halving a refused batch, and bisectLeft
	// the round trips it may still spend on it (see maxBisectSends).
	bisectDepth, bisectLeft int
	// number's work: the numbers it gave last (for unnumber), and its buffers, reused.
	marks      []seqMark
	numberEnds []int
	numberOut  []string
	chans      []string // sendBatch's NotifyMany arguments, reused
	payloads   []string
}

func newPublisher(pool *pgxpool.Pool, st statements, opts *Options, report func(error), stats *counters) *publisher {
	p := &publisher{pool: pool, st: st, opts: opts, report: report, stats: stats,
		queue: make(chan outgoing, opts.PublishQueueSize), stop: make(chan struct{}), wake: make(chan struct{}, 1),
		ascii: new(atomic.Bool)} // the Builder's replaces it
	p.expire, p.expireNow = context.WithCancel(context.Background())
	// The lock bound is fixed for the publisher: part of the statement's text, so that
	// no batch formats it.
	lock := fmt.Sprintf("set_config('lock_timeout', '%dms', true)", lockTimeout(opts.RequestsTimeout).Milliseconds())
	for i := range p.settings {
		q := "SELECT " + lock
		if i&1 != 0 {
			q += ", " + setAsyncSetting
		}
		if i&2 != 0 {
			q += ", " + setLZ4Setting
		}
		p.settings[i] = q
	}
	return p
}

// lockTimeout bounds the wait of a batch's transaction for a lock, four fifths of its
// RequestsTimeout, so that a batch held up by a lock on the attachments table (an
// ALTER TABLE, a CREATE INDEX, an operator's LOCK) fails with PostgreSQL's own error
// before the batch's timeout, which would leave unknown whether it committed: refused,
// it ran nowhere, and its heartbeats and small messages go without the attachments.
// A batch that timed out was lost whole, and the other servers dropped this one. (Half
// of RequestsTimeout, as first made, lost the attachments of locks that the batch would
// have outwaited: a tester's lock of 3 s against a timeout of 5.)
func lockTimeout(requests time.Duration) time.Duration {
	return max(requests/5*4, time.Millisecond)
}

// lockedWait bounds the probe of a table known to be locked (see probeLock).
const lockedWait = 100 * time.Millisecond

// probeLock asks, while the attachments table is known to be locked (a batch with
// attachments was refused, or failed before it ran), whether it still is: it takes the
// lock an insert takes, in a transaction of its own that gives up after lockedWait, and
// rolls back. While it is, a batch's attachments fail at once and its small messages go
// without them. Each batch with an attachment used to wait for the lock anew:
// lockTimeout in its insert, or, in pgx's prepare of the insert, made in a round trip
// of its own before the batch's lock_timeout (and again after every failed batch, whose
// statements pgx forgets), the whole RequestsTimeout. The heartbeats behind were late by
// twice that, and the other servers dropped this one. It returns the refusal (55P03)
// while the table is locked, nil otherwise: a probe that fails for another reason
// leaves the batch to find out.
func (p *publisher) probeLock(ctx context.Context) error {
	qctx, cancel := context.WithTimeout(ctx, p.opts.RequestsTimeout)
	defer cancel()
	wait := fmt.Sprintf("%dms", min(lockedWait, lockTimeout(p.opts.RequestsTimeout)).Milliseconds())
	err := pgx.BeginFunc(qctx, p.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(qctx, "SELECT set_config('lock_timeout', $1, true)", wait); err != nil {
			return err
		}
		_, err := tx.Exec(qctx, "LOCK TABLE "+p.st.Table+" IN ROW EXCLUSIVE MODE")
		return err
	})
	if isLockRefusal(err) {
		return err
	}
	return nil
}

// isLockRefusal reports whether err is PostgreSQL's lock_not_available.
func isLockRefusal(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "55P03"
}

// enqueue queues m without blocking. It fails with ErrQueueFull or ErrClosed, after
// calling m.done with the same error.
func (p *publisher) enqueue(m outgoing) error {
	p.mu.RLock()
	var err error
	if p.closed {
		err = ErrClosed
	} else if kept, ok := p.keepBehind(m); kept {
		if !ok {
			err = ErrQueueFull
		}
	} else {
		select {
		case p.queue <- m:
		default:
			if m.typ != wire.AdapterClose && m.typ != wire.InitialHeartbeat || !p.overflow(m) {
				err = ErrQueueFull
			}
		}
	}
	p.mu.RUnlock()
	if err != nil {
		if m.done != nil {
			m.done(err)
		}
		return err
	}
	if p.idle.Load() {
		// The publisher was waiting for this message, and the send made it the next
		// goroutine to run on this thread; but a caller that goes on to write to its
		// own clients starts a goroutine per client (engine.io's Send), each of which
		// takes that place, so the publisher would wait behind all of them: 100 µs
		// and more with 50 clients. Yielding now puts the message on the wire first.
		goruntime.Gosched()
	}
	return nil
}

// close stops accepting messages; run then publishes what is queued, for at most
// RequestsTimeout, and returns.
func (p *publisher) close() {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		close(p.stop)
		if !p.finished {
			p.expireTimer = time.AfterFunc(p.opts.RequestsTimeout, p.expireNow)
		}
	}
	p.mu.Unlock()
}

// finish ends what close started once run has returned: the timer would otherwise keep
// the publisher, and its queue's array, until it fired.
func (p *publisher) finish() {
	p.mu.Lock()
	p.finished = true
	if p.expireTimer != nil {
		p.expireTimer.Stop()
	}
	p.mu.Unlock()
	p.expireNow()
}

// run publishes until close, then drains the queue. Every query runs in a context that
// ends RequestsTimeout after close, the batch in flight at that moment included, so that
// the runtime's stop, which waits RequestsTimeout and a margin, finds the publisher done:
// the batch in flight had no bound, and, with PostgreSQL silent, a queue of repeated
// messages (a batch each) went on for a RequestsTimeout per batch.
func (p *publisher) run(ctx context.Context) {
	defer p.finish()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(p.expire, cancel)()
	if !p.opts.SkipTableCreation {
		p.createTable(ctx)
	}
	for {
		select {
		case <-p.stop: // without waiting for the carried messages: drain sends them
			p.drain(ctx)
			return
		default:
		}
		if len(p.carry) == 0 && !p.hasCloses.Load() {
			p.idle.Store(true)
			select {
			case m := <-p.queue:
				p.taken.Add(1)
				p.idle.Store(false)
				p.carry = append(p.carry, m)
			case <-p.wake:
				p.idle.Store(false)
			case <-p.stop:
				p.idle.Store(false)
				p.drain(ctx)
				return
			}
		}
		p.sendBatch(ctx, p.nextBatch())
	}
}

// drain publishes what was accepted before close until ctx ends (RequestsTimeout after
// close, see run), and reports the rest as lost. The deadline bounds every query of it
// (a batch could otherwise take the table's creation, the lz4 probe and two attempts,
// each up to RequestsTimeout).
func (p *publisher) drain(ctx context.Context) {
	for (len(p.carry) > 0 || len(p.queue) > 0 || p.hasCloses.Load()) && ctx.Err() == nil {
		p.sendBatch(ctx, p.nextBatch())
	}
	lost := p.carry
	p.carry = nil
	for len(p.queue) > 0 {
		lost = append(lost, <-p.queue)
	}
	lost = append(lost, p.takeCloses(true)...)
	if len(lost) > 0 {
		p.fail(lost, ErrClosed)
	}
}

// nextBatch takes carried messages first, then queued ones without waiting, up to the
// batch limits. Equal notifications in a batch, which PostgreSQL would deliver once,
// differ by their numbers (see number): a batch used to end at every repeat, and a
// burst of equal broadcasts went one transaction each, 3.5 times slower.
func (p *publisher) nextBatch() []outgoing {
	batch := p.batch[:0]
	size := 0
	ascii := p.ascii.Load()
	add := func(m outgoing) {
		if ascii {
			if err := p.toASCII(&m); err != nil {
				p.fail([]outgoing{m}, err)
				return // taken, and lost
			}
		}
		batch = append(batch, m)
		size += m.size()
		if m.taken != nil {
			m.taken()
		}
	}
	for len(p.carry) > 0 && len(batch) < maxBatchMessages && size < maxBatchBytes {
		add(p.carry[0])
		p.carry = p.carry[1:]
	}
	for len(batch) < maxBatchMessages && size < maxBatchBytes {
		// Closes whose earlier messages are all taken go next (carried, in order).
		if due := p.takeCloses(false); len(due) > 0 {
			p.carry = append(p.carry, due...)
			for len(p.carry) > 0 && len(batch) < maxBatchMessages && size < maxBatchBytes {
				add(p.carry[0])
				p.carry = p.carry[1:]
			}
			continue
		}
		select {
		case m := <-p.queue:
			p.taken.Add(1)
			add(m)
		default:
			return p.keep(batch)
		}
	}
	return p.keep(batch)
}

func (p *publisher) keep(batch []outgoing) []outgoing {
	p.batch = batch
	return batch
}

func (m *outgoing) size() int { return len(m.enc.JSON) + len(m.enc.Attachment) + len(m.channel) }

func (p *publisher) createTable(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, p.opts.RequestsTimeout)
	defer cancel()
	if err := p.ensureTable(cctx); err != nil {
		p.report(err)
	}
}

// ensureTable creates the attachments table unless it is known to exist. Safe beside
// the goroutine's own calls: creation takes an advisory lock, and creates only what is
// missing.
func (p *publisher) ensureTable(ctx context.Context) error {
	if p.tableReady.Load() {
		return nil
	}
	if err := ensureTable(ctx, p.pool, p.st, p.opts.LoggedTable); err != nil {
		return err
	}
	p.tableReady.Store(true)
	return nil
}

// sendBatch publishes a batch in one round trip. A batch that fails before anything
// reached the server is tried once more on another connection; otherwise every message
// of it is reported lost.
func (p *publisher) sendBatch(ctx context.Context, batch []outgoing) {
	if len(batch) == 0 {
		return // its messages failed before (see makeASCII)
	}
	if len(p.refusedChannels) > 0 {
		// Messages on a channel PostgreSQL refused (see refuseChannel), queued before
		// their adapter knew: lost together, with no round trip, in one report.
		var lost []outgoing
		var cause error
		kept := batch[:0:0]
		for _, m := range batch {
			if err, ok := p.refusedChannels[m.channel]; ok {
				lost, cause = append(lost, m), err
			} else {
				kept = append(kept, m)
			}
		}
		if len(lost) > 0 {
			p.fail(lost, cause)
			batch = kept
		}
		if len(batch) == 0 {
			return
		}
	}
	attachments := hasAttachment(batch)
	if !p.tableReady.Load() && !p.opts.SkipTableCreation && attachments {
		p.createTable(ctx)
	}
	lz4 := false
	if attachments {
		var err error
		if lz4, err = p.lz4.Use(func() (bool, error) { return p.probeLZ4(ctx) }, p.opts.RequestsTimeout); err != nil {
			p.opts.Logger.Debug("pgadapter: lz4 probe failed", "error", err)
		}
	}
	// Runs of inline messages go as one NotifyOne (one channel) or NotifyMany each;
	// attachments between them keep their place, since the statements of a batch run in
	// order. Each message is numbered (see number): numbered is its payload, or its
	// attachment header's prefix.
	chans, payloads := p.chans[:0], p.payloads[:0]
	var numbered []string
	prepare := func() {
		numbered = p.number(batch)
		chans, payloads = chans[:0], payloads[:0]
		for i := range batch {
			if m := &batch[i]; m.enc.Attachment == nil {
				chans = append(chans, m.channel)
				payloads = append(payloads, numbered[i])
			}
		}
	}
	prepare()
	// A pgx.Batch is made for each attempt: pgx records in a queued query the prepared
	// statement it ran as on the first connection, and a second attempt on another
	// connection with the same Batch executed a statement that does not exist there
	// (TestPublishRetriesOnAnotherConnection).
	utf8Channels := false // a channel's name is not ASCII
	for i := range batch {
		if !wire.IsASCII(batch[i].channel) {
			utf8Channels = true
			break
		}
	}
	inlineASCII := func() bool { // the inline payloads are ASCII
		for _, s := range payloads {
			if !wire.IsASCII(s) {
				return false
			}
		}
		return true
	}
	build := func(conn *pgconn.PgConn) *pgx.Batch {
		b := &pgx.Batch{}
		if utf8Channels && conn.ParameterStatus("client_encoding") != "UTF8" {
			// Channel names in UTF-8, converted by the database (see newListener); the
			// pool's connections speak the database's encoding unless told otherwise.
			// For this transaction only: the pool is the application's too. (Payloads
			// are ASCII on such a connection: see toASCII.)
			b.Queue(wire.SetUTF8)
		}
		// Only a batch that inserts rows writes WAL before its commit record, which is
		// what makes PostgreSQL flush at commit: one that only notifies needs no
		// setAsyncSetting. Nor does it wait for the table's locks (see lockTimeout).
		if attachments {
			i := 0
			if !p.opts.SynchronousCommit {
				i |= 1
			}
			if lz4 {
				i |= 2
			}
			b.Queue(p.settings[i])
		}
		run, next := 0, 0 // the current run of inline messages in chans/payloads, and its end
		endRun := func() {
			switch n := next - run; {
			case n == 1:
				b.Queue(p.st.Notify, chans[run], payloads[run])
			case n > 1 && oneChannel(chans[run:next]):
				b.Queue(p.st.NotifyOne, chans[run], payloads[run:next])
			case n > 1:
				b.Queue(p.st.NotifyMany, chans[run:next], payloads[run:next])
			}
			run = next
		}
		for i := range batch {
			if m := &batch[i]; m.enc.Attachment != nil {
				endRun()
				b.Queue(p.st.InsertNotify, m.enc.Attachment, m.channel, numbered[i], wire.AttachmentHeaderSuffix)
			} else {
				next++
			}
		}
		endRun()
		return b
	}
	// maybe is set when the last send failed once the batch had gone to PostgreSQL,
	// for a reason that leaves unknown whether it committed (the connection lost, the
	// timeout): its numbers are kept (see number).
	var maybe bool
	send := func() (err error) {
		for try := 0; try < maxSendTries; try++ {
			qctx, cancel := context.WithTimeout(ctx, p.opts.RequestsTimeout)
			var sent, unrun bool
			sent, unrun, err = p.sendOnce(qctx, build, inlineASCII)
			cancel()
			maybe = err != nil && sent && !unrun && !pgconn.SafeToRetry(err) && !writeFailed(err)
			if err == nil || ctx.Err() != nil || errors.Is(err, errLearntASCII) || !(unrun || pgconn.SafeToRetry(err) && try == 0) {
				break
			}
		}
		return err
	}
	var err error
	if p.bisectDepth > 0 {
		p.bisectLeft-- // a round trip of the budget (see below)
	}
	if attachments && p.locked {
		err = p.probeLock(ctx) // a refusal is handled as the batch's own would be
	}
	if err == nil {
		err = send()
	}
	defer func() {
		clear(chans) // drop references to sent payloads; the arrays are reused
		clear(payloads)
		clear(numbered)
		p.chans, p.payloads = chans[:0], payloads[:0]
	}()
	var pgErr *pgconn.PgError
	var prep pgx.ErrPreprocessingBatch
	// Refused by PostgreSQL, or failed while pgx prepared the batch's statements before
	// running any (the prepare of the insert waited for a lock on the table): nothing
	// of it ran.
	refused := func(err error) bool { return errors.As(err, &pgErr) || errors.As(err, &prep) }
	if err != nil && (!maybe || refused(err)) {
		// Not committed (not sent, refused, or ended by the server before it ran): its
		// numbers are given again, to what is sent next (its messages sent again below,
		// or the next batch), so that the other servers see no gap for messages this
		// server reports lost itself. A batch that may have committed keeps them: the
		// others count what did not arrive.
		p.unnumber()
	}
	if errors.Is(err, errLearntASCII) {
		p.sendBatch(ctx, p.makeASCII(batch))
		return
	}
	if err != nil && len(batch) == 1 && isDataRefusal(err) && ctx.Err() == nil && refusesChannel(batch[0], err) {
		err = p.refuseChannel(batch[0].channel, err)
	}
	if err != nil && len(batch) > 1 && isDataRefusal(err) && ctx.Err() == nil {
		// PostgreSQL refused the data of one of its messages (a character the database's
		// encoding cannot hold in a channel name, a payload the escapes took past the
		// limit): the batch is one transaction, and every message of it, of every
		// namespace, was lost with that one. Sent again in halves, in order, down to the
		// messages refused, which alone are lost, and reported. Within a budget of
		// round trips per batch: a refusal of every message (an operator's trigger on
		// the table) would take two per message; past it, what is left is handled as
		// any refused batch (below).
		if p.bisectDepth == 0 {
			p.bisectLeft = maxBisectSends
		}
		if p.bisectLeft > 0 {
			p.bisectDepth++
			h := len(batch) / 2
			p.sendBatch(ctx, batch[:h:h])
			p.sendBatch(ctx, batch[h:])
			p.bisectDepth--
			return
		}
		// Past the budget: many channels refused for their names (namespaces named
		// with emoji in a LATIN1 database, closed together), whose halving took the
		// budget. The messages on channels whose names are not ASCII, which may be
		// such, are lost, reported; the others go, in order, once more.
		if ok, suspect := splitSuspects(batch); len(suspect) > 0 {
			p.fail(suspect, err)
			p.sendBatch(ctx, ok)
			return
		}
	}
	if attachments {
		// Maybe locked, until a batch with attachments commits (see probeLock): refused
		// for a lock, or failed in pgx's prepare (which a lock holds up to the timeout).
		p.locked = err != nil && ctx.Err() == nil && (isLockRefusal(err) || errors.As(err, &prep))
	}
	if err != nil && attachments && refused(err) && ctx.Err() == nil {
		if pgErr != nil && pgErr.Code == "42P01" && !p.opts.SkipTableCreation {
			// The table was dropped while this server ran: create it again, and retry.
			p.tableReady.Store(false)
			p.createTable(ctx)
			if p.tableReady.Load() {
				prepare() // numbered again: the numbers were taken back
				if err = send(); err != nil && (!maybe || refused(err)) {
					p.unnumber()
				}
			}
		}
		if err != nil && len(chans) > 0 && refused(err) {
			// An insert failed (the table is gone, a privilege revoked, a lock held
			// past lockTimeout): the batch is one transaction, and its heartbeats and
			// small messages went down with it, so that other servers could count this
			// one gone. They go without the attachments, in order; the attachments are
			// lost, and reported. Only if PostgreSQL refused it, as the first time: a
			// retry that failed otherwise (the connection lost) may have committed, and
			// sending again would deliver the small messages twice.
			inline, rest := p.split(batch)
			p.fail(rest, err)
			p.sendBatch(ctx, inline)
			return
		}
	}
	if err != nil {
		p.fail(batch, err)
		return
	}
	p.commits.Add(1)
	p.stats.transactions.Add(1)
	now := time.Now().UnixNano()
	var last *atomic.Int64
	for i := range batch {
		m := &batch[i]
		if m.committed != nil && m.committed != last {
			m.committed.Store(now)
			last = m.committed
		}
		countType(&p.stats.published, m.typ)
		if m.enc.Attachment == nil {
			p.stats.publishedBytes.Add(int64(len(numbered[i])))
		} else {
			p.stats.publishedBytes.Add(int64(len(m.enc.Attachment)))
		}
		if m.enc.Attachment != nil {
			p.stats.attachmentsWritten.Add(1)
		}
		if m.done != nil {
			m.done(nil)
		}
	}
}

// oneChannel reports whether every channel of chans is the first.
func oneChannel(chans []string) bool {
	for _, c := range chans[1:] {
		if c != chans[0] {
			return false
		}
	}
	return true
}

// number gives each message of batch with an adapter (outgoing.seq) the next sequence
// number of its adapter (wire.SeqKey), and returns, by index in batch, the payloads
// numbered: an inline message's, or the prefix of an attachment's header. A gap in a
// server's numbers tells the others how many of its messages they did not receive
// (see runtime.sequence). The numbers are given here, by the goroutine that sends in
// order, not when the message is queued, so that they count what is sent, in the order
// it commits. The payloads are written into one buffer, allocated once at their size
// (a reused buffer copied into a string cost a batch of 256 small messages 20
// allocations and 350 KB, against 1 and 74 KB); messages keep theirs unnumbered, to be
// numbered again if the batch is taken back (unnumber).
func (p *publisher) number(batch []outgoing) []string {
	p.marks = p.marks[:0]
	size := 0
	for i := range batch {
		if m := &batch[i]; m.enc.Attachment != nil {
			size += len(m.prefix) + wire.SeqRoom
		} else {
			size += len(m.enc.JSON) + wire.SeqRoom
		}
	}
	var sb strings.Builder
	sb.Grow(size)
	ends := p.numberEnds[:0]
	for i := range batch {
		m := &batch[i]
		text := m.enc.JSON
		if m.enc.Attachment != nil {
			text = m.prefix
		}
		if m.seq == nil {
			sb.WriteString(text)
		} else {
			p.marks = append(p.marks, seqMark{m.seq, *m.seq})
			*m.seq++
			wire.WriteSeq(&sb, text, *m.seq)
		}
		ends = append(ends, sb.Len())
	}
	all := sb.String()
	out := p.numberOut[:0]
	start := 0
	for _, end := range ends {
		out = append(out, all[start:end])
		start = end
	}
	p.numberEnds, p.numberOut = ends[:0], out
	return out
}

// seqMark is an adapter's sequence number before number gave one of its messages the
// next.
type seqMark struct {
	seq  *uint64
	prev uint64
}

// unnumber takes back the numbers the last call of number gave.
func (p *publisher) unnumber() {
	for i := len(p.marks) - 1; i >= 0; i-- {
		*p.marks[i].seq = p.marks[i].prev
	}
	p.marks = p.marks[:0]
}

// splitSuspects returns the messages of batch whose channels' names are ASCII, which no
// database refuses, and the others, in new slices, in order.
func splitSuspects(batch []outgoing) (ok, suspect []outgoing) {
	for _, m := range batch {
		if wire.IsASCII(m.channel) {
			ok = append(ok, m)
		} else {
			suspect = append(suspect, m)
		}
	}
	return ok, suspect
}

// maxBisectSends bounds the round trips spent on halving one refused batch: a batch of
// 256 messages with one refused takes 16, with four about 50.
const maxBisectSends = 64

// maxSendTries bounds the attempts at a batch: one more when nothing reached the server,
// and up to this many while the connections handed over turn out to be ended ones (see
// sendOnce).
const maxSendTries = 4

// sendOnce sends b in one round trip, and reports whether it was sent (not when no
// connection could be had), and whether it failed before the server ran any of it, and
// can be tried again: its write failed (see writeFailed), or its first answer was the
// server ending the connection (SQLSTATE class 57, FATAL).
// PostgreSQL writes that error to a connection it ends while idle, in a pool
// (pg_terminate_backend, idle_session_timeout, a fast shutdown): the batch sent next on
// it was lost, though nothing of it ran, and a retry on another connection is safe.
// Ended anywhere later, the transaction may have committed, and is not tried again.
func (p *publisher) sendOnce(ctx context.Context, build func(*pgconn.PgConn) *pgx.Batch, ascii func() bool) (sent, unrun bool, err error) {
	c, err := p.pool.Acquire(ctx)
	if err != nil {
		return false, false, err
	}
	defer c.Release()
	pc := c.Conn().PgConn()
	if wire.ASCIIConnection(pc.ParameterStatus("server_encoding"), pc.ParameterStatus("client_encoding")) {
		// Learnt from this connection (the adapters may have been told by the
		// listener's meanwhile): the batch, made before, is made ASCII (see sendBatch)
		// before it is sent. Whatever p.ascii says: the listener may have set it after
		// the batch was made.
		p.ascii.Store(true)
		if !ascii() {
			return false, true, errLearntASCII
		}
	}
	b := build(pc)
	br := c.SendBatch(ctx, b)
	for i := range b.Len() {
		if _, err = br.Exec(); err != nil {
			var pgErr *pgconn.PgError
			unrun = i == 0 && errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "57P") &&
				cmp.Or(pgErr.SeverityUnlocalized, pgErr.Severity) == "FATAL" ||
				writeFailed(err) && !pgconn.Timeout(err) // a timeout is not tried again: RequestsTimeout bounds the batch
			break
		}
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return true, unrun, err
}

// writeFailed reports whether err is the failure to write a batch to the server: the
// server ran none of it. pgx writes a batch in one write, its Sync last (pipelined, its
// statements' descriptions first, in a round trip of their own that runs nothing), and
// an implicit transaction commits only at that Sync, which a failed write did not
// deliver. A batch larger than the socket's buffers, written on a connection the server
// had ended, fails so after part of it went out ("broken pipe"): pgx calls that unsafe
// to retry, since bytes were written, and it was lost, and counted missed by the other
// servers, where one that fails in its first read is tried again (see sendOnce). (A
// reviewer traced every exec mode of pgx v5.12.0, and TLS: Go's write returns an error
// only with the tail unwritten, and reading results never writes. A context's deadline
// reaches here as pgx's timeout error, without the write's: such a batch is taken as
// one that may have committed. Not so under TLS renegotiation, which a TLSConfig must
// not enable: a renegotiation's write fails inside a read of the results.)
func writeFailed(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "write"
}

// fail reports the messages of batch lost, with err.
func (p *publisher) fail(batch []outgoing, err error) {
	types := map[string]int{}
	for _, m := range batch {
		types[m.typ.String()]++
	}
	p.stats.publishErrors.Add(int64(len(batch)))
	p.report(&PublishError{Messages: len(batch), Types: types, Err: err})
	for i := range batch {
		if m := &batch[i]; m.done != nil {
			m.done(err)
		}
	}
}

// split returns the inline messages of batch, in order, and its attachments, in new
// slices (batch's array is reused by the next batch).
func (p *publisher) split(batch []outgoing) (inline, attachments []outgoing) {
	for _, m := range batch {
		if m.enc.Attachment == nil {
			inline = append(inline, m)
		} else {
			attachments = append(attachments, m)
		}
	}
	return inline, attachments
}

// setLZ4Setting makes the rest of a batch's transaction compress the attachment rows it inserts
// with lz4 instead of PostgreSQL's default, pglz: about a tenth of the server's CPU time
// per 20 KB row (81 µs against 8 µs on the development machine), for rows that live a
// minute. It is local to the transaction and changes nothing else; readers, Node's
// included, never see the difference, since PostgreSQL decompresses either on read.
const setLZ4Setting = "set_config('default_toast_compression', 'lz4', true)"

// setAsyncSetting makes a batch's transaction commit without waiting for PostgreSQL to flush
// its WAL to disk (and to synchronous standbys), unless Options.SynchronousCommit. The
// flush is an fsync, 0.3-0.4 ms on the development machine's disk, and it bought nothing
// here: a NOTIFY is delivered at commit either way, and PostgreSQL keeps no notification
// across a crash, so a flushed commit does not make delivery any surer. Like setLZ4Setting it is
// local to the transaction; it changes neither visibility nor the order of commits. Only
// batches with attachment rows need it: PostgreSQL flushes a commit only when the
// transaction wrote WAL before it, which NOTIFY alone does not (pgbench, 4 connections
// of pg_notify on a server with fsync on: 19,700 commits/s with synchronous_commit on,
// 19,900-20,100 off).
const setAsyncSetting = "set_config('synchronous_commit', 'off', true)"

// probeLZ4 asks whether the server can compress with lz4 (see wire.LZ4: once, and a
// RequestsTimeout after a failed ask, so that a database that is down does not cost
// every batch a second timeout).
func (p *publisher) probeLZ4(ctx context.Context) (ok bool, err error) {
	qctx, cancel := context.WithTimeout(ctx, p.opts.RequestsTimeout)
	defer cancel()
	err = p.pool.QueryRow(qctx, wire.ProbeLZ4).Scan(&ok)
	return ok, err
}

func hasAttachment(batch []outgoing) bool {
	for _, m := range batch {
		if m.enc.Attachment != nil {
			return true
		}
	}
	return false
}

// PublishError reports messages that could not be published. They are lost: the adapter
// delivers at most once, and does not send them again. When the connection failed after
// the batch was sent (a network partition, say), PostgreSQL may still have received it,
// and commit it once it notices: those messages then arrive late, possibly after
// messages published since on another connection.
type PublishError struct {
	// Messages is how many messages were lost.
	Messages int
	// Types counts them by message type name ("BROADCAST", ...), as Stats does.
	Types map[string]int
	// Err is the cause.
	Err error
}

// Error says how many messages were lost, of which types, and why.
func (e *PublishError) Error() string {
	return fmt.Sprintf("pgadapter: publish failed, %d message(s) lost %v: %v", e.Messages, e.Types, e.Err)
}

// Unwrap returns the cause, for errors.Is and errors.As.
func (e *PublishError) Unwrap() error { return e.Err }

// errLearntASCII ends an attempt at a batch, before anything is sent, on the connection
// that told the publisher its payloads must be ASCII (see sendOnce).
var errLearntASCII = errors.New("pgadapter: the connection needs ASCII payloads")

// toASCII makes an inline message ASCII, as the adapters encode messages once they know
// the database needs it (see wire.ASCII): its JSON escaped, or, when the escapes make it
// too long, an attachment. A message encoded before they knew it went out as it was:
// PostgreSQL refused it, or, on a connection speaking another encoding, converted its
// bytes as that encoding's (other characters).
func (p *publisher) toASCII(m *outgoing) error {
	if m.enc.Attachment != nil || wire.IsASCII(m.enc.JSON) {
		return nil
	}
	threshold := wire.SeqThreshold(p.opts.PayloadThreshold)
	if js := wire.EscapeNonASCII(m.enc.JSON); len(js) < threshold {
		m.enc.JSON = js
		return nil
	}
	return p.toAttachment(m)
}

// toAttachment turns an inline message into an attachment, as the adapter would have
// encoded it, within MaxAttachmentSize.
func (p *publisher) toAttachment(m *outgoing) error {
	n, err := wire.DecodeNotification(m.enc.JSON)
	if err == nil && n.Message == nil {
		err = errors.New("not an inline message")
	}
	var body []byte
	if err == nil {
		body, err = wire.EncodeMsgpack(n.Message)
	}
	if err != nil {
		return fmt.Errorf("pgadapter: %s: written as an attachment: %w", m.typ, err)
	}
	if why := wire.Oversize(body, p.opts.MaxAttachmentSize); why != "" {
		return fmt.Errorf("pgadapter: %s of %s: %w", m.typ, why, ErrAttachmentTooLarge)
	}
	m.enc = wire.Encoded{Attachment: body}
	m.prefix = wire.AttachmentHeaderPrefix(n.Message.UID, n.Message.Type)
	return nil
}

// makeASCII makes the inline messages of batch ASCII (toASCII). It returns a new slice.
// (Two that differed only by characters the escapes write as another copy of them are
// equal now, but for their numbers, which keep them apart.)
func (p *publisher) makeASCII(batch []outgoing) []outgoing {
	out := make([]outgoing, 0, len(batch))
	for _, m := range batch {
		if err := p.toASCII(&m); err != nil {
			p.fail([]outgoing{m}, err)
			continue
		}
		out = append(out, m)
	}
	return out
}

// refusesChannel reports whether PostgreSQL's refusal (err, a data exception) of the
// single message m is its channel's name: too long in the database's encoding, or
// holding a character the database cannot hold, when its payload is ASCII.
func refusesChannel(m outgoing, err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	// The payload is ASCII (an attachment's is its header): PostgreSQL cannot have
	// refused its characters, nor its length when it is below the limit, which ASCII
	// holds in every encoding. What is left is the channel's name: a character the
	// database cannot hold (22P05, 22021), or too long in its encoding (22023). Told
	// by their codes, not their messages, which lc_messages translates.
	payload := m.enc.JSON
	if m.enc.Attachment != nil {
		payload = m.prefix
	}
	// An ASCII channel's name is held by every encoding, in at most 63 bytes (see
	// ChannelName).
	if !wire.IsASCII(payload) || len(payload) > wire.MaxNotifyPayload || wire.IsASCII(m.channel) {
		return false
	}
	switch pgErr.Code {
	case "22P05", "22021", "22023":
		return true
	}
	return false
}

// maxRefusedChannels bounds the channels remembered as refused: clients choose the
// names of dynamic namespaces. Their adapters stop publishing once told, so only
// messages queued before need the record.
const maxRefusedChannels = 1024

// refuseChannel records that PostgreSQL refused channel for its name: later messages on
// it are failed without a round trip, and its adapter is told. It returns the refusal,
// wrapping ErrChannelRefused.
func (p *publisher) refuseChannel(channel string, err error) error {
	if p.refusedChannels == nil || len(p.refusedChannels) >= maxRefusedChannels {
		p.refusedChannels = map[string]error{}
	}
	if known, ok := p.refusedChannels[channel]; ok {
		return known
	}
	wrapped := fmt.Errorf("%w (channel %q): %w", ErrChannelRefused, channel, err)
	p.refusedChannels[channel] = wrapped
	if p.onRefused != nil {
		p.onRefused(channel, err)
	}
	return wrapped
}

// overflowed is an ADAPTER_CLOSE or INITIAL_HEARTBEAT that found the queue full, and the
// count of messages taken from the queue after which it goes: those queued before it.
type overflowed struct {
	m     outgoing
	after uint64
}

// overflow keeps aside an ADAPTER_CLOSE or an INITIAL_HEARTBEAT that found the queue
// full, to go after every message queued before it, and reports whether it did: at most
// PublishQueueSize of them wait so. Refused, as other messages are, a close was lost:
// the other servers counted the closed server until their heartbeat timeout, and their
// requests waited for it until RequestsTimeout (a tester's finding: io.Close after a
// burst). A lost announcement left the namespace's first client waiting RequestsTimeout
// for its echo (see Adapter.AddAll), and the other servers unaware of it until its next
// heartbeat.
func (p *publisher) overflow(m outgoing) bool {
	after := p.keptBound()
	p.closesMu.Lock()
	defer p.closesMu.Unlock()
	if len(p.closes) >= cap(p.queue) {
		return false
	}
	p.keepLocked(m, after)
	return true
}

// keptBound is how many messages the goroutine must have taken from the queue before a
// message kept aside now may go: those queued, counted before those taken, and one
// more. The goroutine may take messages in between, and one it has received may not be
// counted yet (a tester saw a close go before the last message of its adapter). Later
// is harmless: the messages of its channel queued after it wait behind it (see
// keepBehind), and an empty queue lets every one go (see takeCloses).
func (p *publisher) keptBound() uint64 {
	queued := uint64(len(p.queue))
	return queued + p.taken.Load() + 1
}

// keepLocked keeps m aside (closesMu held), and wakes the goroutine.
func (p *publisher) keepLocked(m outgoing, after uint64) {
	p.closes = append(p.closes, overflowed{m, after})
	if p.keptOn == nil {
		p.keptOn = map[string]int{}
	}
	p.keptOn[m.channel]++
	p.hasCloses.Store(true)
	select {
	case p.wake <- struct{}{}: // the goroutine may have emptied the queue meanwhile, and wait
	default:
	}
}

// keepBehind keeps m aside, behind a message of its channel kept aside already, so that
// it does not go before it: kept reports whether one was there, ok whether m found room
// (PublishQueueSize kept at most). A kept message waits for those queued before it,
// counted with a margin (see overflow): messages queued after it could go first, and a
// broadcast went before its namespace's announcement, its close before the message
// that preceded it (a reviewer's finding). Messages of other channels may; their order
// with it does not matter.
func (p *publisher) keepBehind(m outgoing) (kept, ok bool) {
	if !p.hasCloses.Load() {
		return false, false
	}
	after := p.keptBound()
	p.closesMu.Lock()
	defer p.closesMu.Unlock()
	if p.keptOn[m.channel] == 0 {
		return false, false
	}
	if len(p.closes) >= cap(p.queue) {
		return true, false
	}
	p.keepLocked(m, after)
	return true, true
}

// takeCloses returns the overflowed closes whose turn has come (all of them when all is
// set). Only the publisher's goroutine calls it.
func (p *publisher) takeCloses(all bool) []outgoing {
	if !p.hasCloses.Load() {
		return nil
	}
	p.closesMu.Lock()
	defer p.closesMu.Unlock()
	var due []outgoing
	// An empty queue, seen by the goroutine that alone takes from it, holds nothing
	// queued before any of them: the bound, counted while the goroutine took messages,
	// may be too late by those.
	all = all || len(p.queue) == 0
	taken := p.taken.Load()
	rest := p.closes[:0]
	var waiting map[string]bool // channels with a kept message not due yet: the later wait too
	for _, c := range p.closes {
		if (all || taken >= c.after) && !waiting[c.m.channel] {
			due = append(due, c.m)
			if p.keptOn[c.m.channel]--; p.keptOn[c.m.channel] == 0 {
				delete(p.keptOn, c.m.channel)
			}
		} else {
			if waiting == nil {
				waiting = map[string]bool{}
			}
			waiting[c.m.channel] = true
			rest = append(rest, c)
		}
	}
	clear(p.closes[len(rest):])
	p.closes = rest
	p.hasCloses.Store(len(rest) > 0)
	return due
}
