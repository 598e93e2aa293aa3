package pgadapter

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/zishang520/socket.io/v2/socket"

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

// Room and namespace names that are not valid UTF-8 cannot travel: JSON replaced their
// bytes, MessagePack kept them, so that other servers took them for other names,
// depending on the message's size. Except(vip).DisconnectSockets spared the VIP on the
// sending server and disconnected the one on the other; a small broadcast to the room
// missed its members elsewhere, and nothing was reported. Such operations are now
// refused for the cluster, with ErrInvalidName, and such a namespace works locally.
func TestInvalidUTF8Names(t *testing.T) {
	w := newWorld(t, testOptions(t))
	vip := socket.Room("vip\xff\xfe") // raw hash bytes, say
	serverSocket(t, w.a, w.clients["a1"]).Join(vip)
	serverSocket(t, w.b, w.clients["b1"]).Join(vip)
	bad := func(what string) {
		t.Helper()
		e := w.a.errs.next(t, "A", "error")
		if err, _ := e[0].(error); !errors.Is(err, ErrInvalidName) {
			t.Fatalf("%s: reported %v, want ErrInvalidName", what, e)
		}
	}
	w.a.io.To(vip).Emit("small")
	bad("To(room).Emit")
	w.a.io.To(vip).Emit("large", strings.Repeat("z", 9000))
	bad("To(room).Emit, large")
	w.a.io.In("r1").SocketsJoin(vip)
	bad("SocketsJoin(room)")
	w.fence(t, w.a, w.all()...)
	// The sending server's own sockets got what was theirs; the others, nothing.
	w.checkSent(t, "small", "a1")
	w.checkSent(t, "large", "a1")
	if rooms := serverSocket(t, w.c, w.clients["c1"]).Rooms(); rooms.Has(vip) {
		t.Error("c1 joined the room from another server")
	}
	w.a.io.Except(vip).DisconnectSockets(true) // a2 here; none elsewhere
	bad("Except(room).DisconnectSockets")
	w.clients["a2"].expect(t, "disconnect")
	w.fence(t, w.a, "a1", "b1", "b2", "c1")
	for _, name := range []string{"b1", "b2", "c1"} {
		if !w.clients[name].s.Connected() {
			t.Errorf("%s was disconnected from another server", name)
		}
	}
	for _, n := range []*node{w.b, w.c} {
		if errs := n.errs.drain("error"); len(errs) > 0 {
			t.Errorf("%s reported %v", n.name, errs)
		}
	}

	// A namespace so named works on its own server, and says so.
	nsp := w.a.io.Of("/inv\xffalid", nil)
	if _, ok := nsp.Adapter().(*Adapter); ok {
		t.Fatal("a namespace whose name is not valid UTF-8 joined the cluster")
	}
	bad("Of(namespace)")
	// Clients choose dynamic namespaces' names: reported once a second at most (50
	// namespaces take milliseconds; a loaded machine may let a second pass).
	for i := range 50 {
		w.a.io.Of("/inv\xfe"+strconv.Itoa(i), nil)
	}
	if errs := w.a.errs.drain("error"); len(errs) > 2 {
		t.Fatalf("50 such namespaces reported %d times", len(errs))
	}
}

// TestCostlyAttachmentRefused: a row within MaxAttachmentSize whose values, one byte
// each in MessagePack, would decode into many times its size (16 MB of empty maps took
// 1.3 GB on every server) is refused as too large, before it is decoded; what comes
// after it is delivered.
func TestCostlyAttachmentRefused(t *testing.T) {
	opts := testOptions(t)
	// B reads rows of 1 MiB at most, so of CostBound(1 MiB) = 65,536 values; A publishes
	// with the default bound, 4 Mi values.
	a, b := startPair(t, opts, func(o *Options) { o.MaxAttachmentSize = 1 << 20 })
	cb := b.connect(t, "/", "cb")
	maps := make([]any, 20000) // 20,000 bytes; 100,000 in cost, each empty map counting 5
	for i := range maps {
		maps[i] = map[string]any{}
	}
	a.io.Emit("maps", maps)
	a.io.Emit("after", strings.Repeat("y", 9000)) // an attachment too
	cb.expect(t, "after")
	first := b.errs.next(t, "B", "error")
	var tooLarge, other []error
	for _, e := range append(b.errs.drain("error"), first) {
		if err := e[0].(error); errors.Is(err, ErrAttachmentTooLarge) {
			tooLarge = append(tooLarge, err)
		} else {
			other = append(other, err)
		}
	}
	if len(tooLarge) != 1 || len(other) != 0 {
		t.Fatalf("reported as too large %v, other %v; want one too large", tooLarge, other)
	}
	if !strings.Contains(tooLarge[0].Error(), "65536 values") {
		t.Errorf("error %q does not name the bound", tooLarge[0])
	}
	// A server does not publish what a server with its own limits would refuse.
	big := make([]any, 1<<20) // cost 5 Mi, over the default bound of 4 Mi
	for i := range big {
		big[i] = map[string]any{}
	}
	a.io.Emit("too-costly", big)
	a.io.Emit("after2", "z")
	cb.expect(t, "after2")
	errs := [][]any{a.errs.next(t, "A", "error")}
	errs = append(errs, a.errs.drain("error")...)
	if len(errs) != 1 || !errors.Is(errs[0][0].(error), ErrAttachmentTooLarge) {
		t.Fatalf("publishing 1 Mi empty maps reported %v, want ErrAttachmentTooLarge", errs)
	}
}

