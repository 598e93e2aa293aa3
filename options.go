package pgadapter

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
)

// Options configures a Builder. The zero value works: every field has a default, applied
// by New on a copy.
type Options struct {
	// ChannelPrefix starts the NOTIFY channel of each namespace: "<prefix>#<namespace>".
	// Default "socket.io", as @socket.io/postgres-adapter. Every server of a cluster must
	// use the same prefix.
	ChannelPrefix string

	// TableName is the attachments table, holding messages too large for a NOTIFY payload
	// or carrying binary. Default "socket_io_attachments", as @socket.io/postgres-adapter.
	// It is always quoted as one identifier: use the search_path to pick a schema. A
	// table shared with Node.js servers must have a lower-case name without a schema:
	// Node's adapter does not quote it, so PostgreSQL folds it to lower case and reads a
	// dot in it as a schema's, and the two would use different tables.
	TableName string

	// PayloadThreshold is the size in bytes from which a message's JSON goes through the
	// attachments table instead of the NOTIFY payload. Default and maximum 8000, since
	// PostgreSQL refuses NOTIFY payloads of 8000 bytes or more; above 7973 it is taken as
	// 7973, which leaves room in the payload for the message's sequence number (see
	// MissedError).
	PayloadThreshold int

	// InlineBinary, when true, sends a message that would go through the attachments
	// table (it carries binary) in the NOTIFY payload instead, as base64 MessagePack,
	// when that fits below PayloadThreshold: a 1 KB binary broadcast then needs no row to
	// insert, read back and delete, and reaches the other servers a query sooner. Only
	// pgadapter servers read such payloads (every one does, whatever its own setting):
	// while a server of the namespace that did not advertise pgadapter's capabilities in
	// a heartbeat is known (a Node.js server), messages go through the table as usual, and
	// a warning names that server once. Emitters cannot see the cluster: give their
	// Options.InlineBinary only in a cluster without Node.js servers.
	InlineBinary bool

	// CleanupInterval is how often this server deletes old attachment rows. Default 30s. A
	// row is deleted once it is older than AttachmentRetention. Negative disables cleanup
	// (for a deployment that cleans the table itself).
	CleanupInterval time.Duration

	// AttachmentRetention is the age at which attachment rows become eligible for
	// deletion. Default twice CleanupInterval, and at least a minute: every receiver
	// reads a row within RequestsTimeout of its notification in normal operation, so the
	// margin covers a node whose receive queue lags by up to a minute. A node that lags
	// more reports each attachment it can no longer read through ErrorHandler
	// (ErrAttachmentMissing). Node.js servers in the same cluster delete rows older than
	// their own cleanupInterval (30s) whatever this says.
	AttachmentRetention time.Duration

	// SynchronousCommit, when true, makes the transactions that publish messages commit
	// with the session's synchronous_commit setting: PostgreSQL's default waits for the
	// commit to be flushed to disk, and to synchronous standbys, before it returns. By
	// default those that insert attachment rows commit with synchronous_commit off, set
	// for that transaction only, and do not wait; the others never do, since PostgreSQL
	// does not flush the commit of a transaction that only notifies. Waiting adds a disk
	// flush to the latency of every message with an attachment (0.3-0.4 ms on the
	// development machine) and buys no delivery: listeners get a notification at commit
	// either way, and PostgreSQL keeps no notification across a crash. What it protects
	// is an attachment row whose notification was delivered just before PostgreSQL
	// crashed: without the wait, a receiver that reads the row after the restart may find
	// it gone and report ErrAttachmentMissing. That holds with LoggedTable only: an
	// unlogged table, the default, is emptied by a crash anyway, and its rows write no WAL
	// for a commit to wait for.
	SynchronousCommit bool

	// LoggedTable, when true, makes the adapter create a missing attachments table as an
	// ordinary table. By default it creates it UNLOGGED, with Node's columns (Node.js
	// servers and emitters use it as they would their own), and keeps its id sequence
	// logged. The rows live for a minute and matter only while receivers read them, so
	// writing them to the WAL buys nothing but the disk writes, the checkpoints, the
	// archive and the standbys' replay of every message with an attachment (a 1 KB binary
	// broadcast wrote 1,281 bytes of WAL; with an unlogged table, 3). What an unlogged
	// table gives up: after a crash of PostgreSQL (not a clean restart) it is empty, so a
	// receiver that had not yet read a row of a message delivered just before the crash
	// reports ErrAttachmentMissing, as without SynchronousCommit; and a standby has no
	// rows, which matters to no one, since LISTEN and NOTIFY work on the primary only. An
	// existing table is left as it is, whoever made it: ALTER TABLE ... SET UNLOGGED
	// converts one (it rewrites the table under an exclusive lock).
	LoggedTable bool

	// SkipTableCreation, when true, makes the adapter assume the attachments table exists,
	// for database roles without the right to create tables. Create it as the adapter
	// does (on PostgreSQL 14 and earlier, without the ALTER SEQUENCE, which they do not
	// need: their sequences are always logged):
	//
	//	CREATE UNLOGGED TABLE IF NOT EXISTS socket_io_attachments (
	//	    id bigserial UNIQUE, created_at timestamptz DEFAULT NOW(), payload bytea);
	//	ALTER SEQUENCE socket_io_attachments_id_seq SET LOGGED;
	//
	// or without UNLOGGED, as Node.js servers do (see LoggedTable).
	SkipTableCreation bool

	// MaxAttachmentSize bounds, in bytes, the body of a message that goes through the
	// attachments table: a larger one is neither published nor read, but reported
	// (ErrAttachmentTooLarge). Default 64 MiB. Anyone who may insert into the table and
	// notify its channels could otherwise make every server load rows of up to
	// PostgreSQL's 1 GB, 64 to a query: a memory exhaustion, which no recover stops.
	// The rows a query reads are decoded one by one, as they come. A body may also
	// decode into at most MaxAttachmentSize/16 values (65,536 at least; a container
	// counts 5): each value may take one byte of the body and 16 to 100 bytes of memory
	// once decoded, and a 16 MB row of empty maps took 1.3 GB of every server. Such a
	// message is refused too, published or read.
	MaxAttachmentSize int

	// HeartbeatInterval is the longest a namespace adapter stays silent: it publishes a
	// HEARTBEAT once nothing it published has committed for this long, less the period
	// of its checks (a quarter of the interval, at most a second), so that the others
	// hear it at least this often. Any message it publishes counts as one. Default 5s.
	HeartbeatInterval time.Duration

	// HeartbeatTimeout is how long without any message from a server before it is no
	// longer counted and requests stop waiting for it. Default 10s, or twice
	// HeartbeatInterval when that is longer. It must exceed HeartbeatInterval.
	//
	// HeartbeatInterval, HeartbeatTimeout, RequestsTimeout and a positive
	// CleanupInterval must be at least a millisecond: a bare number is nanoseconds (write
	// 5 * time.Second, not 5).
	HeartbeatTimeout time.Duration

	// RequestsTimeout bounds requests to other servers (FetchSockets,
	// ServerSideEmitWithAck, AllRooms) and each query the adapter runs on the pool,
	// publishing included: keep it well above the database's slowest round trip, or
	// messages are lost (reported). The LISTEN connection's setup is bounded by it and
	// its ping by HeartbeatInterval, each 1 s at least, so that a short RequestsTimeout
	// does not keep the listener from connecting. Default 5s.
	//
	// A broadcast with acks is bounded by its own Timeout (io.Timeout(d).EmitWithAck):
	// without one, socket.io's operator reports "operation has timed out" at once
	// whenever a client or another server is to answer, as Node's does. RequestsTimeout
	// also bounds, once per namespace, the wait of the namespace's first client on this
	// server until the server hears it (see Adapter.AddAll): keep it below the clients'
	// connection timeout (20 s in socket.io's clients).
	RequestsTimeout time.Duration

	// PublishQueueSize is how many messages may wait to be published. When PostgreSQL is
	// slow or down and the queue is full, further messages are dropped at once rather
	// than blocking the caller or growing memory: each is counted in Stats, and
	// ErrQueueFull goes to ErrorHandler and the log at most once a second, with a running
	// count (a flood would otherwise flood them). Broadcasts and ServerSideEmit without
	// ack return no error (socket.io's Emit has none to return); requests complete at
	// once with ErrQueueFull. A namespace's announcement and its ADAPTER_CLOSE are kept
	// aside instead, up to PublishQueueSize of them, to go after what was queued before
	// them: the other servers count a namespace from one and stop at the other. Default
	// 10000.
	PublishQueueSize int

	// ReceiveQueueSize is how many received notifications may wait to be processed. The
	// LISTEN connection is always drained, so that PostgreSQL's notification queue never
	// fills; when this queue is full, notifications are dropped, counted and reported
	// (ErrReceiveQueueFull). As many messages again, decoded, may wait behind the
	// application's code that holds up their delivery (an outgoing-packet listener),
	// so that answers to this server's requests go past them. Default 10000.
	ReceiveQueueSize int

	// ErrorHandler, when set, receives the errors the adapter meets: publish failures,
	// malformed notifications, lost attachments, listener failures; drops by a full
	// queue, and operations refused by a closed adapter, at most once a second, with a
	// running count (see PublishQueueSize). Errors are logged as well.
	//
	// It is called on a goroutine of the adapter's own, one error at a time, in the
	// order they happened, with OnListenerState's calls, so that a slow handler (one
	// that sends errors over the network) holds up no message. It may block, and may
	// close the server. While 65,536 reports, or 16 MB of them (a malformed notification's
	// error holds its payload), wait for it, further ones are not passed on
	// (they are logged, or counted in Stats, as malformed ones beyond the log's rate are),
	// and it is then told how many it missed. When the last namespace closes,
	// Close waits until every report is passed on and the handler has returned, at most
	// RequestsTimeout and 5 s (not when called from the handler itself; a handler that
	// waits for a Close it started on another goroutine makes that one wait its bound),
	// so that the application may close what its handler uses once Close has returned.
	ErrorHandler func(error)

	// Logger receives the adapter's logs. Default slog.Default().
	Logger *slog.Logger

	// ListenConnConfig, when set, configures the dedicated LISTEN connection instead of
	// the pool's configuration. LISTEN does not work through PgBouncer in transaction
	// pooling mode nor on a read replica: point the pool at PgBouncer and this at the
	// primary directly. ListenURL is the same as a connection string; ListenConnConfig
	// wins when both are set. Make ListenConnConfig with pgx.ParseConfig (pgx refuses
	// others: the listener then reports that it cannot connect). It must reach the
	// database the pool publishes to: a LISTEN connection that does not hear this
	// server's own messages for a HeartbeatTimeout (2 s at least) is reported through
	// the ErrorHandler, whatever else it hears. Its client_encoding is set to UTF8,
	// whatever the configuration says: names and payloads travel in UTF-8, as Node's
	// servers send them.
	ListenConnConfig *pgx.ConnConfig
	// ListenURL is ListenConnConfig as a connection string (see ListenConnConfig).
	ListenURL string

	// OnListenerState, when set, is called when the LISTEN connection comes up (every
	// channel listened; err nil) or goes down (with the cause; ErrClosed when the last
	// namespace closed it). It is called as the ErrorHandler is: on the adapter's
	// goroutine for reports, in order with the errors.
	OnListenerState func(up bool, err error)
}

