package wire

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
)

// MaxChannelBytes is PostgreSQL's limit on channel names (NAMEDATALEN - 1).
const MaxChannelBytes = 63

// ChannelHashBytes is the length of the hash that ends a shortened channel name.
const ChannelHashBytes = 16

// ChannelName returns the NOTIFY channel of a namespace: "<prefix>#<namespace>", as
// @socket.io/postgres-adapter names it. A name longer than 63 bytes, or one PostgreSQL
// cannot hold (a NUL byte, invalid UTF-8), becomes its first 46 bytes (cut at a
// character boundary), "#", and 16 hex digits of the SHA-256 of the full name. Any
// other name is Node's, unchanged, so that Node servers share the channel: a namespace
// can therefore be named after another's shortened channel (the hash is no secret), and
// the Builder keeps the first namespace of a channel (see Builder.New).
func ChannelName(prefix, nsp string) string {
	full := prefix + "#" + nsp
	if len(full) <= MaxChannelBytes && utf8.ValidString(full) && !strings.ContainsRune(full, 0) {
		return full
	}
	sum := sha256.Sum256([]byte(full))
	keep := strings.ToValidUTF8(strings.ReplaceAll(full, "\x00", ""), "")
	n := MaxChannelBytes - ChannelHashBytes - 1
	if len(keep) > n {
		for n > 0 && !utf8.RuneStart(keep[n]) {
			n--
		}
		keep = keep[:n]
	}
	return keep + "#" + hex.EncodeToString(sum[:])[:ChannelHashBytes]
}

// Statements is the SQL of the protocol, with the attachments table quoted.
type Statements struct {
	// Table is the quoted table name.
	Table string
	// Notify publishes an inline message: $1 channel, $2 payload.
	Notify string
	// NotifyMany publishes inline messages in one statement, in array order: $1 channels,
	// $2 payloads, as text arrays of equal length. One statement instead of one per
	// message costs PostgreSQL and the client about half as much per message (a Bind and
	// an Execute each otherwise), and unnest yields its rows in order, so the
	// notifications are queued in order.
	NotifyMany string
	// NotifyOne is NotifyMany for messages that share a channel, the usual batch (one
	// namespace): $1 channel, $2 payloads, as a text array. The channel travels and is
	// taken apart once instead of once per message: 1.1–1.3× the notifications per
	// second of NotifyMany from one connection, 256 to a statement, two listeners
	// (BenchmarkNotifyStatements).
	NotifyOne string
	// InsertNotify stores an attachment and publishes its header in one statement, so
	// that a receiver never sees the header before the row: $1 MessagePack body,
	// $2 channel, $3 AttachmentHeaderPrefix, $4 AttachmentHeaderSuffix. The header ends
	// with the row's created_at ("createdAt", see Notification.CreatedAt), the time of
	// the insert rather than now()'s start of the transaction: a row inserted in a
	// transaction open longer than the retention would be old enough to delete when it
	// is committed, before other servers read it.
	InsertNotify string
	// Fetch reads attachments: $1 their ids, as a bigint array; rows come as (id,
	// payload, created_at, the payload's size), in no particular order, the payload only
	// if it is at most $2 bytes (its size costs PostgreSQL no read of it). One statement
	// reads every attachment whose notification arrived together. (Bounding the bytes of
	// all the payloads of a statement, with a window function, cost a tenth of the
	// throughput of 1 KB binary broadcasts between two servers: the rows are handed
	// over one by one instead, as they are read.)
	Fetch string
	// Cleanup deletes attachments older than $1 seconds, at most $2 of them, except rows
	// another transaction has locked: servers cleaning up at the same moment each delete
	// what the others do not hold, instead of waiting for one another, which deadlocks
	// when their scans of the table meet in different orders.
	Cleanup string
	// CleanupUnlocked is Cleanup without the row locks, which need the UPDATE privilege
	// on the table: for a role granted only SELECT, INSERT and DELETE, as Node's adapter
	// needs. Cleanups of several servers then wait for one another.
	CleanupUnlocked string
	// Create creates the table with Node's DDL, so that Node servers can share it.
	Create string
	// CreateUnlogged creates the same table, with the same columns, as UNLOGGED: its rows
	// and its index write no WAL, and a checkpoint does not write their pages. Follow it
	// with LoggedSequence.
	CreateUnlogged string
	// LoggedSequence finds the table's id sequence when it is unlogged (PostgreSQL 15
	// and later make the sequence of an unlogged table's serial column unlogged too):
	// $1 the quoted table name; the row is the sequence's schema and name, to make
	// logged. An unlogged sequence starts again from 1 after a crash, when PostgreSQL
	// empties the table, so that every id of the recent past is given again; a logged
	// one goes back only to what the WAL flushed before the crash recorded, so that only
	// the ids of the last moments are. Receivers that check created_at (see
	// Notification.CreatedAt) are safe either way; Node's servers do not check.
	LoggedSequence string
}

// SetUTF8 makes the rest of a transaction speak UTF-8 to PostgreSQL, which converts to
// and from the database's encoding: what Node's servers speak, and what pgadapter's
// servers LISTEN with, whatever the connection's client_encoding.
const SetUTF8 = "SELECT set_config('client_encoding', 'UTF8', true)"

