package pgadapter

import (
	"fmt"
	"reflect"
	"strconv"
	"sync/atomic"

	"github.com/zishang520/engine.io/v2/types"
	"github.com/zishang520/socket.io-go-parser/v2/parser"
	"github.com/zishang520/socket.io/v2/socket"

	"github.com/socketio-pg/pgadapter/fastws"
	"github.com/socketio-pg/pgadapter/internal/wire"
)

// Local delivery. socket.io v2.5.0's in-memory Broadcast and BroadcastWithAck attach a
// pre-encoded WebSocket frame to each packet, and engine.io v2.5.0's WebSocket transport
// returns after writing the first packet that carries one: when several broadcasts are
// buffered for a client (the norm under load, since a client's packets are flushed
// together while its previous write is in progress), all but the first are silently
// lost. These versions encode once and write without the pre-encoded frame, which keeps
// every packet. When the fastws transport is installed, its clients are given fastws
// Messages instead: each packet (a JSON event, or a binary event's header and
// attachments) encoded as a WebSocket message once, and shared by all of them.

// localBroadcast delivers packet to the matching sockets of this server. raw, when set,
// is the JSON text of packet's arguments, which are then written as they are; packet.Data
// may be nil, and is decoded from raw only if a socket has outgoing listeners or the
// server has its own encoder. norm, when set, are packet's arguments as the other
// servers received them, which its clients are given (see encode).
func (a *Adapter) localBroadcast(packet *parser.Packet, opts *socket.BroadcastOptions, raw string, norm []any) {
	var hold func(socket.SocketId) bool
	if a.rec != nil {
		if keeps(packet, opts) {
			a.keptBroadcast(packet, opts, raw, norm)
			return
		}
		hold = a.rec.restoringSocket // a volatile broadcast
	}
	packetOpts := writeOptions(opts)
	packet.Nsp = a.name
	w := writes{a: a, packet: packet, raw: raw, norm: norm}
	defer w.done()
	a.apply(opts, hold, func(s *socket.Socket) {
		parts := w.to(s)
		a.notifyOutgoing(s, packet, raw)
		s.Client().WriteToEngine(parts, packetOpts)
	})
}

// keptBroadcast is localBroadcast for a broadcast kept for connection state recovery
// (recovery.go). It takes its offset and is written to the sockets under the log's fan
// lock, so that every socket gets the kept broadcasts in the order of their offsets;
// one for a socket being restored is held for it until it connects (see hold). The
// outgoing-packet listeners are given it once the lock is released: one may emit.
func (a *Adapter) keptBroadcast(packet *parser.Packet, opts *socket.BroadcastOptions, raw string, norm []any) {
	l := a.rec
	w := writes{a: a}
	defer w.done()
	var listening []*socket.Socket
	data, kept, keep := a.toKeep(packet, raw, norm)
	func() {
		l.fan.Lock()
		defer l.fan.Unlock()
		if keep {
			a.keep(&packet, opts, &raw, &norm, data, kept)
		}
		packetOpts := writeOptions(opts)
		packet.Nsp = a.name
		w.packet, w.raw, w.norm = packet, raw, norm
		// Sessions are restored under the lock: with none being restored now, none is
		// until this broadcast is written, and nothing is held.
		var hold func(socket.SocketId) bool
		var h *heldPacket
		var unjoined []*restoringSession
		if l.nRestoring.Load() > 0 {
			h = &heldPacket{packet: *packet, raw: raw, norm: norm, opts: packetOpts}
			unjoined = l.unjoined()
			hold = func(id socket.SocketId) bool { return l.hold(id, h) }
		}
		a.apply(opts, hold, func(s *socket.Socket) {
			if len(s.ListenersAnyOutgoing()) > 0 {
				listening = append(listening, s)
			}
			s.Client().WriteToEngine(w.to(s), packetOpts)
		})
		if h != nil {
			l.holdUnvisited(h, opts, unjoined)
		}
	}()
	for _, s := range listening {
		a.notifyOutgoing(s, packet, raw)
	}
}

