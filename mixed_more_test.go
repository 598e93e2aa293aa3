package pgadapter

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/zishang520/socket.io/v2/socket"

	"github.com/socketio-pg/pgadapter/emitter"
)

// More mixed-cluster tests (see mixed_test.go for the cluster of newMixed): more servers,
// remote sockets, large fetch responses, both emitters' room operations, and a namespace
// other than "/".

// remoteNamed fetches the sockets op selects and returns the one of the client called
// name.
func remoteNamed(t *testing.T, op interface {
	FetchSockets() func(func([]*socket.RemoteSocket, error))
}, name string) *socket.RemoteSocket {
	t.Helper()
	list, err := fetchSockets(t, op)
	if err != nil {
		t.Fatalf("FetchSockets: %v", err)
	}
	for _, s := range list {
		if d, ok := s.Data().(map[string]any); ok && d["name"] == name {
			return s
		}
	}
	t.Fatalf("no fetched socket named %s in %v", name, socketNames(t, list))
	return nil
}

// nodeFetched runs the Node server's fetchSockets command and returns the sockets it
// got, by client name.
func nodeFetched(t *testing.T, n *nodeProc, cmd map[string]any) map[string]map[string]any {
	t.Helper()
	cmd["op"] = "fetchSockets"
	out := map[string]map[string]any{}
	for _, item := range n.call(t, cmd).([]any) {
		s := item.(map[string]any)
		name, _ := s["data"].(map[string]any)["name"].(string)
		if _, dup := out[name]; dup {
			t.Fatalf("Node's fetchSockets returned %s twice", name)
		}
		out[name] = s
	}
	return out
}

// fenceOn is mixed.fence for some clients: emit sends "end", which each of clients must
// be written and receive. A Node server reports what it writes through its stdout, which
// a client can beat: an event is checked as written only behind such a fence.
func fenceOn(t *testing.T, clients map[string]*tclient, emit func()) {
	t.Helper()
	emit()
	for name, c := range clients {
		c.sent.next(t, name+"'s server", "end")
		c.expect(t, "end")
	}
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}

// goSSEWithAck runs ServerSideEmitWithAck on nsp and returns its answers, sorted.
func goSSEWithAck(t *testing.T, nsp interface {
	ServerSideEmitWithAck(string, ...any) func(socket.Ack) error
}, ev string, args ...any) []string {
	t.Helper()
	type result struct {
		args []any
		err  error
	}
	ch := make(chan result, 1)
	if err := nsp.ServerSideEmitWithAck(ev, args...)(func(args []any, err error) { ch <- result{args, err} }); err != nil {
		t.Fatalf("ServerSideEmitWithAck %s: %v", ev, err)
	}
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("ServerSideEmitWithAck %s: %v (answers %v)", ev, r.err, r.args)
		}
		return sortedStrings(t, r.args)
	case <-time.After(waitFor):
		t.Fatalf("ServerSideEmitWithAck %s never completed", ev)
		return nil
	}
}

// nodeSSEWithAck runs the Node server's serverSideEmitWithAck and returns its answers,
// sorted.
func nodeSSEWithAck(t *testing.T, n *nodeProc, cmd map[string]any) []string {
	t.Helper()
	cmd["op"] = "serverSideEmitWithAck"
	res := n.call(t, cmd).(map[string]any)
	if res["error"] != nil {
		t.Fatalf("Node's serverSideEmitWithAck %s: %v", cmd["event"], res["error"])
	}
	return sortedStrings(t, res["responses"].([]any))
}

func noErrors(t *testing.T, gos []*node, nodes ...*nodeProc) {
	t.Helper()
	for _, g := range gos {
		if errs := g.errs.drain("error"); len(errs) > 0 {
			t.Errorf("Go server %s reported %v", g.name, errs)
		}
	}
	for _, n := range nodes {
		if errs := n.errs.drain("error"); len(errs) > 0 {
			t.Errorf("Node server %s reported %v", n.name, errs)
		}
	}
}

