// Package fastws is a WebSocket transport for engine.io v2.5.0 (the engine of
// github.com/zishang520/socket.io/v2 v2.5.0) that writes what engine.io hands it
// without losing any of it, without copying it per client, and with one system call per
// batch instead of one per message.
//
// engine.io's own WebSocket transport loses messages in two ways, and has two costs that
// dominate a server with many clients, whatever its adapter:
//
//   - It returns after writing the first packet of a batch that carries a pre-encoded
//     frame, so the packets after it are lost. socket.io's in-memory adapter attaches
//     such a frame to every JSON broadcast: under load, a single server loses most of
//     them.
//   - It starts reading when it is created, before socket.io listens to the connection:
//     a client's first packet (its CONNECT, or its upgrade probe), sent as soon as the
//     open packet arrives, is sometimes dropped, and the client never connects. This
//     transport reads once the upgrade's HTTP handler has returned.
//   - It encodes every packet again for every client (a copy of the message into a
//     buffer grown from 64 bytes), then copies it into a 1 KB write buffer.
//   - It writes each message with its own write(2), and a message of more than 2 KB with
//     two (a frame, then an empty final frame).
//
// This transport writes each batch of packets as complete WebSocket frames with a single
// writev(2). A packet with a pre-encoded frame (socket.io's adapter attaches one to JSON
// broadcasts), or whose data is a Message, is written from those bytes, shared by every
// client, with no copy; the others are encoded once per client, by engine.io's parser, as
// before. pgadapter gives its broadcasts to clients on this transport as Messages.
//
// Under load, each batch is written by a goroutine of its own, so that what is emitted
// meanwhile gathers into the next batch. A packet to a quiet connection is written at
// once instead (on Linux), by the goroutine that emits it, as much as the socket takes
// without waiting: a goroutine there cost more than the write.
//
// Install it once, before any engine.io server accepts connections:
//
//	fastws.Install()
//	io := socket.NewServer(nil, nil)
//
// engine.io keeps its transports in a process-wide table, read without a lock when a
// connection upgrades, which is why Install must come first, and why it applies to
// every engine.io server of the process.
//
// A batch of packets that the client does not take within the server's pingInterval +
// pingTimeout ends the connection: engine.io closes the socket with reason "transport
// error". A client that stops reading would otherwise keep its connection, and engine.io
// would buffer everything sent to it, for as long as it sent pongs. A connection that
// started on HTTP long polling is given engine.io's default pingInterval + pingTimeout,
// 45 s, whatever the server's: this transport never sees the handshake that carries them.
//
// Frames are written uncompressed. A connection that negotiated permessage-deflate still
// receives valid messages (RFC 7692 lets a sender leave any message uncompressed), and a
// packet that asks for compression goes through gorilla/websocket's writer, as with
// engine.io's transport, which compresses it if the connection negotiated it.
// socket.io v2.5.0 emits without compression unless asked (Compress(true)).
package fastws

import (
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	goio "io"
	"net"
	"reflect"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	ws "github.com/gorilla/websocket"
	"github.com/zishang520/engine.io-go-parser/packet"
	"github.com/zishang520/engine.io/v2/transports"
	"github.com/zishang520/engine.io/v2/types"
)

// Install makes this package's transport the WebSocket transport of every engine.io
// server of the process. Call it before the servers accept connections.
func Install() {
	transports.Transports()[transports.WEBSOCKET] = &builder{}
}

// Installed reports whether Install was called (and the transport not replaced since).
func Installed() bool {
	_, ok := transports.Transports()[transports.WEBSOCKET].(*builder)
	return ok
}

// Handles reports whether t, a connection's current engine.io transport, is this
// package's, and so may be given a Message. A connection's transport changes only by
// upgrading from HTTP long polling to WebSocket, never back, so the answer stays true
// for the connection's life.
func Handles(t transports.Transport) bool {
	_, ok := t.(*webSocket)
	return ok
}

// listenDelayMax bounds the wait for the upgrade's HTTP handler to return before the
// transport reads (see Construct), in case something keeps the handler from returning.
const listenDelayMax = 2 * time.Second

// Message returns, for a packet socket.io encoded (data: a string, or one binary
// attachment), what to give engine.io's socket.Write for connections on this transport
// instead: this transport writes it as one WebSocket message encoded here, once, and
// shared by every connection it is given to. socket.io copies what it writes for each
// client (Clone); a Message's copy shares the bytes. Give it only to connections whose
// transport Handles: engine.io's own transports would take a string for binary.
func Message(data types.BufferInterface) types.BufferInterface {
	// The bytes are shared by every copy, which is read-only: nothing writes a packet's
	// buffer once it is handed to engine.io (a write to one, after a read emptied it,
	// would overwrite them all). Capped, so that an append at least copies.
	b := data.Bytes()
	b = b[:len(b):len(b)]
	m := &message{Buffer: *types.NewBuffer(b), original: b}
	if isText(data) {
		// A text packet goes as engine.io's message type, then the packet.
		m.text = true
		m.payload = append(append(make([]byte, 0, 1+len(m.original)), '4'), m.original...)
	} else {
		m.payload = m.original
	}
	return m
}

// Messages is Message for every part of one packet socket.io encoded (a binary event:
// its header, then its attachments), in one: this transport writes the parts as
// consecutive WebSocket messages, what engine.io writes for them one by one, but from a
// single engine.io packet. Each part given to engine.io separately costs a client a
// batch of its own (engine.io hands the transport the header, and the attachments only
// once that write is done): a goroutine and a write(2) each. Messages returns a slice of
// one element, to give to socket.io's Client.WriteToEngine in place of parts (nil for
// no parts).
func Messages(parts []types.BufferInterface) []types.BufferInterface {
	if len(parts) == 0 {
		return nil
	}
	first := Message(parts[0]).(*message)
	for _, part := range parts[1:] {
		first.more = append(first.more, Message(part).(*message))
	}
	return []types.BufferInterface{first}
}