const (
	defaultChannelPrefix = "socket.io"
	defaultTableName     = "socket_io_attachments"
	maxPayloadThreshold  = 8000
	defaultMaxAttachment = 64 << 20
	maxChannelBytes      = 63
	minDuration          = time.Millisecond
)

// withDefaults returns a copy of o with every unset field given its default, or an error
// naming the first invalid field.
func (o *Options) withDefaults() (Options, error) {
	c, err := o.defaults()
	if err != nil {
		return c, fmt.Errorf("%w: %w", ErrInvalidOptions, err)
	}
	return c, nil
}

// defaults is withDefaults, with errors that do not wrap ErrInvalidOptions yet.
func (o *Options) defaults() (Options, error) {
	var c Options
	if o != nil {
		c = *o
	}
	c.ChannelPrefix = cmp.Or(c.ChannelPrefix, defaultChannelPrefix)
	c.TableName = cmp.Or(c.TableName, defaultTableName)
	c.PayloadThreshold = cmp.Or(c.PayloadThreshold, maxPayloadThreshold)
	c.MaxAttachmentSize = cmp.Or(c.MaxAttachmentSize, defaultMaxAttachment)
	c.CleanupInterval = cmp.Or(c.CleanupInterval, 30*time.Second)
	if c.AttachmentRetention == 0 {
		// Not below a minute: a short CleanupInterval (to keep the table small) made a
		// retention shorter than a receiver may lag behind in normal operation.
		c.AttachmentRetention = max(2*c.CleanupInterval, time.Minute)
	}
	c.HeartbeatInterval = cmp.Or(c.HeartbeatInterval, 5*time.Second)
	// An interval of 10s or more, set alone, would otherwise reach the default timeout
	// and leave the server on its own.
	c.HeartbeatTimeout = cmp.Or(c.HeartbeatTimeout, max(10*time.Second, 2*c.HeartbeatInterval))
	c.RequestsTimeout = cmp.Or(c.RequestsTimeout, 5*time.Second)
	c.PublishQueueSize = cmp.Or(c.PublishQueueSize, 10000)
	c.ReceiveQueueSize = cmp.Or(c.ReceiveQueueSize, 10000)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.ListenConnConfig == nil && c.ListenURL != "" {
		cfg, err := pgx.ParseConfig(c.ListenURL)
		if err != nil {
			return c, fmt.Errorf("ListenURL: %w", err)
		}
		c.ListenConnConfig = cfg
	}

	switch {
	case strings.ContainsRune(c.ChannelPrefix, 0):
		return c, errors.New("ChannelPrefix contains a NUL byte")
	case len(c.ChannelPrefix) > maxChannelBytes-channelHashBytes-2:
		return c, fmt.Errorf("ChannelPrefix is %d bytes; at most %d leave room for the namespace in a %d-byte channel name",
			len(c.ChannelPrefix), maxChannelBytes-channelHashBytes-2, maxChannelBytes)
	case strings.ContainsRune(c.TableName, 0):
		return c, errors.New("TableName contains a NUL byte")
	case !utf8.ValidString(c.TableName):
		// PostgreSQL refuses it in every statement: the table was never made, and every
		// attachment was lost.
		return c, fmt.Errorf("TableName %q is not valid UTF-8", c.TableName)
	case len(c.TableName) > maxChannelBytes:
		return c, fmt.Errorf("TableName %q is longer than PostgreSQL's %d-byte identifiers", c.TableName, maxChannelBytes)
	case c.PayloadThreshold < 0 || c.PayloadThreshold > maxPayloadThreshold:
		return c, fmt.Errorf("PayloadThreshold %d is outside 1..%d (PostgreSQL refuses NOTIFY payloads of 8000 bytes or more)", c.PayloadThreshold, maxPayloadThreshold)
	case c.MaxAttachmentSize < 0:
		return c, fmt.Errorf("MaxAttachmentSize %d is negative", c.MaxAttachmentSize)
	case c.AttachmentRetention < 0:
		return c, fmt.Errorf("AttachmentRetention %v is negative", c.AttachmentRetention)
	case c.HeartbeatInterval < minDuration || c.HeartbeatTimeout < minDuration || c.RequestsTimeout < minDuration ||
		c.CleanupInterval > 0 && c.CleanupInterval < minDuration || c.AttachmentRetention < minDuration:
		// 5 meaning seconds is 5ns: a ticker of the heartbeat's period/8 panicked.
		return c, fmt.Errorf("HeartbeatInterval (%v), HeartbeatTimeout (%v), RequestsTimeout (%v), CleanupInterval (%v) and AttachmentRetention (%v) must be at least %v (a bare number is nanoseconds)",
			c.HeartbeatInterval, c.HeartbeatTimeout, c.RequestsTimeout, c.CleanupInterval, c.AttachmentRetention, minDuration)
	case c.HeartbeatTimeout <= c.HeartbeatInterval:
		return c, fmt.Errorf("HeartbeatTimeout %v must exceed HeartbeatInterval %v, or every server is dropped between two heartbeats", c.HeartbeatTimeout, c.HeartbeatInterval)
	case c.PublishQueueSize < 0 || c.ReceiveQueueSize < 0:
		return c, errors.New("PublishQueueSize and ReceiveQueueSize must be positive")
	}
	return c, nil
}