// restored writes to s, a restored socket that has connected, the kept broadcasts held
// for it since its session was restored: the ones it missed, then those that came
// meanwhile, after its CONNECT packet and before any broadcast that comes after them.
// It returns the session, nil if it was not being restored.
func (a *Adapter) restored(s *socket.Socket) (session *socket.SessionToPersist) {
	l := a.rec
	var held []heldPacket
	var ws []writes
	defer func() {
		for i := range ws {
			ws[i].done()
		}
	}()
	func() {
		l.fan.Lock()
		defer l.fan.Unlock()
		session, held = l.connected(s.Id())
		ws = make([]writes, len(held))
		for i := range held {
			h := &held[i]
			h.packet.Nsp = a.name
			if h.opts == nil {
				h.opts = writeOptions(nil)
			}
			ws[i] = writes{a: a, packet: &h.packet, raw: h.raw, norm: h.norm}
			s.Client().WriteToEngine(ws[i].to(s), h.opts)
		}
	}()
	if len(s.ListenersAnyOutgoing()) > 0 {
		for i := range held {
			a.notifyOutgoing(s, &held[i].packet, held[i].raw)
		}
	}
	return session
}

// toKeep returns what keep keeps of a broadcast: its arguments (data) and, unless raw is
// set, their values as the wire carries them (kept); keep is false when they cannot be
// kept (reported). It runs before the log's fan lock is taken: a value's MarshalJSON
// and a reader's reads are the application's code.
func (a *Adapter) toKeep(packet *parser.Packet, raw string, norm []any) (data, kept []any, keep bool) {
	data, _ = packet.Data.([]any)
	kept = norm
	if raw == "" && kept == nil && data != nil {
		// A local-only emit: the application's values, which it may change later, and
		// readers, which the first encoding drains. Kept as the wire's values, and its
		// readers, read, are what its clients get, as a published broadcast's are.
		var err error
		if kept, _, err = wire.NormalizeArgs(data); err != nil {
			a.b.report(fmt.Errorf("pgadapter: namespace %q: broadcast not kept for connection state recovery: %w", a.name, err))
			return nil, nil, false
		}
		if wire.HasReader(data) {
			wire.CloseReaders(data)
			data = kept
		}
	}
	return data, kept, true
}

// keep keeps a broadcast for connection state recovery (recovery.go), and gives its
// arguments the offset as the last, as socket.io's in-memory adapter does: raw and norm
// are replaced, and *packet by a copy. data and kept are from toKeep.
func (a *Adapter) keep(packet **parser.Packet, opts *socket.BroadcastOptions, raw *string, norm *[]any, data, kept []any) {
	offset, withRaw := a.rec.record(opts, *raw, kept)
	*raw, *norm = withRaw, withOffset(*norm, offset)
	if data != nil {
		p := **packet
		p.Data = withOffset(data, offset)
		*packet = &p
	}
}

// localBroadcastWithAck delivers packet to the matching sockets of this server, registers
// ack for each, and reports how many there were. raw and norm are as for localBroadcast.
func (a *Adapter) localBroadcastWithAck(packet *parser.Packet, opts *socket.BroadcastOptions, raw string, norm []any, clientCount func(uint64), ack socket.Ack) {
	packetOpts := writeOptions(opts)
	packet.Nsp = a.name
	// One id for every socket: the namespace's counter is shared, so it is unique.
	id := a.Nsp().Ids()
	packet.Id = &id
	w := writes{a: a, packet: packet, raw: raw, norm: norm}
	defer w.done()
	var hold func(socket.SocketId) bool
	if a.rec != nil {
		hold = a.rec.restoringSocket // it has not connected: its answer is not awaited
	}
	var n uint64
	a.apply(opts, hold, func(s *socket.Socket) {
		n++
		// Called once per socket at most. socket.io v2.5.0 handles each packet of a
		// client on a goroutine of its own, and its onack loads the callback, calls it,
		// then deletes it: a client that sent its ACK twice was counted twice (Node's
		// single thread counts it once), and a broadcast whose other client never
		// answered completed without an error, with two answers of one client.
		var once atomic.Bool
		s.Acks().Store(id, func(args []any, err error) {
			if once.CompareAndSwap(false, true) {
				ack(args, err)
			}
		})
		parts := w.to(s)
		a.notifyOutgoing(s, packet, raw)
		s.Client().WriteToEngine(parts, packetOpts)
	})
	clientCount(n)
}

