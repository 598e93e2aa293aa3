package pgadapter

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	ws "github.com/gorilla/websocket"
	"github.com/zishang520/engine.io/v2/types"

	"github.com/zishang520/socket.io/v2/socket"

	"github.com/socketio-pg/pgadapter/internal/wire"
)

// recoveryOptions are socket.io's server options with ConnectionStateRecovery.
func recoveryOptions() *socket.ServerOptions {
	so := socket.DefaultServerOptions()
	so.SetConnectionStateRecovery(&socket.ConnectionStateRecovery{})
	return so
}

// recoveryPair starts servers A and B with ConnectionStateRecovery, and waits until
// each counts the other.
func recoveryPair(t *testing.T) (a, b *node) {
	t.Helper()
	opts := testOptions(t)
	a = newNodeWith(t, "A", newPool(t), opts, recoveryOptions())
	b = newNodeWith(t, "B", newPool(t), opts, recoveryOptions())
	a.ready(t)
	b.ready(t)
	waitServerCount(t, []*node{a, b}, 2)
	return a, b
}

// With ConnectionStateRecovery, socket.io sends a socket's own emits (socket.Emit)
// through the adapter's Broadcast, to the room of the socket's id. They reach that
// socket, in order, and nothing of them goes to PostgreSQL: published, each was a
// NOTIFY that every other server decoded for a socket it does not have. A broadcast to
// the room of a socket of another server still reaches it.
func TestDirectEmitsStayLocal(t *testing.T) {
	a, b := recoveryPair(t)
	c := a.connect(t, "/", "c")
	d := b.connect(t, "/", "d")
	published := a.b.Stats().Published["BROADCAST"]
	received := b.b.Stats().Received["BROADCAST"]

	socks := a.socketsNamed("/", "c")
	if len(socks) != 1 {
		t.Fatalf("A has %d sockets for c", len(socks))
	}
	const n = 20
	for i := range n {
		socks[0].Emit("direct", i)
	}
	for i := range n {
		// With the offset that connection state recovery adds (recovery.go).
		if got := a.sentTo("c").next(t, "c", "direct"); len(got) != 2 || got[0] != i {
			t.Fatalf("direct emit %d: c got %v", i, got)
		}
	}
	// A direct emit with an acknowledgement goes the same way: its packet keeps its id.
	acked := make(chan []any, 1)
	socks[0].Timeout(waitFor).EmitWithAck("ask")(func(args []any, err error) {
		if err != nil {
			t.Errorf("ack: %v", err)
		}
		acked <- args
	})
	select {
	case got := <-acked:
		if len(got) != 1 || got[0] != "c" {
			t.Errorf("ack gave %v, want [c]", got)
		}
	case <-time.After(2 * waitFor):
		t.Fatal("no acknowledgement")
	}
	// Published after the direct emits, by the same publisher, in order: B gets the
	// marker after anything of them that was published.
	// B counts a message as it decodes it, before its clients get it.
	a.io.Emit("marker")
	d.expect(t, "marker")
	if got := b.b.Stats().Received["BROADCAST"] - received; got != 1 {
		t.Errorf("B received %d broadcasts, want 1 (the marker)", got)
	}
	// A counts its messages once their commit has returned, which may be after B got
	// them.
	eventually(t, "A counts the marker", func() bool { return a.b.Stats().Published["BROADCAST"] > published })
	if got := a.b.Stats().Published["BROADCAST"] - published; got != 1 {
		t.Errorf("A published %d broadcasts, want 1 (the marker)", got)
	}

	// B has no socket of that id: it publishes, and c gets it.
	b.io.To(socket.Room(socks[0].Id())).Emit("from-b")
	c.expect(t, "from-b")
}

// rawSocket is a WebSocket client speaking engine.io v4 and socket.io v5 by hand, so
// that a test can close its transport and send CONNECT with a session to recover.
type rawSocket struct {
	t    testing.TB
	conn *ws.Conn
	nsp  string // what follows a packet's type: "" for the main namespace, else "/name,"
}

// dialRaw opens an engine.io connection to n and sends CONNECT to the main namespace
// with auth, once n's engine has announced the connection (engine.io's transport drops
// what it reads before: the README's defects).
func dialRaw(t testing.TB, n *node, auth map[string]any) *rawSocket {
	t.Helper()
	return dialRawTo(t, n, "/", auth)
}

