package pgadapter

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// statements holds the SQL the adapter runs, built once with the table name quoted.
type statements struct {
	table        string // quoted identifier
	insertNotify string // $1 payload, $2 channel, $3 header prefix, $4 header suffix
	fetch        string // $1 id
	cleanup      string // $1 age in seconds
	create       string
}

func newStatements(table string) statements {
	t := pgx.Identifier{table}.Sanitize()
	return statements{
		table: t,
		// One round trip: the row and the notification naming it, in the same implicit
		// transaction, so a receiver can never see the header before the row.
		insertNotify: "WITH a AS (INSERT INTO " + t + " (payload) VALUES ($1) RETURNING id) " +
			"SELECT pg_notify($2, $3 || a.id::text || $4) FROM a",
		fetch:   "SELECT payload FROM " + t + " WHERE id = $1",
		cleanup: "DELETE FROM " + t + " WHERE created_at < now() - make_interval(secs => $1)",
		// Node's README DDL, so that Node servers can share the table.
		create: "CREATE TABLE IF NOT EXISTS " + t + " (id bigserial UNIQUE, created_at timestamptz DEFAULT NOW(), payload bytea)",
	}
}

// ensureTable creates the attachments table if it is missing. Servers starting together
// would race in CREATE TABLE IF NOT EXISTS (it can fail with a unique violation on the
// catalog), so creation is serialised by a transaction-scoped advisory lock derived from
// the table name; a table that already exists costs one catalog look-up and no DDL, so
// roles without CREATE rights work when the table was made for them.
func ensureTable(ctx context.Context, pool *pgxpool.Pool, st statements) error {
	var exists bool
	if err := pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", st.table).Scan(&exists); err != nil {
		return fmt.Errorf("pgadapter: look up attachments table %s: %w", st.table, err)
	}
	if exists {
		return nil
	}
	h := fnv.New64a()
	h.Write([]byte("pgadapter table " + st.table))
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(h.Sum64())); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, st.create)
		return err
	})
	if err != nil {
		return fmt.Errorf("pgadapter: create attachments table %s (set Options.SkipTableCreation if it is created for you): %w", st.table, err)
	}
	return nil
}

// fetchAttachment reads the MessagePack body of an attachment row.
func fetchAttachment(ctx context.Context, pool *pgxpool.Pool, st statements, id int64) ([]byte, error) {
	var body []byte
	err := pool.QueryRow(ctx, st.fetch, id).Scan(&body)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("attachment %d: %w", id, ErrAttachmentMissing)
	}
	if err != nil {
		return nil, fmt.Errorf("pgadapter: read attachment %d: %w", id, err)
	}
	return body, nil
}

// cleanupAttachments deletes rows older than the retention.
func cleanupAttachments(ctx context.Context, pool *pgxpool.Pool, st statements, retention time.Duration) (int64, error) {
	tag, err := pool.Exec(ctx, st.cleanup, retention.Seconds())
	if err != nil {
		return 0, fmt.Errorf("pgadapter: delete old attachments: %w", err)
	}
	return tag.RowsAffected(), nil
}
