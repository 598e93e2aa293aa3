package pgadapter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/socketio-pg/pgadapter/emitter"
	"github.com/socketio-pg/pgadapter/internal/pgtest"
)

// poolWith is a pool on the test database whose sessions have the given settings.
func poolWith(t *testing.T, settings map[string]string) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range settings {
		cfg.ConnConfig.RuntimeParams[k] = v
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// A cleanup that the server's statement_timeout cancels (57014) shrinks its statements,
// as one that its own deadline ends does. Its batch stayed at 10,000 rows, every cleanup
// was cancelled, and the table grew for good.
func TestCleanupShrinksOnStatementTimeout(t *testing.T) {
	opts := testOptions(t)
	pool, st := attachmentTable(t, opts.TableName)
	ctx := context.Background()
	const rows = 20000
	if _, err := pool.Exec(ctx, "INSERT INTO "+st.Table+" (created_at, payload) SELECT now() - interval '2 hours', convert_to(repeat(md5(i::text), 64), 'UTF8') FROM generate_series(1, $1) AS i", rows); err != nil {
		t.Fatal(err)
	}
	limited := poolWith(t, map[string]string{"statement_timeout": "2"}) // ms
	batch := cleanupBatch
	var deleted int64
	// Rounds for a minute, not a count of them: on a loaded machine even statements of
	// 16 rows time out at 2 ms now and then (20 rounds deleted 16,096 rows once).
	for round, until := 0, time.Now().Add(time.Minute); deleted < rows && time.Now().Before(until); round++ {
		n, err := cleanupAttachments(ctx, limited, st, time.Hour, &batch, new(bool), cleanupBatch, 5*time.Second, time.Now().Add(2*time.Second))
		deleted += n
		t.Logf("round %d: %d deleted, batch %d, %v", round, n, batch, err)
	}
	if deleted != rows {
		t.Fatalf("%d of %d old rows deleted; batch %d", deleted, rows, batch)
	}
	if batch >= cleanupBatch {
		t.Fatalf("batch %d: never shrunk, so the statement timeout never cancelled one (the case is not reproduced)", batch)
	}
}

// An attachments table made by someone else with created_at a timestamp without time
// zone, and servers whose sessions are not in UTC: the header's time and the row's were
// read in different zones, and every attachment was refused as a row given again after
// a crash (ErrAttachmentMissing). With both servers in one zone, the time was made
// right (the header in the inserting session's zone); with servers in different zones,
// each read the other's rows in its own, until the header and the reads took created_at
// as an instant that does not depend on the session's TimeZone (extract(epoch)). The
// timestamptz column of pgadapter's and Node's DDL is read the same in every zone.
func TestTimestampColumnOutsideUTC(t *testing.T) {
	for _, tc := range []struct{ column, zoneA, zoneB string }{
		{"timestamp", "Europe/Berlin", "Europe/Berlin"},
		{"timestamp", "Europe/Berlin", "America/New_York"},
		{"timestamptz", "Asia/Tokyo", "America/New_York"},
	} {
		t.Run(tc.column+"/"+tc.zoneA+"/"+tc.zoneB, func(t *testing.T) {
			opts := testOptions(t)
			ctx := context.Background()
			setup := newPool(t)
			defer setup.Close()
			if _, err := setup.Exec(ctx, "CREATE TABLE "+newStatements(opts.TableName).Table+" (id bigserial UNIQUE, created_at "+tc.column+" DEFAULT now(), payload bytea)"); err != nil {
				t.Fatal(err)
			}
			zone := func(z string) func(*pgxpool.Config) {
				return func(c *pgxpool.Config) { c.ConnConfig.RuntimeParams["timezone"] = z }
			}
			a := startNodeWithPool(t, "A", opts, zone(tc.zoneA))
			b := startNodeWithPool(t, "B", opts, zone(tc.zoneB))
			waitServerCount(t, []*node{a, b}, 2)
			ca, cb := a.connect(t, "/", "ca"), b.connect(t, "/", "cb")
			a.io.Emit("from-a", []byte{1, 2, 3})
			b.io.Emit("from-b", []byte{4, 5, 6})
			if got := cb.expect(t, "from-a"); len(got) != 1 {
				t.Fatalf("got %v", got)
			}
			if got := ca.expect(t, "from-b"); len(got) != 1 {
				t.Fatalf("got %v", got)
			}
			for _, n := range []*node{a, b} {
				if errs := n.errs.drain("error"); len(errs) > 0 {
					t.Fatalf("errors on %s: %v", n.name, errs)
				}
				if got := n.b.Stats().AttachmentsRead; got != 1 {
					t.Fatalf("%s read %d attachments", n.name, got)
				}
			}
			// The emitter, through a pool in B's zone.
			em, err := emitter.New(b.pool, &emitter.Options{TableName: opts.TableName, ChannelPrefix: opts.ChannelPrefix})
			if err != nil {
				t.Fatal(err)
			}
			if err := em.Emit(ctx, "emitted", []byte{7}); err != nil {
				t.Fatal(err)
			}
			for _, c := range []*tclient{ca, cb} {
				if got := c.expect(t, "emitted"); len(got) != 1 {
					t.Fatalf("got %v", got)
				}
			}
			for _, n := range []*node{a, b} {
				if errs := n.errs.drain("error"); len(errs) > 0 {
					t.Fatalf("errors on %s: %v", n.name, errs)
				}
			}
			// The rows are written in the session's zone, as Node's are: a cleanup in
			// the same zone (Node's too: the same comparison) finds them young. (A
			// version that wrote them in UTC had Node's cleanup, east of UTC, delete
			// them at once.) Across zones, a cleanup east of the writer ages them by
			// the difference: see the README.
			if tc.column == "timestamp" && tc.zoneA != tc.zoneB {
				return
			}
			for _, n := range []*node{a, b} {
				for _, unlocked := range []bool{false, true} {
					batch := cleanupBatch
					deleted, err := cleanupAttachments(ctx, n.pool, newStatements(opts.TableName), 30*time.Minute, &batch, &unlocked, cleanupBatch, 5*time.Second, time.Now().Add(5*time.Second))
					if err != nil || deleted != 0 {
						t.Fatalf("%s's cleanup (unlocked %v) deleted %d rows of the last seconds: %v", n.name, unlocked, deleted, err)
					}
				}
			}
		})
	}
}

// A LISTEN connection that reaches another database than the pool (ListenURL naming
// another one; a pooler in transaction mode does the same) is up, answers its pings,
// and hears nothing of its cluster: this server missed every message of the others,
// which went on counting it, and nothing said so. It is reported once a heartbeat
// timeout passes without even the echo of its own heartbeats. Crowded: a cluster of the
// same channels runs in the other database, and the connection hears it; it was not
// reported, and this server delivered that cluster's messages.
func TestDeafListenerReported(t *testing.T) {
	for _, crowded := range []bool{false, true} {
		t.Run(map[bool]string{false: "quiet", true: "crowded"}[crowded], func(t *testing.T) {
			ctx := context.Background()
			admin := newPool(t)
			defer admin.Close()
			other := pgtest.Name("deaf")
			if _, err := admin.Exec(ctx, "CREATE DATABASE "+other); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				pool := newPool(t)
				defer pool.Close()
				pool.Exec(context.Background(), "DROP DATABASE IF EXISTS "+other+" WITH (FORCE)")
			})
			u, err := url.Parse(dbURL)
			if err != nil {
				t.Fatal(err)
			}
			u.Path = "/" + other
			opts := testOptions(t)
			opts.HeartbeatTimeout = 2 * time.Second
			a := startNode(t, "A", opts)
			if crowded {
				c := startNodeOn(t, "C", u.String(), opts)
				defer c.close()
			}
			deaf := opts
			deaf.ListenURL = u.String()
			b := startNode(t, "B", deaf)
			eventually(t, "B's deafness reported", func() bool {
				for _, e := range b.errs.drain("error") {
					if err, _ := e[0].(error); err != nil && strings.Contains(err.Error(), "LISTEN connection") && strings.Contains(err.Error(), "received none") {
						return true
					}
					t.Errorf("B reported %v", e)
				}
				return false
			})
			// A, which hears, counts B (its heartbeats arrive) and reports nothing.
			waitServerCount(t, []*node{a}, 2)
			if errs := a.errs.drain("error"); len(errs) > 0 {
				t.Fatalf("A reported %v", errs)
			}
		})
	}
}

