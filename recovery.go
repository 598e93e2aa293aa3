package pgadapter

import (
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zishang520/engine.io/v2/types"
	"github.com/zishang520/socket.io-go-parser/v2/parser"
	"github.com/zishang520/socket.io/v2/socket"
)

// Connection state recovery (socket.io's ConnectionStateRecovery option), on the server
// a client was connected to: a client that reconnects to it within the option's
// MaxDisconnectionDuration gets its socket back (id, rooms, data) and the broadcasts it
// missed, as socket.io's own in-memory adapter gives them. Sessions and the broadcasts
// kept for them stay in the memory of the server where the socket was; a client that
// reconnects to another server gets a new socket, as with Node's postgres adapter, which
// restores none. Broadcasts from other servers are kept as this server delivered them, so
// a restored socket misses none of the cluster's; and it gets each once, in the order of
// their offsets (see recoveryLog.fan), where socket.io's adapter may lose or repeat one
// around a restore.

// defaultMaxDisconnection is socket.io's default MaxDisconnectionDuration, which it sets
// only on a server whose options name no adapter.
const defaultMaxDisconnection = 2 * time.Minute

// recoveryLogBytes bounds the broadcasts a namespace keeps for sessions to recover, as
// an estimate of their size. Past it the oldest are dropped before their time: a client
// whose last broadcast was dropped gets a new socket (not recovered), as one that came
// back too late does. socket.io's in-memory adapter keeps everything for the whole
// duration, which a saturated server would grow without bound.
const recoveryLogBytes = 64 << 20

// recoveryLog keeps one namespace's sessions of disconnected sockets and the broadcasts
// delivered since, numbered by their offsets.
type recoveryLog struct {
	maxAge time.Duration
	bound  int // recoveryLogBytes, smaller in tests

	// prefix begins every offset of this log: clients take the last string argument of
	// any event for an offset (a volatile one's too), which a bare counter could match.
	prefix string

	// fan is held while a kept broadcast takes its offset and is written to the
	// namespace's sockets, while a session is restored, and while a restored socket is
	// given what was held for it (see hold): each socket then gets the kept broadcasts
	// in the order of their offsets, and a restored one each broadcast after its
	// client's offset once, either held until it connects (the missed ones first) or as
	// it comes. Broadcasts emitted at once on several goroutines took their
	// offsets in one order and could reach a client in another, and a client that
	// disconnected between two such was given one again, or missed one.
	fan sync.Mutex

	mu       sync.Mutex
	sessions map[socket.PrivateSessionId]*socket.SessionWithTimestamp
	// restoring holds, by socket id, the sessions given to sockets that have not
	// connected yet: back in sessions if the socket leaves first (a middleware refused
	// it, its connection closed), forgotten once it connects, or swept after
	// MaxDisconnectionDuration (a socket that connects after that, out of middlewares
	// that took so long, is given nothing of what was held for it).
	restoring map[socket.SocketId]*restoringSession
	// nRestoring is len(restoring), read without the lock on every socket a kept
	// broadcast visits.
	nRestoring atomic.Int32
	swept      time.Time
	packets    keptQueue // oldest first
	first      uint64    // the offset number of packets.at(0)
	bytes      int
	dropEarly  int64 // packets dropped for the bound before their time (tests)
}

// restoringSession is a session given to a socket that has not connected yet, with the
// kept broadcasts held for it meanwhile (see hold).
type restoringSession struct {
	s    *socket.SessionWithTimestamp
	at   time.Time    // when restored
	held []heldPacket // its missed broadcasts first
	last *heldPacket  // the last broadcast visited for it (see holdUnvisited)
	// joined is set once the socket is in every room of its session (see joined): from
	// then on the broadcasts for it are those that visit it.
	joined bool
}

// heldPacket is a kept broadcast for a socket being restored, as localBroadcast would
// have written it (opts nil: the default).
type heldPacket struct {
	packet parser.Packet
	raw    string
	norm   []any
	opts   *socket.WriteOptions
}

