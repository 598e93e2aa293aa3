package fastws

import (
	"bytes"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ws "github.com/gorilla/websocket"
	"github.com/zishang520/engine.io/v2/transports"
	"github.com/zishang520/engine.io/v2/types"
	"github.com/zishang520/socket.io/v2/socket"
)

// TestQuietPacketsWrittenAtOnce: on a quiet connection each packet is written by the
// caller, without a goroutine; in a burst, packets gather into batches, each written by
// a goroutine of its own, with one writev(2) for many.
func TestQuietPacketsWrittenAtOnce(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("written at once on Linux only")
	}
	io, url := server(t)
	c := dial(t, io, url)
	s := socketOf(t, io, c)
	w := s.Conn().Transport().(*webSocket)
	whole := w.nowWhole.Load()
	const quiet = 20
	for i := range quiet {
		time.Sleep(2 * time.Duration(quietSend.Load())) // the connection is quiet
		s.Emit("q", i)
		if args := c.event(); len(args) != 2 || args[0] != "q" || args[1] != float64(i) {
			t.Fatalf("quiet packet %d: got %v", i, args)
		}
	}
	if n := w.nowWhole.Load() - whole; n != quiet || w.nowPart.Load() != 0 {
		t.Fatalf("%d of %d quiet packets written at once (%d in part), want all", n, quiet, w.nowPart.Load())
	}
	whole = w.nowWhole.Load()
	const burst = 3000
	go func() {
		for i := range burst {
			io.Emit("n", i)
		}
	}()
	for i := range burst {
		if args := c.event(); len(args) != 2 || args[0] != "n" || args[1] != float64(i) {
			t.Fatalf("burst, broadcast %d: got %v", i, args)
		}
	}
	// A packet after the emitter waited a millisecond for a processor may be written at
	// once; most are not.
	if n := w.nowWhole.Load() - whole; n > burst/10 {
		t.Fatalf("%d of a burst of %d written at once, one system call each", n, burst)
	}
}

// TestBurstWrittenAtOnceKeepsOrder writes every packet it can at once (quietSend 0), as
// long as the client keeps up, and the rest in batches behind a goroutine: every
// broadcast arrives, in order.
func TestBurstWrittenAtOnceKeepsOrder(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("written at once on Linux only")
	}
	defer quietSend.Store(quietSend.Swap(0))
	io := testBurst(t, variant{})
	if writtenAtOnce(io) == 0 {
		t.Fatal("no packet written at once")
	}
}

// TestPartWrittenAtOnce: a packet larger than the socket's buffers, on a quiet
// connection, is written in part at once and the rest by a goroutine, which the
// packets after it wait for: the client reads it whole, then them, in order.
func TestPartWrittenAtOnce(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("written at once on Linux only")
	}
	defer quietSend.Store(quietSend.Swap(0))
	io, url := server(t)
	c := dial(t, io, url)
	s := socketOf(t, io, c)
	w := s.Conn().Transport().(*webSocket)
	big := make([]byte, 16<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	s.Conn().Write(Message(types.NewBytesBuffer(big)), nil, nil)
	if w.nowPart.Load() != 1 {
		t.Fatalf("%d packets written in part at once, want the large one", w.nowPart.Load())
	}
	const after = 10
	for i := range after {
		s.Emit("a", i)
	}
	if mt, msg := c.next(); mt != ws.BinaryMessage || !bytes.Equal(msg, big) {
		t.Fatalf("the large packet: type %d, %d bytes, equal %v", mt, len(msg), bytes.Equal(msg, big))
	}
	for i := range after {
		if args := c.event(); len(args) != 2 || args[0] != "a" || args[1] != float64(i) {
			t.Fatalf("packet %d after the large one: got %v", i, args)
		}
	}
}