// Hold is for a goroutine that writes msgs, from Message or Messages, to many
// connections in a row (a broadcast): the connections that write them at once (see
// Send) leave the "drain" each owes engine.io to release, which hands them all to one
// goroutine. Call release once msgs have been given to every connection (engine.io's
// socket.Write, or socket.io's Client.WriteToEngine), and always: until then, engine.io
// runs none of those writes' callbacks. Calling it again does nothing.
//
// Without Hold, each drain owed is handed over as it comes, and the goroutine that emits
// them often ends between two writes: a broadcast to 50 quiet clients started up to 50,
// each waking an idle thread to run it, which cost the receiving server a fifth of its
// processor time at 200 broadcasts a second.
func Hold(msgs []types.BufferInterface) (release func()) {
	h := new(held)
	for _, m := range msgs {
		if m, ok := m.(*message); ok {
			m.held = h
		}
	}
	return h.release
}

// held gathers the connections owed a "drain" for a message written at once, until the
// goroutine writing it to them all is done (see Hold).
type held struct {
	mu       sync.Mutex
	queue    []*webSocket
	released bool
}

// add keeps w's drain for release, and reports false once release has been called (the
// message was buffered by engine.io and written later, by another goroutine): the
// caller hands it over itself.
func (h *held) add(w *webSocket) bool {
	if h == nil {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.released {
		return false
	}
	h.queue = append(h.queue, w)
	return true
}

func (h *held) release() {
	h.mu.Lock()
	q := h.queue
	h.queue, h.released = nil, true
	h.mu.Unlock()
	owed.add(q...)
}

// heldBy returns what holds the drains of packets, a batch of one (see sendNow).
func heldBy(packets []*packet.Packet) *held {
	if m, ok := packets[0].Data.(*message); ok {
		return m.held
	}
	return nil
}

// message is what Message returns. The embedded buffer holds the packet as socket.io
// encoded it, for anything that reads it as engine.io data (it has its own read
// position); payload is the WebSocket message.
type message struct {
	types.Buffer
	original []byte
	payload  []byte
	text     bool
	more     []*message // the parts that follow in the same packet (Messages)
	copied   bool       // made by Clone, for one client: released once written
	held     *held      // the drains of connections that write it at once (Hold)
}

// Clone shares the bytes, read-only (see Message). socket.io clones what it
// writes for every client; the buffer is held by value so that a clone is one
// allocation.
func (m *message) Clone() types.BufferInterface {
	return &message{Buffer: *types.NewBuffer(m.original), original: m.original, payload: m.payload, text: m.text, more: m.more, copied: true, held: m.held}
}

// release drops what a copy holds of the shared bytes, once the transport is done with
// it. engine.io keeps the packets it hands a transport: it empties its buffer of packets
// to send by reslicing it, so that each entry stays until a later batch as long
// overwrites it. A burst of large broadcasts to a slow client stayed in memory until it
// had received as many packets again, or disconnected (a tester saw 195-363 MB kept
// after 20 MB broadcasts).
func (m *message) release() {
	if m.copied {
		m.Buffer, m.original, m.payload, m.more = types.Buffer{}, nil, nil, nil
	}
}

// GoString shows the bytes, as engine.io's byte buffers do.
func (m *message) GoString() string { return fmt.Sprintf("%v", m.Bytes()) }

// builder is the transports.TransportCtor engine.io calls on each WebSocket upgrade.
type builder struct{}

func (*builder) New(ctx *types.HttpContext) transports.Transport { return newWebSocket(ctx) }

func (*builder) HandlesUpgrades() bool { return true }

func (*builder) UpgradesTo() *types.Set[string] { return types.NewSet[string]() }

// webSocket is engine.io's transport interface over one WebSocket connection. Reading is
// gorilla/websocket's reader, one message at a time, in a loop of this package's that
// starts once the upgrade's handler has returned and holds pongs back (see read).
// Writing is this package's.
type webSocket struct {
	transports.Transport

	conn *types.WebSocketConn
	raw  net.Conn

	mu    sync.Mutex    // one batch written at a time, in order
	b     *batchBuffers // the batch being built and written; nil between batches
	until time.Time     // the batch's write deadline (see defaultWriteTimeout)
	// writev: the connection writes net.Buffers with one writev(2) (TCP and Unix
	// sockets). Others, TLS above all, would turn each buffer into a Write of its own
	// (a TLS record each): for them the batch is copied into flat and written once.
	writev bool
	// rc writes without waiting (see sendNow), where the connection has one.
	rc syscall.RawConn
	// lastSend is when Send was last called, or a batch's goroutine ended, in ns since
	// epoch; busy, whether the last such batch had packets gathered while another was
	// written (see quietSend).
	lastSend atomic.Int64
	busy     atomic.Bool
	// Batches sendNow wrote whole, and in part (the rest by a goroutine): for tests.
	nowWhole, nowPart atomic.Int64

	readLimit    int64              // the largest message read, engine.io's MaxHttpBufferSize; 0: any
	limited      goio.LimitedReader // the read loop's, around each message (see read)
	hold         atomic.Int64       // how long a pong waits, in nanoseconds (see maxPongHold)
	writeTimeout atomic.Int64       // how long a batch may take, in ns (see defaultWriteTimeout)

	// The answer to the client's latest WebSocket ping, waiting for its turn to be
	// written (see onPing).
	pongMu      sync.Mutex
	pongPending bool
	pongData    []byte

	held atomic.Bool // an engine.io pong is being held (see maxPongHold)
	// deliver is held while engine.io is told of the connection: a packet, from the read
	// loop or a held pong's timer (see deliverPong), or its end (see failed). Taken
	// after mu, if both are.
	deliver sync.Mutex

	// Closing waits for the batches handed over before it (see DoClose).
	inflight  atomic.Int64              // Send calls whose batch is not written yet
	closeBy   atomic.Pointer[time.Time] // set by DoClose: when the connection is closed
	closeOnce sync.Once
	linger    time.Duration              // lingerMax
	lingering atomic.Pointer[time.Timer] // ends the connection lingerMax after finish
	readDone  atomic.Bool                // the read loop has ended, and closed the connection
	// Nothing more is written (w.mu): the Close frame is, or a write failed, which may
	// have left a frame cut short.
	closed bool
}

// closeGrace bounds how long a closing connection waits for the batches handed to it
// before, for a client that does not read them.
const closeGrace = time.Second

// batchBuffers are a batch's: its buffers for writev (headers and payloads), the frame
// headers, and, for a connection without writev (TLS), its copy. A connection takes them
// from batchPool for a batch and puts them back once it is written: each connection kept
// its own between batches, sized by its largest burst (a burst reaches every client at
// once), 16 KB and more a connection for good, 64 KB more on TLS.
type batchBuffers struct {
	bufs   net.Buffers
	header []byte
	flat   []byte
}

var batchPool = sync.Pool{New: func() any { return new(batchBuffers) }}

// maxKept bounds the buffers put back in batchPool: a burst may need more, which are let
// go. maxFlat bounds the copy through which a batch is written to a connection without
// writev (TLS), in bytes (see writeCopies).
const (
	maxKept = 1 << 10
	maxFlat = 64 << 10
)

// buffers returns the batch's buffers, taken from batchPool for its first frame. w.mu
// is held.
func (w *webSocket) buffers() *batchBuffers {
	if w.b == nil {
		w.b = batchPool.Get().(*batchBuffers)
	}
	return w.b
}

// A batch not written within the server's pingInterval + pingTimeout (the connection's
// writeTimeout) fails the connection. Were it engine.io's transport, a client that took
// that long over a batch would be closed for not answering a ping: engine.io sends its
// next ping at most a pingInterval after the last pong, that ping waits in engine.io's
// buffer until the batch is written, and the client has pingTimeout to answer it. A
// client that answers pings it has not read (or sends pongs unasked) escapes that
// timeout, and without a deadline kept its connection, and engine.io's buffer of
// everything sent to it, for ever.
//
// engine.io gives a transport neither its server nor its socket, only packets: the
// server's pingInterval and pingTimeout reach it in the handshake it writes to a
// connection that starts on WebSocket ("0{...}", see learnHandshake). A connection that
// started on HTTP long polling had its handshake written by that transport, and gets
// defaultWriteTimeout: engine.io's default pingInterval (25 s) + pingTimeout (20 s).
const defaultWriteTimeout = 45 * time.Second

func newWebSocket(ctx *types.HttpContext) *webSocket {
	w := &webSocket{Transport: transports.MakeTransport()}
	w.hold.Store(int64(defaultPongHold))
	w.writeTimeout.Store(int64(defaultWriteTimeout))
	w.linger = lingerMax
	w.Prototype(w)
	w.Construct(ctx)
	return w
}

// Construct is engine.io's, for the reading side: it starts the read loop and marks the
// transport writable.
func (w *webSocket) Construct(ctx *types.HttpContext) {
	w.Transport.Construct(ctx)
	w.conn = ctx.Websocket
	w.raw = w.conn.NetConn()
	switch w.raw.(type) {
	case *net.TCPConn, *net.UnixConn:
		w.writev = true
		w.rc = rawWriter(w.raw)
	}
	w.conn.On("error", func(errs ...any) {
		if err, ok := errs[0].(error); ok {
			w.OnError("websocket error", err)
		}
	})
	w.conn.Once("close", func(...any) { w.OnClose() })
	w.conn.SetPingHandler(w.onPing)
	w.conn.SetCloseHandler(w.onClose)
	// The message size limit is this transport's to enforce (see read): gorilla's
	// answer to a message over it, a Close frame, went out outside w.mu, with batches
	// after it and its own write deadline on the connection.
	if limit := readLimitOf(w.conn.Conn); limit > 0 {
		w.readLimit = limit
		w.conn.SetReadLimit(0)
	}
	go func() {
		// engine.io creates the transport before the socket that listens to it, and
		// socket.io attaches its listeners to that socket later still, in the same
		// HTTP handler: a packet read before then is dropped, and the client's
		// CONNECT (or its upgrade probe) is often the first thing it sends, at once.
		// The request's context ends when that handler returns.
		select {
		case <-ctx.Context().Done():
		case <-time.After(listenDelayMax):
		}
		w.read()
	}()
	w.SetWritable(true)
	w.SetPerMessageDeflate(nil) // engine.io sets the server's, if any, after this
}

// Name is engine.io's name for the transport, which clients ask for.
func (w *webSocket) Name() string { return transports.WEBSOCKET }

// HandlesUpgrades reports that a connection may upgrade to this transport.
func (w *webSocket) HandlesUpgrades() bool { return true }

// read hands every message received to engine.io, until the connection ends.
func (w *webSocket) read() {
	defer func() {
		w.readDone.Store(true)
		w.stopLinger()
	}()
	for {
		mt, r, err := w.conn.NextReader()
		if err != nil {
			// gorilla/websocket may have written a Close frame of its own (a protocol
			// error): nothing more goes out from here, as little as that window allows.
			// A client's Close was answered by onClose, which marked it.
			if _, clientClose := err.(*ws.CloseError); !clientClose {
				w.markClosed()
			}
			w.failed(err)
			// engine.io closes the transport only when it is not closed yet, and the
			// failure has just marked it closed: the socket would stay open until the
			// garbage collector finds it.
			closeNow(w.raw)
			return
		}
		var data types.BufferInterface
		switch mt {
		case ws.BinaryMessage:
			data = types.NewBytesBuffer(nil)
		case ws.TextMessage:
			data = types.NewStringBuffer(nil)
		default:
			continue // control frames are handled by gorilla/websocket
		}
		if w.readLimit > 0 {
			w.limited = goio.LimitedReader{R: r, N: w.readLimit + 1} // reused: one per message cost an allocation
			r = &w.limited
		}
		_, err = data.ReadFrom(r)
		w.limited.R = nil
		if err != nil {
			w.markClosed()
			w.failed(err)
			closeNow(w.raw)
			return
		}
		if w.readLimit > 0 && int64(data.Len()) > w.readLimit {
			// As gorilla/websocket would (1009, message too big), in turn with the
			// batches, and nothing after it. The limit applies to the message as read,
			// decompressed (as Node's ws counts maxPayload); gorilla counted the bytes
			// on the wire, and a compressed message could inflate without bound.
			if w.lockUntil(time.Now().Add(closeGrace)) {
				w.closeFrameLocked(ws.CloseMessageTooBig, time.Now().Add(closeGrace))
				w.mu.Unlock()
			}
			w.failed(ws.ErrReadLimit)
			closeNow(w.raw)
			return
		}
		if mt == ws.TextMessage && data.Len() == 1 && data.Bytes()[0] == '3' {
			// A heartbeat's pong (engine.io v4: the server pings). See maxPongHold.
			if w.held.CompareAndSwap(false, true) {
				time.AfterFunc(time.Duration(w.hold.Load()), w.deliverPong)
			}
			// else one is held already, and is handed to engine.io after this one
			// came: for engine.io, which stops the ping's timeout and schedules the
			// next ping, what one pong does then, so do two. A client answers one ping
			// per interval, and one that sends pongs unasked must not make a timer and
			// a buffer of each.
			continue
		}
		w.deliver.Lock()
		w.Transport.OnData(data)
		w.deliver.Unlock()
	}
}

// markClosed stops every write after the one under way, if any: the connection failed.
func (w *webSocket) markClosed() {
	if w.lockUntil(time.Now().Add(closeGrace)) {
		w.closed = true
		w.mu.Unlock()
	}
}

// readLimitOf returns the message size limit engine.io gave c (SetReadLimit, with its
// MaxHttpBufferSize), which gorilla/websocket keeps unexported and engine.io does not
// hand the transport; 0 when it cannot be read.
func readLimitOf(c *ws.Conn) int64 {
	if c == nil {
		return 0
	}
	f := reflect.ValueOf(c).Elem().FieldByName("readLimit")
	if !f.IsValid() || f.Kind() != reflect.Int64 {
		return 0
	}
	return f.Int()
}

// deliverPong hands a held pong to engine.io, once the read loop is not handing it
// anything else: engine.io's socket, and the listeners of its "packet" and "heartbeat"
// events, then never see two packets of the connection at the same time, as with
// engine.io's transport, which hands over everything from its read loop. Handing it over
// from the read loop instead is not possible: that loop waits in gorilla/websocket's
// reader for the next message, which a client sends only after engine.io has seen the
// pong (the next ping is scheduled then), and a read deadline to wake it would end the
// connection (gorilla/websocket fails every read after one has timed out).
func (w *webSocket) deliverPong() {
	w.deliver.Lock()
	defer w.deliver.Unlock()
	w.held.Store(false)
	w.Transport.OnData(types.NewStringBufferString("3"))
}

// A client's pong waits before engine.io sees it: a tenth of the server's pingTimeout, at
// most maxPongHold, or defaultPongHold when the connection did not start on this
// transport (its handshake, which carries pingTimeout, went by HTTP long polling).
//
// engine.io v2.5.0 writes a ping, and only then arms the ping's timeout
// (socket.schedulePing); a pong handled in between clears the previous timeout instead,
// the new one goes off a pingTimeout later, and the client is closed, "ping timeout",
// though it answered at once (when pingInterval exceeds pingTimeout, as by default: a
// later ping would clear it otherwise). A prompt client on a busy machine answers in
// that window now and then: 200 clients that answer at once, pinged every 40 ms with a
// 30 ms timeout for 20 s, two busy loops sharing the development machine's two cores,
// lost 2, 3 and 5 connections of about 95,000 pings on engine.io's own transport, and 0
// and 1 on this one, whose hold there is 3 ms. Held, a pong comes after the timeout is
// armed unless the goroutine arming it waited longer than the hold for a processor;
// with the defaults, 100 ms. The next ping comes as much later, since it is scheduled
// when the pong is handled (TestPongHold).
const (
	maxPongHold     = 100 * time.Millisecond
	defaultPongHold = 10 * time.Millisecond
)

// onPing answers a client's WebSocket ping (not engine.io's, which travels as a
// message). gorilla/websocket's own handler writes the pong with a one-second write
// deadline, which it leaves on the connection: a batch being written to a slow reader
// at that moment then failed, and the client was disconnected mid-frame. The pong is
// written here like a batch, in turn, with a batch's deadline (see
// defaultWriteTimeout), from a goroutine so that reading goes on meanwhile; pings that
// come before it is written get one answer, to the latest, as RFC 6455 (5.5.3) allows.
func (w *webSocket) onPing(data string) error {
	w.pongMu.Lock()
	w.pongData = append(w.pongData[:0], data...)
	pending := w.pongPending
	w.pongPending = true
	w.pongMu.Unlock()
	if !pending {
		go w.writePong()
	}
	return nil
}

func (w *webSocket) writePong() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return // nothing after the Close frame (RFC 6455, 5.5.1)
	}
	w.pongMu.Lock()
	w.control(0xA, w.pongData)
	w.pongPending = false
	w.pongMu.Unlock()
	w.until = time.Now().Add(time.Duration(w.writeTimeout.Load()))
	if err := w.flush(); err != nil {
		w.writeFailed(err)
	}
}