// Errors the adapter reports. Test for them with errors.Is: reported errors wrap them with
// the namespace, channel or message type concerned.
var (
	// ErrClosed is returned for operations on a closed adapter or builder, and given to
	// requests still waiting when it closes.
	ErrClosed = errors.New("pgadapter: closed")

	// ErrQueueFull is reported when a message cannot be queued for publishing because
	// PublishQueueSize messages are already waiting (PostgreSQL slow or unreachable).
	ErrQueueFull = errors.New("pgadapter: publish queue full, message dropped")

	// ErrReceiveQueueFull is reported when received notifications are dropped because
	// ReceiveQueueSize of them already wait to be processed.
	ErrReceiveQueueFull = errors.New("pgadapter: receive queue full, notifications dropped")

	// ErrAttachmentMissing is reported when a notification names an attachment row that no
	// longer exists: deleted by cleanup before this server read it, lost in a crash of
	// PostgreSQL, or never written. A row whose created_at differs from the one its
	// notification gives counts as missing: after a crash, its id was given again.
	ErrAttachmentMissing = errors.New("pgadapter: attachment row not found")

	// ErrAttachmentTooLarge is reported for a message whose attachment is larger than
	// Options.MaxAttachmentSize: not published, or, received, not read.
	ErrAttachmentTooLarge = errors.New("pgadapter: attachment larger than MaxAttachmentSize")

	// ErrMissed is wrapped by the *MissedError a server reports when messages of another
	// server did not reach it.
	ErrMissed = errors.New("pgadapter: messages of another server never arrived")

	// ErrMalformed is reported for a notification on one of our channels that cannot be
	// decoded. It is dropped; other traffic is unaffected.
	ErrMalformed = errors.New("pgadapter: malformed notification")

	// ErrInvalidName is reported for a namespace or room name that is not valid UTF-8.
	// JSON replaces such bytes, MessagePack keeps them, so the other servers would take
	// it for another name, depending on the message's size: a broadcast to the room, or
	// a room change, made through it is not published (the servers' own sockets still
	// get it), and such a namespace works on this server only.
	ErrInvalidName = errors.New("pgadapter: name is not valid UTF-8")

	// ErrChannelRefused is reported for a namespace whose channel the database refuses to
	// LISTEN to, for a character of its name that the database's encoding cannot hold
	// (an emoji in an EUC_JP or LATIN1 database). No server can hear that channel in
	// that database, Node's included: the namespace works on this server only, and its
	// messages are not published. The other namespaces are not affected.
	ErrChannelRefused = errors.New("pgadapter: the database refuses the namespace's channel")

	// ErrInvalidOptions is wrapped by the error of an invalid Options (Builder.Err,
	// Builder.Ready, NewFromURL), which says which field and why.
	ErrInvalidOptions = errors.New("pgadapter: invalid options")

	// ErrReservedEvent is returned by Adapter.ServerSideEmit for the names socket.io
	// emits itself on a namespace ("connect", "connection", "new_namespace"), which
	// socket.io's own ServerSideEmit refuses: the other servers would refuse them too,
	// as malformed (ErrMalformed).
	ErrReservedEvent = errors.New("pgadapter: reserved event name")

	// ErrTimeout is given to requests that did not get every answer in time.
	ErrTimeout = errors.New("pgadapter: request timed out")

	// ErrPanic is wrapped by the *PanicError reported when code run by one of the
	// adapter's goroutines panics.
	ErrPanic = errors.New("pgadapter: recovered panic")
)