// dialRawTo is dialRaw to namespace nsp.
func dialRawTo(t testing.TB, n *node, nsp string, auth map[string]any) *rawSocket {
	t.Helper()
	conn, _, err := ws.DefaultDialer.Dial("ws"+strings.TrimPrefix(n.baseURL(), "http")+"/socket.io/?EIO=4&transport=websocket", nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &rawSocket{t: t, conn: conn}
	if nsp != "/" {
		c.nsp = nsp + ","
	}
	t.Cleanup(func() { conn.Close() })
	msg := c.next()
	var open struct{ Sid string }
	if !strings.HasPrefix(msg, "0{") || json.Unmarshal([]byte(msg[1:]), &open) != nil {
		t.Fatalf("open packet: %q", msg)
	}
	if !n.awaitEngine(open.Sid, waitFor) {
		t.Fatal("no engine.io connection event")
	}
	a, _ := json.Marshal(auth)
	if err := conn.WriteMessage(ws.TextMessage, append([]byte("40"+c.nsp), a...)); err != nil {
		t.Fatal(err)
	}
	return c
}

// next reads one engine.io message, answering pings on the way.
func (c *rawSocket) next() string {
	c.t.Helper()
	for {
		c.conn.SetReadDeadline(time.Now().Add(waitFor))
		_, msg, err := c.conn.ReadMessage()
		if err != nil {
			c.t.Fatalf("read: %v", err)
		}
		if string(msg) == "2" {
			if err := c.conn.WriteMessage(ws.TextMessage, []byte("3")); err != nil {
				c.t.Fatal(err)
			}
			continue
		}
		return string(msg)
	}
}

// connectReply reads until the CONNECT reply, returning it and the events read before
// it (socket.io writes a restored socket's missed broadcasts before it; pgadapter
// writes them after it: see restoredReply).
func (c *rawSocket) connectReply() (reply struct{ Sid, Pid string }, before [][]any) {
	c.t.Helper()
	for {
		msg := c.next()
		if strings.HasPrefix(msg, "40"+c.nsp+"{") {
			if err := json.Unmarshal([]byte(msg[2+len(c.nsp):]), &reply); err != nil {
				c.t.Fatalf("connect reply %q: %v", msg, err)
			}
			return reply, before
		}
		ev, ok := c.anyEvent(msg)
		if !ok {
			c.t.Fatalf("unexpected packet %q", msg)
		}
		before = append(before, ev)
	}
}

// anyEvent returns the arguments of msg, an event or a binary event (whose attachments
// it reads), or false.
func (c *rawSocket) anyEvent(msg string) ([]any, bool) {
	c.t.Helper()
	switch {
	case strings.HasPrefix(msg, "42"+c.nsp+"["):
		return c.decode(msg), true
	case strings.HasPrefix(msg, "45"):
		return c.binary(msg), true
	}
	return nil, false
}

// restoredReply reads the CONNECT reply and then n events (binary ones too): a restored
// socket's missed broadcasts. An event before the reply fails the test.
func (c *rawSocket) restoredReply(n int) (reply struct{ Sid, Pid string }, missed [][]any) {
	c.t.Helper()
	reply, before := c.connectReply()
	if len(before) != 0 {
		c.t.Fatalf("events before the CONNECT reply: %v", before)
	}
	for range n {
		msg := c.next()
		ev, ok := c.anyEvent(msg)
		if !ok {
			c.t.Fatalf("want an event, got %q", msg)
		}
		missed = append(missed, ev)
	}
	return reply, missed
}

// event reads the next event.
func (c *rawSocket) event() []any {
	c.t.Helper()
	msg := c.next()
	if !strings.HasPrefix(msg, "42"+c.nsp+"[") {
		c.t.Fatalf("want an event, got %q", msg)
	}
	return c.decode(msg)
}

// binary reads the attachments of a binary event, and returns its arguments with each
// placeholder replaced by its attachment's bytes.
func (c *rawSocket) binary(msg string) []any {
	c.t.Helper()
	dash := strings.IndexByte(msg, '-')
	n, err := strconv.Atoi(msg[2:max(dash, 2)])
	if dash < 0 || err != nil || !strings.HasPrefix(msg[dash+1:], c.nsp+"[") {
		c.t.Fatalf("binary event %q", msg)
	}
	var args []any
	if err := json.Unmarshal([]byte(msg[dash+1+len(c.nsp):]), &args); err != nil {
		c.t.Fatalf("binary event %q: %v", msg, err)
	}
	parts := make([][]byte, n)
	for i := range parts {
		parts[i] = []byte(c.next())
	}
	for i, a := range args {
		if p, ok := a.(map[string]any); ok && p["_placeholder"] == true {
			args[i] = parts[int(p["num"].(float64))]
		}
	}
	return args
}

func (c *rawSocket) decode(msg string) []any {
	c.t.Helper()
	var args []any
	if err := json.Unmarshal([]byte(msg[2+len(c.nsp):]), &args); err != nil {
		c.t.Fatalf("event %q: %v", msg, err)
	}
	return args
}

// A client whose transport closed, which comes back to the same server within the
// time with its session and the offset of the last broadcast it got, gets its socket
// back (id, rooms) and, in order, the broadcasts for its rooms that it missed: the
// server's own and another server's. Not those for other rooms, nor those it was
// excluded from. Then it gets broadcasts as before, and its session is not restored a
// second time.
func TestRecoveryOnTheSameServer(t *testing.T) {
	a, b := recoveryPair(t)
	a.connect(t, "/", "w", "news") // tells when A has delivered B's broadcast

	r := dialRaw(t, a, map[string]any{"name": "r", "rooms": []any{"news"}})
	first, none := r.connectReply()
	if first.Pid == "" || len(none) != 0 {
		t.Fatalf("connect reply %+v, events %v", first, none)
	}
	if !a.awaitAnnounced(first.Sid, waitFor) {
		t.Fatal("no connection event for r")
	}
	a.io.To("news").Emit("ev", 1)
	got := r.event()
	if len(got) != 3 || got[0] != "ev" || got[1] != float64(1) {
		t.Fatalf("r got %v", got)
	}
	offset, _ := got[2].(string)
	r.conn.Close()
	// socket.io keeps the session before it emits "disconnect".
	if d := a.errs.next(t, "A", "disconnect"); d[0] != "r" {
		t.Fatalf("disconnect of %v", d)
	}

	a.io.To("news").Emit("ev", 2)
	a.io.To("elsewhere").Emit("ev", "for another room")
	a.io.Except("news").Emit("ev", "excluded")
	a.io.Volatile().To("news").Emit("ev", "volatile")
	// Local, with a reader: kept as read, not as the drained reader.
	a.io.Local().To("news").Emit("file", types.NewBytesBuffer([]byte{1, 2, 3}))
	b.io.To("news").Emit("ev", 3)
	// What A wrote to w, in order: B's broadcast comes last (the volatile one may be
	// dropped, as volatile packets are).
	for i := 0; ; i++ {
		got := a.sentTo("w").next(t, "w", "ev")
		if fmt.Sprint(got[0]) == "3" { // a float64, decoded from B's message
			break
		}
		if i == 3 {
			t.Fatalf("w got %v, not B's broadcast", got)
		}
	}

	r2 := dialRaw(t, a, map[string]any{"name": "r", "pid": first.Pid, "offset": offset})
	reply, missed := r2.restoredReply(3)
	if reply.Sid != first.Sid {
		t.Errorf("recovered socket %q, want %q", reply.Sid, first.Sid)
	}
	if len(missed) != 3 || missed[0][1] != float64(2) || missed[1][0] != "file" || missed[2][1] != float64(3) {
		t.Fatalf("missed %v, want ev 2, file, ev 3, each with its offset", missed)
	}
	if b, _ := missed[1][1].([]byte); string(b) != "\x01\x02\x03" {
		t.Errorf("the file was replayed as %v", missed[1][1])
	}
	s, ok := a.io.Sockets().Sockets().Load(socket.SocketId(reply.Sid))
	if !ok || !s.Recovered() || !s.Rooms().Has("news") {
		t.Fatalf("server socket %v: found %v", reply.Sid, ok)
	}
	b.io.To("news").Emit("ev", 4)
	got = r2.event()
	if got[1] != float64(4) {
		t.Fatalf("after recovery r got %v", got)
	}

	// The session was restored once: the same again, while r2 has it, is a new socket.
	r3 := dialRaw(t, a, map[string]any{"name": "r3", "pid": first.Pid, "offset": offset})
	if again, missed := r3.connectReply(); again.Sid == first.Sid || len(missed) != 0 {
		t.Errorf("restored a second time: %+v, %v", again, missed)
	}
	// r2's own disconnection keeps the session again, from then on.
	r2.conn.Close()
	if d := a.errs.next(t, "A", "disconnect"); d[0] != "r" {
		t.Fatalf("disconnect of %v", d)
	}
	a.io.To("news").Emit("ev", 5)
	// Refused by a middleware: the client was given nothing (socket.io writes the missed
	// broadcasts before its middlewares run, and clients keep them for their next
	// attempt, which gets them again), and the session waits for the next attempt.
	a.io.Use(func(s *socket.Socket, next func(*socket.ExtendedError)) {
		if auth, _ := s.Handshake().Auth.(map[string]any); auth["refuse"] == true {
			next(socket.NewExtendedError("refused", nil))
			return
		}
		next(nil)
	})
	refused := dialRaw(t, a, map[string]any{"name": "refused", "pid": first.Pid, "offset": got[2], "refuse": true})
	if msg := refused.next(); !strings.HasPrefix(msg, "44") {
		t.Fatalf("refused connection got %q", msg)
	}
	r4 := dialRaw(t, a, map[string]any{"name": "r", "pid": first.Pid, "offset": got[2]})
	back, missed := r4.restoredReply(1)
	if back.Sid != first.Sid || missed[0][1] != float64(5) {
		t.Errorf("after a refusal: %+v, missed %v, want ev 5", back, missed)
	}
	a.io.To("news").Emit("ev", 6)
	if got := r4.event(); got[1] != float64(6) {
		t.Errorf("then r got %v, want ev 6", got)
	}
}

// The log of one namespace: a session is given the broadcasts after its offset that
// were for it, and nothing for an offset that is not kept (unknown, another log's,
// malformed, dropped for the bound, or to come), a session that expired, or one being
// restored; a session whose socket left before it connected is kept again.
func TestRecoveryLogBounds(t *testing.T) {
	persisted := func(l *recoveryLog, pid string, rooms ...socket.Room) {
		l.persist(&socket.SessionToPersist{Sid: socket.SocketId("s-" + pid), Pid: socket.PrivateSessionId(pid), Rooms: types.NewSet(rooms...), Data: map[string]any{"user": pid}})
	}
	// missedOf returns the broadcasts held for the socket of session pid: its missed ones.
	missedOf := func(l *recoveryLog, pid string) string {
		t.Helper()
		r := l.restoring[socket.SocketId("s-"+pid)]
		if r == nil {
			t.Fatalf("session %s is not being restored", pid)
		}
		var out [][]any
		for _, h := range r.held {
			args := h.norm
			if h.raw != "" {
				p := wire.Packet{Raw: h.raw}
				var err error
				if args, err = p.Args(); err != nil {
					t.Fatal(err)
				}
			}
			out = append(out, args)
		}
		return fmt.Sprint(out)
	}
	to := func(rooms ...socket.Room) *socket.BroadcastOptions {
		return &socket.BroadcastOptions{Rooms: types.NewSet(rooms...), Except: types.NewSet[socket.Room]()}
	}

	l := newLog(time.Hour, 1<<20)
	o0, raw0 := l.record(to(), `["ev",0]`, nil)
	if raw0 != `["ev",0,"`+o0+`"]` {
		t.Fatalf("raw with its offset: %s", raw0)
	}
	l.record(to("a"), `["ev",1]`, nil)
	l.record(to("b"), `["ev",2]`, nil)
	l.record(&socket.BroadcastOptions{Except: types.NewSet[socket.Room]("a")}, `["ev",3]`, nil)
	o4, _ := l.record(to("a", "b"), "", []any{"bin", []byte{1}}) // binary: kept as values
	persisted(l, "p", "a")
	s := l.restore("p", o0)
	if s == nil || fmt.Sprint(s.Data) != "map[user:p]" || !s.Rooms.Has("a") {
		t.Fatalf("restored %+v", s)
	}
	if got, want := missedOf(l, "p"), fmt.Sprintf("[[ev 1 %s1] [bin [1] %s]]", l.prefix, o4); got != want || len(s.MissedPackets) != 0 {
		t.Errorf("missed %s, want %s", got, want)
	}
	if l.restore("p", o0) != nil {
		t.Error("restored while being restored")
	}
	// Its socket left before it connected: the session is kept again, once.
	l.left("s-p")
	if l.restore("p", o0) == nil {
		t.Error("not restored after its socket left before connecting")
	}
	l.connected("s-p")
	l.left("s-p")
	if l.restore("p", o0) != nil {
		t.Error("restored after its socket connected")
	}

	persisted(l, "p", "a")
	other := newLog(time.Hour, 1<<20)
	foreign, _ := other.record(to(), `["ev",0]`, nil)
	for _, offset := range []string{"", "!", "0", "1", foreign, l.prefix, l.prefix + "01", l.prefix + "5", l.prefix + "zzzzzzzzzzzzzzzzzzzz"} {
		if l.restore("p", offset) != nil {
			t.Errorf("restored from offset %q", offset)
		}
	}
	if l.restore("unknown", o0) != nil {
		t.Error("restored an unknown session")
	}
	if l.restore("p", o0) == nil {
		t.Error("a bad offset lost the session")
	}

	// Expired: a session disconnected longer ago than the time, with its broadcast kept.
	l = newLog(time.Hour, 1<<20)
	o0, _ = l.record(to(), `["ev",0]`, nil)
	persisted(l, "p")
	l.sessions["p"].DisconnectedAt = time.Now().Add(-2 * time.Hour).UnixMilli()
	if l.restore("p", o0) != nil {
		t.Error("restored an expired session")
	}
	// A second session of the same socket (socket.io's second close, during or after its
	// first's leaving the rooms) adds its rooms to the first's, and replaces nothing;
	// another socket's replaces it.
	l = newLog(time.Hour, 1<<20)
	persisted(l, "p", "s-p", "a")
	persisted(l, "p")
	persisted(l, "p", "s-p", "b")
	if got := fmt.Sprint(l.sessions["p"].Rooms.Keys()); len(l.sessions["p"].Rooms.Keys()) != 3 || l.sessions["p"].Data == nil {
		t.Errorf("the same socket's sessions kept rooms %s, want s-p, a and b", got)
	}
	l.persist(&socket.SessionToPersist{Sid: "other", Pid: "p", Rooms: types.NewSet[socket.Room]("other")})
	if l.sessions["p"].Sid != "other" || l.sessions["p"].Rooms.Len() != 1 {
		t.Errorf("another socket's session did not replace it: %+v", l.sessions["p"])
	}

	// A restored socket that leaves before it connects gives its session back with its
	// rooms, though its second close kept one, in no room, meanwhile.
	l = newLog(time.Hour, 1<<20)
	o0, _ = l.record(to(), `["ev",0]`, nil)
	persisted(l, "p", "s-p", "a")
	if l.restore("p", o0) == nil {
		t.Fatal("not restored")
	}
	persisted(l, "p")
	l.left("s-p")
	if got := l.sessions["p"].Rooms; got.Len() != 2 || !got.Has("a") {
		t.Errorf("after a second close and leaving, the session is in %v, want s-p and a", got.Keys())
	}

	// A session being restored is swept by the time of its restore, not of its
	// disconnection: one restored just in time, whose socket is still in its middlewares,
	// keeps what is held for it.
	l = newLog(time.Hour, 1<<20)
	o0, _ = l.record(to(), `["ev",0]`, nil)
	persisted(l, "p")
	l.sessions["p"].DisconnectedAt = time.Now().Add(-59 * time.Minute).UnixMilli()
	if l.restore("p", o0) == nil {
		t.Fatal("not restored within its time")
	}
	l.sweep(time.Now().Add(2 * time.Minute))
	if _, ok := l.restoring["s-p"]; !ok || l.nRestoring.Load() != 1 {
		t.Error("a session being restored was swept by the time of its disconnection")
	}
	l.sweep(time.Now().Add(2 * time.Hour))
	if _, ok := l.restoring["s-p"]; ok || l.nRestoring.Load() != 0 {
		t.Error("a session being restored for longer than the time was not swept")
	}

	// Broadcasts older than the time are dropped, on a sweep too.
	l = newLog(time.Nanosecond, 1<<20)
	l.record(to(), `["ev",0]`, nil)
	l.sweep(time.Now().Add(time.Second))
	persisted(l, "p")
	l.sweep(time.Now().Add(time.Hour))
	if n := l.packets.n; n != 0 || len(l.sessions) != 0 {
		t.Errorf("after the time: %d broadcasts and %d sessions kept", n, len(l.sessions))
	}

	// The bound drops the oldest, whatever their time; the newest is always kept.
	l = newLog(time.Hour, 1000)
	first, _ := l.record(to(), `["ev",0]`, nil)
	var last string
	for i := 1; i < 100; i++ {
		last, _ = l.record(to(), fmt.Sprintf(`["ev",%d]`, i), nil)
	}
	if l.bytes > 1000 || l.dropEarly == 0 || l.packets.n < 2 {
		t.Fatalf("kept %d bytes in %d packets, %d dropped early", l.bytes, l.packets.n, l.dropEarly)
	}
	persisted(l, "p")
	if l.restore("p", first) != nil {
		t.Error("restored from an offset dropped for the bound")
	}
	if s := l.restore("p", last); s == nil || missedOf(l, "p") != "[]" {
		t.Errorf("from the last offset: %+v", s)
	}
	big, _ := l.record(to(), `["ev","`+strings.Repeat("x", 5000)+`"]`, nil)
	if n := l.packets.n; n != 1 {
		t.Errorf("a broadcast larger than the bound left %d kept", n)
	}
	persisted(l, "q")
	if s := l.restore("q", big); s == nil {
		t.Error("the newest broadcast, larger than the bound, is not kept")
	}
}

// Each namespace keeps its own sessions and broadcasts: a client of /chat gets back the
// broadcasts of /chat that it missed, in /chat, and not those of the main namespace to
// a room of the same name.
func TestRecoveryInANamespace(t *testing.T) {
	a, b := recoveryPair(t)
	// Both listen on /chat's channel once each counts the other there.
	achat, bchat := a.io.Of("/chat", nil), b.io.Of("/chat", nil)
	eventually(t, "A and B count each other in /chat", func() bool {
		return achat.Adapter().ServerCount() == 2 && bchat.Adapter().ServerCount() == 2
	})
	a.connect(t, "/chat", "w", "news") // tells when A has delivered B's broadcast
	r := dialRawTo(t, a, "/chat", map[string]any{"name": "r", "rooms": []any{"news"}})
	first, _ := r.connectReply()
	if !a.awaitAnnounced(first.Sid, waitFor) {
		t.Fatal("no connection event for r")
	}
	achat.To("news").Emit("ev", 1)
	got := r.event()
	offset, _ := got[len(got)-1].(string)
	r.conn.Close()
	if d := a.errs.next(t, "A", "disconnect"); d[0] != "r" {
		t.Fatalf("disconnect of %v", d)
	}
	a.io.To("news").Emit("ev", "main namespace")
	bchat.To("news").Emit("ev", 2)
	for i := 0; ; i++ {
		if got := a.sentTo("w").next(t, "w", "ev"); fmt.Sprint(got[0]) == "2" {
			break
		} else if i == 2 {
			t.Fatalf("w got %v, not B's broadcast", got)
		}
	}
	r2 := dialRawTo(t, a, "/chat", map[string]any{"name": "r", "pid": first.Pid, "offset": offset})
	reply, missed := r2.restoredReply(1)
	if reply.Sid != first.Sid || missed[0][1] != float64(2) {
		t.Fatalf("recovered %+v with %v, want %s with ev 2", reply, missed, first.Sid)
	}
}

// A restored socket whose middlewares take their time: what is broadcast to it
// meanwhile (here, and from another server), and what the middleware emits to it, is
// held and written once it connects, after its missed broadcasts and before the next.
// socket.io delivered such broadcasts to it neither then nor later (its socket is in
// its rooms, but not in the namespace yet), and its own in-memory adapter loses them
// the same way.
func TestRecoveryHoldsWhatComesBeforeItConnects(t *testing.T) {
	a, b := recoveryPair(t)
	a.connect(t, "/", "w", "news") // tells when A has delivered B's broadcast
	b.connect(t, "/", "v", "news") // tells what B has decoded of A's
	entered, released := make(chan *socket.Socket, 1), make(chan struct{})
	release := sync.OnceFunc(func() { close(released) })
	t.Cleanup(release) // a test that failed leaves no middleware waiting
	a.io.Use(func(s *socket.Socket, next func(*socket.ExtendedError)) {
		if auth, _ := s.Handshake().Auth.(map[string]any); auth["wait"] == true {
			s.Emit("from-middleware")
			entered <- s
			<-released
		}
		next(nil)
	})

	first, offset := leftAfterOne(t, a)
	a.io.To("news").Emit("ev", 2) // missed
	for _, want := range []string{"1", "2"} {
		if got := b.sentTo("v").next(t, "v", "ev"); fmt.Sprint(got[0]) != want {
			t.Fatalf("v got %v, want ev %s", got, want)
		}
	}
	received := b.b.Stats().Received["BROADCAST"]

	r2 := dialRaw(t, a, map[string]any{"name": "r", "pid": first.Pid, "offset": offset, "wait": true})
	s := within(t, entered, "the middleware's run")
	if !s.Recovered() {
		t.Fatal("not restored")
	}
	a.io.To("news").Emit("ev", 3)
	// What the middleware emitted to its socket was not published: B decoded ev 3 alone.
	if got := b.sentTo("v").next(t, "v", "ev"); fmt.Sprint(got[0]) != "3" {
		t.Fatalf("v got %v, want ev 3", got)
	}
	if got := b.b.Stats().Received["BROADCAST"] - received; got != 1 {
		t.Errorf("B decoded %d broadcasts, want 1 (ev 3)", got)
	}
	a.io.Volatile().To("news").Emit("ev", "volatile") // not held
	b.io.To("news").Emit("ev", 4)
	for i := 0; ; i++ {
		if got := a.sentTo("w").next(t, "w", "ev"); fmt.Sprint(got[0]) == "4" {
			break
		} else if i == 4 { // ev 1, 2, 3, the volatile one (may be dropped), 4
			t.Fatalf("w got %v, not B's broadcast", got)
		}
	}
	release()
	reply, missed := r2.restoredReply(1)
	if reply.Sid != first.Sid || missed[0][1] != float64(2) {
		t.Fatalf("recovered %+v with %v, want %s with ev 2", reply, missed, first.Sid)
	}
	last := missed[0][2].(string)
	for _, want := range []string{"from-middleware", "3", "4"} {
		got := r2.event()
		if name := fmt.Sprint(got[0]); name != want && (name != "ev" || fmt.Sprint(got[1]) != want) {
			t.Fatalf("after connecting r got %v, want %s", got, want)
		}
		if o, _ := got[len(got)-1].(string); !offsetAfter(a, o, last) {
			t.Fatalf("offset %q of %v does not follow %q", o, got, last)
		}
		last = got[len(got)-1].(string)
	}
	b.io.To("news").Emit("ev", 5)
	if got := r2.event(); got[1] != float64(5) {
		t.Fatalf("then r got %v, want ev 5", got)
	}
}

// leftAfterOne connects client r to n in room "news", broadcasts ev 1 to it, and
// closes its connection once it has it; it returns r's CONNECT reply and the offset of
// ev 1, once n keeps r's session.
func leftAfterOne(t *testing.T, n *node) (first struct{ Sid, Pid string }, offset string) {
	t.Helper()
	r := dialRaw(t, n, map[string]any{"name": "r", "rooms": []any{"news"}})
	first, _ = r.connectReply()
	if !n.awaitAnnounced(first.Sid, waitFor) {
		t.Fatal("no connection event for r")
	}
	n.io.To("news").Emit("ev", 1)
	got := r.event()
	if len(got) != 3 || got[1] != float64(1) {
		t.Fatalf("r got %v, want ev 1 with its offset", got)
	}
	offset, _ = got[2].(string)
	r.conn.Close()
	eventually(t, "the server keeps r's session", func() bool { return sessionKept(n, first.Pid) })
	return first, offset
}

// within returns what ch gives, failing the test after waitFor.
func within[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitFor):
		t.Fatalf("no %s within %v", what, waitFor)
	}
	panic("unreachable")
}

