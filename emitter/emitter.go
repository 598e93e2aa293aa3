// Package emitter publishes into a pgadapter (or @socket.io/postgres-adapter) cluster from
// any Go process: a worker, a cron job, an HTTP handler of another service. It needs no
// Socket.IO server, only a database connection:
//
//	e, err := emitter.New(pool, nil)
//	...
//	err = e.To("room1").Emit(ctx, "hello", "world")
//
// Every server of the cluster delivers the message to its matching clients. The emitter
// speaks the adapter's wire protocol through the same codec: large and binary payloads go
// through the attachments table, and messages carry the namespace (so Node.js servers
// accept them, unlike those of Node's own emitter) and the uid "emitter".
//
// An Emitter is an immutable value: To, In, Except, Volatile, Compress and Of return a new
// one, so deriving emitters from a shared one is always safe. Publishing concurrently is
// safe through a *pgxpool.Pool; a *pgx.Conn or a pgx.Tx, like pgx itself, serves one
// goroutine at a time.
//
// # Transactions
//
// Given a pgx.Tx, a message is published when the transaction commits, and never if it
// rolls back: PostgreSQL holds NOTIFY until commit, and the attachment row is part of the
// transaction too. Use it to announce a change exactly when it becomes visible. Equal
// messages sent in one transaction all arrive: PostgreSQL would keep one of equal
// notifications, so through anything but a *pgxpool.Pool (a pgx.Tx, a *pgx.Conn, a
// *pgxpool.Conn) each payload carries a random "nonce" key, which servers ignore (and which lowers PayloadThreshold by its 27 bytes).
//
// A message with an attachment row is inserted inside a savepoint of the caller's
// transaction: should the insert fail (no table, no privilege), the emit returns the
// error and the transaction goes on, without the row. Without the savepoint, PostgreSQL
// would abort the whole transaction, and its commit would undo the caller's own work.
// The row's created_at is the time of the insert: keep a transaction that emits such
// messages shorter than the servers' retention of rows (a minute by default, 30 seconds
// for Node.js servers), or they may be deleted before they are read.
//
// Through a *pgxpool.Pool, a message with an attachment row is its own transaction, which
// commits without waiting for PostgreSQL's disk flush, as the servers' do (see
// Options.SynchronousCommit), and whose row is compressed with lz4 where the server has
// it, as the servers' rows are: a tenth of the CPU PostgreSQL's default, pglz, costs it.
// The first such message through a pool asks the server whether it has lz4 (a round trip,
// once per pool, whatever the emitters made on it). The emitter never changes the
// settings or the commit of a pgx.Tx or of a *pgx.Conn: they are the caller's, and its
// rows there take the session's compression.
package emitter

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
	"weak"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/socketio-pg/pgadapter/internal/wire"
)

// DB is what the emitter needs from a database handle: *pgxpool.Pool, *pgxpool.Conn,
// *pgx.Conn and pgx.Tx all satisfy it. The emitter recognises a transaction (see
// Transactions) in a pgx.Tx, and in a *pgx.Conn or *pgxpool.Conn on which one was begun
// with Exec("BEGIN"); through another DB that is inside a transaction, a failed insert
// aborts that transaction.
//
// In a database whose encoding is not UTF8 (nor SQL_ASCII), or through a connection whose
// client_encoding is not UTF8, the emitter writes messages in ASCII, as the servers do,
// and makes a pool's statements speak UTF-8. Through a connection or transaction of
// yours that speaks another client_encoding, it refuses a namespace whose name is not
// ASCII: the channel's name would reach PostgreSQL in that encoding, and no server would
// hear it. Another implementation of DB is used as it is.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Options configures an Emitter. The zero value works; the defaults are the adapter's.
type Options struct {
	// ChannelPrefix must match the servers' Options.ChannelPrefix. Default "socket.io".
	ChannelPrefix string
	// TableName must match the servers' attachments table. Default
	// "socket_io_attachments". The emitter does not create it: pgadapter servers do
	// when they start (their Builder.Ready returns once it exists), unless their
	// Options.SkipTableCreation is set; Node.js servers never do. It is quoted as one identifier, as the servers' Options.TableName.
	TableName string
	// PayloadThreshold is the JSON size in bytes from which a message goes through the
	// attachments table. Default and maximum 8000 (through anything but a
	// *pgxpool.Pool, 27 bytes less: see Transactions).
	PayloadThreshold int
	// InlineBinary sends messages carrying binary in the NOTIFY payload when they fit, as
	// the servers' Options.InlineBinary does. Only pgadapter servers read them: enable it
	// only when no Node.js server is in the cluster.
	InlineBinary bool
	// SynchronousCommit, when true, lets a message with an attachment row published
	// through a *pgxpool.Pool commit with the session's synchronous_commit, waiting for
	// PostgreSQL's disk flush as the servers' Options.SynchronousCommit does. By default
	// the emitter sets it off for that transaction only, as the servers do: the flush
	// makes no delivery surer. Through any other DB (a pgx.Tx, a *pgx.Conn), the
	// emitter never changes it: the transaction, and its commit, are the caller's.
	SynchronousCommit bool
	// MaxAttachmentSize is the largest attachment the emitter publishes: a larger one
	// fails with ErrAttachmentTooLarge. Set it no higher than the servers'
	// Options.MaxAttachmentSize: they do not read larger ones. Default 64 MiB, the
	// servers' default.
	MaxAttachmentSize int
}

