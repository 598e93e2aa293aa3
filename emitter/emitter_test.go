package emitter

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
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
