package pgadapter

import (
	"bytes"
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/socketio-pg/pgadapter/emitter"
)

// TestInlineBinary: with Options.InlineBinary, binary messages that fit travel in the
// NOTIFY payload, from servers and emitters alike; larger ones still use the table.
func TestInlineBinary(t *testing.T) {
	opts := testOptions(t)
	opts.CleanupInterval = -1 // keep rows so they can be counted
	opts.InlineBinary = true
	nodes := cluster(t, 2, opts)
	a, b := nodes[0], nodes[1]
	cb := b.connect(t, "/", "cb")
	small, large := bytes.Repeat([]byte{7}, 1024), bytes.Repeat([]byte{9}, 10000)

	a.io.Emit("small", small, map[string]any{"nested": []byte{1}})
	args := cb.expect(t, "small")
	if len(args) != 2 || !bytes.Equal(bufBytes(t, args[0]), small) || !bytes.Equal(bufBytes(t, args[1].(map[string]any)["nested"]), []byte{1}) {
		t.Fatalf("small: %#v", args)
	}
	e, err := emitter.New(a.pool, &emitter.Options{ChannelPrefix: opts.ChannelPrefix, TableName: opts.TableName, InlineBinary: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Emit(context.Background(), "from-emitter", small); err != nil {
		t.Fatal(err)
	}
	if args := cb.expect(t, "from-emitter"); len(args) != 1 || !bytes.Equal(bufBytes(t, args[0]), small) {
		t.Fatalf("from the emitter: %#v", args)
	}
	if n := countRows(t, a, opts.TableName); n != 0 {
		t.Fatalf("%d attachment rows for inline binary", n)
	}
	if st := b.b.Stats(); st.AttachmentQueries != 0 || st.Malformed != 0 {
		t.Fatalf("B read %d attachment queries, %d malformed", st.AttachmentQueries, st.Malformed)
	}

	a.io.Emit("large", large)
	if args := cb.expect(t, "large"); len(args) != 1 || !bytes.Equal(bufBytes(t, args[0]), large) {
		t.Fatalf("large: %d args", len(args))
	}
	if n := countRows(t, a, opts.TableName); n != 1 {
		t.Fatalf("%d attachment rows after a 10 KB binary broadcast, want 1", n)
	}
	noErrors(t, nodes)
}

// TestMixedInlineBinaryFallsBack: a Go server with InlineBinary in a cluster with a Node
// server, which cannot read inline binary, sends binary through the table, so the Node
// server's clients get it, and says why in its log.
func TestMixedInlineBinaryFallsBack(t *testing.T) {
	requireNode(t)
	db := mixedDatabase(t)
	logs := &warnings{}
	g := startNodeOn(t, "G", db, Options{Logger: slog.New(logs), HeartbeatInterval: 300 * time.Millisecond, InlineBinary: true})
	n := startNodeProc(t, "N", db)
	waitServerCount(t, []*node{g}, 2)
	// Node's adapter LISTENs on a connection of its own, opened after its first heartbeat
	// is published: G may count N before N hears anything. N counting G shows it listens.
	eventually(t, "the Node server counts 2 servers", func() bool { return n.serverCount(t) == 2 })
	c := n.connect(t, "n1")

	g.io.Emit("bin", []byte{1, 2, 3})
	if args := normalizeBinary(c.expect(t, "bin")).([]any); len(args) != 1 || !bytes.Equal(args[0].([]byte), []byte{1, 2, 3}) {
		t.Fatalf("the Node server's client got %#v", args)
	}
	if got := logs.all(); len(got) != 1 || !strings.Contains(got[0], "InlineBinary is on") {
		t.Fatalf("warnings %q, want one about InlineBinary", got)
	}
	g.io.Emit("bin", []byte{4})
	c.expect(t, "bin")
	if got := logs.all(); len(got) != 1 {
		t.Fatalf("warned %d times for one server", len(got))
	}

	// A server that leaves is forgotten with its warning: a cluster whose Node servers
	// restart all day must not grow the set, and one that comes back is named again.
	a := g.io.Sockets().Adapter().(*Adapter)
	n.stop(t)
	waitServerCount(t, []*node{g}, 1)
	a.mu.Lock()
	left := len(a.inlineWarned)
	a.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d warnings remembered after the Node server left", left)
	}
}

// warnings is a slog.Handler keeping the messages of records at Warn and above.
type warnings struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnings) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (w *warnings) WithAttrs([]slog.Attr) slog.Handler           { return w }
func (w *warnings) WithGroup(string) slog.Handler                { return w }
func (w *warnings) Handle(_ context.Context, r slog.Record) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, r.Message)
	return nil
}

func (w *warnings) all() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.msgs)
}