// twoGoOneNode starts two Go servers, G and H, and a Node server, N, on db, and waits
// until each counts the three.
func twoGoOneNode(t *testing.T, db string) (g, h *node, n *nodeProc) {
	t.Helper()
	requireNode(t)
	opts := Options{Logger: testLogger(), HeartbeatInterval: 300 * time.Millisecond}
	g = startNodeOn(t, "G", db, opts)
	h = startNodeOn(t, "H", db, opts)
	n = startNodeProc(t, "N", db)
	waitServerCount(t, []*node{g, h}, 3)
	eventually(t, "the Node server counts 3 servers", func() bool { return n.serverCount(t) == 3 })
	return g, h, n
}

// Two Go servers and a Node server: requests from each side wait for, and gather, the
// answers of both others.
//
//	G: g1 (r1)   H: h1 (r1)   N: n1 (r2)
func TestMixedMoreThreeServers(t *testing.T) {
	g, h, n := twoGoOneNode(t, mixedDatabase(t))
	clients := map[string]*tclient{
		"g1": g.connect(t, "/", "g1", "r1"),
		"h1": h.connect(t, "/", "h1", "r1"),
		"n1": n.connect(t, "n1", "r2"),
	}
	server := map[string]string{"g1": "G", "h1": "H", "n1": "N"}

	// Go's FetchSockets, from each Go server.
	for _, from := range []*node{g, h} {
		list, err := fetchSockets(t, from.io)
		if err != nil || !slices.Equal(socketNames(t, list), []string{"g1", "h1", "n1"}) {
			t.Fatalf("%s's FetchSockets: %v %v", from.name, socketNames(t, list), err)
		}
		for _, s := range list {
			data := s.Data().(map[string]any)
			name := data["name"].(string)
			if string(s.Id()) != clients[name].s.Id() || data["node"] != server[name] {
				t.Errorf("%s's FetchSockets: %s is %s with data %v, want %s on %s", from.name, name, s.Id(), data, clients[name].s.Id(), server[name])
			}
		}
		list, err = fetchSockets(t, from.io.In("r1"))
		if err != nil || !slices.Equal(socketNames(t, list), []string{"g1", "h1"}) {
			t.Fatalf("%s's FetchSockets in r1: %v %v", from.name, socketNames(t, list), err)
		}
	}

	// Node's fetchSockets gets both Go servers' sockets.
	got := nodeFetched(t, n, map[string]any{})
	if names := sortedKeys(got); !slices.Equal(names, []string{"g1", "h1", "n1"}) {
		t.Fatalf("Node's fetchSockets: %v", names)
	}
	for name, s := range got {
		if s["id"] != clients[name].s.Id() || s["data"].(map[string]any)["node"] != server[name] {
			t.Errorf("Node's fetchSockets: %s is %v", name, s)
		}
	}
	if names := sortedKeys(nodeFetched(t, n, map[string]any{"rooms": []string{"r1"}})); !slices.Equal(names, []string{"g1", "h1"}) {
		t.Fatalf("Node's fetchSockets in r1: %v", names)
	}

	// Server-side emits with acks: each side gets one answer from each other server.
	n.call(t, map[string]any{"op": "listen", "event": "question", "answer": "answer-N"})
	for _, s := range []*node{g, h} {
		answer := "answer-" + s.name
		s.io.On("question", func(args ...any) {
			args[len(args)-1].(socket.Ack)([]any{answer, "ignored"}, nil)
		})
	}
	if answers := goSSEWithAck(t, g.io, "question", "from-G"); !slices.Equal(answers, []string{"answer-H", "answer-N"}) {
		t.Fatalf("G's ServerSideEmitWithAck: %v", answers)
	}
	if args := n.sse.next(t, "node", "question"); !reflect.DeepEqual(args, []any{"from-G"}) {
		t.Fatalf("Node received question%v", args)
	}
	if answers := goSSEWithAck(t, h.io, "question", "from-H"); !slices.Equal(answers, []string{"answer-G", "answer-N"}) {
		t.Fatalf("H's ServerSideEmitWithAck: %v", answers)
	}
	answers := nodeSSEWithAck(t, n, map[string]any{"event": "question", "args": []any{"from-N"}})
	if !slices.Equal(answers, []string{"answer-G", "answer-H"}) {
		t.Fatalf("Node's serverSideEmitWithAck: %v", answers)
	}
	noErrors(t, []*node{g, h}, n)
}

