package pgadapter

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/socketio-pg/pgadapter/internal/wire"
)

// TestHostileNotifications sends garbage on a server's channel, as any role that can
// connect to the database could: each is reported through the error handler, nothing
// panics or hangs, and real traffic goes on.
func TestHostileNotifications(t *testing.T) {
	opts := testOptions(t)
	logs := &logRecorder{}
	a, b := startPair(t, opts, func(o *Options) { o.Logger = slog.New(logs) })
	cb := b.connect(t, "/", "cb")
	a.io.Emit("big", strings.Repeat("x", 9000)) // the table exists from here on
	cb.expect(t, "big")
	ctx := context.Background()
	channel := ChannelName(opts.ChannelPrefix, "/")
	var garbageID int64
	if err := a.pool.QueryRow(ctx, "INSERT INTO "+opts.TableName+" (payload) VALUES ('\\xc1c1c1'::bytea) RETURNING id").Scan(&garbageID); err != nil {
		t.Fatal(err)
	}
	malformed := []string{
		``,
		`not json`,
		`{"type":`,
		`[1,2,3]`,
		`"a string"`,
		`{"type":"3","uid":"x"}`,
		`{"type":3,"uid":42}`,
		`{"type":3,"uid":"x","data":{"packet":"oops"}}`,
		`{"type":3,"uid":"x","data":{"packet":{"type":2,"data":[]},"opts":{}}}`,
		`{"type":3,"uid":"x","data":{"packet":{"type":2,"data":[true]},"opts":{}}}`, // (a number is an event name: Node's String of it)
		`{"type":4,"uid":"x","data":{"opts":{"rooms":[true]},"rooms":[]}}`,          // (a number is a room: Node's String of it)
		`{"type":6,"uid":"x","data":{"opts":{},"close":"yes"}}`,
		`{"type":11,"uid":"x","data":{"requestId":"r","clientCount":-5}}`,
		`{"type":99,"uid":"x"}`,
		`{"type":3,"uid":"x","nsp":"/other","data":{"packet":{"type":2,"data":["e"]},"opts":{}}}`,
		`{"uid":"x","type":3,"attachmentId":"-1"}`,
		`{"uid":"x","type":3,"attachmentId":"abc"}`,
		`{"uid":"x","type":3,"attachmentId":"99999999999999999999999"}`,
		`{"uid":"x","type":3,"attachmentId":{"$gt":0}}`,
		`{"uid":"x","type":3,"attachmentId":"` + strconv.FormatInt(garbageID, 10) + `"}`, // a row that holds garbage
	}
	missing := []string{
		`{"uid":"x","type":3,"attachmentId":"999999999"}`, // a row that is gone
	}
	ignored := []string{
		// Responses to requests this server never made: every server sees every
		// response on the channel, so they are normal and dropped without a report.
		`{"type":8,"uid":"x","nsp":"/","data":{"requestId":"nobody","sockets":[]}}`,
		`{"type":12,"uid":"x","nsp":"/","data":{"requestId":"nobody","packet":1}}`,
	}
	for _, list := range [][]string{malformed, missing, ignored} {
		for _, payload := range list {
			if _, err := a.pool.Exec(ctx, "SELECT pg_notify($1, $2)", channel, payload); err != nil {
				t.Fatal(err)
			}
		}
	}
	// A flood: 2000 garbage notifications in one transaction.
	if _, err := a.pool.Exec(ctx, "SELECT pg_notify($1, 'garbage ' || g) FROM generate_series(1, 2000) g", channel); err != nil {
		t.Fatal(err)
	}
	a.io.Emit("still-fine")
	cb.expect(t, "still-fine")
	cb.sent.next(t, "cb's server", "still-fine")
	var gotMalformed, gotMissing, other int
	for _, e := range b.errs.drain("error") {
		err := e[0].(error)
		var me *MessageError
		switch {
		case !errors.As(err, &me):
			other++
		case errors.Is(err, ErrMalformed):
			gotMalformed++
		case errors.Is(err, ErrAttachmentMissing):
			gotMissing++
		default:
			other++
		}
	}
	if want := len(malformed) + 2000; gotMalformed != want || gotMissing != len(missing) || other != 0 {
		t.Fatalf("reported %d malformed (want %d), %d missing (want %d), %d other", gotMalformed, want, gotMissing, len(missing), other)
	}
	if st := b.b.Stats(); st.AttachmentErrors != int64(len(missing)) {
		t.Errorf("Stats().AttachmentErrors = %d, want %d", st.AttachmentErrors, len(missing))
	}
	// The log is not flooded: at most maxMalformedLogs lines a second at warning level
	// (the test's few seconds allow a few windows).
	if n := logs.warnings(); n > 5*maxMalformedLogs {
		t.Errorf("%d warnings logged for %d malformed notifications", n, gotMalformed)
	}
	// A forged message that decodes is applied like any other: LISTEN/NOTIFY has no
	// authentication, which is why the database should be dedicated (see the README).
}

// Membership is not fooled by what anyone can NOTIFY, nor by messages that arrive after
// their server's ADAPTER_CLOSE (Node's adapter publishes through a pool of connections,
// so a heartbeat sent before it can come after it): an empty uid is no server, and a
// server that left is not counted again.
func TestMembershipIgnoresGhosts(t *testing.T) {
	opts := testOptions(t)
	nodes := cluster(t, 2, opts)
	a, b := nodes[0], nodes[1]
	ca := a.connect(t, "/", "ca")
	payload := func(typ wire.Type, uid string) string {
		s, err := wire.EncodeJSON(&wire.Message{Type: typ, UID: uid, Nsp: "/"})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	channel := ChannelName(opts.ChannelPrefix, "/")
	// In one transaction, so in this order.
	if _, err := b.pool.Exec(context.Background(), "SELECT pg_notify($1, p) FROM unnest($2::text[]) WITH ORDINALITY AS t(p, i) ORDER BY i",
		channel, []string{
			payload(wire.Heartbeat, "ghost"),
			payload(wire.AdapterClose, "ghost"),
			payload(wire.Heartbeat, "ghost"), // sent before the close, arrived after it
			payload(wire.Heartbeat, ""),
		}); err != nil {
		t.Fatal(err)
	}
	b.io.Emit("fence") // published after them: applied after them
	ca.expect(t, "fence")
	if n := a.io.Sockets().Adapter().ServerCount(); n != 2 {
		t.Fatalf("A counts %d servers, want 2 (A and B)", n)
	}
}

// A server that does not hear the others sends no heartbeat: a heartbeat says it can
// answer their requests, and Node's adapter waits for every server it counts.
func TestNoHeartbeatWhileNotListening(t *testing.T) {
	opts := testOptions(t)
	l, err := net.Listen("tcp", "127.0.0.1:0") // accepts, never answers: LISTEN never up
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	opts.ListenURL = "postgres://postgres@" + l.Addr().String() + "/x?connect_timeout=1"
	a := newNode(t, "A", newPool(t), opts)
	adapter := a.io.Sockets().Adapter().(*Adapter)
	adapter.heartbeat(time.Now().Add(time.Hour)) // as the tick would, long after the last publish
	a.io.Emit("marker")                          // published after anything queued before
	eventually(t, "A's marker published", func() bool { return a.b.Stats().Published["BROADCAST"] == 1 })
	if n := a.b.Stats().Published["HEARTBEAT"]; n != 0 {
		t.Fatalf("%d heartbeats published while not listening", n)
	}
}
