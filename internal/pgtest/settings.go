package pgtest

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
)

// NewPool connects a pool to url whose sessions start with settings (run-time
// parameters such as synchronous_commit), so that a test can tell a session's value from
// one a transaction set for itself.
func NewPool(ctx context.Context, url string, settings map[string]string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	for k, v := range settings {
		cfg.ConnConfig.RuntimeParams[k] = v
	}
	return pgxpool.NewWithConfig(ctx, cfg)
}

// Recorder records, for each row inserted into a table, the values the inserting
// transaction had for some settings, as PostgreSQL saw them: what a test of SQL it does
// not write can observe.
type Recorder struct {
	pool           *pgxpool.Pool
	table, log, fn string
}

// RecordSettings creates the attachments table table (the adapter's DDL) with a trigger
// recording settings at each insert. Drop removes what it created, table included.
func RecordSettings(ctx context.Context, pool *pgxpool.Pool, table string, settings ...string) (*Recorder, error) {
	r := &Recorder{pool: pool, table: table, log: Name("settings"), fn: Name("record")}
	cols, names, values := make([]string, len(settings)), make([]string, len(settings)), make([]string, len(settings))
	for i, s := range settings {
		names[i] = fmt.Sprintf("s%d", i)
		cols[i] = names[i] + " text"
		values[i] = "current_setting('" + strings.ReplaceAll(s, "'", "''") + "')"
	}
	for _, q := range []string{
		"CREATE TABLE " + table + " (id bigserial UNIQUE, created_at timestamptz DEFAULT NOW(), payload bytea)",
		"CREATE TABLE " + r.log + " (n serial, " + strings.Join(cols, ", ") + ")",
		"CREATE FUNCTION " + r.fn + "() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO " + r.log +
			" (" + strings.Join(names, ", ") + ") VALUES (" + strings.Join(values, ", ") + "); RETURN NEW; END $$",
		"CREATE TRIGGER record AFTER INSERT ON " + table + " FOR EACH ROW EXECUTE FUNCTION " + r.fn + "()",
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			r.Drop()
			return nil, fmt.Errorf("%s: %w", q, err)
		}
	}
	return r, nil
}

// Last returns the settings recorded at the last insert, in the order given, or ok false
// when nothing was inserted yet.
func (r *Recorder) Last(ctx context.Context) (values []string, ok bool, err error) {
	rows, err := r.pool.Query(ctx, "SELECT * FROM "+r.log+" ORDER BY n DESC LIMIT 1")
	if err != nil {
		return nil, false, err
	}
	defer rows.Close()
	if !rows.Next() {
		return nil, false, rows.Err()
	}
	vals, err := rows.Values()
	if err != nil {
		return nil, false, err
	}
	for _, v := range vals[1:] {
		values = append(values, fmt.Sprint(v))
	}
	return values, true, nil
}

// Drop removes the table, and the recorder's own table and function.
func (r *Recorder) Drop() {
	ctx := context.Background()
	for _, q := range []string{"DROP TABLE IF EXISTS " + r.table, "DROP TABLE IF EXISTS " + r.log, "DROP FUNCTION IF EXISTS " + r.fn + " CASCADE"} {
		r.pool.Exec(ctx, q)
	}
}

// IdleSettings returns the value of the run-time parameter name on each of the pool's
// idle connections (those the pool could hand out now), so that a test can tell that no
// session kept a setting a transaction made for itself: one SHOW on the pool would look
// at one connection, whichever it got. When none is idle at that moment (a heartbeat's
// batch, the pool's health check), it reads the one it acquires.
func IdleSettings(ctx context.Context, pool *pgxpool.Pool, name string) ([]string, error) {
	conns := pool.AcquireAllIdle(ctx)
	defer func() {
		for _, c := range conns {
			c.Release()
		}
	}()
	if len(conns) == 0 {
		c, err := pool.Acquire(ctx)
		if err != nil {
			return nil, fmt.Errorf("pgtest: acquire a connection to read %s on: %w", name, err)
		}
		conns = append(conns, c)
	}
	values := make([]string, len(conns))
	for i, c := range conns {
		if err := c.QueryRow(ctx, "SELECT current_setting($1)", name).Scan(&values[i]); err != nil {
			return nil, fmt.Errorf("pgtest: %s on connection %d: %w", name, c.Conn().PgConn().PID(), err)
		}
	}
	return values, nil
}