// A Go server operates on a Node server's socket through the RemoteSocket FetchSockets
// returns: join, leave, emit, disconnect (the emit with an ack is in
// mixed_more_acks_test.go).
func TestMixedMoreRemoteSocketFromGo(t *testing.T) {
	m := newMixed(t)
	n1 := remoteNamed(t, m.g.io, "n1")
	if string(n1.Id()) != m.clients["n1"].s.Id() || !n1.Rooms().Has("only-n") {
		t.Fatalf("n1 fetched as %s in %v, client %s", n1.Id(), n1.Rooms().Keys(), m.clients["n1"].s.Id())
	}
	n1.Join("joined")
	m.g.io.To("joined").Emit("to-joined")
	n1.Leave("r1")
	m.g.io.To("r1").Emit("to-r1")
	if err := n1.Emit("direct", 1, "x"); err != nil {
		t.Fatal(err)
	}
	m.fence(t, func() { m.g.io.Emit("end") })
	m.check(t, "to-joined", []string{"n1"})
	m.check(t, "to-r1", []string{"g1"})
	m.check(t, "direct", []string{"n1"}, 1.0, "x")
	// The Node server's own view agrees.
	if names := sortedKeys(nodeFetched(t, m.n, map[string]any{"rooms": []string{"joined"}})); !slices.Equal(names, []string{"n1"}) {
		t.Fatalf("in room joined, Node finds %v", names)
	}

	n1.Disconnect(true)
	m.clients["n1"].expect(t, "disconnect")
	eventually(t, "n1 gone from the Node server", func() bool { return len(m.n.socketIDs(t, "/", "n1")) == 0 })
	// Only n1: the others still receive.
	others := map[string]*tclient{"g1": m.clients["g1"], "g2": m.clients["g2"], "n2": m.clients["n2"]}
	fenceOn(t, others, func() { m.g.io.Emit("after"); m.g.io.Emit("end") })
	checkWritten(t, others, "after", []string{"g1", "g2", "n2"})
	if list, err := fetchSockets(t, m.g.io); err != nil || !slices.Equal(socketNames(t, list), []string{"g1", "g2", "n2"}) {
		t.Fatalf("after n1's disconnection, FetchSockets: %v %v", socketNames(t, list), err)
	}
	noErrors(t, []*node{m.g}, m.n)
}