// offsetAfter reports whether offset o of n's main namespace comes after offset last.
func offsetAfter(n *node, o, last string) bool {
	l := n.io.Sockets().Adapter().(*Adapter).rec
	x, ok1 := l.number(o)
	y, ok2 := l.number(last)
	return ok1 && ok2 && x > y
}

// Kept broadcasts emitted at once on several goroutines, and others arriving from
// another server, reach a socket in the order of their offsets, and each goroutine's in
// its own order: a client that disconnects between two of them is given back exactly
// those after its offset. They took their offsets in one order and could be written in
// another.
func TestRecoveryOffsetsInOrderOfDelivery(t *testing.T) {
	a, b := recoveryPair(t)
	r := dialRaw(t, a, map[string]any{"name": "r", "rooms": []any{"news"}})
	first, _ := r.connectReply()
	if !a.awaitAnnounced(first.Sid, waitFor) {
		t.Fatal("no connection event for r")
	}
	const senders, each = 6, 100
	var wg sync.WaitGroup
	for g := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if g == 0 {
					b.io.To("news").Emit("ev", g, i) // applied on A by one goroutine
				} else {
					a.io.To("news").Emit("ev", g, i)
				}
			}
		}()
	}
	defer wg.Wait()
	next := make([]int, senders)
	last := ""
	for range senders * each {
		got := r.event()
		g, i := int(got[1].(float64)), int(got[2].(float64))
		if i != next[g] {
			t.Fatalf("sender %d: got %d, want %d", g, i, next[g])
		}
		next[g]++
		o := got[3].(string)
		if last != "" && !offsetAfter(a, o, last) {
			t.Fatalf("offset %q after %q", o, last)
		}
		last = o
	}
}

