package pgadapter

import (
	"bytes"
	"context"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/zishang520/socket.io/v2/socket"

	"github.com/socketio-pg/pgadapter/emitter"
)

// mixed is a cluster of one Go server (G) and one Node.js server (N) with
// @socket.io/postgres-adapter 0.5.0, default options on both sides, on a database of its
// own:
//
//	G: g1 (r1, only-g), g2 (r2)
//	N: n1 (r1, only-n), n2 (r2)
type mixed struct {
	g       *node
	n       *nodeProc
	db      string
	clients map[string]*tclient
}

func newMixed(t *testing.T) *mixed {
	t.Helper()
	requireNode(t)
	m := &mixed{db: mixedDatabase(t), clients: map[string]*tclient{}}
	m.g = startNodeOn(t, "G", m.db, Options{Logger: testLogger(), HeartbeatInterval: 300 * time.Millisecond})
	m.n = startNodeProc(t, "N", m.db)
	m.waitCount(t, 2)
	m.clients["g1"] = m.g.connect(t, "/", "g1", "r1", "only-g")
	m.clients["g2"] = m.g.connect(t, "/", "g2", "r2")
	m.clients["n1"] = m.n.connect(t, "n1", "r1", "only-n")
	m.clients["n2"] = m.n.connect(t, "n2", "r2")
	return m
}

func (m *mixed) all() []string { return []string{"g1", "g2", "n1", "n2"} }

// waitCount waits until both servers count want servers.
func (m *mixed) waitCount(t *testing.T, want int) {
	t.Helper()
	waitServerCount(t, []*node{m.g}, int64(want))
	eventually(t, "the Node server counts the cluster", func() bool { return m.n.serverCount(t) == want })
}

// nodeEmit broadcasts from the Node server.
func (m *mixed) nodeEmit(t *testing.T, cmd map[string]any) {
	t.Helper()
	cmd["op"] = "emit"
	m.n.call(t, cmd)
}

// fence waits until "end", emitted by emit, has been written to and received by every
// client: what was published before it by the same server has then been applied.
func (m *mixed) fence(t *testing.T, emit func()) {
	t.Helper()
	emit()
	for _, name := range m.all() {
		m.clients[name].sent.next(t, name+"'s server", "end")
		m.clients[name].expect(t, "end")
	}
}

// check verifies that ev was written once to each of names and to no other client, that
// each of names received it, and, when args are given, with those arguments.
func (m *mixed) check(t *testing.T, ev string, names []string, args ...any) {
	t.Helper()
	checkWritten(t, m.clients, ev, names, args...)
}

// normalizeBinary turns the Go client's binary buffers into []byte for comparison.
func normalizeBinary(v any) any {
	switch x := v.(type) {
	case []any:
		out := make([]any, len(x))
		for i := range x {
			out[i] = normalizeBinary(x[i])
		}
		return out
	case map[string]any:
		out := map[string]any{}
		for k, e := range x {
			out[k] = normalizeBinary(e)
		}
		return out
	case interface{ Bytes() []byte }:
		return x.Bytes()
	}
	return v
}

func TestMixedBroadcastGoToNode(t *testing.T) {
	m := newMixed(t)
	g := m.g.io
	obj := map[string]any{"k": []any{1.5, true, nil, "s"}}
	g.Emit("all", 1, "two", obj)
	g.To("r1").Emit("r1")
	g.Except("r2").Emit("not-r2")
	g.To("r1", "r2").Except("only-n").Emit("rooms-except")
	g.Volatile().Emit("volatile")
	g.Local().Emit("local")
	serverSocket(t, m.g, m.clients["g1"]).Broadcast().Emit("from-socket")
	m.fence(t, func() { g.Emit("end") })
	m.check(t, "all", m.all(), 1.0, "two", obj)
	m.check(t, "r1", []string{"g1", "n1"})
	m.check(t, "not-r2", []string{"g1", "n1"})
	m.check(t, "rooms-except", []string{"g1", "g2", "n2"})
	m.check(t, "volatile", m.all())
	m.check(t, "local", []string{"g1", "g2"})
	m.check(t, "from-socket", []string{"g2", "n1", "n2"})
}