// A Node server operates on a Go server's socket through the RemoteSocket its
// fetchSockets returns: join, leave, emit, emitWithAck, disconnect.
func TestMixedMoreRemoteSocketFromNode(t *testing.T) {
	m := newMixed(t)
	remote := func(action string, extra map[string]any) any {
		t.Helper()
		cmd := map[string]any{"op": "remote", "name": "g1", "action": action}
		maps.Copy(cmd, extra)
		return m.n.call(t, cmd)
	}
	remote("join", map[string]any{"target": "joined"})
	m.nodeEmit(t, map[string]any{"event": "to-joined", "rooms": []string{"joined"}})
	remote("leave", map[string]any{"target": "r1"})
	m.nodeEmit(t, map[string]any{"event": "to-r1", "rooms": []string{"r1"}})
	remote("emit", map[string]any{"event": "direct", "args": []any{1, "x"}})
	m.fence(t, func() { m.nodeEmit(t, map[string]any{"event": "end"}) })
	m.check(t, "to-joined", []string{"g1"})
	m.check(t, "to-r1", []string{"n1"})
	m.check(t, "direct", []string{"g1"}, 1.0, "x")
	g1 := serverSocket(t, m.g, m.clients["g1"])
	if !g1.Rooms().Has("joined") || g1.Rooms().Has("r1") || !g1.Rooms().Has("only-g") {
		t.Fatalf("g1's rooms on Go: %v", g1.Rooms().Keys())
	}

	// With an acknowledgement: the client's answer, alone, as a socket's emitWithAck.
	res := remote("emitWithAck", map[string]any{"event": "ask", "args": []any{"q"}, "ackTimeout": 8000}).(map[string]any)
	if res["error"] != nil || res["response"] != "g1" {
		t.Fatalf("Node's remote emitWithAck to g1: %v", res)
	}
	m.fence(t, func() { m.nodeEmit(t, map[string]any{"event": "end"}) })
	m.check(t, "ask", []string{"g1"}, "q")

	remote("disconnect", map[string]any{"close": true})
	m.clients["g1"].expect(t, "disconnect")
	eventually(t, "g1 gone from the Go server", func() bool { return len(m.g.socketsNamed("/", "g1")) == 0 })
	others := map[string]*tclient{"g2": m.clients["g2"], "n1": m.clients["n1"], "n2": m.clients["n2"]}
	fenceOn(t, others, func() {
		m.nodeEmit(t, map[string]any{"event": "after"})
		m.nodeEmit(t, map[string]any{"event": "end"})
	})
	checkWritten(t, others, "after", []string{"g2", "n1", "n2"})
	if names := sortedKeys(nodeFetched(t, m.n, map[string]any{})); !slices.Equal(names, []string{"g2", "n1", "n2"}) {
		t.Fatalf("after g1's disconnection, Node's fetchSockets: %v", names)
	}
	noErrors(t, []*node{m.g}, m.n)
}

// bigRooms returns count room names of size bytes each: a socket in all of them is
// described by more than 8000 bytes (its rooms, and its handshake's auth lists them too).
func bigRooms(count, size int) []string {
	rooms := make([]string, count)
	for i := range rooms {
		p := fmt.Sprintf("big-%02d-", i)
		rooms[i] = p + strings.Repeat("x", size-len(p))
	}
	return rooms
}

