package pgadapter

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/socketio-pg/pgadapter/internal/wire"
)

// statements is the protocol's SQL for one attachments table.
type statements = wire.Statements

func newStatements(table string) statements { return wire.NewStatements(table) }

// ensureTable creates the attachments table if it is missing: UNLOGGED, with a logged id
// sequence, unless logged. Servers starting together would race in CREATE TABLE IF NOT
// EXISTS (it can fail with a unique violation on the catalog), so creation is serialised
// by a transaction-scoped advisory lock derived from the table name; a table that already
// exists costs one catalog look-up and no DDL, so roles without CREATE rights work when
// the table was made for them, and a table made by someone else (a Node.js server, an
// operator) is left as it is.
func ensureTable(ctx context.Context, pool *pgxpool.Pool, st statements, logged bool) error {
	var exists bool
	if err := pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", st.Table).Scan(&exists); err != nil {
		return fmt.Errorf("pgadapter: look up attachments table %s: %w", st.Table, err)
	}
	if exists {
		return nil
	}
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", lockKey("table", st)); err != nil {
			return err
		}
		if logged {
			_, err := tx.Exec(ctx, st.Create)
			return err
		}
		if _, err := tx.Exec(ctx, st.CreateUnlogged); err != nil {
			return err
		}
		var schema, seq string
		switch err := tx.QueryRow(ctx, st.LoggedSequence, st.Table).Scan(&schema, &seq); {
		case errors.Is(err, pgx.ErrNoRows): // before PostgreSQL 15, or a table made logged
			return nil
		case err != nil:
			return err
		}
		_, err := tx.Exec(ctx, "ALTER SEQUENCE "+pgx.Identifier{schema, seq}.Sanitize()+" SET LOGGED")
		return err
	})
	if err != nil {
		return fmt.Errorf("pgadapter: create attachments table %s (set Options.SkipTableCreation if it is created for you): %w", st.Table, err)
	}
	return nil
}

// attachment is a row of the attachments table, as fetchAttachments reads it.
type attachment struct {
	body    []byte // MessagePack
	created time.Time
	size    int64 // the payload's size, when it is over the bound and body is nil
}

// fetchAttachments reads the rows of ids with one query, and hands each row to each as
// it is read, by id; an id without a row is never handed. A row over max bytes comes
// without its body (its size says why). One by one, so that the caller can decode a row
// and let its body go before the next is read: a group held all its bodies until the
// query ended, up to 64 rows of any size.
func fetchAttachments(ctx context.Context, db interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, st statements, ids []int64, max int, each func(int64, attachment)) error {
	rows, err := db.Query(ctx, st.Fetch, ids, int64(max))
	if err != nil {
		return fmt.Errorf("pgadapter: read attachments %v: %w", ids, err)
	}
	var id int64
	var body []byte
	var created pgtype.Timestamptz // NULL in a row made without the default
	var size pgtype.Int8           // NULL for a NULL payload
	_, err = pgx.ForEachRow(rows, []any{&id, &body, &created, &size}, func() error {
		if size.Valid && size.Int64 > int64(max) {
			each(id, attachment{created: created.Time, size: size.Int64})
		} else {
			each(id, attachment{body: body, created: created.Time})
		}
		body = nil // the next row gets its own slice
		return nil
	})
	if err != nil {
		return fmt.Errorf("pgadapter: read attachments %v: %w", ids, err)
	}
	return nil
}

// cleanupBatch bounds the rows one DELETE of the cleanup removes (about 0.1 s of
// PostgreSQL's time on the development machine, at 11 µs per 1 KB row), and
// minCleanupBatch how far a cleanup lowers it when its statements time out.
const (
	cleanupBatch    = 10000
	minCleanupBatch = 16
)

