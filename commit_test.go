package pgadapter

import (
	"context"
	"fmt"
	"testing"

	"github.com/socketio-pg/pgadapter/internal/pgtest"
)

// TestPublishingCommitMode reads, from inside PostgreSQL, the synchronous_commit that a
// publishing transaction commits with: off by default, and the session's own with
// Options.SynchronousCommit. The pool's sessions start with remote_apply, neither
// PostgreSQL's default nor the test server's, so that the two cases cannot be confused,
// and a trigger on the attachments table records the setting in force when the adapter
// inserts a row.
func TestPublishingCommitMode(t *testing.T) {
	for _, sync := range []bool{false, true} {
		t.Run(fmt.Sprint("SynchronousCommit=", sync), func(t *testing.T) {
			ctx := context.Background()
			opts := testOptions(t)
			opts.SynchronousCommit = sync
			opts.SkipTableCreation = true // created below, with the trigger
			pool, err := pgtest.NewPool(ctx, dbURL, map[string]string{"synchronous_commit": "remote_apply"})
			if err != nil {
				t.Fatal(err)
			}
			n := newNode(t, "a", pool, opts)
			rctx, cancel := context.WithTimeout(ctx, waitFor)
			defer cancel()
			if err := n.b.Ready(rctx); err != nil {
				t.Fatal(err)
			}
			rec, err := pgtest.RecordSettings(ctx, pool, opts.TableName, "synchronous_commit", "default_toast_compression")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(rec.Drop) // runs before the node's cleanup closes the pool

			n.io.Emit("bin", []byte{1, 2, 3})
			var got []string
			eventually(t, "the attachment row's insert is recorded", func() bool {
				v, ok, err := rec.Last(ctx)
				got = v
				return ok && err == nil
			})
			setting, compression := got[0], got[1]
			want := map[bool]string{false: "off", true: "remote_apply"}[sync]
			if setting != want {
				t.Errorf("the publishing transaction committed with synchronous_commit %q, want %q", setting, want)
			}
			var lz4 bool
			if err := pool.QueryRow(ctx, "SELECT coalesce(bool_or('lz4' = ANY(enumvals)), false) FROM pg_settings WHERE name = 'default_toast_compression'").Scan(&lz4); err != nil {
				t.Fatal(err)
			}
			if wantc := map[bool]string{true: "lz4", false: "pglz"}[lz4]; compression != wantc {
				t.Errorf("the publishing transaction compressed with %q, want %q", compression, wantc)
			}
			// The setting stays local to the adapter's transactions: every session the
			// pool can hand out still has its own.
			checkIdleSetting(t, ctx, pool, "synchronous_commit", "remote_apply")
			if errs := n.errs.drain("error"); len(errs) > 0 {
				t.Fatalf("errors: %v", errs)
			}
		})
	}
}