// defaultMaxAttachment is the servers' default Options.MaxAttachmentSize.
const defaultMaxAttachment = 64 << 20

// Errors returned by the emitter.
var (
	// ErrReservedEvent is returned for event names socket.io reserves.
	ErrReservedEvent = errors.New("emitter: reserved event name")
	// ErrAckNotSupported is returned when an acknowledgement callback is passed: an
	// emitter is not a server and cannot receive answers.
	ErrAckNotSupported = errors.New("emitter: acknowledgements are not supported")
	// ErrAttachmentTooLarge is returned for a message whose attachment is larger than
	// Options.MaxAttachmentSize: the servers would not read it.
	ErrAttachmentTooLarge = errors.New("emitter: attachment larger than MaxAttachmentSize")
	// ErrInvalidOptions is wrapped by New's errors for options the servers could not
	// share (a ChannelPrefix or TableName too long or with a NUL byte, a TableName not
	// valid UTF-8, a PayloadThreshold above 8000), and by what an Emitter not made by New
	// would publish (once its arguments are checked: an event name reserved, say, is
	// ErrReservedEvent first).
	ErrInvalidOptions = errors.New("emitter: invalid options")
	// ErrInvalidName is returned for a namespace or room whose name is not valid UTF-8:
	// the servers refuse such names, which JSON and MessagePack would carry differently.
	ErrInvalidName = errors.New("emitter: name not valid UTF-8")
)

// Emitter publishes to the cluster. Create it with New.
type Emitter struct {
	db        DB
	prefix    string
	threshold int
	maxAttach int
	inline    bool
	sync      bool
	st        wire.Statements
	nsp       string
	rooms     []string
	except    []string
	flags     wire.Flags
	lz4       *wire.LZ4 // shared with the emitters of its pool
}

// lz4States holds what is known of each pool's server (a *wire.LZ4 by the pool's weak
// pointer), so that emitters made per call, in an HTTP handler say, do not each ask: a
// probe is a round trip and a scan of pg_settings, about 1.5 ms (a reviewer's finding).
// An entry goes with its pool.
var lz4States sync.Map

// lz4For returns the state shared by the emitters of db: a pool's, or one of their own
// for any other DB (which never uses it: see useLZ4).
func lz4For(db DB) *wire.LZ4 {
	pool, ok := db.(*pgxpool.Pool)
	if !ok {
		return &wire.LZ4{}
	}
	key := weak.Make(pool)
	if v, ok := lz4States.Load(key); ok {
		return v.(*wire.LZ4)
	}
	v, loaded := lz4States.LoadOrStore(key, &wire.LZ4{})
	if !loaded {
		runtime.AddCleanup(pool, func(k weak.Pointer[pgxpool.Pool]) { lz4States.Delete(k) }, key)
	}
	return v.(*wire.LZ4)
}