// A client that drops its connection again and again while three senders broadcast to
// its room (two on its server, one on another) gets its socket back each time, and, over
// all its connections, every broadcast exactly once, each sender's in order: the
// broadcasts in flight as its session is restored are neither given twice (among its
// missed packets, then as they come) nor missed.
func TestRecoveryExactlyOnceAcrossReconnects(t *testing.T) {
	a, b := recoveryPair(t)
	const senders, each = 3, 300
	r := dialRaw(t, a, map[string]any{"name": "r", "rooms": []any{"news"}})
	first, _ := r.connectReply()
	if !a.awaitAnnounced(first.Sid, waitFor) {
		t.Fatal("no connection event for r")
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(stop)
	for g := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(time.Millisecond) // paced: the client reconnects meanwhile
			defer tick.Stop()
			for i := range each {
				select {
				case <-tick.C:
				case <-stop:
					return
				}
				if g == 0 {
					b.io.To("news").Emit("ev", g, i)
				} else {
					a.io.To("news").Emit("ev", g, i)
				}
			}
		}()
	}
	next := make([]int, senders)
	total, offset, reconnects := 0, "", 0
	take := func(got []any) {
		t.Helper()
		g, i := int(got[1].(float64)), int(got[2].(float64))
		if i != next[g] {
			t.Fatalf("after %d reconnections, sender %d: got %d, want %d", reconnects, g, i, next[g])
		}
		next[g]++
		total++
		offset = got[3].(string)
	}
	for total < senders*each {
		for range 1 + total%17 {
			if total == senders*each {
				break
			}
			take(r.event())
		}
		r.conn.Close()
		// Not A's "disconnect" event: socket.io emits it twice for a connection that
		// closes as its socket connects (see persist and dropIfClosed).
		eventually(t, "A keeps r's session", func() bool { return sessionKept(a, first.Pid) })
		reconnects++
		r = dialRaw(t, a, map[string]any{"name": "r", "pid": first.Pid, "offset": offset})
		reply, before := r.connectReply()
		if reply.Sid != first.Sid || len(before) != 0 {
			t.Fatalf("reconnection %d: socket %q, want %q; events before: %v", reconnects, reply.Sid, first.Sid, before)
		}
	}
	if reconnects < 10 {
		t.Errorf("only %d reconnections", reconnects)
	}
	t.Logf("%d broadcasts over %d reconnections", total, reconnects)
}