// Equal broadcasts published in one transaction, apart by their sequence numbers (see
// publisher.number), each reach a Node server's clients, in order, with their
// arguments.
func TestMixedEqualBroadcasts(t *testing.T) {
	m := newMixed(t)
	const n = 300
	commits := m.g.b.rt.pub.commits.Load()
	for range n {
		m.g.io.Emit("same", "x")
	}
	m.fence(t, func() { m.g.io.Emit("end") })
	if c := m.g.b.rt.pub.commits.Load() - commits; c > n/2 {
		t.Errorf("%d equal broadcasts took %d transactions", n, c)
	}
	for _, name := range []string{"n1", "n2"} {
		for i := range n {
			if args := m.clients[name].sent.next(t, "N", "same"); len(args) != 1 || args[0] != "x" {
				t.Fatalf("%s: broadcast %d arrived as %v", name, i, args)
			}
		}
		if got := m.clients[name].sent.count("same"); got != 0 {
			t.Fatalf("%s: %d more than were sent", name, got)
		}
	}
}

func TestMixedBroadcastNodeToGo(t *testing.T) {
	m := newMixed(t)
	obj := map[string]any{"k": []any{1.5, true, nil, "s"}}
	m.nodeEmit(t, map[string]any{"event": "all", "args": []any{1, "two", obj}})
	m.nodeEmit(t, map[string]any{"event": "r1", "rooms": []string{"r1"}})
	m.nodeEmit(t, map[string]any{"event": "not-r2", "except": []string{"r2"}})
	m.nodeEmit(t, map[string]any{"event": "rooms-except", "rooms": []string{"r1", "r2"}, "except": []string{"only-g"}})
	m.nodeEmit(t, map[string]any{"event": "volatile", "flags": map[string]any{"volatile": true}})
	m.nodeEmit(t, map[string]any{"event": "local", "flags": map[string]any{"local": true}})
	m.nodeEmit(t, map[string]any{"event": "from-socket", "from": "n1"})
	m.fence(t, func() { m.nodeEmit(t, map[string]any{"event": "end"}) })
	m.check(t, "all", m.all(), 1.0, "two", obj)
	m.check(t, "r1", []string{"g1", "n1"})
	m.check(t, "not-r2", []string{"g1", "n1"})
	m.check(t, "rooms-except", []string{"g2", "n1", "n2"})
	m.check(t, "volatile", m.all())
	m.check(t, "local", []string{"n1", "n2"})
	m.check(t, "from-socket", []string{"g1", "g2", "n2"})
}