// keptPacket is a broadcast kept for recovery: its arguments with their offset last, as
// text (raw) or values (data), and the rooms it was for.
type keptPacket struct {
	at     int64 // UnixNano
	raw    string
	data   []any
	rooms  []socket.Room
	except []socket.Room
	size   int
}

// newRecoveryLog returns the log for a namespace of a server with connection state
// recovery, or nil.
func newRecoveryLog(nsp socket.Namespace) *recoveryLog {
	srv := nsp.Server()
	if srv == nil || srv.Opts() == nil {
		return nil
	}
	csr := srv.Opts().GetRawConnectionStateRecovery()
	if csr == nil {
		return nil
	}
	maxAge := defaultMaxDisconnection
	if csr.GetRawMaxDisconnectionDuration() != nil {
		maxAge = time.Duration(csr.MaxDisconnectionDuration()) * time.Millisecond
	}
	return newLog(maxAge, recoveryLogBytes)
}

// newLog returns an empty log.
func newLog(maxAge time.Duration, bound int) *recoveryLog {
	return &recoveryLog{
		maxAge:    maxAge,
		bound:     bound,
		prefix:    randomID()[:8] + "-",
		sessions:  map[socket.PrivateSessionId]*socket.SessionWithTimestamp{},
		restoring: map[socket.SocketId]*restoringSession{},
	}
}

// keeps reports whether a broadcast of packet with opts is kept, and given an offset:
// events without acknowledgements that are not volatile, as socket.io keeps them (an
// acknowledgement's callback cannot be given to a restored socket).
func keeps(packet *parser.Packet, opts *socket.BroadcastOptions) bool {
	return packet.Type == parser.EVENT && packet.Id == nil && (opts == nil || opts.Flags == nil || !opts.Flags.Volatile)
}

// record keeps a broadcast and returns its offset, and raw with the offset appended.
// raw is the JSON text of its arguments, or kept their values, normalized (wire.Packet),
// when it has none.
func (l *recoveryLog) record(opts *socket.BroadcastOptions, raw string, kept []any) (offset, rawWithOffset string) {
	now := time.Now().UnixNano()
	k := keptFor(opts)
	k.at = now
	l.mu.Lock()
	defer l.mu.Unlock()
	offset = l.prefix + strconv.FormatUint(l.first+uint64(l.packets.n), 36)
	if raw != "" {
		raw = raw[:len(raw)-1] + `,"` + offset + `"]` // raw is a JSON array, of the event name at least
		k.raw = raw
	} else {
		k.data = withOffset(kept, offset)
	}
	k.size = 128 + len(raw) + sizeOf(k.data) + 16*(len(k.rooms)+len(k.except))
	l.packets.push(k)
	l.bytes += k.size
	l.trim(now) // for the bound; sessions are swept on the heartbeat tick (sweep)
	return offset, raw
}

// keptFor returns an entry for a broadcast with opts, with its rooms and exceptions.
func keptFor(opts *socket.BroadcastOptions) keptPacket {
	var k keptPacket
	if opts != nil {
		if opts.Rooms != nil {
			k.rooms = opts.Rooms.Keys()
		}
		if opts.Except != nil {
			k.except = opts.Except.Keys()
		}
	}
	return k
}

// withOffset returns args with offset appended, in a new array when args is set (the
// caller's may be shared, with the publisher for one).
func withOffset(args []any, offset string) []any {
	if args == nil {
		return nil
	}
	return append(args[:len(args):len(args)], offset)
}

// number returns the counter of offset, if it is one of this log's.
func (l *recoveryLog) number(offset string) (uint64, bool) {
	rest, ok := strings.CutPrefix(offset, l.prefix)
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(rest, 36, 64)
	return n, err == nil && strconv.FormatUint(n, 36) == rest
}