// TestAtOnceBudget: a broadcast to more clients than atOnceMax, every connection quiet,
// writes atOnceMax of its packets at once, on the emitting goroutine, and the rest by
// goroutines, which the other cores can run: every client receives it.
func TestAtOnceBudget(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("written at once on Linux only")
	}
	// Quiet means 250 ms here: the emitting goroutine, descheduled that long amid the
	// broadcast, would find the process quiet again, and a fresh budget (at 50 ms, a
	// pause of a loaded machine's could do it).
	defer quietSend.Store(quietSend.Swap(int64(250 * time.Millisecond)))
	io, url := server(t)
	clients := make([]*rawClient, 4*atOnceMax)
	for i := range clients {
		clients[i] = dial(t, io, url)
	}
	before := writtenAtOnce(io)
	time.Sleep(2 * time.Duration(quietSend.Load())) // every connection is quiet
	io.Emit("b", 1)
	for i, c := range clients {
		if args := c.event(); len(args) != 2 || args[0] != "b" {
			t.Fatalf("client %d: got %v", i, args)
		}
	}
	if n := writtenAtOnce(io) - before; n != atOnceMax {
		t.Fatalf("%d of %d packets written at once, want %d", n, len(clients), atOnceMax)
	}
}

// writtenAtOnce counts the packets the connections of io wrote whole at once.
func writtenAtOnce(io *socket.Server) (n int64) {
	io.Sockets().Sockets().Range(func(_ socket.SocketId, s *socket.Socket) bool {
		n += s.Conn().Transport().(*webSocket).nowWhole.Load()
		return true
	})
	return n
}

// TestSendCallbackMayWriteAgain: engine.io runs a Write's callback on the transport's
// "drain", and a callback that writes the next packet (flow control) must not hang. A
// packet written at once is written within engine.io's flush, which holds its flush
// lock: a "drain" emitted there deadlocked on it (a reviewer's test).
func TestSendCallbackMayWriteAgain(t *testing.T) {
	io, url := server(t)
	c := dial(t, io, url)
	s := socketOf(t, io, c)
	conn := s.Conn()
	w := conn.Transport().(*webSocket)
	time.Sleep(2 * time.Duration(quietSend.Load())) // the connection is quiet
	whole := w.nowWhole.Load()
	done := make(chan struct{})
	go func() {
		defer close(done)
		conn.Write(types.NewStringBufferString("first"), nil, func(transports.Transport) {
			conn.Write(types.NewStringBufferString("second"), nil, nil)
		})
	}()
	select {
	case <-done:
	case <-time.After(waitFor):
		t.Fatalf("engine.io's Write has not returned %v later: deadlocked", waitFor)
	}
	for _, want := range []string{"4first", "4second"} {
		if _, msg := c.next(); string(msg) != want {
			t.Fatalf("got %q, want %q", msg, want)
		}
	}
	if runtime.GOOS == "linux" && w.nowWhole.Load() == whole {
		t.Fatal("the first packet was not written at once: the test shows nothing")
	}
}

// TestConcurrentEmittersKeepOrder: several goroutines emit to every socket, and one
// broadcasts, some packets large enough to be written in part, clients pinging
// meanwhile: each goroutine's packets arrive in order, none lost, with every quiet
// packet written at once (quietSend 0) and by default. (A reviewer's test.)
func TestConcurrentEmittersKeepOrder(t *testing.T) {
	for _, q := range []int64{0, int64(time.Millisecond)} {
		t.Run(fmt.Sprint(q), func(t *testing.T) {
			defer quietSend.Store(quietSend.Swap(q))
			io, url := server(t)
			const nc, ng, n = 4, 6, 150
			clients := make([]*rawClient, nc)
			socks := make([]*socket.Socket, nc)
			for i := range clients {
				clients[i] = dial(t, io, url)
				socks[i] = socketOf(t, io, clients[i])
			}
			// More than Linux's largest default send buffer (tcp_wmem, 4 MB): written
			// at once, in part.
			big := strings.Repeat("b", 6<<20)
			var wg sync.WaitGroup
			for g := range ng {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range n {
						if g == 0 {
							io.Emit("g0", i)
							continue
						}
						for _, s := range socks {
							if i%100 == 7 && g == 1 {
								s.Emit(fmt.Sprint("g", g), i, big)
							} else {
								s.Emit(fmt.Sprint("g", g), i)
							}
						}
						if i%10 == 0 {
							time.Sleep(2 * time.Millisecond) // quiet moments: load shaping
						}
					}
				}()
			}
			var rg sync.WaitGroup
			errs := make(chan string, nc)
			for ci, c := range clients {
				rg.Add(1)
				go func() {
					defer rg.Done()
					next := make([]int, ng)
					for got := 0; got < ng*n; got++ {
						if got%100 == 0 {
							c.conn.WriteControl(ws.PingMessage, []byte("p"), time.Now().Add(time.Second))
						}
						c.conn.SetReadDeadline(time.Now().Add(waitFor))
						mt, msg, err := c.conn.ReadMessage()
						if err != nil {
							errs <- fmt.Sprintf("client %d after %d: %v", ci, got, err)
							return
						}
						if mt == ws.TextMessage && string(msg) == "2" {
							c.conn.WriteMessage(ws.TextMessage, []byte("3"))
							got--
							continue
						}
						var g, i int
						if _, err := fmt.Sscanf(string(msg), `42["g%d",%d`, &g, &i); err != nil {
							errs <- fmt.Sprintf("client %d: %.60q", ci, msg)
							return
						}
						if i != next[g] {
							errs <- fmt.Sprintf("client %d: goroutine %d's packet %d, want %d", ci, g, i, next[g])
							return
						}
						next[g]++
					}
				}()
			}
			wg.Wait()
			rg.Wait()
			close(errs)
			for e := range errs {
				t.Error(e)
			}
			var whole, part int64
			for _, s := range socks {
				w := s.Conn().Transport().(*webSocket)
				whole += w.nowWhole.Load()
				part += w.nowPart.Load()
			}
			if q == 0 && (whole == 0 || part == 0) {
				t.Fatalf("written at once: %d whole, %d in part; the test needs both", whole, part)
			}
		})
	}
}

