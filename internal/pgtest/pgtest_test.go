package pgtest

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

func query(t *testing.T, url string) int {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var n int
	if err := c.QueryRow(ctx, "SELECT 41 + 1").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestTemporaryServerRestarts(t *testing.T) {
	ctx := context.Background()
	s, err := Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	if n := query(t, s.URL()); n != 42 {
		t.Fatalf("got %d", n)
	}
	if err := s.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if n := query(t, s.URL()); n != 42 {
		t.Fatalf("after restart got %d", n)
	}
}
