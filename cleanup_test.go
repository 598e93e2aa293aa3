package pgadapter

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/zishang520/socket.io/v2/socket"
)

// TestSocketInACleanedUpNamespace: socket.io v2.5.0 removes an empty dynamic child
// namespace (CleanupEmptyChildNamespaces) while a client is still in its middleware. The
// client then connected into the removed namespace, whose adapter was closed: deaf to
// the cluster. When it left, socket.io's cleanup removed, by name, the namespace made
// since for another client, which went deaf once a third client made another. Now the
// first client's connection is closed, for it to connect again, and the second
// namespace stays the server's: the third client joins it, and both hear the cluster.
func TestSocketInACleanedUpNamespace(t *testing.T) {
	opts := testOptions(t)
	so := socket.DefaultServerOptions()
	so.SetCleanupEmptyChildNamespaces(true)
	a := newNodeWith(t, "A", newPool(t), opts, so)
	gate, gated := make(chan struct{}), make(chan struct{}, 1)
	a.io.Of(regexpNamespace(`^/dyn-\d+$`), nil).Use(func(s *socket.Socket, next func(*socket.ExtendedError)) {
		if auth, _ := s.Handshake().Auth.(map[string]any); auth["name"] == "gated" {
			gated <- struct{}{}
			<-gate
		}
		next(nil)
	})
	b := startNode(t, "B", opts)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := a.b.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	const name = "/dyn-9"
	channel := ChannelName(opts.ChannelPrefix, name)

	// The second client's socket is looked for in every namespace made, not through
	// io.Of, which finds the namespace of the table, or makes one.
	made := &everyNamespace{node: a}
	a.io.Sockets().On("new_namespace", func(args ...any) { made.add(args[0].(socket.Namespace)) })
	c1 := a.connect(t, name, "c1")
	x := a.b.adapter(channel)
	type result struct {
		c    *tclient
		fail string
	}
	second := make(chan result, 1)
	for attempt := 1; ; attempt++ {
		go func() { c, fail := tryConnect(t, made, name, "gated", nil); second <- result{c, fail} }()
		select {
		case <-gated:
		case r := <-second:
			// The attempt failed before the middleware (the harness's client can miss
			// the engine's open event: see the README's defects).
			if attempt == 5 {
				t.Fatalf("the second client never reached the middleware: %s", r.fail)
			}
			r.c.s.Close()
			made.forget("gated")
			continue
		case <-time.After(waitFor):
			t.Fatal("the second client never reached the middleware")
		}
		break
	}
	c1.s.Disconnect() // X empties: socket.io closes its adapter and removes it
	eventually(t, "X's adapter closes", func() bool { return x.closed.Load() })
	c3 := a.connect(t, name, "c3") // in Y, made for it
	y := a.b.adapter(channel)
	if y == nil || y == x {
		t.Fatal("no new adapter for the namespace made again")
	}
	close(gate)
	if r := <-second; r.fail == "" {
		r.c.expect(t, "disconnect") // connected, then its connection closed
	}
	args := a.errs.next(t, "A", "disconnect")
	for args[0] == "c1" { // its own, up to two
		args = a.errs.next(t, "A", "disconnect")
	}
	if args[0] != "gated" || args[1] != "forced close" {
		t.Fatalf("A's disconnection after c1's: %v, want the second client's, its connection closed", args)
	}
	c4 := a.connect(t, name, "c4")
	if a.b.adapter(channel) != y || y.closed.Load() {
		t.Fatal("the fourth client made a namespace of its own: the second client's leaving removed Y")
	}
	b.io.Of(name, nil).Emit("cluster", 1)
	c3.expect(t, "cluster")
	c4.expect(t, "cluster")
	if errs := a.errs.drain("error"); len(errs) != 0 {
		t.Fatalf("A reported %v", errs)
	}
}

// TestCloseClosesNamespacesOutsideTheTable: io.Close closes the namespaces of the
// server's table; one that socket.io had removed from it while in use kept its adapter,
// and the Builder its LISTEN connection and heartbeats, for good. Closing the main
// namespace's adapter now closes them all.
func TestCloseClosesNamespacesOutsideTheTable(t *testing.T) {
	opts := testOptions(t)
	a := startNode(t, "A", opts)
	stray := socket.NewNamespace(a.io, "/stray") // an adapter, outside the table
	if _, ok := stray.Adapter().(*Adapter); !ok {
		t.Fatalf("the stray namespace has a %T", stray.Adapter())
	}
	a.close()
	a.b.mu.Lock()
	rt, left := a.b.rt, len(a.b.adapters)
	a.b.mu.Unlock()
	if rt != nil || left != 0 {
		t.Fatalf("after io.Close: runtime running %v, %d adapters open", rt != nil, left)
	}
}

// everyNamespace is a node whose sockets are looked for in every namespace it was told
// of, whether socket.io's table holds it or not.
type everyNamespace struct {
	*node
	mu   sync.Mutex
	nsps []socket.Namespace
}

func (e *everyNamespace) add(nsp socket.Namespace) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.nsps = append(e.nsps, nsp)
}

func (e *everyNamespace) socketIDs(_ testing.TB, _, name string) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var ids []string
	for _, nsp := range e.nsps {
		nsp.Sockets().Range(func(_ socket.SocketId, s *socket.Socket) bool {
			if d, ok := s.Data().(map[string]any); ok && d["name"] == name {
				ids = append(ids, string(s.Id()))
			}
			return true
		})
	}
	return ids
}