// SetAsyncCommit makes the rest of a transaction commit without waiting for PostgreSQL to
// flush its WAL to disk: run first in the transaction that inserts an attachment row.
// The flush buys a message nothing (a NOTIFY is delivered at commit either way, and
// PostgreSQL keeps no notification across a crash) and costs it a disk write. A
// transaction that only notifies writes no WAL before its commit record, and PostgreSQL
// never flushes its commit: it needs no SetAsyncCommit.
const SetAsyncCommit = "SELECT set_config('synchronous_commit', 'off', true)"

// SetLZ4 makes the rest of a transaction compress the attachment rows it inserts with
// lz4 instead of PostgreSQL's default, pglz: about a tenth of the server's CPU per 20 KB
// row, for rows that live a minute. Readers, Node's included, see no difference. Only for
// a server that has lz4 (ProbeLZ4): elsewhere the setting is refused, and the
// transaction with it.
const SetLZ4 = "SELECT set_config('default_toast_compression', 'lz4', true)"

// ProbeLZ4 asks whether the server can compress with lz4 (PostgreSQL 14 and later, built
// with it, as every major distribution's package is): one boolean.
const ProbeLZ4 = "SELECT coalesce(bool_or('lz4' = ANY(enumvals)), false) FROM pg_settings WHERE name = 'default_toast_compression'"

// LZ4 is what a publisher knows of its server's lz4 (ProbeLZ4), safe for concurrent use:
// the servers' publisher and the emitter's pools ask once, and after a failed ask again
// only once its retry has passed, so that a database that is down costs no probe per
// message.
type LZ4 struct {
	known atomic.Int32 // 0 not known yet, 1 the server has it, -1 it has not
	retry atomic.Int64 // UnixNano before which a failed ask is not made again
}

// Use reports whether rows may be compressed with lz4, asking through ask while that is
// not known; ask's error, when it failed, is returned too.
func (l *LZ4) Use(ask func() (bool, error), retry time.Duration) (bool, error) {
	if k := l.known.Load(); k != 0 {
		return k > 0, nil
	}
	if time.Now().UnixNano() < l.retry.Load() {
		return false, nil
	}
	ok, err := ask()
	if err != nil {
		l.retry.Store(time.Now().Add(retry).UnixNano())
		return false, err
	}
	if ok {
		l.known.Store(1)
	} else {
		l.known.Store(-1)
	}
	return ok, nil
}

// createdAtInstant is the SQL of a created_at column's value as a timestamptz that is
// the same in every session, for the header's time and the reads that compare with it.
// For a timestamptz column, as pgadapter and Node create it, it is its value; for a
// timestamp without time zone (an operator's table), its value taken as UTC. A cast to
// timestamptz read the latter in the session's TimeZone: servers whose TimeZones
// differed read another time than the header's, and took every attachment for missing.
// extract(epoch) of either type does not depend on the TimeZone, and is exact (numeric)
// from PostgreSQL 14.
func createdAtInstant(col string) string {
	return "to_timestamp(extract(epoch FROM " + col + "))"
}

// columns are the attachments table's, as @socket.io/postgres-adapter creates it.
const columns = " (id bigserial UNIQUE, created_at timestamptz DEFAULT NOW(), payload bytea)"

// NewStatements builds the statements for the attachments table named table.
func NewStatements(table string) Statements {
	t := pgx.Identifier{table}.Sanitize()
	return Statements{
		Table:      t,
		Notify:     "SELECT pg_notify($1, $2)",
		NotifyMany: "SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS m(c, p)",
		NotifyOne:  "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS m(p)",
		InsertNotify: "WITH a AS (INSERT INTO " + t + " (payload, created_at) VALUES ($1, clock_timestamp()) RETURNING id, created_at) " +
			`SELECT pg_notify($2, $3 || a.id::text || '` + createdAtKey + `' || ` +
			`coalesce(to_char(` + createdAtInstant("a.created_at") + ` AT TIME ZONE 'UTC', '` + createdAtSQL + `'), '') || $4) FROM a`,
		Fetch: "SELECT id, CASE WHEN octet_length(payload) <= $2 THEN payload END, " + createdAtInstant("created_at") + ", octet_length(payload)::bigint FROM " + t + " WHERE id = ANY($1::bigint[])",
		Cleanup: "DELETE FROM " + t + " WHERE id IN (SELECT id FROM " + t +
			" WHERE created_at < now() - make_interval(secs => $1) LIMIT $2 FOR UPDATE SKIP LOCKED)",
		CleanupUnlocked: "DELETE FROM " + t + " WHERE id IN (SELECT id FROM " + t +
			" WHERE created_at < now() - make_interval(secs => $1) ORDER BY id LIMIT $2)",
		Create:         "CREATE TABLE IF NOT EXISTS " + t + columns,
		CreateUnlogged: "CREATE UNLOGGED TABLE IF NOT EXISTS " + t + columns,
		LoggedSequence: "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace " +
			"WHERE c.oid = pg_get_serial_sequence($1, 'id')::regclass AND c.relpersistence = 'u'",
	}
}