// sweep drops the broadcasts older than the sessions' time, and, at most once a tenth
// of that time (and once a second), the expired sessions, so that an idle server frees
// them too. Each adapter's heartbeat tick calls it.
func (l *recoveryLog) sweep(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.trim(now.UnixNano())
	if now.Sub(l.swept) < max(l.maxAge/10, time.Second) {
		return
	}
	l.swept = now
	threshold := now.Add(-l.maxAge).UnixMilli()
	for pid, s := range l.sessions {
		if s.DisconnectedAt < threshold {
			delete(l.sessions, pid)
		}
	}
	for sid, r := range l.restoring { // a socket that neither connected nor left: not seen
		if r.at.UnixMilli() < threshold {
			l.forget(sid)
		}
	}
}

// sizeOf estimates the memory of args: their strings and binary data.
func sizeOf(args []any) int {
	n := 0
	for _, v := range args {
		switch v := v.(type) {
		case string:
			n += len(v)
		case []byte:
			n += len(v)
		case []any:
			n += 16 + sizeOf(v)
		case map[string]any:
			for k, e := range v {
				n += 16 + len(k) + sizeOf([]any{e})
			}
		default:
			n += 16
		}
	}
	return n
}

// trim drops the broadcasts older than the sessions' time, and the oldest past the
// bound. l.mu is held.
func (l *recoveryLog) trim(now int64) {
	for l.packets.n > 0 {
		k := l.packets.at(0)
		old := now-k.at > int64(l.maxAge)
		if !old && (l.bytes <= l.bound || l.packets.n == 1) {
			break
		}
		if !old {
			l.dropEarly++
		}
		l.bytes -= k.size
		l.packets.pop()
		l.first++
	}
}

// keptQueue is a queue of kept broadcasts in chunks of keptChunk, each allocated once:
// a slice grown by append copied each entry about four times over (Go grows a large
// slice by a quarter), and a broadcast kept allocated 828 bytes instead of 397
// (BenchmarkKeptBroadcast).
type keptQueue struct {
	chunks [][]keptPacket // the first entry is chunks[0][head]
	head   int
	n      int
}

const keptChunk = 256

// at returns the i-th entry, oldest first.
func (q *keptQueue) at(i int) *keptPacket {
	i += q.head
	return &q.chunks[i/keptChunk][i%keptChunk]
}

// push adds k last.
func (q *keptQueue) push(k keptPacket) {
	if q.head+q.n == len(q.chunks)*keptChunk {
		q.chunks = append(q.chunks, make([]keptPacket, keptChunk))
	}
	*q.at(q.n) = k
	q.n++
}

// pop drops the first entry.
func (q *keptQueue) pop() {
	*q.at(0) = keptPacket{}
	q.head++
	q.n--
	switch {
	case q.n == 0: // an idle namespace keeps one chunk, cleared
		q.chunks, q.head = q.chunks[:1], 0
	case q.head == keptChunk:
		q.chunks[0] = nil
		q.chunks, q.head = q.chunks[1:], 0
	}
}