// writeFailed ends the connection after a write failed (w.mu held): nothing more may be
// written, not even a Close frame, as the write may have stopped within a frame (at its
// deadline, above all). The error is reported first, so that engine.io closes the
// socket for it ("transport error", or "transport close" if the connection was closed),
// not for the end of the connection, which the read loop reports next.
func (w *webSocket) writeFailed(err error) {
	w.closed = true
	w.failed(err)
	closeNow(w.raw)
}

// failed reports an error of the connection the way engine.io's transport does: a
// closed connection as "close", anything else as "error". It is told to engine.io
// between packets (w.deliver), as the read loop's packets and held pongs are: engine.io
// closes the socket then, and a held pong handled at the same time restarted the ping
// timer the close had just stopped. (The "close" of a connection that engine.io itself
// closes, in finish, comes from engine.io's connection, once it has let the transport go.)
func (w *webSocket) failed(err error) {
	w.deliver.Lock()
	defer w.deliver.Unlock()
	if ws.IsUnexpectedCloseError(err) || errors.Is(err, net.ErrClosed) {
		w.conn.Emit("close")
	} else {
		w.conn.Emit("error", err)
	}
}

// Send writes packets, in a goroutine so that the caller (socket.io's emit) never waits
// for a slow client. engine.io buffers what is sent meanwhile and hands it over as the
// next batch when this one signals "drain".
//
// On a quiet connection (see quietSend), a packet is written at once instead, on the
// caller's goroutine, as much of it as the kernel takes without waiting (see sendNow);
// the rest goes on in a goroutine, as above.
func (w *webSocket) Send(packets []*packet.Packet) {
	now := int64(time.Since(epoch))
	// The budget is taken last: a packet that could not be written at once anyway
	// (TLS, compression) does not spend it.
	if now-w.lastSend.Swap(now) >= quietSend.Load() && len(packets) == 1 && !w.busy.Load() &&
		w.rc != nil && !w.mayCompress(packets) && atOnce.take(now) && w.sendNow(packets) {
		return
	}
	w.SetWritable(false)
	w.inflight.Add(1)
	go w.send(packets)
}