// A FETCH_SOCKETS_RESPONSE of more than 8000 bytes goes through the attachments table,
// both ways.
func TestMixedMoreLargeFetchSocketsResponse(t *testing.T) {
	m := newMixed(t)
	rooms := bigRooms(40, 200)
	m.g.connect(t, "/", "big-g", rooms...)
	m.n.connect(t, "big-n", rooms...)
	hasAll := func(has func(string) bool) bool {
		for _, r := range rooms {
			if !has(r) {
				return false
			}
		}
		return true
	}

	// Node answers Go.
	before := m.g.b.Stats()
	list, err := fetchSockets(t, m.g.io.In(socket.Room(rooms[0])))
	if err != nil || !slices.Equal(socketNames(t, list), []string{"big-g", "big-n"}) {
		t.Fatalf("Go's FetchSockets: %v %v", socketNames(t, list), err)
	}
	after := m.g.b.Stats()
	if d := after.AttachmentsRead - before.AttachmentsRead; d < 1 {
		t.Errorf("Go read %d attachments: Node's answer did not go through the table", d)
	}
	if d := after.Received["FETCH_SOCKETS_RESPONSE"] - before.Received["FETCH_SOCKETS_RESPONSE"]; d != 1 {
		t.Errorf("Go received %d FETCH_SOCKETS_RESPONSE", d)
	}
	for _, s := range list {
		data := s.Data().(map[string]any)
		if data["name"] != "big-n" {
			continue
		}
		auth, _ := s.Handshake().Auth.(map[string]any)
		authRooms, _ := auth["rooms"].([]any)
		if string(s.Id()) == "" || data["node"] != "N" || s.Rooms().Len() != len(rooms)+1 ||
			!hasAll(func(r string) bool { return s.Rooms().Has(socket.Room(r)) }) || len(authRooms) != len(rooms) {
			t.Errorf("big-n from Node: id %q data %v, %d rooms, auth rooms %d", s.Id(), data, s.Rooms().Len(), len(authRooms))
		}
	}

	// Go answers Node.
	before = m.g.b.Stats()
	got := nodeFetched(t, m.n, map[string]any{"rooms": []string{rooms[len(rooms)-1]}})
	if names := sortedKeys(got); !slices.Equal(names, []string{"big-g", "big-n"}) {
		t.Fatalf("Node's fetchSockets: %v", names)
	}
	// Go's publisher counts a batch once its result is back, which can be after Node,
	// notified at the commit, has answered the test.
	eventually(t, "Go's publisher counted its answer", func() bool {
		return m.g.b.Stats().Published["FETCH_SOCKETS_RESPONSE"] > before.Published["FETCH_SOCKETS_RESPONSE"]
	})
	after = m.g.b.Stats()
	if d := after.AttachmentsWritten - before.AttachmentsWritten; d < 1 {
		t.Errorf("Go wrote %d attachments: its answer did not go through the table", d)
	}
	if d := after.Published["FETCH_SOCKETS_RESPONSE"] - before.Published["FETCH_SOCKETS_RESPONSE"]; d != 1 {
		t.Errorf("Go published %d FETCH_SOCKETS_RESPONSE", d)
	}
	s := got["big-g"]
	gotRooms, _ := s["rooms"].([]any)
	hs, _ := s["handshake"].(map[string]any)
	auth, _ := hs["auth"].(map[string]any)
	authRooms, _ := auth["rooms"].([]any)
	if s["data"].(map[string]any)["node"] != "G" || len(gotRooms) != len(rooms)+1 ||
		!hasAll(func(r string) bool { return slices.Contains(gotRooms, any(r)) }) || len(authRooms) != len(rooms) {
		t.Errorf("big-g seen from Node: data %v, %d rooms, auth rooms %d", s["data"], len(gotRooms), len(authRooms))
	}
	noErrors(t, []*node{m.g}, m.n)
}

// Node's @socket.io/postgres-emitter: socketsJoin, socketsLeave, serverSideEmit and
// disconnectSockets reach the Go server (Node servers drop its messages, which carry no
// nsp: only Go's clients are checked).
func TestMixedMoreNodeEmitterOperations(t *testing.T) {
	m := newMixed(t)
	goClients := map[string]*tclient{"g1": m.clients["g1"], "g2": m.clients["g2"]}
	nodeEmitter := func(cmd map[string]any) {
		t.Helper()
		cmd["op"] = "emitter"
		m.n.call(t, cmd)
	}
	// fence: the emitter's messages are published one after the other, so what it sent
	// before "end" has been applied when "end" arrives.
	fence := func() {
		t.Helper()
		fenceOn(t, goClients, func() { nodeEmitter(map[string]any{"event": "end"}) })
	}

	nodeEmitter(map[string]any{"action": "socketsJoin", "rooms": []string{"r1"}, "target": []string{"e1"}})
	nodeEmitter(map[string]any{"action": "socketsLeave", "rooms": []string{"r2"}, "target": []string{"r2"}})
	fence()
	fenceOn(t, goClients, func() {
		m.g.io.Local().To("e1").Emit("to-e1")
		m.g.io.Local().To("r2").Emit("to-r2")
		m.g.io.Local().Emit("end")
	})
	checkWritten(t, goClients, "to-e1", []string{"g1"})
	checkWritten(t, goClients, "to-r2", nil)

	events := newRecorder()
	m.g.io.On("small", func(args ...any) { events.add("small", args...) })
	m.g.io.On("big", func(args ...any) { events.add("big", args...) })
	big := strings.Repeat("e", 9000) // through the attachments table
	nodeEmitter(map[string]any{"action": "serverSideEmit", "event": "small", "args": []any{1, "x"}})
	nodeEmitter(map[string]any{"action": "serverSideEmit", "event": "big", "args": []any{big, []byte{1, 2}}})
	if args := events.next(t, "G", "small"); !reflect.DeepEqual(args, []any{1.0, "x"}) {
		t.Fatalf("G received small%v", args)
	}
	if args := normalizeBinary(events.next(t, "G", "big")).([]any); len(args) != 2 || args[0] != big || !reflect.DeepEqual(args[1], []byte{1, 2}) {
		t.Fatalf("G received big with %d args", len(args))
	}

	nodeEmitter(map[string]any{"action": "disconnectSockets", "rooms": []string{"e1"}, "close": true})
	m.clients["g1"].expect(t, "disconnect")
	delete(goClients, "g1")
	fence()
	if len(m.g.socketsNamed("/", "g1")) != 0 || len(m.g.socketsNamed("/", "g2")) != 1 {
		t.Fatalf("after disconnectSockets in e1: g1 %d sockets, g2 %d", len(m.g.socketsNamed("/", "g1")), len(m.g.socketsNamed("/", "g2")))
	}
	noErrors(t, []*node{m.g}, m.n)
}