func TestMixedSocketsJoinLeaveDisconnect(t *testing.T) {
	m := newMixed(t)
	// From Go, applied by Node.
	m.g.io.In("r1").SocketsJoin("r9")
	m.g.io.To("r9").Emit("r9")
	m.g.io.In("r1").SocketsLeave("only-n")
	m.g.io.To("only-n").Emit("only-n")
	m.fence(t, func() { m.g.io.Emit("end") })
	m.check(t, "r9", []string{"g1", "n1"})
	m.check(t, "only-n", nil)
	// From Node, applied by Go.
	m.n.call(t, map[string]any{"op": "socketsJoin", "rooms": []string{"r2"}, "target": []string{"r8"}})
	m.nodeEmit(t, map[string]any{"event": "r8", "rooms": []string{"r8"}})
	m.n.call(t, map[string]any{"op": "socketsLeave", "rooms": []string{"r1"}, "target": []string{"only-g"}})
	m.nodeEmit(t, map[string]any{"event": "only-g", "rooms": []string{"only-g"}})
	m.fence(t, func() { m.nodeEmit(t, map[string]any{"event": "end"}) })
	m.check(t, "r8", []string{"g2", "n2"})
	m.check(t, "only-g", nil)
	// A room joined by number in Node (plain JavaScript): Go reads it as "7", where it
	// used to drop the whole message as malformed.
	m.n.call(t, map[string]any{"op": "socketsJoin", "rooms": []string{"r2"}, "target": []any{7}})
	m.fence(t, func() { m.nodeEmit(t, map[string]any{"event": "end"}) })
	m.g.io.To("7").Emit("seven")
	m.fence(t, func() { m.g.io.Emit("end") })
	m.check(t, "seven", []string{"g2"}) // Node keys n2's room by the number, not "7"
	if errs := m.g.errs.drain("error"); len(errs) > 0 {
		t.Fatalf("Go reported %v", errs)
	}
	// Disconnections both ways.
	m.g.io.In("r2").DisconnectSockets(true)
	m.clients["g2"].expect(t, "disconnect")
	m.clients["n2"].expect(t, "disconnect")
	m.n.call(t, map[string]any{"op": "disconnectSockets", "rooms": []string{"r1"}, "close": true})
	m.clients["g1"].expect(t, "disconnect")
	m.clients["n1"].expect(t, "disconnect")
	eventually(t, "every socket gone", func() bool {
		return m.g.io.Sockets().Sockets().Len() == 0 && len(m.n.socketIDs(t, "/", "n1")) == 0
	})
}

func TestMixedFetchSockets(t *testing.T) {
	m := newMixed(t)
	// Go fetches Node's sockets.
	list, err := fetchSockets(t, m.g.io)
	if err != nil || !slices.Equal(socketNames(t, list), m.all()) {
		t.Fatalf("Go's FetchSockets: %v %v", list, err)
	}
	for _, s := range list {
		data := s.Data().(map[string]any)
		c := m.clients[data["name"].(string)]
		if string(s.Id()) != c.s.Id() {
			t.Errorf("%s: id %s, client says %s", c.name, s.Id(), c.s.Id())
		}
		if !strings.HasPrefix(c.name, "n") {
			continue
		}
		hs := s.Handshake()
		if data["node"] != "N" || !s.Rooms().Has("r1") && !s.Rooms().Has("r2") || hs.Address == "" ||
			!slices.Equal(hs.Query["EIO"], []string{"4"}) || len(hs.Headers["host"]) != 1 || hs.Issued == 0 {
			t.Errorf("%s from Node: data %v rooms %v handshake %+v", c.name, data, s.Rooms().Keys(), hs)
		}
		if auth, _ := hs.Auth.(map[string]any); auth["name"] != c.name {
			t.Errorf("%s: auth %v", c.name, hs.Auth)
		}
	}
	list, err = fetchSockets(t, m.g.io.In("r2"))
	if err != nil || !slices.Equal(socketNames(t, list), []string{"g2", "n2"}) {
		t.Fatalf("Go's FetchSockets in r2: %v %v", socketNames(t, list), err)
	}

	// Node fetches Go's sockets.
	got := m.n.call(t, map[string]any{"op": "fetchSockets", "rooms": []string{"r1"}}).([]any)
	var names []string
	for _, item := range got {
		s := item.(map[string]any)
		data := s["data"].(map[string]any)
		names = append(names, data["name"].(string))
		if data["name"] != "g1" {
			continue
		}
		hs := s["handshake"].(map[string]any)
		query, _ := hs["query"].(map[string]any)
		rooms := s["rooms"].([]any)
		if s["id"] != m.clients["g1"].s.Id() || data["node"] != "G" || !slices.Contains(rooms, any("only-g")) ||
			query["EIO"] != "4" || hs["address"] == "" || hs["issued"] == nil {
			t.Errorf("g1 seen from Node: %v", s)
		}
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"g1", "n1"}) {
		t.Fatalf("Node's fetchSockets in r1: %v", names)
	}
}