// atOnce bounds the packets written at once, on their callers' goroutines, to
// atOnceMax in a row in the process: after that many, packets go out by goroutines, as
// under load, until no packet has asked for quietSend. Written at once, a broadcast's
// packets go out one after the other on the emitting goroutine: to 50 clients, that is
// what Node does, and cheaper than 50 goroutines; to 10,000, it would leave the other
// cores idle while one goroutine writes them all (256 took 5-13 ms in a test, one
// process holding the clients too, each write 20-50 µs).
var atOnce budget

const atOnceMax = 64

// budget counts the packets written at once since the process was last quiet.
type budget struct {
	last atomic.Int64 // when a packet last asked, in ns since epoch
	used atomic.Int64
}

// take reports whether a packet may be written at once at now (ns since epoch).
func (b *budget) take(now int64) bool {
	if now-b.last.Swap(now) >= quietSend.Load() {
		b.used.Store(0)
	}
	return b.used.Add(1) <= atOnceMax
}

// epoch is the origin of webSocket.lastSend, on the monotonic clock.
var epoch = time.Now()

// quietSend: a connection is quiet when a single packet is handed over at least this
// long after the previous batch was handed over or written, and that batch was not
// gathered while another was being written (webSocket.busy). Such a packet is written on
// the caller's goroutine (see sendNow).
//
// Under load, the goroutine of each batch lets the packets handed over meanwhile gather
// into the next, one writev(2) for many: written at once, each packet would cost a
// system call of its own. Time alone did not tell load apart: on a loaded machine a
// server waits milliseconds for a processor now and then, and a packet after such a
// wait found its connection quiet; 100-byte broadcasts to 50 clients per server went
// from 10.8-12.3k/s to 9.5-10.2k/s before busy. On a quiet connection the goroutine
// bought nothing and cost most of the send: each broadcast to 50 clients started 50
// goroutines and woke idle threads to run them. In nanoseconds; tests change it.
var quietSend = newDuration(time.Millisecond)

