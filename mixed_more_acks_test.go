//go:build !race

// A RemoteSocket's emit with an ack goes through socket.io v2.5.0's BroadcastOperator,
// whose data race -race reports whatever the adapter does: see acks_test.go.

package pgadapter

import (
	"slices"
	"testing"
	"time"
)

// A Go server emits with an ack to a Node server's socket through its RemoteSocket: the
// callback gets the client's answer, alone, as a local socket's emit would, long before
// the timeout.
func TestMixedMoreRemoteSocketEmitWithAckFromGo(t *testing.T) {
	m := newMixed(t)
	n1 := remoteNamed(t, m.g.io, "n1")
	type result struct {
		args []any
		err  error
	}
	answered := make(chan result, 1)
	const timeout = 8 * time.Second
	start := time.Now()
	if err := n1.Timeout(timeout).Emit("ask", "q", func(args []any, err error) { answered <- result{args, err} }); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-answered:
		if r.err != nil || !slices.Equal(r.args, []any{"n1"}) {
			t.Fatalf("remote socket ack: %#v %v", r.args, r.err)
		}
		if d := time.Since(start); d >= timeout {
			t.Fatalf("the ack came after %v, the timeout", d)
		}
	case <-time.After(waitFor):
		t.Fatal("remote socket ack never called")
	}
	m.fence(t, func() { m.g.io.Emit("end") })
	m.check(t, "ask", []string{"n1"}, "q")
	noErrors(t, []*node{m.g}, m.n)
}