func TestMixedServerSideEmit(t *testing.T) {
	m := newMixed(t)
	m.n.call(t, map[string]any{"op": "listen", "event": "hello"})
	m.n.call(t, map[string]any{"op": "listen", "event": "question", "answer": "answer-node"})
	goEvents := newRecorder()
	m.g.io.On("hello-go", func(args ...any) { goEvents.add("hello-go", args...) })
	m.g.io.On("question-go", func(args ...any) {
		args[len(args)-1].(socket.Ack)([]any{"answer-go", "ignored"}, nil)
	})

	if err := m.g.io.ServerSideEmit("hello", 1, "x", []byte{7, 7}); err != nil {
		t.Fatal(err)
	}
	if args := m.n.sse.next(t, "node", "hello"); !reflect.DeepEqual(args, []any{1.0, "x", []byte{7, 7}}) {
		t.Fatalf("Node received hello%#v", args)
	}
	m.n.call(t, map[string]any{"op": "serverSideEmit", "event": "hello-go", "args": []any{2, "y", []byte{8}}})
	if args := goEvents.next(t, "G", "hello-go"); !reflect.DeepEqual(args, []any{2.0, "y", []byte{8}}) {
		t.Fatalf("Go received hello-go%#v", args)
	}

	answers := make(chan []any, 1)
	m.g.io.ServerSideEmitWithAck("question", "q")(func(args []any, err error) {
		if err != nil {
			t.Errorf("Go's ServerSideEmitWithAck: %v", err)
		}
		answers <- args
	})
	select {
	case args := <-answers:
		if !slices.Equal(args, []any{"answer-node"}) {
			t.Fatalf("Go got answers %v", args)
		}
	case <-time.After(waitFor):
		t.Fatal("Go's ServerSideEmitWithAck never completed")
	}
	res := m.n.call(t, map[string]any{"op": "serverSideEmitWithAck", "event": "question-go", "args": []any{"q"}}).(map[string]any)
	if !reflect.DeepEqual(res["responses"], []any{"answer-go"}) {
		t.Fatalf("Node got %v", res)
	}
}

func TestMixedServerCount(t *testing.T) {
	requireNode(t)
	db := mixedDatabase(t)
	g := startNodeOn(t, "G", db, Options{Logger: testLogger(), HeartbeatInterval: 300 * time.Millisecond})
	n := startNodeProc(t, "N", db)
	m := &mixed{g: g, n: n}
	m.waitCount(t, 2)
	n.stop(t)
	waitServerCount(t, []*node{g}, 1)

	n2 := startNodeProc(t, "N2", db)
	m.n = n2
	m.waitCount(t, 2)
	g.close()
	eventually(t, "Node drops the closed Go server", func() bool { return n2.serverCount(t) == 1 })
}

func TestMixedLargeAndBinary(t *testing.T) {
	m := newMixed(t)
	big := strings.Repeat("large-", 20000/6)
	nested := map[string]any{"nested": []byte{4, 5}}
	m.g.io.Emit("big-from-go", big)
	m.g.io.Emit("bin-from-go", []byte{1, 2, 3}, nested)
	for _, name := range []string{"n1", "n2"} {
		if args := m.clients[name].expect(t, "big-from-go"); len(args) != 1 || args[0] != big {
			t.Fatalf("%s: large message from Go differs", name)
		}
		args := normalizeBinary(m.clients[name].expect(t, "bin-from-go")).([]any)
		if !bytes.Equal(args[0].([]byte), []byte{1, 2, 3}) || !reflect.DeepEqual(args[1], nested) {
			t.Fatalf("%s: binary from Go %#v", name, args)
		}
	}
	m.nodeEmit(t, map[string]any{"event": "big-from-node", "args": []any{big}})
	m.nodeEmit(t, map[string]any{"event": "bin-from-node", "args": []any{[]byte{9, 8, 7}, nested}})
	for _, name := range []string{"g1", "g2"} {
		if args := m.clients[name].expect(t, "big-from-node"); len(args) != 1 || args[0] != big {
			t.Fatalf("%s: large message from Node differs", name)
		}
		args := normalizeBinary(m.clients[name].expect(t, "bin-from-node")).([]any)
		if !bytes.Equal(args[0].([]byte), []byte{9, 8, 7}) || !reflect.DeepEqual(args[1], nested) {
			t.Fatalf("%s: binary from Node %#v", name, args)
		}
	}
	if errs := m.n.errs.drain("error"); len(errs) > 0 {
		t.Fatalf("Node reported %v", errs)
	}
}