func newDuration(d time.Duration) *atomic.Int64 {
	v := new(atomic.Int64)
	v.Store(int64(d))
	return v
}

func (w *webSocket) send(packets []*packet.Packet) {
	w.busy.Store(len(packets) > 1)
	defer w.sent()
	w.mu.Lock()
	defer w.mu.Unlock()
	defer release(packets)
	if w.closed {
		return // nothing after the Close frame (RFC 6455, 5.5.1)
	}
	// One deadline for the batch, whatever its writes (a compressed message is one of
	// its own). Setting it costs no system call: Go's poller keeps it.
	w.until = time.Now().Add(time.Duration(w.writeTimeout.Load()))
	for _, p := range packets {
		if err := w.add(p); err != nil {
			w.discard()
			w.writeFailed(err)
			return
		}
	}
	if err := w.flush(); err != nil {
		w.writeFailed(err)
	}
}

// sent ends a batch written by a goroutine of its own: engine.io may hand over the next,
// and a close waiting for the batches may go on.
func (w *webSocket) sent() {
	w.lastSend.Store(int64(time.Since(epoch))) // busy until now (see quietSend)
	w.Emit("drain")
	w.SetWritable(true)
	w.Emit("ready")
	if w.inflight.Add(-1) == 0 {
		if by := w.closeBy.Load(); by != nil {
			w.finish(*by)
		}
	}
}

// release drops what the copies of Messages among packets hold of the shared bytes,
// once they are written, or never to be (see message.release).
func release(packets []*packet.Packet) {
	for _, p := range packets {
		if m, ok := p.Data.(*message); ok {
			m.release()
		}
	}
}