// notifyOutgoing gives packet to s's outgoing-packet listeners (OnAnyOutgoing), if it
// has any: only then are its arguments decoded from raw. (socket.io's
// NotifyOutgoingListeners returns a function whether or not there are listeners.)
func (a *Adapter) notifyOutgoing(s *socket.Socket, packet *parser.Packet, raw string) {
	if len(s.ListenersAnyOutgoing()) == 0 {
		return
	}
	a.fillArgs(packet, raw)
	s.NotifyOutgoingListeners()(packet)
}

// fillArgs decodes packet's arguments from raw when they are not there yet.
func (a *Adapter) fillArgs(packet *parser.Packet, raw string) {
	if packet.Data != nil || raw == "" {
		return
	}
	p := wire.Packet{Raw: raw}
	args, err := p.Args()
	if err != nil { // raw was checked when it was decoded or written
		a.b.report(&MessageError{Channel: a.channel, Err: err})
		args = []any{}
	}
	packet.Data = args
}

// defaultEncoder is the type of socket.io's own packet encoder.
var defaultEncoder = reflect.TypeOf(parser.NewEncoder())

// encode encodes packet for this server's clients. With the JSON text of its arguments
// (raw: a broadcast without binary data, as it came off the wire or as it was written
// for it; written from norm here for one decoded in full, an attachment) and socket.io's
// default encoder, it writes socket.io's string encoding around that text, on the path
// every broadcast of the cluster takes: no tree is built and no reflection runs. The
// text is what socket.io's encoder writes, except that <, > and & are not escaped,
// which reads the same. Binary data, other encoders, and local-only emits (their values
// were not normalized, and may be of any type) take the server's encoder.
func (a *Adapter) encode(packet *parser.Packet, raw string, norm []any) []types.BufferInterface {
	enc := a.Nsp().Server().Encoder()
	asText := packet.Type == parser.EVENT && reflect.TypeOf(enc) == defaultEncoder
	if asText && raw == "" && norm != nil {
		raw = argsText(norm) // a message decoded in full; "" for binary data
	}
	if !asText || raw == "" {
		a.fillArgs(packet, raw)
		// The clients of this server get what those of the others do: the arguments
		// normalized for the wire (a struct as its JSON object), which a server's own
		// encoder (MessagePack, say) would otherwise write in its own way. socket.io's
		// encoder puts a copy of them in the packet, with its placeholders where the
		// binary data was: the outgoing-packet listeners, which get the packet next,
		// are given the application's arguments back.
		data := packet.Data
		if norm != nil {
			packet.Data = norm
		}
		encoded := enc.Encode(packet)
		packet.Data = data
		return encoded
	}
	return []types.BufferInterface{types.NewStringBuffer(encodeEvent(packet, raw))}
}

// encodeEvent writes an event packet as socket.io's string encoding: type, namespace
// unless it is the main one, id, and the JSON text of the data.
func encodeEvent(packet *parser.Packet, raw string) []byte {
	b := make([]byte, 0, 24+len(packet.Nsp)+len(raw))
	b = append(b, byte(packet.Type))
	if packet.Nsp != "" && packet.Nsp != "/" {
		b = append(append(b, packet.Nsp...), ',')
	}
	if packet.Id != nil {
		b = strconv.AppendUint(b, *packet.Id, 10)
	}
	return append(b, raw...)
}

// writes is what one broadcast writes to each socket: the encoded packet, or, for a
// socket on the fastws transport, the same packet as fastws Messages, made once, on the
// first such socket: one engine.io packet, header and attachments together, so that
// each client's share of a binary broadcast is one write. socket.io copies what it is
// given for each client; fastws writes a Message's shared bytes instead. Clients on
// HTTP long polling, and engine.io's own transport, are given the packet's parts as
// shareable buffers, also made once.
type writes struct {
	// The packet to encode, with raw and norm (see encode), once a socket is to get it:
	// on most servers, a broadcast to a room matches none of their sockets (a 20 KB
	// broadcast was copied once more on each of them, for nothing).
	a         *Adapter
	packet    *parser.Packet
	raw       string
	norm      []any
	encodedOK bool
	// encoded is the packet; messages and parts are what fastws's clients and the
	// others are given, each made on the first socket that needs it.
	encoded, messages, parts []types.BufferInterface
	// release lets the connections that wrote messages at once have their drains
	// emitted, by one goroutine for the broadcast (see fastws.Hold).
	release func()
}