// What is held for a restored socket in its middlewares follows the rooms it is in once
// it has joined those of its session: a middleware that makes it leave one and join
// another changes what it gets, as it would for a socket that connected.
func TestRecoveryHoldsByTheRoomsItIsIn(t *testing.T) {
	a, _ := recoveryPair(t)
	entered, released := make(chan struct{}), make(chan struct{})
	release := sync.OnceFunc(func() { close(released) })
	t.Cleanup(release) // a test that failed leaves no middleware waiting
	a.io.Use(func(s *socket.Socket, next func(*socket.ExtendedError)) {
		if auth, _ := s.Handshake().Auth.(map[string]any); auth["move"] == true {
			s.Leave("news")
			s.Join("other")
			close(entered)
			<-released
		}
		next(nil)
	})
	first, offset := leftAfterOne(t, a)
	r2 := dialRaw(t, a, map[string]any{"name": "r", "pid": first.Pid, "offset": offset, "move": true})
	within(t, entered, "the middleware's run")
	// Delivered here before Emit returns: held, or not.
	a.io.To("news").Emit("ev", "left")
	a.io.Except("other").Emit("ev", "excluded")
	a.io.To("other").Emit("ev", "joined")
	release()
	r2.restoredReply(0)
	if got := r2.event(); got[1] != "joined" {
		t.Fatalf("r got %v, want the broadcast to the room it joined", got)
	}
	a.io.To("other").Emit("ev", "next")
	if got := r2.event(); got[1] != "next" {
		t.Fatalf("then r got %v", got)
	}
}

