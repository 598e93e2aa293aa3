package pgadapter

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/socketio-pg/pgadapter/internal/wire"
)

// statements is the protocol's SQL for one attachments table.
type statements = wire.Statements

func newStatements(table string) statements { return wire.NewStatements(table) }

// ensureTable creates the attachments table if it is missing. Servers starting together
// would race in CREATE TABLE IF NOT EXISTS (it can fail with a unique violation on the
// catalog), so creation is serialised by a transaction-scoped advisory lock derived from
// the table name; a table that already exists costs one catalog look-up and no DDL, so
// roles without CREATE rights work when the table was made for them.
func ensureTable(ctx context.Context, pool *pgxpool.Pool, st statements) error {
	var exists bool
	if err := pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", st.Table).Scan(&exists); err != nil {
		return fmt.Errorf("pgadapter: look up attachments table %s: %w", st.Table, err)
	}
	if exists {
		return nil
	}
	h := fnv.New64a()
	h.Write([]byte("pgadapter table " + st.Table))
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(h.Sum64())); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, st.Create)
		return err
	})
	if err != nil {
		return fmt.Errorf("pgadapter: create attachments table %s (set Options.SkipTableCreation if it is created for you): %w", st.Table, err)
	}
	return nil
}

// fetchAttachment reads the MessagePack body of an attachment row.
func fetchAttachment(ctx context.Context, pool *pgxpool.Pool, st statements, id int64) ([]byte, error) {
	var body []byte
	err := pool.QueryRow(ctx, st.Fetch, id).Scan(&body)
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
	tag, err := pool.Exec(ctx, st.Cleanup, retention.Seconds())
	if err != nil {
		return 0, fmt.Errorf("pgadapter: delete old attachments: %w", err)
	}
	return tag.RowsAffected(), nil
}
