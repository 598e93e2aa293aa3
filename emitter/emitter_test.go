package emitter

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/socketio-pg/pgadapter/internal/pgtest"
	"github.com/socketio-pg/pgadapter/internal/wire"
)

// The tests of the emitter reaching real servers are in the pgadapter package
// (emitter_test.go, mixed_test.go). Here: what it puts on the wire, read back with LISTEN.

var dbURL string

func TestMain(m *testing.M) {
	url, stop, _, err := pgtest.Database(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	dbURL = url
	code := m.Run()
	stop()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutine leak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// TestDerivedEmittersAreIndependent checks the value semantics concurrent users rely on,
// and the message shape Node servers need (top-level nsp, uid "emitter").
func TestDerivedEmittersAreIndependent(t *testing.T) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	prefix := pgtest.Name("em")
	for _, nsp := range []string{"/", "/chat"} {
		if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{wire.ChannelName(prefix, nsp)}.Sanitize()); err != nil {
			t.Fatal(err)
		}
	}
	base, err := New(conn, &Options{ChannelPrefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	a := base.To("a")
	b := a.To("b").Volatile().Of("chat")
	for _, e := range []*Emitter{base, a, b} {
		if err := e.Emit(ctx, "ev", 1); err != nil {
			t.Fatal(err)
		}
	}
	want := []struct {
		channel string
		rooms   int
		flags   int
		nsp     string
	}{
		{prefix + "#/", 0, 0, "/"},
		{prefix + "#/", 1, 0, "/"},
		{prefix + "#/chat", 2, 1, "/chat"},
	}
	for i, w := range want {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		var msg map[string]any
		if err := json.Unmarshal([]byte(n.Payload), &msg); err != nil {
			t.Fatal(err)
		}
		data := msg["data"].(map[string]any)
		opts := data["opts"].(map[string]any)
		if n.Channel != w.channel || msg["uid"] != wire.EmitterUID || msg["nsp"] != w.nsp ||
			len(opts["rooms"].([]any)) != w.rooms || len(opts["flags"].(map[string]any)) != w.flags {
			t.Errorf("message %d on %s: %s", i, n.Channel, n.Payload)
		}
	}
}

// TestCommitMode reads, from a trigger inside PostgreSQL, the synchronous_commit a
// message with an attachment commits with: off through a pool, the session's own with
// Options.SynchronousCommit, and the caller's, untouched, through a transaction. The
// sessions start with remote_apply, neither PostgreSQL's default nor the test server's.
func TestCommitMode(t *testing.T) {
	ctx := context.Background()
	table := pgtest.Name("att")
	pool, err := pgtest.NewPool(ctx, dbURL, map[string]string{"synchronous_commit": "remote_apply"})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	rec, err := pgtest.RecordSettings(ctx, pool, table, "synchronous_commit")
	if err != nil {
		t.Fatal(err)
	}
	defer rec.Drop()
	last := func() string {
		t.Helper()
		v, ok, err := rec.Last(ctx)
		if err != nil || !ok {
			t.Fatalf("nothing recorded (%v)", err)
		}
		return v[0]
	}
	emit := func(db DB, sync bool) {
		t.Helper()
		e, err := New(db, &Options{ChannelPrefix: pgtest.Name("em"), TableName: table, SynchronousCommit: sync})
		if err != nil {
			t.Fatal(err)
		}
		if err := e.Emit(ctx, "bin", []byte{1, 2, 3}); err != nil {
			t.Fatal(err)
		}
	}

	emit(pool, false)
	if got := last(); got != "off" {
		t.Errorf("through a pool: committed with synchronous_commit %q, want off", got)
	}
	emit(pool, true)
	if got := last(); got != "remote_apply" {
		t.Errorf("through a pool with SynchronousCommit: committed with %q, want the session's remote_apply", got)
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	emit(tx, false)
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if got := last(); got != "remote_apply" {
		t.Errorf("through the caller's transaction: committed with %q, want the session's remote_apply, untouched", got)
	}
	var session string
	if err := pool.QueryRow(ctx, "SHOW synchronous_commit").Scan(&session); err != nil || session != "remote_apply" {
		t.Errorf("the pool's sessions now have synchronous_commit %q (%v), want remote_apply", session, err)
	}
}

// BenchmarkEmitAttachment emits 1 KB binary messages one after the other through a
// pool, committing asynchronously (the default) and synchronously. On a server with
// fsync on, as PostgreSQL's default configuration has it (point DATABASE_URL at one),
// they differ by a disk flush per message; the tests' temporary server runs with fsync
// off.
func BenchmarkEmitAttachment(b *testing.B) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	table := pgtest.Name("att")
	if _, err := pool.Exec(ctx, wire.NewStatements(table).Create); err != nil {
		b.Fatal(err)
	}
	defer pool.Exec(context.Background(), "DROP TABLE IF EXISTS "+table)
	payload := make([]byte, 1024)
	for _, sync := range []bool{false, true} {
		b.Run(map[bool]string{false: "commit=async", true: "commit=sync"}[sync], func(b *testing.B) {
			e, err := New(pool, &Options{ChannelPrefix: pgtest.Name("em"), TableName: table, SynchronousCommit: sync})
			if err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				if err := e.Emit(ctx, "bin", payload); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