// Node's emitter sends socket.io's own namespace events ("connection", "new_namespace")
// as server-side events: it checks reserved names only in its broadcasts. A Go server
// delivered them, and its "connection" handlers, written for a *socket.Socket, got a
// string and panicked (a tester's finding; Node servers drop them, and socket.io's own
// ServerSideEmit refuses the names). They are reported as malformed, and what follows
// arrives.
func TestMixedNodeEmitterReservedServerEvents(t *testing.T) {
	m := newMixed(t)
	var called []string
	m.g.io.On("connection", func(args ...any) {
		if _, ok := args[0].(*socket.Socket); !ok {
			called = append(called, fmt.Sprintf("connection(%T)", args[0]))
		}
	})
	m.g.io.On("new_namespace", func(args ...any) {
		if _, ok := args[0].(socket.Namespace); !ok {
			called = append(called, fmt.Sprintf("new_namespace(%T)", args[0]))
		}
	})
	events := newRecorder()
	m.g.io.On("after", func(args ...any) { events.add("after", args...) })
	for _, ev := range []string{"connection", "new_namespace", "connect"} {
		m.n.call(t, map[string]any{"op": "emitter", "action": "serverSideEmit", "event": ev, "args": []any{"not-" + ev}})
	}
	m.n.call(t, map[string]any{"op": "emitter", "action": "serverSideEmit", "event": "after", "args": []any{1}})
	// The emitter publishes in order: the three were handled before "after".
	if args := events.next(t, "G", "after"); !reflect.DeepEqual(args, []any{1.0}) {
		t.Fatalf("G received after%v", args)
	}
	if called != nil {
		t.Fatalf("socket.io's own events reached the Go server's handlers: %v", called)
	}
	m.g.errs.settle()
	var malformed int
	for _, e := range m.g.errs.drain("error") {
		err := e[0].(error)
		if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "reserved") {
			t.Errorf("unexpected report: %v", err)
			continue
		}
		malformed++
	}
	if malformed != 3 {
		t.Fatalf("%d of the 3 reserved server-side events reported", malformed)
	}
}