// sendNow writes packets on the caller's goroutine (socket.io's emit, under engine.io's
// flush lock), without waiting: it reports false, having written nothing, where the
// batch needs what only send does (a lock another write holds, a closed connection, an
// error building it; Send leaves connections without writev, and compression, to send).
// What the kernel does not take at once (a full socket buffer, an error) goes on in a
// goroutine that holds w.mu meanwhile, as a batch handed over, and that reports any
// error: an error reported here, within engine.io's flush, would close the socket under
// engine.io's own lock.
func (w *webSocket) sendNow(packets []*packet.Packet) bool {
	if !w.mu.TryLock() { // Send has checked w.rc: writev, and a way to write without waiting
		return false
	}
	locked := true // until a goroutine takes the lock over, or it is let go
	defer func() {
		if locked {
			w.mu.Unlock()
		}
	}()
	if w.closed {
		return false
	}
	for _, p := range packets {
		if w.add(p) != nil {
			w.discard()
			return false
		}
	}
	// The deadline is checked before the write is tried: one left by an earlier batch
	// would fail it.
	w.until = time.Now().Add(time.Duration(w.writeTimeout.Load()))
	w.raw.SetWriteDeadline(w.until)
	if w.b == nil || writeNow(w.rc, &w.b.bufs) {
		w.discard()
		locked = false
		w.mu.Unlock()
		h := heldBy(packets)
		release(packets)
		w.nowWhole.Add(1)
		if !h.add(w) {
			owed.add(w)
		}
		return true
	}
	w.nowPart.Add(1)
	w.SetWritable(false)
	w.inflight.Add(1)
	locked = false
	go w.sendRest(packets)
	return true
}

// owed holds the connections owed a "drain" for a batch written at once. engine.io runs
// a batch's send callbacks on its transport's "drain", and a callback may write to the
// socket again (the flow-control idiom), which takes engine.io's flush lock: emitted
// within Send, which engine.io calls under that lock, it deadlocked (a reviewer's test,
// TestSendCallbackMayWriteAgain). A goroutine emits them, as engine.io's own transports
// do, one for all that are owed at the time (a broadcast's, say), and ends when none is.
// A drain emitted late runs the oldest callbacks engine.io holds for the connection, in
// their order, after their batch was written.
var owed drains

type drains struct {
	mu      sync.Mutex
	queue   []*webSocket
	spare   []*webSocket
	running bool
	started int64 // goroutines started: for tests
}

func (d *drains) add(ws ...*webSocket) {
	if len(ws) == 0 {
		return
	}
	d.mu.Lock()
	d.queue = append(d.queue, ws...)
	start := !d.running
	d.running = true
	if start {
		d.started++
	}
	d.mu.Unlock()
	if start {
		go d.run()
	}
}

func (d *drains) run() {
	for {
		d.mu.Lock()
		q := d.queue
		if len(q) == 0 {
			d.running = false
			d.mu.Unlock()
			return
		}
		d.queue, d.spare = d.spare[:0], nil
		d.mu.Unlock()
		for _, w := range q {
			w.Emit("drain")
		}
		clear(q)
		d.mu.Lock()
		d.spare = q[:0]
		d.mu.Unlock()
	}
}

// sendRest writes what sendNow left of its batch, w.b, with w.mu held since.
func (w *webSocket) sendRest(packets []*packet.Packet) {
	defer w.sent()
	defer w.mu.Unlock()
	defer release(packets)
	if err := w.flush(); err != nil {
		w.writeFailed(err)
	}
}

// mayCompress reports whether a packet may be written compressed (see compress), which
// only send does: gorilla/websocket's writer waits for the client.
func (w *webSocket) mayCompress(packets []*packet.Packet) bool {
	if w.PerMessageDeflate() == nil {
		return false
	}
	for _, p := range packets {
		if p.Options != nil && p.Options.Compress {
			return true
		}
	}
	return false
}

// add adds the WebSocket messages of p to the batch: a Message's (each of its parts),
// shared; a pre-encoded frame, shared; or engine.io's encoding of the packet. A message
// to be compressed is written through gorilla/websocket's writer, after what is pending.
func (w *webSocket) add(p *packet.Packet) error {
	if m, ok := p.Data.(*message); ok {
		if err := w.part(p, m); err != nil {
			return err
		}
		for _, part := range m.more {
			if err := w.part(p, part); err != nil {
				return err
			}
		}
		return nil
	}
	if p.Options != nil && p.Options.WsPreEncodedFrame != nil {
		f := p.Options.WsPreEncodedFrame
		return w.message(p, isText(f), f.Bytes())
	}
	data, err := w.Parser().EncodePacket(p, w.SupportsBinary())
	if err != nil {
		return err
	}
	if p.Type == packet.OPEN {
		w.learnHandshake(data.Bytes())
	}
	return w.message(p, isText(data), data.Bytes())
}

// learnHandshake sets the pong hold and the write timeout from the pingTimeout and
// pingInterval of the handshake engine.io sends a connection that starts on WebSocket
// ("0{...}"). One that started on HTTP long polling keeps defaultPongHold and
// defaultWriteTimeout.
func (w *webSocket) learnHandshake(open []byte) {
	var hs struct {
		PingInterval int64 `json:"pingInterval"` // milliseconds
		PingTimeout  int64 `json:"pingTimeout"`
	}
	if len(open) < 2 || json.Unmarshal(open[1:], &hs) != nil || hs.PingTimeout <= 0 {
		return
	}
	timeout := time.Duration(hs.PingTimeout) * time.Millisecond
	w.hold.Store(int64(min(maxPongHold, timeout/10)))
	if hs.PingInterval > 0 {
		w.writeTimeout.Store(int64(time.Duration(hs.PingInterval)*time.Millisecond + timeout))
	}
}