// useLZ4 reports whether the row a pool's connection c inserts may be compressed with
// lz4, as the servers' rows are (an auditor found the emitter's rows in pglz, which costs
// PostgreSQL ten times the CPU). The first emit with a row through a pool asks the
// server, once, under a bound of its own rather than ctx: ended during the probe, ctx
// made pgx close the connection under the emit, whose error then said "conn closed"
// instead of wrapping ctx's (a reviewer's finding).
func (e *Emitter) useLZ4(ctx context.Context, c *pgxpool.Conn) bool {
	ok, _ := e.lz4.Use(func() (ok bool, err error) {
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lz4ProbeTimeout)
		defer cancel()
		err = c.QueryRow(pctx, wire.ProbeLZ4).Scan(&ok)
		return ok, err
	}, lz4Retry)
	return ok
}

// lz4ProbeTimeout bounds the lz4 probe; lz4Retry is how long after a failed one the next
// emit asks again, so that a database that does not answer costs no probe per emit.
const (
	lz4ProbeTimeout = time.Second
	lz4Retry        = 5 * time.Second
)

// New returns an Emitter for the root namespace "/". It fails for a nil DB and for
// invalid options.
func New(db DB, opts *Options) (*Emitter, error) {
	if db == nil {
		return nil, errors.New("emitter: nil DB")
	}
	if v := reflect.ValueOf(db); v.Kind() == reflect.Pointer && v.IsNil() {
		// A nil *pgxpool.Pool in the interface: the first Emit panicked.
		return nil, fmt.Errorf("emitter: nil %T", db)
	}
	var o Options
	if opts != nil {
		o = *opts
	}
	o.ChannelPrefix = cmp.Or(o.ChannelPrefix, "socket.io")
	o.TableName = cmp.Or(o.TableName, "socket_io_attachments")
	o.PayloadThreshold = cmp.Or(o.PayloadThreshold, wire.MaxNotifyPayload+1)
	o.MaxAttachmentSize = cmp.Or(o.MaxAttachmentSize, defaultMaxAttachment)
	switch {
	case strings.ContainsRune(o.ChannelPrefix, 0) || len(o.ChannelPrefix) > wire.MaxChannelBytes-wire.ChannelHashBytes-2:
		return nil, fmt.Errorf("%w: ChannelPrefix %q: at most %d bytes, without NUL", ErrInvalidOptions, o.ChannelPrefix, wire.MaxChannelBytes-wire.ChannelHashBytes-2)
	case strings.ContainsRune(o.TableName, 0) || !utf8.ValidString(o.TableName) || len(o.TableName) > wire.MaxChannelBytes:
		return nil, fmt.Errorf("%w: TableName %q: at most %d bytes of UTF-8, without NUL", ErrInvalidOptions, o.TableName, wire.MaxChannelBytes)
	case o.PayloadThreshold < 0 || o.PayloadThreshold > wire.MaxNotifyPayload+1:
		return nil, fmt.Errorf("%w: PayloadThreshold %d is outside 1..8000", ErrInvalidOptions, o.PayloadThreshold)
	case o.MaxAttachmentSize < 0:
		return nil, fmt.Errorf("%w: MaxAttachmentSize %d is negative", ErrInvalidOptions, o.MaxAttachmentSize)
	}
	return &Emitter{db: db, prefix: o.ChannelPrefix, threshold: o.PayloadThreshold, maxAttach: o.MaxAttachmentSize, inline: o.InlineBinary, sync: o.SynchronousCommit,
		st: wire.NewStatements(o.TableName), nsp: "/", lz4: lz4For(db)}, nil
}

func (e *Emitter) clone() *Emitter {
	c := *e
	c.rooms = append([]string(nil), e.rooms...)
	c.except = append([]string(nil), e.except...)
	return &c
}

// Of returns an Emitter for namespace nsp ("/" is prepended if missing), keeping the
// rooms, exclusions and flags already set.
func (e *Emitter) Of(nsp string) *Emitter {
	c := e.clone()
	if !strings.HasPrefix(nsp, "/") {
		nsp = "/" + nsp
	}
	c.nsp = nsp
	return c
}

// To returns an Emitter that targets the given rooms in addition to those already
// targeted. With no room targeted, every client of the namespace is.
func (e *Emitter) To(rooms ...string) *Emitter {
	c := e.clone()
	c.rooms = append(c.rooms, rooms...)
	return c
}