// done ends the broadcast's writes (see release). Deferred: an outgoing-packet listener
// that panics must not leave engine.io's callbacks of those connections waiting.
func (w *writes) done() {
	if w.release != nil {
		w.release()
	}
}

// to returns what to write to s. The first call encodes the packet, before any
// outgoing-packet listener is given it: what a listener does to the packet's arguments
// is not written.
func (w *writes) to(s *socket.Socket) []types.BufferInterface {
	if !w.encodedOK {
		w.encoded, w.encodedOK = w.a.encode(w.packet, w.raw, w.norm), true
	}
	if !fastws.Handles(s.Conn().Transport()) {
		if w.parts == nil {
			w.parts = make([]types.BufferInterface, len(w.encoded))
			for i, e := range w.encoded {
				w.parts[i] = share(e)
			}
		}
		return w.parts
	}
	if w.messages == nil {
		w.messages = fastws.Messages(w.encoded)
		w.release = fastws.Hold(w.messages)
	}
	return w.messages
}

// shareable is an encoded part of a packet whose copies share its bytes. socket.io
// copies what it writes for each client (Clone), engine.io's encoder then copies that
// again, and the first copy was a new buffer, cleared, for every client: 1 MB per 20 KB
// broadcast to 50 clients. A shareable's copy is a buffer of the type engine.io tells
// text from binary by, reading the same bytes from its own position: engine.io only
// reads what it is given, and the bytes are never written once encoded. Its length is
// its capacity, so that nothing can append into them either.
type shareable struct {
	types.BufferInterface // the part itself, for anything that reads it directly
	bytes                 []byte
	text                  bool
}

func share(part types.BufferInterface) types.BufferInterface {
	b := part.Bytes()
	_, text := part.(*types.StringBuffer)
	return &shareable{BufferInterface: part, bytes: b[:len(b):len(b)], text: text}
}

func (s *shareable) Clone() types.BufferInterface {
	if s.text {
		return types.NewStringBuffer(s.bytes)
	}
	return types.NewBytesBuffer(s.bytes)
}

func writeOptions(opts *socket.BroadcastOptions) *socket.WriteOptions {
	w := &socket.WriteOptions{}
	w.PreEncoded = true
	if opts != nil && opts.Flags != nil {
		w.Volatile = opts.Flags.Volatile
		w.Compress = opts.Flags.Compress
	}
	return w
}

// apply calls fn for each local socket selected by opts: the sockets of opts.Rooms (all
// when empty), each once, minus those in opts.Except, and minus those for which hold,
// when set, returns true (sockets being restored: see recoveryLog.hold), which it is
// called for whether or not they are in the namespace yet.
func (a *Adapter) apply(opts *socket.BroadcastOptions, hold func(socket.SocketId) bool, fn func(*socket.Socket)) {
	var rooms, except *types.Set[socket.Room]
	if opts != nil {
		rooms, except = opts.Rooms, opts.Except
	}
	var excluded map[socket.SocketId]struct{} // nil, read as empty, unless there are exceptions
	if except != nil && except.Len() > 0 {
		excluded = map[socket.SocketId]struct{}{}
		for _, room := range except.Keys() {
			if ids, ok := a.Rooms().Load(room); ok {
				for _, id := range ids.Keys() {
					excluded[id] = struct{}{}
				}
			}
		}
	}
	sockets := a.Nsp().Sockets()
	visit := func(id socket.SocketId) {
		if _, skip := excluded[id]; skip {
			return
		}
		if hold != nil && hold(id) {
			return
		}
		if s, ok := sockets.Load(id); ok {
			fn(s)
		}
	}
	if rooms != nil && rooms.Len() > 0 {
		seen := map[socket.SocketId]struct{}{}
		for _, room := range rooms.Keys() {
			ids, ok := a.Rooms().Load(room)
			if !ok {
				continue
			}
			for _, id := range ids.Keys() {
				if _, dup := seen[id]; !dup {
					seen[id] = struct{}{}
					visit(id)
				}
			}
		}
		return
	}
	a.Sids().Range(func(id socket.SocketId, _ *types.Set[socket.Room]) bool {
		visit(id)
		return true
	})
}