// TestRowNamedTwiceDecodedOnce: notifications that name one row, read together or in
// reads close together, are forged (every message has its row): the first is
// delivered, the others reported, and the row is not decoded and held once per
// notification (a tester's 200 notifications
// naming a 20 MB row took 3 GB of every server).
func TestRowNamedTwiceDecodedOnce(t *testing.T) {
	opts := testOptions(t)
	a, b := startPair(t, opts, func(*Options) {})
	cb := b.connect(t, "/", "cb")
	a.io.Emit("big", strings.Repeat("x", 9000)) // the table exists from here on
	cb.expect(t, "big")
	m := &wire.Message{Type: wire.Broadcast, UID: "forger", Nsp: "/", Data: &wire.BroadcastData{
		Packet: wire.Packet{Type: wire.EventPacketType, Data: []any{"forged", "y"}}}}
	body, err := wire.EncodeMsgpack(m)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var id int64
	if err := a.pool.QueryRow(ctx, "INSERT INTO "+opts.TableName+" (payload) VALUES ($1) RETURNING id", body).Scan(&id); err != nil {
		t.Fatal(err)
	}
	// Five notifications in one transaction, made distinct by trailing spaces (PostgreSQL
	// delivers one of equal notifications of a transaction), arrive together.
	header := `{"uid":"forger","type":3,"attachmentId":"` + strconv.FormatInt(id, 10) + `"}`
	if _, err := a.pool.Exec(ctx, "SELECT pg_notify($1, $2 || repeat(' ', g)) FROM generate_series(0, 4) g",
		ChannelName(opts.ChannelPrefix, "/"), header); err != nil {
		t.Fatal(err)
	}
	a.io.Emit("after", "z")
	cb.expect(t, "after")
	errs := [][]any{b.errs.next(t, "B", "error")}
	for len(errs) < 4 {
		errs = append(errs, b.errs.next(t, "B", "error"))
	}
	errs = append(errs, b.errs.drain("error")...)
	for _, e := range errs {
		if err := e[0].(error); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "named by another notification") {
			t.Errorf("reported %v", err)
		}
	}
	cb.expect(t, "forged")
	if got := cb.rec.count("forged"); got != 0 || len(errs) != 4 {
		t.Fatalf("the row was delivered %d times, with %d reports; want once, and 4 reports", got+1, len(errs))
	}
	// Named again later, in a read of its own: still not read again (a reviewer's
	// finding: notifications split between two reads had the row delivered twice).
	if _, err := a.pool.Exec(ctx, "SELECT pg_notify($1, $2)", ChannelName(opts.ChannelPrefix, "/"), header+"      "); err != nil {
		t.Fatal(err)
	}
	err = b.errs.next(t, "B", "error")[0].(error)
	if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "named by another notification") {
		t.Errorf("named again later: reported %v", err)
	}
	a.io.Emit("after2", "z")
	cb.expect(t, "after2")
	if got := cb.rec.count("forged"); got != 0 {
		t.Fatalf("the row named again later was delivered again (%d)", got)
	}
}