// In is To.
func (e *Emitter) In(rooms ...string) *Emitter { return e.To(rooms...) }

// Except returns an Emitter that skips the clients in the given rooms (or with the given
// socket ids), in addition to those already skipped.
func (e *Emitter) Except(rooms ...string) *Emitter {
	c := e.clone()
	c.except = append(c.except, rooms...)
	return c
}

// Volatile returns an Emitter whose events may be dropped for clients that are not ready
// to receive them.
func (e *Emitter) Volatile() *Emitter {
	c := e.clone()
	yes := true
	c.flags.Volatile = &yes
	return c
}

// Compress returns an Emitter whose events are compressed (or not) on the way to the
// clients.
func (e *Emitter) Compress(compress bool) *Emitter {
	c := e.clone()
	c.flags.Compress = &compress
	return c
}

// reservedEvents are the event names socket.io refuses to emit to clients.
var reservedEvents = map[string]bool{"connect": true, "connect_error": true, "disconnect": true,
	"disconnecting": true, "newListener": true, "removeListener": true}

// Emit broadcasts an event to the selected clients of every server. Arguments are
// anything socket.io can send: JSON values, structs, []byte and io.Reader for binary (read
// to its end before anything is published; one that is an io.Closer is closed before Emit
// returns, whatever it returns, as an http.Request's Body is).
//
// A nil error means the message was committed. An error after ctx ended does not mean
// it was not: PostgreSQL may still run the statement pgx gave up on, and the message
// then arrives, possibly after messages emitted later.
func (e *Emitter) Emit(ctx context.Context, event string, args ...any) error {
	defer wire.CloseReaders(args)
	if reservedEvents[event] {
		return fmt.Errorf("%w: %q", ErrReservedEvent, event)
	}
	data, err := e.args(ctx, event, args)
	if err != nil {
		return err
	}
	return e.publish(ctx, wire.Broadcast, &wire.BroadcastData{
		Packet: wire.Packet{Type: wire.EventPacketType, Data: data, Nsp: e.nsp},
		Opts:   e.opts(),
	})
}

// SocketsJoin makes the selected sockets of every server join rooms.
func (e *Emitter) SocketsJoin(ctx context.Context, rooms ...string) error {
	return e.publish(ctx, wire.SocketsJoin, &wire.RoomsData{Opts: e.opts(), Rooms: rooms})
}

// SocketsLeave makes the selected sockets of every server leave rooms.
func (e *Emitter) SocketsLeave(ctx context.Context, rooms ...string) error {
	return e.publish(ctx, wire.SocketsLeave, &wire.RoomsData{Opts: e.opts(), Rooms: rooms})
}

// DisconnectSockets disconnects the selected sockets of every server; close also closes
// their underlying connections.
func (e *Emitter) DisconnectSockets(ctx context.Context, close bool) error {
	return e.publish(ctx, wire.DisconnectSockets, &wire.DisconnectData{Opts: e.opts(), Close: close})
}

// ServerSideEmit sends an event to every server of the namespace (their
// io.On(event, ...) handlers). Acknowledgements are not supported.
func (e *Emitter) ServerSideEmit(ctx context.Context, event string, args ...any) error {
	defer wire.CloseReaders(args)
	if wire.ReservedServerEvent(event) {
		return fmt.Errorf("%w: %q", ErrReservedEvent, event)
	}
	data, err := e.args(ctx, event, args)
	if err != nil {
		return err
	}
	return e.publish(ctx, wire.ServerSideEmit, &wire.ServerSideEmitData{Packet: data})
}

// args checks and normalizes an event's arguments, refusing acknowledgement callbacks.
func (e *Emitter) args(ctx context.Context, event string, args []any) ([]any, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("emitter: %w", err) // before reading the arguments' readers
	}
	if event == "" {
		return nil, errors.New("emitter: empty event name")
	}
	for i, a := range args {
		if isFunc(a) {
			return nil, fmt.Errorf("%w (argument %d of %q is a function)", ErrAckNotSupported, i, event)
		}
	}
	data, _, err := wire.NormalizeArgs(args)
	if err != nil {
		return nil, fmt.Errorf("emitter: %q: %w", event, err)
	}
	return append([]any{event}, data...), nil
}