// cleanupAttachments deletes rows older than the retention, at most *batch per
// statement, each statement bounded by timeout, until fewer than *batch were old or until
// has passed (at least one statement). One statement for everything used to run into its
// timeout once the backlog was large (300,000 rows of 1 KB took 3.3 s to delete on the
// development machine, against a 5 s RequestsTimeout): it was rolled back, and every
// later cleanup had more to delete, so the table grew for good. A statement that times
// out all the same (a short RequestsTimeout, large rows, a slow disk) halves *batch,
// which the caller keeps for the next cleanup; quick full statements double it again, up
// to maxBatch.
//
// FOR UPDATE, which Cleanup takes, needs the UPDATE privilege, which a role made for
// Node's adapter (SELECT, INSERT, DELETE) lacks: nothing was ever deleted. Such a role
// cleans with CleanupUnlocked, one server at a time (see cleanupUnlocked), and *unlocked,
// which the caller keeps, remembers it: the statement that fails was tried again at
// every cleanup, an error in PostgreSQL's log each time.
func cleanupAttachments(ctx context.Context, pool *pgxpool.Pool, st statements, retention time.Duration, batch *int, unlocked *bool, maxBatch int, timeout time.Duration, until time.Time) (int64, error) {
	var total int64
	for {
		n := *batch
		start := time.Now()
		qctx, cancel := context.WithTimeout(ctx, timeout)
		var tag pgconn.CommandTag
		var err error
		if !*unlocked {
			err = pgx.BeginTxFunc(qctx, pool, readCommitted, func(tx pgx.Tx) error {
				var err error
				tag, err = tx.Exec(qctx, st.Cleanup, retention.Seconds(), n)
				return err
			})
			if pgErr := (*pgconn.PgError)(nil); errors.As(err, &pgErr) && pgErr.Code == "42501" {
				*unlocked = true
			}
		}
		if *unlocked {
			tag, err = cleanupUnlocked(qctx, pool, st, retention, n)
		}
		// The server's own statement_timeout cancels it the same way (57014), with qctx
		// still live: the batch stayed as large, and every cleanup failed for good.
		timedOut := errors.Is(qctx.Err(), context.DeadlineExceeded) || isCanceled(err)
		cancel()
		if err != nil {
			if timedOut && ctx.Err() == nil && n > minCleanupBatch && time.Now().Before(until) {
				*batch = max(n/2, minCleanupBatch) // rolled back: smaller statements
				continue
			}
			return total, fmt.Errorf("pgadapter: delete old attachments (%d deleted before, %d rows per statement): %w", total, n, err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < int64(n) || !time.Now().Before(until) {
			return total, nil
		}
		if time.Since(start) < timeout/4 {
			*batch = min(2*n, maxBatch)
		}
	}
}

// readCommitted is the isolation level of the cleanup's transactions, whatever the
// role's default: under SERIALIZABLE, two servers' cleanups that met the same rows failed
// with 40001, reported every few cleanups. A DELETE at READ COMMITTED skips a row another
// one deleted meanwhile.
var readCommitted = pgx.TxOptions{IsoLevel: pgx.ReadCommitted}

// cleanupUnlocked runs CleanupUnlocked if no other server of the table does: two such
// DELETEs lock the rows they meet in no set order, and deadlocked (reported, 40P01).
// Another server cleaning counts as nothing to delete.
func cleanupUnlocked(ctx context.Context, pool *pgxpool.Pool, st statements, retention time.Duration, n int) (pgconn.CommandTag, error) {
	var tag pgconn.CommandTag
	err := pgx.BeginTxFunc(ctx, pool, readCommitted, func(tx pgx.Tx) error {
		var mine bool
		if err := tx.QueryRow(ctx, "SELECT pg_try_advisory_xact_lock($1)", lockKey("cleanup", st)).Scan(&mine); err != nil || !mine {
			return err
		}
		var err error
		tag, err = tx.Exec(ctx, st.CleanupUnlocked, retention.Seconds(), n)
		return err
	})
	return tag, err
}

// lockKey is the key of the advisory lock that serialises what for the table of st
// ("table": its creation; "cleanup": the cleanups without row locks), across servers.
func lockKey(what string, st statements) int64 {
	h := fnv.New64a()
	h.Write([]byte("pgadapter " + what + " " + st.Table))
	return int64(h.Sum64())
}

// isCanceled reports whether err is PostgreSQL's "canceling statement" (57014): a
// statement_timeout, or a cancel request.
func isCanceled(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "57014"
}