// persist keeps the session of a socket that disconnected. A session kept already for
// the same socket gets the rooms of this one too, and stays otherwise as it was:
// socket.io closes a socket twice when its transport closes as dropIfClosed
// disconnects it, and the second close, which runs while the first makes it leave its
// rooms, or after, took a session in some of them, or none, in place of the first's.
// (A client's session that was restored is no longer kept, and one that was not gets a
// new socket, with another session: only the socket restored, of the same sid, or one
// of its sid, persists a kept one.)
func (l *recoveryLog) persist(s *socket.SessionToPersist) {
	if s.Rooms == nil { // socket.io gives a copy of the socket's rooms; forSession reads it
		s.Rooms = types.NewSet[socket.Room]()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if kept, ok := l.sessions[s.Pid]; ok && kept.Sid == s.Sid {
		kept.Rooms.Add(s.Rooms.Keys()...)
		return
	}
	l.sessions[s.Pid] = &socket.SessionWithTimestamp{SessionToPersist: s, DisconnectedAt: time.Now().UnixMilli()}
}

// restore returns the session of pid, or nil: unknown, expired, or offset not kept (too
// old, not this server's). The session is restored once: it waits in restoring until its
// socket connects or leaves (see connected and left). Its missed broadcasts, those for
// its rooms kept after the one of offset, are held for the socket with those that come
// meanwhile, and written once it has connected: socket.io would write them as it makes
// the socket, before its middlewares run, and a client whose attempt a middleware then
// refused kept them, to be given them again on its next attempt.
func (l *recoveryLog) restore(pid socket.PrivateSessionId, offset string) *socket.Session {
	n, valid := l.number(offset)
	now := time.Now()
	l.mu.Lock()
	_, known := l.sessions[pid]
	l.mu.Unlock()
	if !known || !valid {
		return nil
	}
	l.fan.Lock() // no broadcast is between its offset and its writes
	defer l.fan.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	s, ok := l.sessions[pid]
	if !ok {
		return nil
	}
	if time.UnixMilli(s.DisconnectedAt).Add(l.maxAge).Before(now) {
		delete(l.sessions, pid)
		return nil
	}
	l.trim(now.UnixNano())
	if n < l.first || n >= l.first+uint64(l.packets.n) {
		return nil
	}
	delete(l.sessions, pid)
	r := &restoringSession{s: s, at: now}
	for i := int(n-l.first) + 1; i < l.packets.n; i++ {
		k := l.packets.at(i)
		if forSession(s.Rooms, k) {
			r.held = append(r.held, heldPacket{packet: parser.Packet{Type: parser.EVENT, Data: dataOf(k.data)}, raw: k.raw, norm: k.data})
		}
	}
	if _, ok := l.restoring[s.Sid]; !ok {
		l.nRestoring.Add(1)
	}
	l.restoring[s.Sid] = r
	return &socket.Session{SessionToPersist: s.SessionToPersist, MissedPackets: []any{}}
}

// dataOf returns args as a packet's data: nil, not a nil slice, when there are none.
func dataOf(args []any) any {
	if args == nil {
		return nil
	}
	return args
}

// hold reports whether socket sid is being restored (see restore), and then keeps h, a
// broadcast for it, unless h is nil: what is held is written to it once it connects
// (connected). l.fan is held when h is not nil.
func (l *recoveryLog) hold(sid socket.SocketId, h *heldPacket) bool {
	if l.nRestoring.Load() == 0 {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	r, ok := l.restoring[sid]
	if ok && h != nil {
		r.held = append(r.held, *h)
		r.last = h
	}
	return ok
}

// joined notes that socket sid joined rooms: once a socket being restored is in every
// room of its session, the broadcasts for it are those that visit it (see hold), and no
// longer those its session's rooms select (holdUnvisited), which a middleware may have
// changed since. in are the rooms it is in.
func (l *recoveryLog) joined(sid socket.SocketId, in func() *types.Set[socket.Room]) {
	if l.nRestoring.Load() == 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	r, ok := l.restoring[sid]
	if !ok || r.joined {
		return
	}
	rooms := in()
	if rooms == nil {
		return
	}
	for _, room := range r.s.Rooms.Keys() {
		if !rooms.Has(room) {
			return
		}
	}
	r.joined = true
}

// unjoined returns the sockets being restored that have not joined every room of their
// sessions yet (see joined). A kept broadcast takes them before it visits the sockets:
// one that joined its rooms since is not always visited, as the rooms were read before.
// l.fan is held.
func (l *recoveryLog) unjoined() []*restoringSession {
	if l.nRestoring.Load() == 0 {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*restoringSession
	for _, r := range l.restoring {
		if !r.joined {
			out = append(out, r)
		}
	}
	return out
}

// holdUnvisited holds h, a broadcast with opts that hold was called with, for the
// sockets of unjoined (taken before it visited them) that it did not visit and that
// their sessions' rooms select: socket.io makes a socket, which joins its rooms, only
// once RestoreSession has returned, and a broadcast meanwhile did not find it in them.
// l.fan is held.
func (l *recoveryLog) holdUnvisited(h *heldPacket, opts *socket.BroadcastOptions, unjoined []*restoringSession) {
	if len(unjoined) == 0 {
		return
	}
	k := keptFor(opts)
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range unjoined {
		if r.last != h && forSession(r.s.Rooms, &k) {
			r.held = append(r.held, *h)
			r.last = h
		}
	}
}

// restoringSocket reports whether socket sid is being restored: broadcasts that are
// not kept (volatile ones, and those with acknowledgements) do not reach it, as they
// do not reach a socket that has not connected.
func (l *recoveryLog) restoringSocket(sid socket.SocketId) bool { return l.hold(sid, nil) }

// connected forgets the session restored for socket sid, which has connected, and
// returns it with the broadcasts held for it. l.fan is held.
func (l *recoveryLog) connected(sid socket.SocketId) (*socket.SessionToPersist, []heldPacket) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r, ok := l.restoring[sid]
	if !ok {
		return nil, nil
	}
	l.forget(sid)
	return r.s.SessionToPersist, r.held
}

// forget removes socket sid from restoring. l.mu is held.
func (l *recoveryLog) forget(sid socket.SocketId) {
	delete(l.restoring, sid)
	l.nRestoring.Add(-1)
}

// left keeps again the session restored for socket sid, which left before it connected.
// What was held for it is dropped: the log keeps it for the client's next attempt, which
// presents the same offset. (A client's sockets share its session's sid and pid: a
// session kept for the pid is of this socket.)
func (l *recoveryLog) left(sid socket.SocketId) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r, ok := l.restoring[sid]
	if !ok {
		return
	}
	l.forget(sid)
	if kept, ok := l.sessions[r.s.Pid]; ok && kept.Sid == r.s.Sid {
		// Kept meanwhile by the socket's second close (see persist), which may have
		// found it out of its rooms already: the session restored is the one.
		r.s.Rooms.Add(kept.Rooms.Keys()...)
	}
	l.sessions[r.s.Pid] = r.s
}

// forSession reports whether a socket in rooms was to get k: k is for all sockets or
// for one of rooms, and for none of them excluded.
func forSession(rooms *types.Set[socket.Room], k *keptPacket) bool {
	for _, r := range k.except {
		if rooms.Has(r) {
			return false
		}
	}
	if len(k.rooms) == 0 {
		return true
	}
	for _, r := range k.rooms {
		if rooms.Has(r) {
			return true
		}
	}
	return false
}

// PersistSession keeps the session of a socket that disconnected for a reason socket.io
// recovers from, on a server with ConnectionStateRecovery, for MaxDisconnectionDuration
// (two minutes unless set).
func (a *Adapter) PersistSession(s *socket.SessionToPersist) {
	if a.rec != nil && s != nil {
		a.rec.persist(s)
	}
}

// RestoreSession returns the session pid kept by this server; or nil, and the client
// gets a new socket: a session unknown here (kept by another server, or none), expired,
// restored already, or whose offset is no longer kept. The broadcasts for its rooms
// delivered here after the one of offset, which its client received last, are not in
// the session's MissedPackets: they are written to the socket once it has connected,
// after its CONNECT packet, with those that came meanwhile (see recoveryLog.restore).
func (a *Adapter) RestoreSession(pid socket.PrivateSessionId, offset string) (*socket.Session, error) {
	if a.rec == nil {
		return nil, nil
	}
	return a.rec.restore(pid, offset), nil
}

// DelAll removes socket id from every room of this server. A socket made for a restored
// session that leaves before it connected (a middleware refused it, or its connection
// closed) gives the session back, for its client to try again.
func (a *Adapter) DelAll(id socket.SocketId) {
	a.Adapter.DelAll(id)
	if a.rec != nil {
		a.rec.left(id)
	}
}
