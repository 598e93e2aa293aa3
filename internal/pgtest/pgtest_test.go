package pgtest

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestTemporaryServerRestarts starts a server of each kind, and checks that it answers
// and keeps its durability settings across a restart.
func TestTemporaryServerRestarts(t *testing.T) {
	for _, c := range []struct {
		name  string
		start func(context.Context) (*Server, error)
		want  string
	}{{"Start", Start, "off off"}, {"StartDurable", StartDurable, "on on"}} {
		t.Run(c.name, func(t *testing.T) {
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