// part adds one part of a Message carried by p. A binary part is given as engine.io
// encodes it, from the bytes the part holds, to a client that takes no binary
// (engine.io's b64 mode: base64) and to one of protocol 3 (engine.io v3: a type byte
// before the data, which the client strips off).
func (w *webSocket) part(p *packet.Packet, part *message) error {
	if part.text || (w.SupportsBinary() && w.Protocol() >= 4) {
		return w.message(p, part.text, part.payload)
	}
	data, err := w.Parser().EncodePacket(&packet.Packet{Type: packet.MESSAGE, Data: types.NewBytesBuffer(part.original), Options: p.Options}, w.SupportsBinary())
	if err != nil {
		return err
	}
	return w.message(p, isText(data), data.Bytes())
}

// message adds one WebSocket message of p to the batch, or writes it compressed.
func (w *webSocket) message(p *packet.Packet, text bool, payload []byte) error {
	if !w.compress(p, len(payload)) {
		w.frame(text, payload)
		return nil
	}
	// Compression is gorilla/websocket's: write what is pending, then this message
	// through its writer.
	if err := w.flush(); err != nil {
		return err
	}
	return w.writeCompressed(text, payload)
}

// compress reports whether p is to be written compressed, as engine.io's transport
// decides: the server offers permessage-deflate, p asks for it, and it is at least the
// threshold's size. gorilla/websocket then compresses it if the client accepted.
func (w *webSocket) compress(p *packet.Packet, size int) bool {
	pmd := w.PerMessageDeflate()
	return pmd != nil && p.Options != nil && p.Options.Compress && size >= pmd.Threshold
}

// isText reports whether engine.io means data as a text message: its strings are
// StringBuffers.
func isText(data types.BufferInterface) bool {
	_, ok := data.(*types.StringBuffer)
	return ok
}

// frame adds one unfragmented, unmasked WebSocket data frame to the batch. payload is
// referenced, not copied.
func (w *webSocket) frame(text bool, payload []byte) {
	op := byte(0x2) // binary
	if text {
		op = 0x1
	}
	b := w.buffers()
	start := len(b.header)
	b.header = appendHeader(b.header, op, len(payload))
	b.bufs = append(b.bufs, b.header[start:len(b.header):len(b.header)])
	if len(payload) > 0 {
		b.bufs = append(b.bufs, payload)
	}
}

// onClose answers the client's Close frame with ours, in turn with the batches, and
// marks the connection closed, so that nothing follows it (RFC 6455, 5.5.1).
// gorilla/websocket's own handler wrote its answer outside the transport's lock, and
// batches still went out after it (TestNothingAfterCloseFrame). The read loop then
// reports the end, and closes the connection.
func (w *webSocket) onClose(code int, _ string) error {
	by := time.Now().Add(closeGrace)
	if !w.lockUntil(by) {
		return nil // a batch is stuck: the connection is closed without an answer
	}
	defer w.mu.Unlock()
	w.closeFrameLocked(code, by)
	return nil
}

// closeFrameLocked writes a Close frame with code, by the time by, unless one was (or a
// write failed), and reports whether it went out. w.mu is held.
func (w *webSocket) closeFrameLocked(code int, by time.Time) bool {
	if w.closed {
		return false
	}
	w.closed = true
	w.control(0x8, ws.FormatCloseMessage(code, ""))
	return w.flushUntil(by) == nil
}

// control adds a control frame (a pong, a close) to the batch. Its payload, at most 125
// bytes, is copied after its header: the pong's buffer is written again by the next ping.
func (w *webSocket) control(op byte, payload []byte) {
	b := w.buffers()
	start := len(b.header)
	b.header = append(appendHeader(b.header, op, len(payload)), payload...)
	b.bufs = append(b.bufs, b.header[start:len(b.header):len(b.header)])
}

// appendHeader appends the header of a final, unmasked frame of opcode op carrying n
// bytes (RFC 6455, 5.2).
func appendHeader(b []byte, op byte, n int) []byte {
	b = append(b, 0x80|op)
	switch {
	case n < 126:
		return append(b, byte(n))
	case n <= 0xffff:
		return binary.BigEndian.AppendUint16(append(b, 126), uint16(n))
	default:
		return binary.BigEndian.AppendUint64(append(b, 127), uint64(n))
	}
}

// flush writes the batch with one writev(2), or writes of copies (see writeCopies), by the batch's
// deadline, w.until. The frames' headers live in w.b.header; when it grows while the
// batch is built, the headers already in w.b.bufs keep pointing into its old array,
// which stays valid.
func (w *webSocket) flush() error {
	return w.flushUntil(w.until)
}

// flushUntil is flush with the write deadline given. Every write sets its own: one left
// on the connection by an earlier write (gorilla/websocket's, for a control frame it
// writes itself) must not cut this one short.
func (w *webSocket) flushUntil(deadline time.Time) error {
	b := w.b
	if b == nil || len(b.bufs) == 0 {
		return nil
	}
	w.raw.SetWriteDeadline(deadline)
	var err error
	if w.writev {
		bufs := b.bufs // WriteTo consumes the slice it is called on
		_, err = bufs.WriteTo(w.raw)
	} else {
		err = w.writeCopies(b)
	}
	w.discard()
	return err
}

// writeCopies writes the batch through a copy of up to maxFlat bytes at a time: a Write
// per buffer would be a TLS record each, and one copy of a whole batch, what engine.io
// buffered for a slow client meanwhile, was as large as the batch (a tester's ten slow
// TLS clients took the heap to 270 MB, 94 MB without TLS).
func (w *webSocket) writeCopies(b *batchBuffers) error {
	b.flat = b.flat[:0]
	for _, p := range b.bufs {
		for len(p) > 0 {
			n := min(len(p), maxFlat-len(b.flat))
			b.flat = append(b.flat, p[:n]...)
			p = p[n:]
			if len(b.flat) == maxFlat {
				if _, err := w.raw.Write(b.flat); err != nil {
					return err
				}
				b.flat = b.flat[:0]
			}
		}
	}
	if len(b.flat) == 0 {
		return nil
	}
	_, err := w.raw.Write(b.flat)
	return err
}

