package pgadapter

import (
	goruntime "runtime"
	"strconv"
	"testing"
	"time"

	"github.com/zishang520/engine.io/v2/transports"
	"github.com/zishang520/engine.io/v2/types"

	"github.com/socketio-pg/pgadapter/fastws"
)

// TestFastWSDelivery delivers broadcasts, from this server and from another, to clients
// on the fastws transport (written from the shared pre-encoded frame, given an empty
// packet) and to a client on HTTP long polling (given the packet): each gets every
// broadcast, whole.
func TestFastWSDelivery(t *testing.T) {
	orig := transports.Transports()[transports.WEBSOCKET]
	fastws.Install()
	t.Cleanup(func() { transports.Transports()[transports.WEBSOCKET] = orig })

	nodes := cluster(t, 2, testOptions(t))
	a, b := nodes[0], nodes[1]
	clients := map[string]*tclient{
		"wa":    a.connect(t, "/", "wa"),
		"wb":    b.connect(t, "/", "wb"),
		"polla": a.connect(t, "/", "polla"),
		"pollb": b.connect(t, "/", "pollb"),
	}
	for name := range clients {
		n := a
		if name[len(name)-1] == 'b' {
			n = b
		}
		s := n.socketsNamed("/", name)[0]
		if on, want := fastws.Handles(s.Conn().Transport()), name[0] == 'w'; on != want {
			t.Fatalf("%s: on fastws %v, want %v", name, on, want)
		}
	}
	const n = 300
	for i := range n {
		a.io.Emit("n", i, "payload-"+strconv.Itoa(i))
	}
	a.io.Emit("bin", []byte{1, 2, 3}) // binary: no pre-encoded frame
	for name, c := range clients {
		seen := make([]bool, n)
		for range n {
			args := c.expect(t, "n")
			i, ok := args[0].(float64)
			if !ok || i < 0 || int(i) >= n || seen[int(i)] || args[1] != "payload-"+strconv.Itoa(int(i)) {
				t.Fatalf("%s: got %v", name, args)
			}
			seen[int(i)] = true
		}
		if args := c.expect(t, "bin"); len(args) != 1 {
			t.Fatalf("%s: bin %v", name, args)
		}
	}
}

// TestFastWSBroadcastKeepsCallbacks: broadcasts to quiet clients on fastws are written
// at once, their drains held until each broadcast's writes are done (fastws.Hold); every
// drain is emitted then, so engine.io runs a later write's callback, on both the sending
// server and the receiving one. A drain left out would leave engine.io's callbacks a
// step behind the writes for good, and this one would never run.
func TestFastWSBroadcastKeepsCallbacks(t *testing.T) {
	if goruntime.GOOS != "linux" {
		t.Skip("fastws writes at once on Linux only")
	}
	orig := transports.Transports()[transports.WEBSOCKET]
	fastws.Install()
	t.Cleanup(func() { transports.Transports()[transports.WEBSOCKET] = orig })

	nodes := cluster(t, 2, testOptions(t))
	a, b := nodes[0], nodes[1]
	ca, cb := a.connect(t, "/", "wa"), b.connect(t, "/", "wb")
	for i := range 5 {
		time.Sleep(5 * time.Millisecond) // the connections are quiet: written at once
		a.io.Emit("n", i)
		for _, c := range []*tclient{ca, cb} {
			if args := c.expect(t, "n"); len(args) != 1 || args[0] != float64(i) {
				t.Fatalf("broadcast %d: got %v", i, args)
			}
		}
	}
	for _, on := range []struct {
		n    *node
		name string
	}{{a, "wa"}, {b, "wb"}} {
		s := on.n.socketsNamed("/", on.name)[0]
		done := make(chan struct{})
		// A packet the client takes (socket.io's event "x"): one it cannot parse makes
		// it close the connection, and engine.io drops the callbacks of a closed socket.
		s.Conn().Write(types.NewStringBufferString(`2["x"]`), nil, func(transports.Transport) { close(done) })
		select {
		case <-done:
		case <-time.After(waitFor):
			t.Fatalf("%s's server: engine.io ran no callback %v after the write", on.name, waitFor)
		}
	}
}