// MissedError reports messages of another server that never reached this one. Each
// server numbers its messages on each namespace, in the order it publishes them, and a
// receiver that sees a number skipped reports the gap once the next message arrives
// (every server publishes at least once per HeartbeatInterval). PostgreSQL keeps no
// notification for a listener that is not connected when it commits: the messages
// committed while this server's LISTEN connection was down or being made again are
// lost for it, and the last ones committed before a fast shutdown of PostgreSQL can be
// lost for every listener, though their sender saw them commit. Without the numbers,
// those losses went unreported. Not counted: notifications this server dropped itself
// (ErrReceiveQueueFull, reported already), messages of Node's servers and of emitters,
// which are not numbered, and what a server published before this one first heard it.
// A batch whose connection failed after it was sent (reported by its sender as a
// *PublishError, since it may not have committed) shows here too when it did not.
type MissedError struct {
	// Namespace is the namespace the messages were published on.
	Namespace string
	// Server is the other server's uid on that namespace (Adapter.UID).
	Server string
	// Missed is how many of its messages did not arrive.
	Missed uint64
	// After and Next are the numbers of the messages received either side of the gap.
	After, Next uint64
}

// Error says how many messages of which server did not arrive, and why they may not have.
func (e *MissedError) Error() string {
	return fmt.Sprintf("pgadapter: namespace %q: %d messages of server %s never arrived (numbers %d to %d: committed while this server's LISTEN connection was down, lost by PostgreSQL around a restart, or reported failed by their sender)",
		e.Namespace, e.Missed, e.Server, e.After+1, e.Next-1)
}