// discard empties the batch, dropping its references to the payloads, and puts its
// buffers back in batchPool, unless a burst grew them beyond maxKept or maxFlat. It
// reports whether they went back.
func (w *webSocket) discard() (pooled bool) {
	b := w.b
	if b == nil {
		return false
	}
	w.b = nil
	// Entries past the length were cleared by the batch that used them.
	clear(b.bufs)
	b.bufs, b.header, b.flat = b.bufs[:0], b.header[:0], b.flat[:0]
	if cap(b.bufs) > maxKept || cap(b.flat) > maxFlat {
		return false
	}
	batchPool.Put(b)
	return true
}

// writeCompressed writes a message through gorilla/websocket's writer, which compresses
// it when the connection negotiated permessage-deflate.
func (w *webSocket) writeCompressed(text bool, payload []byte) error {
	mt := ws.BinaryMessage
	if text {
		mt = ws.TextMessage
	}
	w.conn.EnableWriteCompression(true)
	// gorilla/websocket sets this deadline on the connection for the write (it only
	// records it here).
	w.conn.SetWriteDeadline(w.until)
	return w.conn.WriteMessage(mt, payload)
}

// DoClose closes the connection, once the batches handed over before are written, with
// a WebSocket Close frame, after which the client's half is waited for (see finish).
// The Close frame is written closeGrace after DoClose is called at the latest, or the
// connection closed without it: waiting for the batches, for the turn to write the
// Close frame, and writing it share that one deadline. engine.io closes a socket's transport as soon as its own buffer is empty,
// and the last batch, just handed over, is still being written: closing at once lost it,
// and with it socket.io's DISCONNECT packet, so that a client the server disconnected
// saw a transport error and reconnected (engine.io's own transport loses them too).
func (w *webSocket) DoClose(fn types.Callable) {
	by := time.Now().Add(closeGrace)
	if fn != nil {
		fn()
	}
	w.closeBy.Store(&by)
	if w.inflight.Load() == 0 {
		go w.finish(by) // its write may wait for the client: not on the caller's goroutine
		return
	}
	// The last batch's end calls finish (see send), or this, at the deadline, whichever
	// comes first.
	time.AfterFunc(time.Until(by), func() { w.finish(by) })
}

// finish writes a Close frame (1000, normal closure) after what is written, and closes
// the connection, by the time by. A batch stuck on a client that does not read is ended
// by closing the connection instead.
//
// After a Close frame, the connection is closed once the client has answered (its Close
// frame, or the end of its stream, which the read loop sees and closes on), or after
// lingerMax (RFC 6455, 7.1.1). Closing at once, with anything the client had sent still
// unread in the kernel (a message that arrived while the read loop waited on a handler,
// say), made the kernel answer with a reset and throw away what it had not sent yet: the
// client lost the last packets, socket.io's DISCONNECT among them, saw a transport error
// and reconnected (TestDisconnectWithUnreadDataKeepsLastPackets). Nor does this side
// close its half first: the JavaScript client (Node's ws) reported the end of the stream
// before the compressed messages it was still inflating, and socket.io's client dropped
// them, with the DISCONNECT.
func (w *webSocket) finish(by time.Time) {
	w.closeOnce.Do(func() {
		clean := false // the Close frame went out
		if w.lockUntil(by) {
			clean = w.closeFrameLocked(ws.CloseNormalClosure, by)
			w.mu.Unlock()
		}
		if !clean {
			closeNow(w.raw)
			w.conn.Close()
			return
		}
		// engine.io let the transport go: it is closed for engine.io now, whatever the
		// client does with its half.
		w.conn.Emit("close")
		w.lingering.Store(time.AfterFunc(w.linger, func() { closeNow(w.raw) }))
		if w.readDone.Load() {
			// The read loop ended (and closed) before the timer was set: it may not
			// have seen it to stop it.
			w.stopLinger()
		}
	})
}

// stopLinger stops the timer that ends a half-closed connection, once the read loop has
// closed it: the timer held the connection and its buffers for lingerMax.
func (w *webSocket) stopLinger() {
	if t := w.lingering.Load(); t != nil {
		t.Stop()
	}
}

// lingerMax bounds how long a connection whose Close frame went out waits for the
// client's answer (webSocket.linger, which tests shorten).
const lingerMax = 5 * time.Second

// closeNow closes c at once: a TLS connection without its close_notify alert, which
// tls.Conn.Close writes with a deadline of its own, 5 s, and which a client that reads
// nothing never takes (a stalled client's connection stayed open that long after its
// socket closed). Used where the connection failed, or writes do not go through.
func closeNow(c net.Conn) {
	if tc, ok := c.(*tls.Conn); ok {
		tc.NetConn().Close()
		return
	}
	c.Close()
}

// lockUntil locks w.mu if it can by the time by, and reports whether it did.
func (w *webSocket) lockUntil(by time.Time) bool {
	if w.mu.TryLock() {
		return true
	}
	d := time.Until(by)
	if d <= 0 {
		return false
	}
	// A helper takes the lock for the waiter; whichever of the two moves state first
	// decides: the helper (1, the lock is the waiter's) or the waiter giving up (2, the
	// helper lets it go).
	var state atomic.Int32
	handoff := make(chan struct{}, 1)
	go func() {
		w.mu.Lock()
		if state.CompareAndSwap(0, 1) {
			handoff <- struct{}{}
		} else {
			w.mu.Unlock()
		}
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-handoff:
		return true
	case <-t.C:
		if state.CompareAndSwap(0, 2) {
			return false
		}
		<-handoff // the helper got there first
		return true
	}
}
