package pgadapter

import (
	"testing"
	"time"

	"github.com/zishang520/socket.io/v2/socket"
)

// recoveryOptions are socket.io's server options with ConnectionStateRecovery.
func recoveryOptions() *socket.ServerOptions {
	so := socket.DefaultServerOptions()
	so.SetConnectionStateRecovery(&socket.ConnectionStateRecovery{})
	return so
}

// With ConnectionStateRecovery, socket.io sends a socket's own emits (socket.Emit)
// through the adapter's Broadcast, to the room of the socket's id. They reach that
// socket, in order, and nothing of them goes to PostgreSQL: published, each was a
// NOTIFY that every other server decoded for a socket it does not have. A broadcast to
// the room of a socket of another server still reaches it.
func TestDirectEmitsStayLocal(t *testing.T) {
	opts := testOptions(t)
	a := newNodeWith(t, "A", newPool(t), opts, recoveryOptions())
	b := newNodeWith(t, "B", newPool(t), opts, recoveryOptions())
	a.ready(t)
	b.ready(t)
	waitServerCount(t, []*node{a, b}, 2)
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
		if got := a.sentTo("c").next(t, "c", "direct"); len(got) != 1 || got[0] != i {
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