// sessionKept reports whether n's main namespace keeps session pid.
func sessionKept(n *node, pid string) bool {
	l := n.io.Sockets().Adapter().(*Adapter).rec
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.sessions[socket.PrivateSessionId(pid)]
	return ok
}

// A client whose attempt to recover closed while its socket was in a middleware, after
// broadcasts were held for it, gets them on its next attempt, from the same offset,
// once: what was held for the attempt that closed is dropped, and its session kept.
func TestRecoveryAfterAnAttemptThatClosed(t *testing.T) {
	a, _ := recoveryPair(t)
	entered, released := make(chan *socket.Socket, 1), make(chan struct{})
	release := sync.OnceFunc(func() { close(released) })
	t.Cleanup(release) // a test that failed leaves no middleware waiting
	a.io.Use(func(s *socket.Socket, next func(*socket.ExtendedError)) {
		if auth, _ := s.Handshake().Auth.(map[string]any); auth["wait"] == true {
			// On a goroutine: the engine.io connection's reads wait for a middleware
			// that blocks, and would not see it close.
			entered <- s
			go func() {
				<-released
				next(nil)
			}()
			return
		}
		next(nil)
	})
	first, offset := leftAfterOne(t, a)
	a.io.To("news").Emit("ev", 2) // missed

	closing := dialRaw(t, a, map[string]any{"name": "r", "pid": first.Pid, "offset": offset, "wait": true})
	s := within(t, entered, "the middleware's run")
	a.io.To("news").Emit("ev", 3) // held for the attempt
	closing.conn.Close()
	eventually(t, "A sees the connection closed", func() bool { return s.Conn().ReadyState() != "open" })
	release()
	eventually(t, "A keeps r's session again", func() bool { return sessionKept(a, first.Pid) })
	a.io.To("news").Emit("ev", 4)

	r2 := dialRaw(t, a, map[string]any{"name": "r", "pid": first.Pid, "offset": offset})
	reply, missed := r2.restoredReply(3)
	if reply.Sid != first.Sid {
		t.Fatalf("recovered %+v, want %s", reply, first.Sid)
	}
	for i, m := range missed {
		if m[1] != float64(i+2) {
			t.Fatalf("missed %v, want ev 2, 3, 4", missed)
		}
	}
	a.io.To("news").Emit("ev", 5)
	if got := r2.event(); got[1] != float64(5) {
		t.Fatalf("then r got %v, want ev 5", got)
	}
}

// The queue of kept broadcasts agrees with a slice across its chunks' bounds, whatever
// the mix of pushes and pops, and an emptied queue keeps one chunk at most.
func TestKeptQueue(t *testing.T) {
	var q keptQueue
	var want []int64
	next := int64(0)
	for round := range 40 {
		for range (round * 37) % 700 {
			q.push(keptPacket{at: next})
			want = append(want, next)
			next++
		}
		for range (round * 53) % 650 {
			if q.n == 0 {
				break
			}
			q.pop()
			want = want[1:]
		}
		if q.n != len(want) {
			t.Fatalf("round %d: %d kept, want %d", round, q.n, len(want))
		}
		for i, w := range want {
			if got := q.at(i).at; got != w {
				t.Fatalf("round %d: entry %d is %d, want %d", round, i, got, w)
			}
		}
		if q.n == 0 && len(q.chunks) > 1 {
			t.Fatalf("round %d: empty, with %d chunks", round, len(q.chunks))
		}
		if max := (q.head+q.n)/keptChunk + 1; len(q.chunks) > max {
			t.Fatalf("round %d: %d chunks for %d entries from %d", round, len(q.chunks), q.n, q.head)
		}
	}
}