// Unwrap returns ErrMissed.
func (e *MissedError) Unwrap() error { return ErrMissed }

// PanicError is a panic recovered in one of the adapter's goroutines: in a handler of a
// server-side event, an ack or request callback, an outgoing-packet listener, or the
// adapter's own decoding. It is reported through ErrorHandler, wrapped in the error
// that says where (a *MessageError, or the request it ended): find it with errors.As,
// or test errors.Is(err, ErrPanic). It is logged at level Error
// with the stack. The message being handled is dropped and the goroutine goes on with
// the next: it serves every namespace of the server, and an unrecovered panic would end
// the process, as net/http's recovery of a handler's panic avoids.
type PanicError struct {
	// Value is what was passed to panic.
	Value any
	// Stack is the panicking goroutine's stack, taken where it was recovered.
	Stack []byte
}

// Error gives the panic's value.
func (e *PanicError) Error() string { return fmt.Sprintf("pgadapter: recovered panic: %v", e.Value) }

// Unwrap returns ErrPanic and, when the panic's value is an error (a runtime error, for
// instance), that error too.
func (e *PanicError) Unwrap() []error {
	if err, ok := e.Value.(error); ok {
		return []error{ErrPanic, err}
	}
	return []error{ErrPanic}
}

// recovered runs fn and returns a panic in it as a *PanicError.
func recovered(fn func()) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = &PanicError{Value: v, Stack: debug.Stack()}
		}
	}()
	fn()
	return nil
}