// The Go emitter's SocketsJoin, SocketsLeave and DisconnectSockets reach the clients of
// both servers.
func TestMixedMoreGoEmitterOperations(t *testing.T) {
	m := newMixed(t)
	pool := newPoolURL(t, m.db)
	defer pool.Close()
	e, err := emitter.New(pool, nil) // default prefix and table, as the Node servers
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(e.In("r1").SocketsJoin(ctx, "ge"))
	must(e.In("r2").SocketsLeave(ctx, "r2"))
	must(e.To("ge").Emit(ctx, "to-ge"))
	must(e.To("r2").Emit(ctx, "to-r2"))
	m.fence(t, func() { must(e.Emit(ctx, "end")) })
	m.check(t, "to-ge", []string{"g1", "n1"})
	m.check(t, "to-r2", nil)

	must(e.In("ge").DisconnectSockets(ctx, true))
	m.clients["g1"].expect(t, "disconnect")
	m.clients["n1"].expect(t, "disconnect")
	eventually(t, "g1 and n1 gone", func() bool {
		return len(m.g.socketsNamed("/", "g1")) == 0 && len(m.n.socketIDs(t, "/", "n1")) == 0
	})
	others := map[string]*tclient{"g2": m.clients["g2"], "n2": m.clients["n2"]}
	fenceOn(t, others, func() { must(e.Emit(ctx, "after")); must(e.Emit(ctx, "end")) })
	checkWritten(t, others, "after", []string{"g2", "n2"})
	noErrors(t, []*node{m.g}, m.n)
}