// Node's own emitter leaves nsp out of its messages, so Node servers drop them; Go
// servers take the namespace from the channel and deliver them.
func TestMixedNodeEmitterReachesGoClients(t *testing.T) {
	m := newMixed(t)
	m.n.call(t, map[string]any{"op": "emitter", "event": "from-emitter", "args": []any{1, "x"}, "rooms": []string{"r1"}})
	m.n.call(t, map[string]any{"op": "emitter", "event": "bin-from-emitter", "args": []any{[]byte{9}}})
	if args := m.clients["g1"].expect(t, "from-emitter"); !reflect.DeepEqual(args, []any{1.0, "x"}) {
		t.Fatalf("g1 got %v", args)
	}
	for _, name := range []string{"g1", "g2"} {
		args := normalizeBinary(m.clients[name].expect(t, "bin-from-emitter")).([]any)
		if !bytes.Equal(args[0].([]byte), []byte{9}) {
			t.Fatalf("%s got %#v", name, args)
		}
	}
	if m.clients["g2"].sent.count("from-emitter") != 0 {
		t.Fatal("a room-targeted emitter message reached g2")
	}
}

// The Go emitter's messages carry nsp, so Node servers deliver them too.
func TestMixedGoEmitterReachesNodeClients(t *testing.T) {
	m := newMixed(t)
	pool := newPoolURL(t, m.db)
	defer pool.Close()
	e, err := emitter.New(pool, nil) // default prefix and table, as the Node servers
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := e.To("r1").Emit(ctx, "from-go-emitter", 1, "x"); err != nil {
		t.Fatal(err)
	}
	if err := e.Emit(ctx, "bin-from-go-emitter", []byte{3, 2, 1}, strings.Repeat("b", 9000)); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"g1", "n1"} {
		if args := m.clients[name].expect(t, "from-go-emitter"); !reflect.DeepEqual(args, []any{1.0, "x"}) {
			t.Fatalf("%s got %v", name, args)
		}
	}
	for _, name := range m.all() {
		args := normalizeBinary(m.clients[name].expect(t, "bin-from-go-emitter")).([]any)
		if !bytes.Equal(args[0].([]byte), []byte{3, 2, 1}) || len(args[1].(string)) != 9000 {
			t.Fatalf("%s got %d args", name, len(args))
		}
	}
	m.n.call(t, map[string]any{"op": "listen", "event": "from-emitter-sse"})
	if err := e.ServerSideEmit(ctx, "from-emitter-sse", 7); err != nil {
		t.Fatal(err)
	}
	if args := m.n.sse.next(t, "node", "from-emitter-sse"); !reflect.DeepEqual(args, []any{7.0}) {
		t.Fatalf("Node received from-emitter-sse%v", args)
	}
	if errs := m.n.errs.drain("error"); len(errs) > 0 {
		t.Fatalf("Node reported %v", errs)
	}
}

// Node servers do not answer AllRooms and do not advertise the capability: a Go server
// must not wait for them.
func TestMixedAllRoomsDoesNotWaitForNode(t *testing.T) {
	m := newMixed(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	rooms, err := AllRooms(ctx, m.g.io.Sockets())
	if err != nil {
		t.Fatalf("AllRooms in a mixed cluster: %v (it waited for the Node server)", err)
	}
	if !slices.Contains(rooms, "only-g") || slices.Contains(rooms, "only-n") {
		t.Fatalf("AllRooms: %v", rooms)
	}
	if errs := m.n.errs.drain("error"); len(errs) > 0 {
		t.Fatalf("Node reported %v", errs)
	}
}