// savepoint protects the caller's transaction from a failed insert (see Transactions);
// rollbackTimeout bounds the return to it.
const (
	savepoint       = "pgadapter_emit"
	rollbackTimeout = 5 * time.Second
)

// insert runs the statement that inserts an attachment row and notifies its header, on
// a DB that is not a pool: inside a savepoint when it is in a transaction (two round
// trips instead of one).
func (e *Emitter) insert(ctx context.Context, body []byte, channel, header string) error {
	var batcher interface {
		SendBatch(context.Context, *pgx.Batch) pgx.BatchResults
	}
	switch db := e.db.(type) {
	case pgx.Tx:
		batcher = db
	case *pgx.Conn:
		if db.PgConn().TxStatus() == 'T' { // a transaction begun with Exec("BEGIN")
			batcher = db
		}
	case *pgxpool.Conn:
		if db.Conn().PgConn().TxStatus() == 'T' {
			batcher = db
		}
	}
	if batcher == nil {
		_, err := e.db.Exec(ctx, e.st.InsertNotify, body, channel, header, wire.AttachmentHeaderSuffix)
		return err
	}
	// The savepoint on its own: pgx prepares a batch's statements before it runs any,
	// and a failed prepare (no table) aborts the transaction too.
	if _, err := e.db.Exec(ctx, "SAVEPOINT "+savepoint); err != nil {
		return err
	}
	b := &pgx.Batch{}
	b.Queue(e.st.InsertNotify, body, channel, header, wire.AttachmentHeaderSuffix)
	b.Queue("RELEASE SAVEPOINT " + savepoint)
	err := batcher.SendBatch(ctx, b).Close()
	if err != nil {
		// Even if ctx ended meanwhile: without the rollback, the caller's transaction
		// stays aborted. (Unless pgx closed the connection, as it does when ctx ends
		// while the statement runs: the caller's transaction is then gone anyway.)
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
		defer cancel()
		if _, rerr := e.db.Exec(rctx, "ROLLBACK TO SAVEPOINT "+savepoint); rerr == nil {
			e.db.Exec(rctx, "RELEASE SAVEPOINT "+savepoint)
		}
	}
	return err
}

func isFunc(v any) bool {
	return v != nil && reflect.TypeOf(v).Kind() == reflect.Func
}

func (e *Emitter) opts() wire.Opts {
	return wire.Opts{Rooms: e.rooms, Except: e.except, Flags: e.flags}
}

// nonceKey is the extra key that makes a message's NOTIFY payload unique within a
// transaction: PostgreSQL keeps one of the notifications a transaction sends with the same
// channel and payload, and the emitter's are the same for the same message (its uid is
// "emitter", its keys sorted). Servers, Node's included, ignore keys they do not know.
const nonceKey = wire.NonceKey

// nonceBytes is what the nonce adds to a payload: `,"nonce":"` 16 hex digits `"`.
const nonceBytes = len(`,"`+nonceKey+`":""`) + 16