// countingDB counts the queries made through it.
type countingDB struct {
	*pgxpool.Pool
	queries int
}

func (c *countingDB) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	c.queries++
	return c.Pool.Query(ctx, sql, args...)
}

// Attachments are read within MaxAttachmentSize: a row over it comes without its body
// (its size says why), and each row is handed over as it is read. Every row was read
// whatever its size, and a query's rows were all held until it ended: anyone who may
// insert into the table could make every server load rows of up to 1 GB, 64 at a time.
func TestFetchWithinTheBound(t *testing.T) {
	opts := testOptions(t)
	pool, st := attachmentTable(t, opts.TableName)
	ctx := context.Background()
	sizes := []int{12000, 30000, 0, 12000}
	var ids []int64
	for _, size := range sizes {
		var id int64
		if err := pool.QueryRow(ctx, "INSERT INTO "+st.Table+" (payload) VALUES ($1) RETURNING id", bytes.Repeat([]byte{byte(size)}, size)).Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	db := &countingDB{Pool: pool}
	got := map[int64]attachment{}
	err := fetchAttachments(ctx, db, st, append(ids, ids[len(ids)-1]+1000), 20000, func(id int64, a attachment) {
		if _, again := got[id]; again {
			t.Errorf("row %d handed over twice", id)
		}
		got[id] = a
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(ids) || db.queries != 1 {
		t.Fatalf("%d rows read by %d queries, want %d by 1", len(got), db.queries, len(ids))
	}
	for i, size := range sizes {
		a := got[ids[i]]
		switch {
		case size > 20000:
			if a.body != nil || a.size != int64(size) {
				t.Errorf("row of %d bytes: body of %d, size %d", size, len(a.body), a.size)
			}
		case len(a.body) != size || a.size != 0 || a.created.IsZero():
			t.Errorf("row of %d bytes: body of %d, size %d, created %v", size, len(a.body), a.size, a.created)
		}
	}
}

// A message over MaxAttachmentSize is not published (reported), and one received over
// it is not read (reported), while what follows it goes on.
func TestOversizedAttachments(t *testing.T) {
	opts := testOptions(t)
	small := opts
	small.MaxAttachmentSize = 20000
	a := startNode(t, "A", opts)
	b := startNode(t, "B", small)
	waitServerCount(t, []*node{a, b}, 2)
	cb := b.connect(t, "/", "cb")
	big := strings.Repeat("x", 30000)
	b.io.Emit("big", big)
	if errs := b.errs.drain("error"); len(errs) != 1 || !errors.Is(errs[0][0].(error), ErrAttachmentTooLarge) {
		t.Fatalf("B reported %v", errs)
	}
	a.io.Emit("big", big)
	a.io.Emit("after", 1)
	cb.expect(t, "after")
	eventually(t, "B's report", func() bool { return b.errs.count("error") > 0 })
	if errs := b.errs.drain("error"); len(errs) != 1 || !errors.Is(errs[0][0].(error), ErrAttachmentTooLarge) {
		t.Fatalf("B reported %v", errs)
	}
	if n := cb.sent.count("big"); n != 1 {
		t.Fatalf("cb got %d oversized messages, want B's own, delivered locally", n)
	}
	if s := b.b.Stats(); s.AttachmentErrors != 1 || s.PublishErrors != 1 {
		t.Fatalf("AttachmentErrors %d, PublishErrors %d", s.AttachmentErrors, s.PublishErrors)
	}
}

// A query for attachments that fails is reported once, with how many messages it lost,
// not once per message: while the database was away, 64 reports a query. Here B's
// sessions look for the table in a schema where it is not.
func TestFailedAttachmentReadReportedOnce(t *testing.T) {
	opts := testOptions(t)
	ctx := context.Background()
	admin := newPool(t)
	defer admin.Close()
	schema := pgtest.Name("empty")
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatal(err)
	}
	defer admin.Exec(ctx, "DROP SCHEMA "+schema)
	a := startNode(t, "A", opts)
	elsewhere := opts
	elsewhere.SkipTableCreation = true
	b := startNodeWithPool(t, "B", elsewhere, func(c *pgxpool.Config) { c.ConnConfig.RuntimeParams["search_path"] = schema })
	waitServerCount(t, []*node{a, b}, 2)
	cb := b.connect(t, "/", "cb")
	const n = 200
	for i := range n {
		a.io.Emit("bin", []byte{byte(i)})
	}
	a.io.Emit("end")
	cb.expect(t, "end")
	var lost int
	reports := 0
	for _, e := range b.errs.drain("error") {
		err, _ := e[0].(error)
		var me *MessageError
		if !errors.As(err, &me) || !strings.Contains(err.Error(), "read attachments") {
			t.Fatalf("B reported %v", err)
		}
		var k int
		if _, serr := fmt.Sscanf(me.Err.Error(), "%d message(s) lost", &k); serr != nil {
			t.Fatalf("B reported %v", err)
		}
		lost += k
		reports++
	}
	st := b.b.Stats()
	t.Logf("%d reports, %d queries, %d lost", reports, st.AttachmentQueries, lost)
	if lost != n || st.AttachmentErrors != n {
		t.Fatalf("reports name %d messages lost, Stats %d, of %d", lost, st.AttachmentErrors, n)
	}
	if int64(reports) != st.AttachmentQueries {
		t.Fatalf("%d reports for %d queries", reports, st.AttachmentQueries)
	}
	if reports == n {
		t.Fatalf("every message read alone: the case is not reproduced")
	}
}
