package fastws

import (
	"bytes"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	ws "github.com/gorilla/websocket"
	"github.com/zishang520/socket.io/v2/socket"
)

// A server that disconnects a client while what the client sent lies unread keeps the
// last packets: closing at once made the kernel reset the connection and throw away
// what it had not sent yet, and the client got neither the last event nor the
// DISCONNECT, saw a transport error, and would have reconnected. Holding the read loop
// (w.deliver) keeps the client's messages unread whenever the server closes; a read
// loop that has not been scheduled yet, or a message that arrives as the server
// closes, does the same.
func TestDisconnectWithUnreadDataKeepsLastPackets(t *testing.T) {
	for _, v := range variants {
		t.Run(v.String(), func(t *testing.T) {
			io, url := serverWith(t, v)
			c := dial(t, io, url)
			s := socketOf(t, io, c)
			w := s.Conn().Transport().(*webSocket)
			w.deliver.Lock()
			held := true
			defer func() {
				if held {
					w.deliver.Unlock()
				}
			}()
			filler := clientFrame(1, []byte(`42["x","`+strings.Repeat("a", 16<<10)+`"]`))
			if _, err := c.conn.NetConn().Write(bytes.Repeat(filler, 8)); err != nil {
				t.Fatal(err)
			}
			closed := make(chan struct{})
			s.Conn().Transport().Once("close", func(...any) { close(closed) })
			big := strings.Repeat("z", 256<<10)
			s.Emit("last", big)
			// Disconnect once that batch is written (into the kernel: the client reads
			// nothing yet) and the transport writable again, so that the DISCONNECT is
			// handed over at once: engine.io v2.5.0 can miss the "drain" it waits for
			// otherwise, and never close (TestServerDisconnectKeepsLastPackets).
			if !idle(w) {
				t.Fatal("the transport never became idle")
			}
			s.Disconnect(true)
			select {
			case <-closed: // the server has closed: only now does the client read
			case <-time.After(waitFor):
				t.Fatalf("the transport did not close within %v", waitFor)
			}
			got, err := c.rest()
			want := [][]byte{[]byte(`42["last","` + big + `"]`), []byte("41")}
			if !slices.EqualFunc(got, want, bytes.Equal) || !ws.IsCloseError(err, ws.CloseNormalClosure) {
				summary := make([]string, len(got))
				for i, m := range got {
					summary[i] = fmt.Sprintf("%.12q (%d bytes)", m, len(m))
				}
				t.Fatalf("got %v then %v, want the last event (%d bytes), the DISCONNECT, then a normal close", summary, err, len(want[0]))
			}
			// The client answered the Close frame (gorilla/websocket does): once the
			// read loop is free to read the answer, the connection is closed, well
			// before lingerMax.
			w.deliver.Unlock()
			held = false
			waitClosed(t, w.raw, lingerMax/2)
			// The read loop closed it, and stops the timer, which held the connection.
			deadline := time.Now().Add(waitFor)
			for !w.readDone.Load() {
				if time.Now().After(deadline) {
					t.Fatal("the read loop did not end")
				}
				time.Sleep(time.Millisecond)
			}
			if w.lingering.Load().Stop() {
				t.Error("the linger timer still ran after the read loop closed the connection")
			}
		})
	}
}

// A client that never closes its half is closed w.linger after the Close frame.
func TestLingerEndsWithoutTheClient(t *testing.T) {
	io, url := server(t)
	c := dial(t, io, url)
	s := socketOf(t, io, c)
	w := s.Conn().Transport().(*webSocket)
	w.linger = 100 * time.Millisecond // read by finish, on a goroutine that Disconnect starts
	s.Disconnect(true)
	// The client reads its end, and answers nothing: its half stays open.
	raw := c.conn.NetConn()
	raw.SetReadDeadline(time.Now().Add(waitFor))
	var end []byte
	buf := make([]byte, 256)
	for !bytes.Contains(end, []byte{0x88, 0x02, 0x03, 0xe8}) { // Close frame, 1000
		n, err := raw.Read(buf)
		if err != nil {
			t.Fatalf("no Close frame before %v (read %q)", err, end)
		}
		end = append(end, buf[:n]...)
	}
	waitClosed(t, w.raw, waitFor)
}

// waitClosed waits up to d for the server's side of a connection to be closed, which a
// closed net.Conn reports by refusing a deadline.
func waitClosed(t *testing.T, c net.Conn, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for c.SetReadDeadline(time.Time{}) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("the server's connection is still open %v later", d)
		}
		time.Sleep(time.Millisecond)
	}
}

// A batch written without writev (TLS) goes through copies of at most maxFlat bytes,
// whole and in order: one copy of the whole batch was as large as the batch, what
// engine.io buffered for a slow client meanwhile.
func TestWriteCopiesBounded(t *testing.T) {
	var want []byte
	b := &batchBuffers{}
	for i, n := range []int{10, 100 << 10, 3, maxFlat, maxFlat - 3, 1, 200 << 10} {
		p := bytes.Repeat([]byte{byte('a' + i)}, n)
		want = append(want, p...)
		b.bufs = append(b.bufs, p)
	}
	rec := &recordingConn{}
	if err := (&webSocket{raw: rec}).writeCopies(b); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rec.got, want) {
		t.Fatalf("wrote %d bytes, not the batch's %d in order", len(rec.got), len(want))
	}
	if rec.largest > maxFlat || cap(b.flat) > maxFlat {
		t.Fatalf("a write of %d bytes, a copy of %d; bound %d", rec.largest, cap(b.flat), maxFlat)
	}
}

// recordingConn is a net.Conn that keeps what is written to it.
type recordingConn struct {
	net.Conn
	got     []byte
	largest int
}

func (c *recordingConn) Write(p []byte) (int, error) {
	c.got = append(c.got, p...)
	c.largest = max(c.largest, len(p))
	return len(p), nil
}

// socketOf returns the server's socket of the client c.
func socketOf(t *testing.T, io *socket.Server, c *rawClient) *socket.Socket {
	t.Helper()
	s, ok := io.Sockets().Sockets().Load(socket.SocketId(c.sid))
	if !ok {
		t.Fatalf("no socket %s", c.sid)
	}
	return s
}

// rest reads the messages left, until the connection's end, which it returns.
func (c *rawClient) rest() ([][]byte, error) {
	var got [][]byte
	c.conn.SetReadDeadline(time.Now().Add(waitFor))
	for {
		_, msg, err := c.conn.ReadMessage()
		if err != nil {
			return got, err
		}
		got = append(got, msg)
	}
}

// idle waits, up to waitFor, until the batches handed to w are written and w is writable
// again, and reports whether it is: a DISCONNECT sent then is handed over at once, and
// engine.io closes right after it. Sent while a batch is written, it waits in engine.io's
// buffer, and engine.io v2.5.0's close waits for a "drain" that it can miss (it checks
// its buffer, then listens: a flush in between goes unnoticed), and never closes.
func idle(w *webSocket) bool {
	deadline := time.Now().Add(waitFor)
	for w.inflight.Load() > 0 || !w.Writable() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}
