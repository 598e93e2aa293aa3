package pgtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/socketio-pg/pgadapter/internal/testenv"
)

// requireBinaries skips a test without PostgreSQL's server binaries, as the adapter's
// fault tests do, unless PGADAPTER_REQUIRE_POSTGRES makes that a failure.
func requireBinaries(t *testing.T) {
	t.Helper()
	if _, err := BinDir(); err != nil {
		testenv.Require(t, "PGADAPTER_REQUIRE_POSTGRES", err)
	}
}

// TestTemporaryServerRestarts starts a server of each kind, and checks that it answers
// and keeps its durability settings across a restart.
func TestTemporaryServerRestarts(t *testing.T) {
	for _, c := range []struct {
		name  string
		start func(context.Context) (*Server, error)
		want  string
	}{{"Start", Start, "off off"}, {"StartDurable", StartDurable, "on on"}} {
		t.Run(c.name, func(t *testing.T) {
			requireBinaries(t)
			ctx := context.Background()
			s, err := c.start(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Stop()
			if got := durability(t, s.URL()); got != c.want {
				t.Fatalf("fsync and synchronous_commit %q, want %q", got, c.want)
			}
			if err := s.Restart(ctx); err != nil {
				t.Fatal(err)
			}
			if got := durability(t, s.URL()); got != c.want {
				t.Fatalf("after restart, fsync and synchronous_commit %q, want %q", got, c.want)
			}
		})
	}
}

// durability answers a query on the server at url: its fsync and synchronous_commit.
func durability(t *testing.T, url string) string {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var s string
	if err := c.QueryRow(ctx, "SELECT current_setting('fsync') || ' ' || current_setting('synchronous_commit')").Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestUpRetriesATakenPort: a server's port taken while it is down (by another process,
// or not yet released) made Up fail with "could not bind". Up tries again.
func TestUpRetriesATakenPort(t *testing.T) {
	requireBinaries(t)
	ctx := context.Background()
	s, err := Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	s.Down()
	// Only what Up's starts log counts: Start's own may have retried a taken port.
	logName := filepath.Join(s.dir, "postgres.log")
	before, _ := os.ReadFile(logName)
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", s.Port()))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	up := make(chan error, 1)
	go func() { up <- s.Up(ctx) }()
	// Release the port once a start has failed on it.
	deadline := time.Now().Add(30 * time.Second)
	for {
		log, _ := os.ReadFile(logName)
		log = log[min(len(before), len(log)):]
		if strings.Contains(string(log), "could not bind") || strings.Contains(string(log), "could not create any TCP/IP sockets") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("postgres never failed to bind the taken port")
		}
		time.Sleep(10 * time.Millisecond)
	}
	l.Close()
	select {
	case err := <-up:
		if err != nil {
			t.Fatalf("Up: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("Up did not return")
	}
	if got := durability(t, s.URL()); got != "off off" {
		t.Fatalf("after Up, fsync and synchronous_commit %q", got)
	}
}