// publish encodes and sends one message in one statement. A namespace or room name that
// is not valid UTF-8 is refused, as the servers refuse it (wire.BadRoom): JSON replaces
// its bad bytes, MessagePack keeps them, so the message would name another room
// depending on its size, and a namespace whose channel, made of the bytes, would not
// match it.
func (e *Emitter) publish(ctx context.Context, typ wire.Type, data any) error {
	if e.lz4 == nil {
		// A zero Emitter: it was told MaxAttachmentSize 0, and said so for every message.
		return fmt.Errorf("%w: an Emitter must be made by New", ErrInvalidOptions)
	}
	if !utf8.ValidString(e.nsp) {
		return fmt.Errorf("%w: namespace %q", ErrInvalidName, e.nsp)
	}
	if room, bad := wire.BadRoom(data); bad {
		return fmt.Errorf("%w: room %q", ErrInvalidName, room)
	}
	m := &wire.Message{Type: typ, UID: wire.EmitterUID, Nsp: e.nsp, Data: data}
	_, isPool := e.db.(*pgxpool.Pool)
	threshold := e.threshold
	if !isPool {
		threshold = max(1, threshold-nonceBytes) // room for the nonce below (0 would mean the default)
	}
	enc, err := wire.EncodeInline(m, threshold, e.inline)
	if err != nil {
		return fmt.Errorf("emitter: %w", err)
	}
	if why := wire.Oversize(enc.Attachment, e.maxAttach); why != "" {
		return fmt.Errorf("%w: %s of %s", ErrAttachmentTooLarge, typ, why)
	}
	channel := wire.ChannelName(e.prefix, e.nsp)
	header := wire.AttachmentHeaderPrefix(wire.EmitterUID, typ)
	db, conn := e.db, (*pgconn.PgConn)(nil)
	switch d := e.db.(type) {
	case *pgxpool.Pool:
		c, err := d.Acquire(ctx)
		if err != nil {
			return fmt.Errorf("emitter: %s on %s: %w", typ, channel, err)
		}
		defer c.Release()
		db, conn = c, c.Conn().PgConn()
	case pgx.Tx:
		conn = d.Conn().PgConn()
	case *pgx.Conn:
		conn = d.PgConn()
	case *pgxpool.Conn:
		conn = d.Conn().PgConn()
	}
	utf8Client := true
	if conn != nil {
		if wire.ASCIIConnection(conn.ParameterStatus("server_encoding"), conn.ParameterStatus("client_encoding")) {
			// The database cannot hold every character, or the connection speaks
			// another encoding than UTF-8: the servers' way (see pgadapter's Builder),
			// so that the message is neither refused for a character nor read as
			// other ones.
			if enc, err = wire.ASCII(enc, m, threshold); err != nil {
				return fmt.Errorf("emitter: %w", err)
			}
			if why := wire.Oversize(enc.Attachment, e.maxAttach); why != "" {
				return fmt.Errorf("%w: %s of %s", ErrAttachmentTooLarge, typ, why)
			}
		}
		utf8Client = conn.ParameterStatus("client_encoding") == "UTF8"
	}
	if !utf8Client && !isPool && !wire.IsASCII(channel) {
		// The servers LISTEN to the channel's name in UTF-8, converted to the
		// database's encoding: sent in another, it would name another channel, and the
		// message would be lost, or be refused. A pool's statement is made to speak
		// UTF-8 below; a connection of the caller's is left as it is.
		return fmt.Errorf("emitter: %s on %s: the connection's client_encoding is %s, not UTF8, and the namespace's name is not ASCII: set client_encoding to UTF8", typ, channel, conn.ParameterStatus("client_encoding"))
	}
	if !isPool && enc.Attachment == nil && strings.HasSuffix(enc.JSON, "}") {
		// A pgx.Tx, or a *pgx.Conn that may be inside a transaction: two equal
		// messages in it would arrive once. A pool's Exec is a transaction of its own,
		// and a message with an attachment row has the row's id in its header.
		enc.JSON = fmt.Sprintf(`%s,"%s":"%016x"}`, enc.JSON[:len(enc.JSON)-1], nonceKey, rand.Uint64())
	}
	switch {
	case isPool:
		// A pool's connection is never inside a transaction: the batch is one implicit
		// transaction of its own, whose commit need not wait for the disk.
		b := &pgx.Batch{}
		if !utf8Client && !wire.IsASCII(channel) {
			b.Queue(wire.SetUTF8) // and only then: see the README on table names
		}
		if enc.Attachment == nil {
			b.Queue(e.st.Notify, channel, enc.JSON)
		} else {
			if !e.sync {
				b.Queue(wire.SetAsyncCommit)
			}
			if e.useLZ4(ctx, db.(*pgxpool.Conn)) {
				b.Queue(wire.SetLZ4)
			}
			b.Queue(e.st.InsertNotify, enc.Attachment, channel, header, wire.AttachmentHeaderSuffix)
		}
		err = db.(*pgxpool.Conn).SendBatch(ctx, b).Close()
	case enc.Attachment == nil:
		_, err = e.db.Exec(ctx, e.st.Notify, channel, enc.JSON)
	default:
		err = e.insert(ctx, enc.Attachment, channel, header)
	}
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42P01" {
			return fmt.Errorf("emitter: %s on %s: attachments table %s does not exist (pgadapter servers create it when they start, unless told not to; Node.js servers do not): %w", typ, channel, e.st.Table, err)
		}
		return fmt.Errorf("emitter: %s on %s: %w", typ, channel, err)
	}
	return nil
}
