package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// A Socket.IO client reduced to what the benchmark needs, so that the load generator,
// which shares the machine's cores with the servers it measures, costs as little as
// possible: a WebSocket connection straight to engine.io (EIO=4), the connect to the main
// namespace, pong for ping, and for each broadcast "b" its sequence number and send time.
// To the server it is a real client: the server does all the work it does for a browser.
//
// One goroutine reads every client's socket through epoll (see poller), rather than a
// goroutine per client: under load a read then returns many frames at once, and no
// goroutine is woken per frame.

// client is one Socket.IO connection.
type client struct {
	conn net.Conn
	fd   int
	p    *poller
	wmu  sync.Mutex

	connected chan struct{}
	closed    chan struct{}
	err       error // why reading ended; read after closed

	count     atomic.Int64 // broadcasts of the current phase received, each once
	reordered atomic.Int64 // broadcasts received after a later one
	dups      atomic.Int64 // broadcasts of the current phase received again
	stray     atomic.Int64 // receipts of another phase's broadcasts, or without a number
	rec       atomic.Pointer[histogram]
	spread    atomic.Pointer[spread] // of the phase, when it records one (paced phases)

	// Under wmu: the current phase's first sequence number, and which of its broadcasts
	// arrived. Counting receipts made a duplicate hide a loss; a broadcast of the phase
	// before, arriving late, counted in this one.
	base int64
	seen []uint64

	// Owned by the poller goroutine.
	buf     []byte // read buffer
	in      []byte // bytes read and not yet parsed, in buf
	next    int64  // the sequence number expected next
	pending *event
	frag    []byte // a fragmented message so far
	fragOp  byte
	ended   bool
}

// event is a broadcast whose binary attachment has not arrived yet.
type event struct{ seq, sent int64 }

// dial connects a client to the Socket.IO server at addr (host:port), hands it to p, and
// returns once the main namespace is connected.
func dial(p *poller, addr string, timeout time.Duration) (*client, error) {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(timeout))
	key := make([]byte, 16)
	rand.Read(key)
	k := base64.StdEncoding.EncodeToString(key)
	fmt.Fprintf(conn, "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n", addr, k)
	r := bufio.NewReaderSize(conn, 4096)
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("websocket handshake: %w", err)
	}
	resp.Body.Close()
	sum := sha1.Sum([]byte(k + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Accept") != base64.StdEncoding.EncodeToString(sum[:]) {
		conn.Close()
		return nil, fmt.Errorf("websocket handshake: %s", resp.Status)
	}
	conn.SetDeadline(time.Time{})
	c := &client{conn: conn, connected: make(chan struct{}), closed: make(chan struct{}), next: -1}
	c.rec.Store(newHistogram())
	// What the reader buffered past the response (engine.io's open packet, often).
	buffered, _ := r.Peek(r.Buffered())
	c.buf = make([]byte, 4*minRead)
	c.in = c.buf[:copy(c.buf, buffered)]
	if err := p.add(c); err != nil {
		conn.Close()
		return nil, err
	}
	select {
	case <-c.connected:
		return c, nil
	case <-c.closed:
		return nil, fmt.Errorf("socket.io connect: %w", c.err)
	case <-time.After(timeout):
		c.close()
		return nil, errors.New("socket.io connect: timed out")
	}
}

func (c *client) close() {
	c.p.remove(c, net.ErrClosed)
	c.conn.Close()
}

// reset starts a new phase, whose broadcasts are numbered from base: counts from zero,
// a new latency record.
func (c *client) reset(base int64) {
	c.count.Store(0)
	c.reordered.Store(0)
	c.dups.Store(0)
	c.stray.Store(0)
	c.rec.Store(newHistogram())
	c.wmu.Lock()
	c.base = base
	clear(c.seen)
	c.seen = c.seen[:0]
	c.next = -1 // the first sequence number of the phase is whatever comes first
	c.wmu.Unlock()
}

// phaseSpan is how many sequence numbers a phase has: phase k numbers its broadcasts
// from k·phaseSpan (see cluster.run). maxPhaseBroadcasts bounds those a client records.
const (
	phaseSpan          = 1_000_000_000
	maxPhaseBroadcasts = 1 << 24
)

// write sends a masked text frame, as a client must.
func (c *client) write(msg string) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	frame := make([]byte, 0, 14+len(msg))
	frame = append(frame, 0x81)
	switch {
	case len(msg) < 126:
		frame = append(frame, 0x80|byte(len(msg)))
	case len(msg) < 1<<16:
		frame = append(frame, 0x80|126)
		frame = binary.BigEndian.AppendUint16(frame, uint16(len(msg)))
	default:
		frame = append(frame, 0x80|127)
		frame = binary.BigEndian.AppendUint64(frame, uint64(len(msg)))
	}
	var mask [4]byte
	rand.Read(mask[:])
	frame = append(frame, mask[:]...)
	for i := 0; i < len(msg); i++ {
		frame = append(frame, msg[i]^mask[i%4])
	}
	_, err := c.conn.Write(frame)
	return err
}

// end stops reading the client, for err.
func (c *client) end(err error) {
	if !c.ended {
		c.ended = true
		c.err = err
		close(c.closed)
	}
}