// TestShrink: a map that held many servers (forged uids, say) is made anew once they are
// forgotten, since a Go map keeps the room of its largest size: 500,000 invented uids
// had left every server 106 MB larger for good.
func TestShrink(t *testing.T) {
	m := map[string]time.Time{}
	peak := 0
	same := func(x, y map[string]time.Time) bool {
		return reflect.ValueOf(x).UnsafePointer() == reflect.ValueOf(y).UnsafePointer()
	}
	for i := range 2 * shrinkFrom {
		m[strconv.Itoa(i)] = time.Time{}
	}
	if got := shrink(m, &peak); !same(got, m) || peak != 2*shrinkFrom {
		t.Fatalf("a full map was copied, or its peak (%d) not recorded", peak)
	}
	for i := range 2*shrinkFrom - shrinkFrom/4 {
		delete(m, strconv.Itoa(i))
	}
	got := shrink(m, &peak)
	if same(got, m) || len(got) != shrinkFrom/4 || peak != shrinkFrom/4 {
		t.Fatalf("a map down to an eighth of its peak: copied %v, %d entries, peak now %d", !same(got, m), len(got), peak)
	}
	small, p := map[string]time.Time{"a": {}}, 0
	if !same(shrink(small, &p), small) {
		t.Fatal("a small map was copied")
	}
}

// TestAnnouncementsAnsweredTogether: announcements that arrive while an answer to one is
// queued share it (it goes after them, and every server hears it). A tester's 20,000
// forged announcements made every server publish 19,000 heartbeats, and drop 11,000
// messages.
func TestAnnouncementsAnsweredTogether(t *testing.T) {
	opts := testOptions(t)
	opts.HeartbeatInterval = time.Minute // no heartbeat of its own in the test
	opts.HeartbeatTimeout = 2 * time.Minute
	a := startNode(t, "A", opts)
	ctx := context.Background()
	before := a.b.Stats().Published["HEARTBEAT"]
	// 2,000 announcements of invented servers, in one transaction: they arrive together.
	if _, err := a.pool.Exec(ctx, `SELECT pg_notify($1, '{"type":1,"uid":"ghost' || g || '","nsp":"/"}') FROM generate_series(1, 2000) g`,
		ChannelName(opts.ChannelPrefix, "/")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "A counts the 2,000 announced servers", func() bool { return a.io.Sockets().Adapter().ServerCount() == 2001 })
	a.io.Emit("sync") // after the answers, in order: once it is out, they are
	eventually(t, "A's broadcast published", func() bool { return a.b.Stats().Published["BROADCAST"] >= 1 })
	n := a.b.Stats().Published["HEARTBEAT"] - before
	t.Logf("%d heartbeats answered 2,000 announcements", n)
	// Without the sharing, one each: 2,000. How many share one depends on how fast the
	// publisher takes each answer against how fast they are applied: 17-20 on an idle
	// machine, 273 in a CI run whose other tests loaded it.
	if n < 1 || n > 500 {
		t.Fatalf("%d heartbeats answered 2,000 announcements that arrived together; want at least one, and far fewer than 2,000", n)
	}
}

// TestShrinkAfterServersCameAndWent: servers that are counted and leave between two of
// the adapter's looks at its maps (forged heartbeats, then their ADAPTER_CLOSEs) leave
// the room of their peak: it is made anew all the same (a reviewer's finding).
func TestShrinkAfterServersCameAndWent(t *testing.T) {
	opts := testOptions(t)
	opts.HeartbeatInterval = time.Minute // the test looks itself (heartbeat)
	opts.HeartbeatTimeout = 2 * time.Minute
	a := startNode(t, "A", opts)
	ad := a.io.Sockets().Adapter().(*Adapter)
	channel := ChannelName(opts.ChannelPrefix, "/")
	ctx := context.Background()
	if _, err := a.pool.Exec(ctx, `SELECT pg_notify($1, '{"type":2,"uid":"ghost' || g || '","nsp":"/"}') FROM generate_series(1, 2000) g`, channel); err != nil {
		t.Fatal(err)
	}
	eventually(t, "A counts the 2,000 servers", func() bool { return ad.ServerCount() == 2001 })
	ad.mu.Lock()
	grown := reflect.ValueOf(ad.nodes).UnsafePointer()
	ad.mu.Unlock()
	if _, err := a.pool.Exec(ctx, `SELECT pg_notify($1, '{"type":13,"uid":"ghost' || g || '","nsp":"/"}') FROM generate_series(1, 2000) g`, channel); err != nil {
		t.Fatal(err)
	}
	eventually(t, "A counts itself only", func() bool { return ad.ServerCount() == 1 })
	ad.heartbeat(time.Now())
	ad.mu.Lock()
	defer ad.mu.Unlock()
	if reflect.ValueOf(ad.nodes).UnsafePointer() == grown {
		t.Fatal("the map of servers, grown to 2,000 and emptied, was kept")
	}
}