// TestTLSSpendsNoBudget: a packet to a TLS client, never written at once (no writev),
// does not spend the budget of packets written at once.
func TestTLSSpendsNoBudget(t *testing.T) {
	io, url := serverWith(t, variant{tls: true})
	c := dial(t, io, url)
	s := socketOf(t, io, c)
	time.Sleep(2 * time.Duration(quietSend.Load())) // the connection is quiet
	asked := atOnce.last.Load()                     // when a packet last asked for the budget
	s.Emit("t", 1)
	if args := c.event(); len(args) != 2 || args[0] != "t" {
		t.Fatalf("got %v", args)
	}
	if atOnce.last.Load() != asked {
		t.Fatal("a packet to a TLS client asked for the budget")
	}
}

// TestHoldGathersDrains: a broadcast to quiet clients, its messages held, writes every
// packet at once and leaves their drains, which run the writes' callbacks, to release:
// none runs before it, all run after it, from one goroutine.
func TestHoldGathersDrains(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("written at once on Linux only")
	}
	io, url := server(t)
	clients := make([]*rawClient, 50)
	for i := range clients {
		clients[i] = dial(t, io, url)
	}
	time.Sleep(2 * time.Duration(quietSend.Load())) // every connection is quiet
	msgs := Messages([]types.BufferInterface{types.NewStringBufferString(`2["h",1]`)})
	release := Hold(msgs)
	owed.mu.Lock()
	started := owed.started
	owed.mu.Unlock()
	before := writtenAtOnce(io)
	var called atomic.Int32
	all := make(chan struct{})
	io.Sockets().Sockets().Range(func(_ socket.SocketId, s *socket.Socket) bool {
		s.Conn().Write(msgs[0].(*message).Clone(), nil, func(transports.Transport) {
			if called.Add(1) == int32(len(clients)) {
				close(all)
			}
		})
		return true
	})
	if n := writtenAtOnce(io) - before; n != int64(len(clients)) {
		t.Fatalf("%d of %d packets written at once: the test shows nothing", n, len(clients))
	}
	if n := called.Load(); n != 0 {
		t.Fatalf("%d callbacks ran before release", n)
	}
	release()
	release() // again: nothing
	select {
	case <-all:
	case <-time.After(waitFor):
		t.Fatalf("%d of %d callbacks ran %v after release", called.Load(), len(clients), waitFor)
	}
	owed.mu.Lock()
	started = owed.started - started
	owed.mu.Unlock()
	if started != 1 {
		t.Fatalf("%d goroutines emitted the drains, want 1", started)
	}
	for i, c := range clients {
		if args := c.event(); len(args) != 2 || args[0] != "h" {
			t.Fatalf("client %d: got %v", i, args)
		}
	}
}