// frame cuts one whole frame off c.in: its opcode, fin bit and payload (valid until the
// next read), or ok false when c.in does not hold a whole frame yet.
func (c *client) frame() (opcode byte, fin bool, payload []byte, ok bool, err error) {
	in := c.in
	if len(in) < 2 {
		return 0, false, nil, false, nil
	}
	if in[1]&0x80 != 0 {
		return 0, false, nil, false, errors.New("masked frame from the server")
	}
	n, h := uint64(in[1]&0x7f), 2
	switch n {
	case 126:
		if len(in) < 4 {
			return 0, false, nil, false, nil
		}
		n, h = uint64(binary.BigEndian.Uint16(in[2:])), 4
	case 127:
		if len(in) < 10 {
			return 0, false, nil, false, nil
		}
		n, h = binary.BigEndian.Uint64(in[2:]), 10
	}
	if n > 64<<20 {
		return 0, false, nil, false, fmt.Errorf("frame of %d bytes", n)
	}
	if uint64(len(in)-h) < n {
		return 0, false, nil, false, nil
	}
	c.in = in[h+int(n):]
	return in[0] & 0x0f, in[0]&0x80 != 0, in[h : h+int(n)], true, nil
}

var (
	eventPrefix       = []byte(`42["b",`)
	binaryEventPrefix = []byte(`451-["b",`)
)

// parse handles every whole frame in c.in.
func (c *client) parse() error {
	now := nowUs()
	for {
		op, fin, msg, ok, err := c.frame()
		if err != nil {
			return err
		}
		if !ok {
			return nil
		}
		// gorilla/websocket, under engine.io v2.5.0's 1 KB write buffer, sends every
		// message of more than 1 KB in two frames or more: put them back together.
		if op < 0x8 && (!fin || op == 0) {
			if op != 0 {
				c.fragOp, c.frag = op, append(c.frag[:0], msg...)
			} else {
				c.frag = append(c.frag, msg...)
			}
			if !fin {
				continue
			}
			op, msg = c.fragOp, c.frag
		}
		switch {
		case op == 0x2: // binary: the attachment of the pending binary event
			if c.pending != nil {
				c.received(c.pending.seq, now-c.pending.sent)
				c.pending = nil
			}
		case op == 0x8:
			return errors.New("closed by the server")
		case op == 0x9: // WebSocket ping: engine.io uses its own, but answer anyway
			c.wmu.Lock()
			c.conn.Write([]byte{0x8a, 0x80, 0, 0, 0, 0})
			c.wmu.Unlock()
		case bytes.HasPrefix(msg, eventPrefix):
			seq, sent := fields(msg)
			c.received(seq, now-sent)
		case bytes.HasPrefix(msg, binaryEventPrefix):
			seq, sent := fields(msg)
			c.pending = &event{seq: seq, sent: sent}
		case len(msg) == 1 && msg[0] == '2': // engine.io ping
			if err := c.write("3"); err != nil {
				return err
			}
		case len(msg) > 0 && msg[0] == '0': // engine.io open
			if err := c.write("40"); err != nil {
				return err
			}
		case bytes.HasPrefix(msg, []byte("40")):
			close(c.connected)
		case bytes.HasPrefix(msg, []byte("44")):
			return fmt.Errorf("connect refused: %s", msg)
		}
	}
}

func (c *client) received(seq, latency int64) {
	c.wmu.Lock()
	i := seq - c.base
	if seq < 0 || i < 0 || i >= maxPhaseBroadcasts {
		c.wmu.Unlock()
		c.stray.Add(1)
		return
	}
	w, bit := int(i/64), uint64(1)<<(i%64)
	for len(c.seen) <= w {
		c.seen = append(c.seen, 0)
	}
	if c.seen[w]&bit != 0 {
		c.wmu.Unlock()
		c.dups.Add(1)
		return
	}
	c.seen[w] |= bit
	if c.next >= 0 && i < c.next {
		c.reordered.Add(1)
	}
	c.next = max(c.next, i+1)
	c.wmu.Unlock()
	c.rec.Load().add(latency)
	if sp := c.spread.Load(); sp != nil {
		sp.add(i, latency)
	}
	c.count.Add(1)
}

// fields reads "s" and "t" from a broadcast's first argument. The benchmark's senders
// write the padding with "x" only, so the first `"s":` and `"t":` are the fields.
func fields(msg []byte) (seq, sent int64) {
	return number(msg, []byte(`"s":`)), number(msg, []byte(`"t":`))
}

// fieldsWithin is how far from either end of a message number looks first. The fields
// are at the start of the object where the sender keeps the order they were written
// in (Node), and at its end where keys are sorted ("p" first: encoding/json, and
// pgadapter's codec): looking there first keeps a 20 KB message from being scanned
// twice (4.2 µs a message instead of 0.2 µs, a third of a core at 80,000 receipts per
// second, which made the load generator slower for Go servers than for Node's).
const fieldsWithin = 64

func number(msg, key []byte) int64 {
	i := bytes.Index(msg[:min(len(msg), fieldsWithin)], key)
	if i < 0 && len(msg) > fieldsWithin {
		tail := max(fieldsWithin, len(msg)-fieldsWithin)
		if i = bytes.Index(msg[tail:], key); i >= 0 {
			i += tail
		} else {
			i = bytes.Index(msg, key)
		}
	}
	if i < 0 {
		return -1
	}
	i += len(key)
	j := i
	for j < len(msg) && msg[j] >= '0' && msg[j] <= '9' {
		j++
	}
	n, _ := strconv.ParseInt(string(msg[i:j]), 10, 64)
	return n
}