// The namespace "/chat" between Go and Node: broadcasts, room operations, fetchSockets
// and server-side emits with acks, both ways, kept apart from "/".
//
//	G: cg (cr), cg2     N: cn (cr), cn2     and newMixed's clients in "/"
func TestMixedMoreNamespace(t *testing.T) {
	m := newMixed(t)
	const chat = "/chat"
	m.n.call(t, map[string]any{"op": "namespace", "nsp": chat})
	gchat := m.g.io.Of(chat, nil)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := m.g.b.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "both servers count 2 in "+chat, func() bool {
		return gchat.Adapter().ServerCount() == 2 && m.n.call(t, map[string]any{"op": "serverCount", "nsp": chat}).(float64) == 2
	})
	all := maps.Clone(m.clients)
	chatClients := map[string]*tclient{
		"cg":  m.g.connect(t, chat, "cg", "cr"),
		"cg2": m.g.connect(t, chat, "cg2"),
		"cn":  connectTo(t, m.n, chat, "cn", "cr"),
		"cn2": connectTo(t, m.n, chat, "cn2"),
	}
	maps.Copy(all, chatClients)
	fence := func(emit func()) {
		t.Helper()
		fenceOn(t, chatClients, emit)
	}
	nodeEmit := func(cmd map[string]any) {
		t.Helper()
		cmd["nsp"] = chat
		m.nodeEmit(t, cmd)
	}

	// Broadcasts. Root clients are in rooms r1 and r2, chat clients in cr.
	gchat.Emit("go-all", 1)
	gchat.To("cr").Emit("go-cr")
	gchat.To("r1").Emit("go-r1")
	fence(func() { gchat.Emit("end") })
	nodeEmit(map[string]any{"event": "node-all", "args": []any{2}})
	nodeEmit(map[string]any{"event": "node-cr", "rooms": []string{"cr"}})
	nodeEmit(map[string]any{"event": "node-r1", "rooms": []string{"r1"}})
	fence(func() { nodeEmit(map[string]any{"event": "end"}) })
	checkWritten(t, all, "go-all", []string{"cg", "cg2", "cn", "cn2"}, 1.0)
	checkWritten(t, all, "go-cr", []string{"cg", "cn"})
	checkWritten(t, all, "go-r1", nil)
	checkWritten(t, all, "node-all", []string{"cg", "cg2", "cn", "cn2"}, 2.0)
	checkWritten(t, all, "node-cr", []string{"cg", "cn"})
	checkWritten(t, all, "node-r1", nil)

	// Room operations: Go's applied by Node, then Node's applied by Go.
	gchat.In("cr").SocketsJoin("cj")
	fence(func() { gchat.Emit("end") })
	nodeEmit(map[string]any{"event": "to-cj", "rooms": []string{"cj"}})
	m.n.call(t, map[string]any{"op": "socketsLeave", "nsp": chat, "rooms": []string{"cj"}, "target": []string{"cr"}})
	fence(func() { nodeEmit(map[string]any{"event": "end"}) })
	gchat.To("cr").Emit("to-cr")
	gchat.To("cj").Emit("to-cj-go")
	fence(func() { gchat.Emit("end") })
	checkWritten(t, all, "to-cj", []string{"cg", "cn"})
	checkWritten(t, all, "to-cr", nil)
	checkWritten(t, all, "to-cj-go", []string{"cg", "cn"})
	// The root namespace's rooms are untouched.
	m.fence(t, func() { m.g.io.To("r1").Emit("end-r1"); m.g.io.Emit("end") })
	m.check(t, "end-r1", []string{"g1", "n1"})

	// fetchSockets, both ways: the chat clients only.
	list, err := fetchSockets(t, gchat)
	if err != nil || !slices.Equal(socketNames(t, list), []string{"cg", "cg2", "cn", "cn2"}) {
		t.Fatalf("Go's FetchSockets in %s: %v %v", chat, socketNames(t, list), err)
	}
	if names := sortedKeys(nodeFetched(t, m.n, map[string]any{"nsp": chat})); !slices.Equal(names, []string{"cg", "cg2", "cn", "cn2"}) {
		t.Fatalf("Node's fetchSockets in %s: %v", chat, names)
	}
	if names := sortedKeys(nodeFetched(t, m.n, map[string]any{"nsp": chat, "rooms": []string{"cj"}})); !slices.Equal(names, []string{"cg", "cn"}) {
		t.Fatalf("Node's fetchSockets in %s, room cj: %v", chat, names)
	}

	// Server-side emits with acks, both ways, answered by the namespace's handlers only.
	m.n.call(t, map[string]any{"op": "listen", "nsp": chat, "event": "q", "answer": "node-chat"})
	m.n.call(t, map[string]any{"op": "listen", "event": "q", "answer": "node-root"})
	gchat.On("q", func(args ...any) { args[len(args)-1].(socket.Ack)([]any{"go-chat"}, nil) })
	m.g.io.On("q", func(args ...any) { args[len(args)-1].(socket.Ack)([]any{"go-root"}, nil) })
	if answers := goSSEWithAck(t, gchat, "q"); !slices.Equal(answers, []string{"node-chat"}) {
		t.Fatalf("Go's ServerSideEmitWithAck in %s: %v", chat, answers)
	}
	if answers := nodeSSEWithAck(t, m.n, map[string]any{"nsp": chat, "event": "q"}); !slices.Equal(answers, []string{"go-chat"}) {
		t.Fatalf("Node's serverSideEmitWithAck in %s: %v", chat, answers)
	}

	// Both emitters, in the namespace: the Go emitter's messages reach both servers'
	// clients in cj (cg and cn); the Node emitter's (no nsp: Node servers drop them)
	// reach cg.
	pool := newPoolURL(t, m.db)
	defer pool.Close()
	e, err := emitter.New(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Of(chat).To("cj").Emit(context.Background(), "go-emitter-cj", "x"); err != nil {
		t.Fatal(err)
	}
	fence(func() {
		if err := e.Of(chat).Emit(context.Background(), "end"); err != nil {
			t.Fatal(err)
		}
	})
	checkWritten(t, all, "go-emitter-cj", []string{"cg", "cn"}, "x")
	goChat := map[string]*tclient{"cg": chatClients["cg"], "cg2": chatClients["cg2"]}
	fenceOn(t, goChat, func() {
		m.n.call(t, map[string]any{"op": "emitter", "nsp": chat, "event": "node-emitter-cj", "rooms": []string{"cj"}, "args": []any{"y"}})
		m.n.call(t, map[string]any{"op": "emitter", "nsp": chat, "event": "end"})
	})
	checkWritten(t, goChat, "node-emitter-cj", []string{"cg"}, "y")
	for _, name := range []string{"g1", "g2"} {
		if n := all[name].sent.count("node-emitter-cj"); n != 0 {
			t.Errorf("the Node emitter's message in %s was written to %s, in /, %d times", chat, name, n)
		}
	}
	noErrors(t, []*node{m.g}, m.n)
}
