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
	"io"
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

// client is one Socket.IO connection.
type client struct {
	conn net.Conn
	r    *bufio.Reader
	wmu  sync.Mutex

	connected chan struct{}
	closed    chan struct{}
	err       error // why the read loop ended; read after closed

	count     atomic.Int64 // broadcasts received in the current phase
	reordered atomic.Int64 // broadcasts received after a later one
	rec       atomic.Pointer[histogram]
	next      int64 // the sequence number expected next; read loop only
	pending   *event
}

// event is a broadcast whose binary attachment has not arrived yet.
type event struct{ seq, sent int64 }

// dial connects a client to the Socket.IO server at addr (host:port) and starts its read
// loop; it returns once the main namespace is connected.
func dial(addr string, timeout time.Duration) (*client, error) {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(timeout))
	key := make([]byte, 16)
	rand.Read(key)
	k := base64.StdEncoding.EncodeToString(key)
	fmt.Fprintf(conn, "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n", addr, k)
	r := bufio.NewReaderSize(conn, 64<<10)
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
	c := &client{conn: conn, r: r, connected: make(chan struct{}), closed: make(chan struct{})}
	c.rec.Store(newHistogram())
	go c.read()
	select {
	case <-c.connected:
		conn.SetDeadline(time.Time{})
		return c, nil
	case <-c.closed:
		return nil, fmt.Errorf("socket.io connect: %w", c.err)
	}
}

func (c *client) close() {
	c.conn.Close()
	<-c.closed
}

// reset starts a new phase: counts from zero, a new latency record.
func (c *client) reset() {
	c.count.Store(0)
	c.reordered.Store(0)
	c.rec.Store(newHistogram())
	c.wmu.Lock()
	c.next = -1 // the first sequence number of the phase is whatever comes first
	c.wmu.Unlock()
}

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

// readFrame reads one message (joining continuation frames) into buf.
func (c *client) readFrame(buf []byte) (opcode byte, msg []byte, err error) {
	msg = buf[:0]
	for {
		var h [2]byte
		if _, err = io.ReadFull(c.r, h[:]); err != nil {
			return 0, nil, err
		}
		n := int64(h[1] & 0x7f)
		switch n {
		case 126:
			var l [2]byte
			if _, err = io.ReadFull(c.r, l[:]); err != nil {
				return 0, nil, err
			}
			n = int64(binary.BigEndian.Uint16(l[:]))
		case 127:
			var l [8]byte
			if _, err = io.ReadFull(c.r, l[:]); err != nil {
				return 0, nil, err
			}
			n = int64(binary.BigEndian.Uint64(l[:]))
		}
		if h[1]&0x80 != 0 {
			return 0, nil, errors.New("masked frame from the server")
		}
		if n > 64<<20 {
			return 0, nil, fmt.Errorf("frame of %d bytes", n)
		}
		start := len(msg)
		msg = append(msg, make([]byte, n)...)
		if _, err = io.ReadFull(c.r, msg[start:]); err != nil {
			return 0, nil, err
		}
		if op := h[0] & 0x0f; op != 0 {
			opcode = op
		}
		if h[0]&0x80 != 0 {
			return opcode, msg, nil
		}
	}
}

var (
	eventPrefix       = []byte(`42["b",`)
	binaryEventPrefix = []byte(`451-["b",`)
)

func (c *client) read() {
	defer close(c.closed)
	c.next = -1
	buf := make([]byte, 0, 64<<10)
	for {
		op, msg, err := c.readFrame(buf)
		if err != nil {
			c.err = err
			return
		}
		if cap(msg) > cap(buf) {
			buf = msg
		}
		now := time.Now().UnixMicro()
		switch {
		case op == 0x2: // binary: the attachment of the pending binary event
			if c.pending != nil {
				c.received(c.pending.seq, now-c.pending.sent)
				c.pending = nil
			}
		case op == 0x8:
			c.err = errors.New("closed by the server")
			return
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
				c.err = err
				return
			}
		case len(msg) > 0 && msg[0] == '0': // engine.io open
			if err := c.write("40"); err != nil {
				c.err = err
				return
			}
		case bytes.HasPrefix(msg, []byte("40")):
			close(c.connected)
		case bytes.HasPrefix(msg, []byte("44")):
			c.err = fmt.Errorf("connect refused: %s", msg)
			return
		}
	}
}

func (c *client) received(seq, latency int64) {
	c.wmu.Lock()
	if c.next >= 0 && seq < c.next {
		c.reordered.Add(1)
	}
	c.next = max(c.next, seq+1)
	c.wmu.Unlock()
	c.rec.Load().add(latency)
	c.count.Add(1)
}

// fields reads "s" and "t" from a broadcast's first argument. The benchmark's senders
// write the padding with "x" only, so the first `"s":` and `"t":` are the fields.
func fields(msg []byte) (seq, sent int64) {
	return number(msg, []byte(`"s":`)), number(msg, []byte(`"t":`))
}

func number(msg, key []byte) int64 {
	i := bytes.Index(msg, key)
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
