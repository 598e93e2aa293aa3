package pgadapter

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	goruntime "runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/zishang520/engine.io/v2/types"
	"github.com/zishang520/socket.io-go-parser/v2/parser"
	"github.com/zishang520/socket.io/v2/socket"

	"github.com/socketio-pg/pgadapter/internal/wire"
)

// Adapter is the cluster adapter of one namespace. socket.io creates it through
// Builder.New; applications use it through the namespace (io.To(...).Emit,
// FetchSockets, ServerSideEmit, ...), not directly.
//
// Local work (rooms, delivery to this server's clients) is done by socket.io's in-memory
// adapter, which Adapter embeds; Adapter adds the cluster protocol on top: it publishes
// each operation for the other servers and applies theirs locally.
type Adapter struct {
	socket.Adapter

	// rec keeps sessions and broadcasts for connection state recovery (recovery.go), on
	// a server with ConnectionStateRecovery; nil otherwise.
	rec *recoveryLog

	b       *Builder
	rt      *runtime
	name    string
	channel string
	uid     string
	// How our own notifications end (inline) and begin (attachment headers), to drop
	// PostgreSQL's echo of them without decoding.
	ownSuffix, ownPrefix string

	// sent is the last sequence number given to this adapter's messages (wire.SeqKey),
	// owned by its runtime's publisher goroutine (see publisher.number); heardSeq, the
	// last one received from each other server, by its uid, owned by the runtime's
	// dispatch goroutine (see runtime.sequence). Both live as long as the adapter: a
	// namespace made again has another uid, and starts again at 1.
	sent     uint64
	heardSeq map[string]uint64

	// lastPublish is when a batch holding a message of this adapter last committed, in
	// unix nanoseconds (set by the publisher): the other servers heard it then.
	lastPublish atomic.Int64
	// lastHeartbeat is when heartbeat last queued a HEARTBEAT, in unix nanoseconds: while
	// nothing commits (PostgreSQL slow or down), one a heartbeat interval, not one a tick.
	lastHeartbeat atomic.Int64
	closed        atomic.Bool
	// cleanedUp: closed by socket.io's cleanup of an empty dynamic child namespace, which
	// also removed the namespace from the server's table (see noteCleanup).
	cleanedUp atomic.Bool
	// unheard is set once the database refused to LISTEN to the channel (see
	// ErrChannelRefused): nobody can hear it, and nothing is published on it.
	unheard atomic.Bool
	// hearing is closed once this server has heard one of its own messages on the
	// channel (see awaitHearing), or stopped waiting for that.
	hearing     chan struct{}
	hearingOnce sync.Once
	// closeMu makes publish's check of closed and its enqueue one step against Close's:
	// nothing this adapter publishes may follow its ADAPTER_CLOSE, or the others (Node's
	// adapter re-adds any uid it hears from) count a server that is gone.
	closeMu sync.RWMutex

	mu       sync.Mutex
	nodes    map[string]time.Time // other servers of this namespace: uid → last message
	capable  map[string]bool      // servers that advertised CapAllRooms, known or timed out
	timedOut map[string]time.Time // servers dropped by timeout, whose capable entry is kept
	// left: servers that sent ADAPTER_CLOSE, and when. What they sent before it can
	// arrive after it (Node's adapter publishes through a pool of connections): it must
	// not count them again.
	left     map[string]time.Time
	requests map[string]*request
	// inlineWarned: the servers allRead has logged as holding InlineBinary back.
	inlineWarned map[string]bool
	// answerQueued is when a HEARTBEAT answering an announcement was queued, until the
	// publisher takes it into a batch (0 then; see answerAnnouncement).
	answerQueued atomic.Int64
	// lastEcho is when this server last heard one of its own messages on the channel,
	// in unix nanoseconds (see heartbeat).
	lastEcho atomic.Int64
	// listenedAt is when the channel was last LISTENed, on the listener's connection
	// listenedOn (its count of ended connections then): the servers' silence since then
	// is theirs (see heartbeat).
	listenedAt time.Time
	listenedOn uint64
	// peaks: the largest size of nodes, capable, timedOut, left and inlineWarned since
	// each was last made anew (see shrink).
	peaks [5]int
	// snapshot is the other servers a BroadcastWithAck sent to, which socket.io's
	// operator counts by reading ServerCount right after it returns: shared by the
	// broadcasts with acks made until then, due times over (see snapshotMembers).
	snapshot   map[string]struct{}
	snapshotAt time.Time
	due        int       // ServerCount calls that return the snapshot's count
	dueUntil   time.Time // when those not made yet are given up for
}

// shrink returns m, or a copy of it once it holds less than a quarter of the peak it
// reached (and that peak was large): a Go map keeps the room of its largest size. A
// tester's 500,000 heartbeats from invented uids left every server 106 MB larger for
// good, after the uids were forgotten. peak is m's largest size since it was last made.
func shrink[V any](m map[string]V, peak *int) map[string]V {
	*peak = max(*peak, len(m))
	if *peak < shrinkFrom || len(m) >= *peak/4 {
		return m
	}
	*peak = len(m)
	return maps.Clone(m)
}

// shrinkFrom is the peak size from which a map is made anew when it empties.
const shrinkFrom = 1024

// forgetAfter is how many heartbeat timeouts a server dropped by timeout is remembered
// for: what it advertised in its heartbeats (capable) still holds if it comes back
// without sending one, as a busy server does (any message it publishes stands for its
// heartbeat). After that it is forgotten, so that the servers that crashed do not pile
// up.
const forgetAfter = 30

// snapshotFor bounds how long a snapshot of the servers is kept for the ServerCount
// calls still due (see snapshotMembers): calls that never come (a panic in local
// delivery, before socket.io's operator calls it) are given up that long after the last
// broadcast with acks, and broadcasts that overlap for that long take a new snapshot.
const snapshotFor = 30 * time.Second

func newAdapter(b *Builder, nsp socket.Namespace) *Adapter {
	a := &Adapter{
		Adapter:  socket.MakeAdapter(),
		b:        b,
		name:     nsp.Name(),
		channel:  ChannelName(b.opts.ChannelPrefix, nsp.Name()),
		uid:      randomID(),
		nodes:    map[string]time.Time{},
		capable:  map[string]bool{},
		timedOut: map[string]time.Time{},
		left:     map[string]time.Time{},
		requests: map[string]*request{},

		inlineWarned: map[string]bool{},
		hearing:      make(chan struct{}),
	}
	a.ownSuffix = wire.OwnSuffix(a.uid)
	a.ownPrefix = wire.OwnPrefix(a.uid)
	a.Prototype(a)
	a.Construct(nsp)
	a.rec = newRecoveryLog(nsp)
	if err := nsp.On("connect", a.dropIfClosed); err != nil {
		b.report(fmt.Errorf("pgadapter: namespace %q: watching connections: %w", nsp.Name(), err))
	}
	return a
}

// dropIfClosed disconnects a socket announced after its connection closed.
//
// socket.io v2.5.0 answers a client's CONNECT before its Client records the socket. A
// packet the client sends at once (an emit on "connect", as clients do) then finds no
// socket, and the server closes the connection; the Client's close handler, finding no
// socket either, leaves it connected in the namespace and its rooms for good: a
// ghost that FetchSockets returns on every server and that broadcasts still count. The
// namespace announces a socket ("connect", then "connection") only after the Client has
// recorded it, so a close that came before is seen here, and one that comes after is
// handled by socket.io itself. The listener runs before any the application adds.
func (a *Adapter) dropIfClosed(args ...any) {
	s, ok := args[0].(*socket.Socket)
	if !ok {
		return
	}
	var restored *socket.SessionToPersist
	if a.rec != nil && s.Recovered() && s.Conn().ReadyState() == "open" {
		restored = a.restored(s)
	}
	if a.cleanedUp.Load() && s.Nsp().Adapter() == socket.Adapter(a) {
		// It waited in the namespace's middleware while socket.io cleaned the namespace
		// up (see noteCleanup).
		a.b.report(fmt.Errorf("pgadapter: socket %s connected to namespace %q after socket.io had removed it as empty (CleanupEmptyChildNamespaces, while the socket was in its middleware): it receives nothing from the cluster, and its leaving will remove the namespace of that name socket.io made since (a defect of socket.io v2.5.0: see the README)", s.Id(), a.name))
		return
	}
	if s.Conn().ReadyState() == "open" {
		return
	}
	a.b.opts.Logger.Debug("pgadapter: disconnecting a socket whose connection closed while it connected", "namespace", a.name, "socket", string(s.Id()))
	var rooms []socket.Room
	if restored != nil {
		rooms = s.Rooms().Keys()
	}
	s.Disconnect(false)
	if restored != nil {
		// Restored, and given its broadcasts: its client may have read some before its
		// connection closed, and comes back with a later offset. socket.io keeps the
		// session of a socket whose transport closed, but not of one disconnected here.
		// Kept once the socket has left: a next attempt of the client, restored before,
		// would have been taken for this one by its leaving (left). A restored socket
		// whose connection had closed before this listener ran was given nothing:
		// leaving, it gives its session back as it was (DelAll).
		a.rec.persist(&socket.SessionToPersist{Sid: s.Id(), Pid: restored.Pid, Rooms: types.NewSet(rooms...), Data: s.Data()})
	}
}

// ourCaps are the capabilities every pgadapter server advertises.
var ourCaps = []string{wire.CapAllRooms}

// randomID returns 16 hex digits, the shape of Node's uids and request ids.
func randomID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// isOwn reports whether a notification payload is one this adapter published.
func (a *Adapter) isOwn(payload string) bool {
	return strings.HasSuffix(payload, a.ownSuffix) || strings.HasPrefix(payload, a.ownPrefix)
}

// UID returns the id this namespace adapter uses on the wire.
func (a *Adapter) UID() string { return a.uid }

// Channel returns the NOTIFY channel of this namespace (see ChannelName).
func (a *Adapter) Channel() string { return a.channel }

// Init does nothing: socket.io v2.5.0 never calls it, so the adapter announces itself
// (INITIAL_HEARTBEAT) as soon as its channel is LISTENed, and again after every
// reconnection of the LISTEN connection.
func (a *Adapter) Init() {}

// Close announces to the other servers that this one leaves (ADAPTER_CLOSE), fails the
// requests still waiting with ErrClosed (a broadcast with acks ends at socket.io's
// timeout, with an error: see BroadcastWithAck), and stops listening to the namespace's
// channel.
// Closing the last namespace of a Builder stops its goroutines and closes its LISTEN
// connection. socket.io calls Close from io.Close and when it removes an empty dynamic
// namespace. Closing the main namespace's adapter ("/"), as io.Close does, closes every
// adapter of the Builder that has no socket left: io.Close reaches only the namespaces
// socket.io's table holds, and socket.io v2.5.0 can remove one in use from it (see the
// README's defects of socket.io v2.5.0). Those with sockets close as io.Close closes
// their connections. Close is idempotent.
//
// Close does not wait for ADAPTER_CLOSE to be published: the publisher sends it in turn,
// and closing the last namespace waits for what is queued (at most RequestsTimeout and
// five seconds). It used to wait up to RequestsTimeout for each namespace while
// PostgreSQL was unreachable, on whatever goroutine closed it, which for an emptied
// dynamic namespace can be the one that delivers every message.
func (a *Adapter) Close() {
	if a.closed.Load() {
		return
	}
	a.noteCleanup()
	a.close()
	if a.name == "/" {
		a.b.closeStragglers()
	}
}

// noteCleanup records that socket.io is cleaning up this adapter's namespace, an empty
// child of a dynamic namespace (CleanupEmptyChildNamespaces), whose cleanup closes the
// adapter, then removes the namespace of that name from the server's table. socket.io
// v2.5.0 runs that cleanup whenever a socket leaves the namespace, also for a socket that
// was still in the namespace's middleware when it emptied (an authentication lookup,
// say), or that its middleware refused. Such a socket connects into the namespace
// removed, whose adapter is closed, deaf to the cluster; and when it leaves, the cleanup
// removes the namespace socket.io made since, in use, by name: the next client makes a
// third, which takes the channel, and the second's sockets are deaf too (a tester's
// findings). Both are reported (see dropIfClosed and Builder.New). Preventing them
// takes changing socket.io's fields, with a data race, or a placeholder socket in the
// namespace, which the application's code sees (a reviewer's findings: a crash, and a
// client made to connect again for ever by clients that a middleware refuses).
//
// The cleanup is recognised by its caller, socket.io's namespace.Remove (io.Close also
// comes through it, as it disconnects the namespace's last socket).
func (a *Adapter) noteCleanup() {
	if a.name == "/" || !a.Nsp().Server().Opts().CleanupEmptyChildNamespaces() || !inNamespaceRemove() {
		return
	}
	a.b.mu.Lock()
	closed := a.b.closed
	a.b.mu.Unlock()
	if !closed { // else Builder.Close, not socket.io
		a.cleanedUp.Store(true)
	}
}

// inNamespaceRemove reports whether the caller runs within socket.io's
// namespace.Remove, which runs the cleanup of a dynamic child namespace.
func inNamespaceRemove() bool {
	pcs := make([]uintptr, 32)
	frames := goruntime.CallersFrames(pcs[:goruntime.Callers(3, pcs)])
	for {
		f, more := frames.Next()
		if f.Function == "github.com/zishang520/socket.io/v2/socket.(*namespace).Remove" {
			return true
		}
		if !more {
			return false
		}
	}
}

// close is Close, for this namespace alone.
func (a *Adapter) close() {
	if a.closed.Load() {
		return
	}
	o, report := a.outgoing(wire.AdapterClose, nil, nil)
	a.closeMu.Lock()
	if a.closed.Swap(true) {
		a.closeMu.Unlock()
		return
	}
	if report == nil && !a.unheard.Load() { // else nobody heard it, and PostgreSQL refuses it
		report = a.enqueue(o)
	}
	if report == nil {
		report = noReport
	}
	a.closeMu.Unlock()
	a.heardItself()
	report()
	a.closeRequests()
	a.b.remove(a)
}

// ServerCount returns the number of servers of the namespace in the cluster: this one
// and every other that has sent a message within the heartbeat timeout.
//
// socket.io's operator calls it right after BroadcastWithAck, and then expects that many
// client counts: one from this server and one from each server BroadcastWithAck sent to
// (servers that leave count as zero). Servers joining or leaving in between used to make
// the two differ, and the caller got a timeout although every client had answered.
// ServerCount therefore counts the servers a BroadcastWithAck sent to (its snapshot), as
// many times as broadcasts with acks were made, however long their local delivery takes,
// within 30 s. Servers that leave meanwhile count as zero clients; servers that join are
// not waited for (nor their clients' acks collected) while the snapshot is kept.
// Broadcasts with acks that overlap without a break for 30 s take a new snapshot: one
// whose ServerCount call is still due then gets the new count, and, should a server have
// joined or left, times out. Calling ServerCount for any other purpose while a broadcast
// with acks is being sent may take the place of the operator's call, which then counts
// the servers known at that time (Stats does not).
func (a *Adapter) ServerCount() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.due > 0 && time.Now().Before(a.dueUntil) {
		a.due--
		n := int64(1 + len(a.snapshot))
		if a.due == 0 {
			a.snapshot = nil
		}
		return n
	}
	a.due, a.snapshot = 0, nil // calls that never came
	return int64(1 + len(a.nodes))
}

// knownServers is the number of other servers known now.
func (a *Adapter) knownServers() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.nodes)
}

// snapshotMembers returns the servers a broadcast with acks is sent to: the other servers
// known now, or, while broadcasts made earlier still wait for their ServerCount call,
// their snapshot, so that every such call returns the count of the servers its
// broadcast was sent to, in whatever order the calls come. (A snapshot taken anew while
// one broadcast's delivery outlasted the last gave each the other's count.) Membership
// itself goes on changing: a server of the snapshot that leaves counts as zero clients,
// for requests made before or after it left (BroadcastWithAck).
func (a *Adapter) snapshotMembers() map[string]struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	if !now.Before(a.dueUntil) {
		a.due = 0 // calls that never came
	}
	if a.due == 0 || now.Sub(a.snapshotAt) > snapshotFor {
		a.snapshot, a.snapshotAt = a.membersLocked(), now
	}
	a.due++
	a.dueUntil = now.Add(snapshotFor)
	return a.snapshot // read-only: replaced, never changed
}

func (a *Adapter) runAll(what string, runs []func()) {
	for _, run := range runs {
		a.guard(what, run) // one panic must not skip the others
	}
}

// Broadcast delivers packet to the matching local clients and publishes it to the other
// servers, unless the Local flag is set, or, on a server with ConnectionStateRecovery,
// it targets only the room of one of this server's sockets (see toOwnSocket). Local
// delivery never waits for PostgreSQL.
func (a *Adapter) Broadcast(packet *parser.Packet, opts *socket.BroadcastOptions) {
	raw := ""
	var norm []any
	if !isLocal(opts) && !a.toOwnSocket(opts) {
		if p, ok := a.prepare(packet); ok {
			raw, norm = p.Raw, p.Data
			a.publish(wire.Broadcast, &wire.BroadcastData{Packet: p, Opts: toWireOpts(opts)}, nil)
		}
	}
	a.localBroadcast(packet, opts, raw, norm)
}

// BroadcastWithAck is Broadcast with acknowledgements: each server reports how many of
// its clients were targeted (clientCountCallback), then each client's acknowledgement
// reaches ack. Every client contributes exactly one response (its first argument, nil if
// it acknowledged with none), locally and remotely alike, as Node does; servers that leave
// before they count their clients count as zero clients, so the caller's callback fires
// as soon as everything that can answer has, instead of at the timeout. A server that
// leaves after counting its clients leaves their answers missing: socket.io's operator
// then waits for its timeout, and gives an error with the answers it has. So it does
// when the message could not be published (reported), or this adapter closes while the
// answers are due: the other servers' counts are withheld, as Node's adapter leaves
// them, so that the caller gets an error rather than the word that no client there
// matched.
//
// The message is published even when no other server is known (one that has just
// started, or that this server lost sight of while its LISTEN connection was down,
// would otherwise miss it), as Node does; answers from servers not known when it was
// sent are ignored, since socket.io's operator expects ServerCount of them. With the
// Local flag, every other server counts as zero clients at once.
func (a *Adapter) BroadcastWithAck(packet *parser.Packet, opts *socket.BroadcastOptions, clientCountCallback func(uint64), ack socket.Ack) {
	single := opts != nil && opts.Flags != nil && opts.Flags.ExpectSingleResponse
	raw := ""
	var norm []any
	members := a.snapshotMembers()
	fail := func() {}
	if single {
		one := &oneSocket{count: clientCountCallback, ack: ack, left: len(members) + 1}
		clientCountCallback, fail = one.onCount, one.fail
	}
	published := false
	if !isLocal(opts) {
		if p, ok := a.prepare(packet); ok {
			raw, norm = p.Raw, p.Data
			id := randomID()
			var done func(error)
			r := &request{kind: wire.Broadcast, onCount: clientCountCallback, onAck: ack, single: single, onFail: fail}
			gone := 0
			// The snapshot's servers still known, under the lock of the registration: one
			// that left since the snapshot was taken counts as zero clients (the
			// operator counts it), and one that leaves later is counted so on leaving.
			if a.track(id, r, timeoutOf(opts, a.b.opts.RequestsTimeout), func() map[string]struct{} {
				w := make(map[string]struct{}, len(members))
				for uid := range members {
					if _, known := a.nodes[uid]; known {
						w[uid] = struct{}{}
					} else {
						gone++
					}
				}
				r.members = clone(w)
				return w
			}) {
				done = a.abandonOnError(id)
			}
			a.publish(wire.Broadcast, &wire.BroadcastData{Packet: p, Opts: toWireOpts(opts), RequestID: id}, done)
			published = true
			for range gone {
				clientCountCallback(0)
			}
		}
	}
	if !published {
		if !isLocal(opts) {
			fail() // the counts withheld: an error at the operator's timeout
		} else {
			for range members {
				clientCountCallback(0)
			}
		}
	}
	a.localBroadcastWithAck(packet, opts, raw, norm, clientCountCallback, func(args []any, err error) {
		ack(ackShape(args, single), err)
	})
}

// oneSocket counts the clients of a request for one socket's acknowledgement
// (RemoteSocket.Emit with an ack, ExpectSingleResponse) for socket.io's operator, which
// expects a count from each of servers servers, this one included. When every server
// counts zero clients (the socket is gone), socket.io v2.5.0's operator takes the first
// of no responses, panics, and never calls the caller back, not even at its timeout,
// which it has cleared; Node's calls it with undefined. The last count is then given as
// one client, which answers with nothing: the caller gets (nil, nil). Unless the request
// failed (not published, or ended by Close): the last count is then withheld, and the
// operator's timeout gives the caller an error rather than the word that nobody has
// the socket.
type oneSocket struct {
	count func(uint64)
	ack   socket.Ack

	mu      sync.Mutex
	left    int
	clients uint64
	failed  bool
}

func (o *oneSocket) onCount(n uint64) {
	o.mu.Lock()
	o.left--
	o.clients += n
	none := o.left == 0 && o.clients == 0
	failed := o.failed
	o.mu.Unlock()
	switch {
	case !none:
		o.count(n)
	case !failed:
		o.count(1)
		o.ack([]any{[]any(nil)}, nil)
	}
}

// fail marks the request failed (see oneSocket).
func (o *oneSocket) fail() {
	o.mu.Lock()
	o.failed = true
	o.mu.Unlock()
}

// ackShape is what one client's acknowledgement contributes to socket.io's
// BroadcastOperator: one response each, its first argument (nil if it answered with
// none), as Node's gives and as one from another server carries. With
// ExpectSingleResponse (RemoteSocket.Emit), the operator hands the first response to the
// caller as the argument list, so it is wrapped in one: a socket on this server gave the
// caller every argument, and one on another server the first.
func ackShape(args []any, single bool) []any {
	first := []any{nil}
	if len(args) > 0 {
		first = args[:1]
	}
	if single {
		return []any{first}
	}
	return first
}

// AddSockets makes the matching sockets of every server join rooms.
func (a *Adapter) AddSockets(opts *socket.BroadcastOptions, rooms []socket.Room) {
	if !isLocal(opts) {
		a.publish(wire.SocketsJoin, &wire.RoomsData{Opts: toWireOpts(opts), Rooms: roomStrings(rooms)}, nil)
	}
	a.Adapter.AddSockets(opts, rooms)
}

// DelSockets makes the matching sockets of every server leave rooms.
func (a *Adapter) DelSockets(opts *socket.BroadcastOptions, rooms []socket.Room) {
	if !isLocal(opts) {
		a.publish(wire.SocketsLeave, &wire.RoomsData{Opts: toWireOpts(opts), Rooms: roomStrings(rooms)}, nil)
	}
	a.Adapter.DelSockets(opts, rooms)
}

// DisconnectSockets disconnects the matching sockets of every server.
func (a *Adapter) DisconnectSockets(opts *socket.BroadcastOptions, close bool) {
	if !isLocal(opts) {
		a.publish(wire.DisconnectSockets, &wire.DisconnectData{Opts: toWireOpts(opts), Close: close}, nil)
	}
	a.Adapter.DisconnectSockets(opts, close)
}

// FetchSockets returns the matching sockets of every server: the local ones, and one
// answer from each other server. It completes when every server counted at the call has
// answered or left, or with ErrTimeout and the sockets gathered so far after the
// timeout (the Timeout flag, or Options.RequestsTimeout).
func (a *Adapter) FetchSockets(opts *socket.BroadcastOptions) func(func([]socket.SocketDetails, error)) {
	return func(callback func([]socket.SocketDetails, error)) {
		a.Adapter.FetchSockets(opts)(func(local []socket.SocketDetails, err error) {
			if err != nil || isLocal(opts) {
				callback(local, err)
				return
			}
			id := randomID()
			if !a.track(id, &request{kind: wire.FetchSockets, sockets: local, onFetch: callback},
				timeoutOf(opts, a.b.opts.RequestsTimeout), a.membersLocked) {
				callback(local, nil) // no other server
				return
			}
			a.publish(wire.FetchSockets, &wire.FetchData{Opts: toWireOpts(opts), RequestID: id}, a.abandonOnError(id))
		})
	}
}

// ServerSideEmit sends an event to the other servers of the namespace. When the last
// element of packet is a socket.Ack, each other server's handler answers through it, and
// the Ack receives one answer per server once all have answered or left, or ErrTimeout
// with the answers so far after Options.RequestsTimeout. Once the adapter is closed, it
// returns ErrClosed, and the Ack is not called. A name socket.io emits itself returns
// ErrReservedEvent.
func (a *Adapter) ServerSideEmit(packet []any) error {
	if len(packet) == 0 {
		return errors.New("pgadapter: ServerSideEmit needs an event name")
	}
	if ev, ok := packet[0].(string); ok && wire.ReservedServerEvent(ev) {
		// Called directly (socket.io's namespace refuses these first): the receivers
		// would report it malformed, and an Ack would wait for its timeout.
		wire.CloseReaders(packet)
		return fmt.Errorf("%w: %q", ErrReservedEvent, ev)
	}
	ack, withAck := packet[len(packet)-1].(socket.Ack)
	if withAck {
		packet = packet[:len(packet)-1]
	}
	data, _, err := wire.NormalizeArgs(packet)
	wire.CloseReaders(packet)
	if err != nil {
		return fmt.Errorf("pgadapter: ServerSideEmit %v: %w", packet[0], err)
	}
	if a.closed.Load() {
		return fmt.Errorf("pgadapter: namespace %q: ServerSideEmit: %w", a.name, ErrClosed)
	}
	if !withAck {
		a.publish(wire.ServerSideEmit, &wire.ServerSideEmitData{Packet: data}, nil)
		return nil
	}
	id := randomID()
	if !a.track(id, &request{kind: wire.ServerSideEmit, answers: []any{}, onSSE: ack}, a.b.opts.RequestsTimeout, a.membersLocked) {
		ack([]any{}, nil) // no other server
		return nil
	}
	a.publish(wire.ServerSideEmit, &wire.ServerSideEmitData{Packet: data, RequestID: id}, a.abandonOnError(id))
	return nil
}

// prepare normalizes a packet's arguments once, for the wire and for the local clients.
// Without binary data, it also writes their JSON text once, for both (Packet.Raw). The
// packet keeps the arguments as the application gave them, for its outgoing-packet
// listeners (OnAnyOutgoing), as socket.io's own adapter does, unless they hold readers:
// those are read (into bytes) and closed here, and cannot be read twice.
func (a *Adapter) prepare(packet *parser.Packet) (wire.Packet, bool) {
	args, _ := packet.Data.([]any)
	data, bin, err := wire.NormalizeArgs(args)
	// A reader is binary: arguments without binary hold none that was read (a nil
	// pointer to one, null on the wire, reaches no encoder: their clients are written
	// from Raw), unless normalizing them failed.
	if (bin || err != nil) && wire.HasReader(args) {
		wire.CloseReaders(args)
		if err == nil {
			packet.Data = data
		}
	}
	if err != nil {
		a.b.stats.publishErrors.Add(1)
		a.b.report(fmt.Errorf("pgadapter: namespace %q: broadcast not published: %w", a.name, err))
		return wire.Packet{}, false
	}
	return wire.Packet{Type: wirePacketType(packet.Type), Data: data, Raw: argsText(data)}, true
}

// argsText is the JSON text of normalized arguments, written once for every destination,
// or "" when they hold binary data (which socket.io's encoder sends as attachments).
func argsText(args []any) string {
	if wire.HasBinary(args) {
		return ""
	}
	text, err := wire.AppendJSON(make([]byte, 0, jsonSizeHint(args, 4)), args)
	if err != nil || len(text) == 0 {
		return ""
	}
	// The buffer is this function's alone and is never written again: the string can
	// be its bytes rather than a copy of them.
	return unsafe.String(unsafe.SliceData(text), len(text))
}

// jsonSizeHint estimates the size of v's JSON text from its strings, depth levels deep,
// so that the text is written into a buffer allocated once: grown from a small one,
// a 20 KB argument took buffers of twice its size, copy included.
func jsonSizeHint(v any, depth int) int {
	if depth < 0 {
		return 24
	}
	switch v := v.(type) {
	case string:
		return len(v) + 2
	case []any:
		n := 2 + len(v)
		for _, e := range v {
			n += jsonSizeHint(e, depth-1)
		}
		return n
	case map[string]any:
		n := 2 + 2*len(v)
		for k, e := range v {
			n += len(k) + 2 + jsonSizeHint(e, depth-1)
		}
		return n
	}
	return 24
}

// publish encodes a message in the caller's goroutine and queues it. It never blocks.
func (a *Adapter) publish(typ wire.Type, data any, done func(error)) {
	a.publishWith(typ, data, done, nil)
}

// publishWith is publish, with taken called when the publisher takes the message into a
// batch (see outgoing.taken).
func (a *Adapter) publishWith(typ wire.Type, data any, done func(error), taken func()) {
	if a.closed.Load() {
		a.refused(typ, done)
		return
	}
	if a.unheard.Load() {
		// No server can hear the channel (reported once, by refuse): published to
		// nobody, as with no other server.
		if done != nil {
			done(nil)
		}
		return
	}
	o, report := a.outgoing(typ, data, done)
	o.taken = taken
	if report == nil {
		a.closeMu.RLock()
		if a.closed.Load() {
			a.closeMu.RUnlock()
			a.refused(typ, done)
			return
		}
		report = a.enqueue(o)
		a.closeMu.RUnlock()
	}
	report()
}

// refused ends a message that a closed adapter does not publish: through done, or, for
// an operation of the application without one (a broadcast, a room change, a server-side
// event without acknowledgement), as a publish error. The adapter's own messages
// (heartbeats, answers to requests) end silently: the other servers count it gone.
func (a *Adapter) refused(typ wire.Type, done func(error)) {
	switch {
	case done != nil:
		done(ErrClosed)
	case typ == wire.Broadcast || typ == wire.SocketsJoin || typ == wire.SocketsLeave ||
		typ == wire.DisconnectSockets || typ == wire.ServerSideEmit:
		a.b.reportClosed(fmt.Errorf("pgadapter: namespace %q: %s not published: %w", a.name, typ, ErrClosed))
	}
}

// noReport is a report of nothing: what enqueue and warnInlineLocked return when all
// went well.
func noReport() {}

// outgoing encodes a message for the publisher. On failure it returns the report of it
// instead, to be run with no lock held: the ErrorHandler is the application's code,
// which may publish.
func (a *Adapter) outgoing(typ wire.Type, data any, done func(error)) (outgoing, func()) {
	m := &wire.Message{Type: typ, UID: a.uid, Nsp: a.name, Data: data}
	if typ == wire.InitialHeartbeat || typ == wire.Heartbeat {
		m.Caps = ourCaps // Node servers ignore the extra field
	}
	var enc wire.Encoded
	var err error
	threshold := wire.SeqThreshold(a.b.opts.PayloadThreshold) // room for the number
	if room, bad := wire.BadRoom(data); bad {
		err = fmt.Errorf("%s names room %q, which is not valid UTF-8: %w", typ, room, ErrInvalidName)
	} else if enc, err = wire.Encode(m, threshold); err == nil && a.b.ascii.Load() {
		enc, err = wire.ASCII(enc, m, threshold)
	}
	if err == nil && enc.Attachment != nil {
		if why := wire.Oversize(enc.Attachment, a.b.opts.MaxAttachmentSize); why != "" {
			err = fmt.Errorf("%s of %s: %w", typ, why, ErrAttachmentTooLarge) // the other servers would not read it
		}
	}
	if err != nil {
		a.b.stats.publishErrors.Add(1)
		err = fmt.Errorf("pgadapter: namespace %q: %w", a.name, err)
		return outgoing{}, func() {
			a.b.report(err)
			if done != nil {
				done(err)
			}
		}
	}
	if enc.Attachment != nil && a.b.opts.InlineBinary && a.allRead() {
		enc = wire.Inline(enc, m, threshold)
	}
	o := outgoing{channel: a.channel, nsp: a.name, typ: typ, enc: enc, done: done, committed: &a.lastPublish, seq: &a.sent}
	if enc.Attachment != nil {
		o.prefix = wire.AttachmentHeaderPrefix(a.uid, typ)
	}
	return o, nil
}

// enqueue hands o to the publisher, under closeMu (read or write). It returns the report
// of a failure, to be run once closeMu is released: a second RLock, from an ErrorHandler
// that publishes, would wait behind a Close waiting for the first.
func (a *Adapter) enqueue(o outgoing) (report func()) {
	if err := a.rt.pub.enqueue(o); err != nil {
		return func() { a.b.reportQueue(fmt.Errorf("namespace %q: %s: %w", a.name, o.typ, err)) }
	}
	return noReport
}

// AddAll adds a socket to rooms, as socket.io's adapter does. A socket's first join, to
// its own room, comes before socket.io tells its client that it is connected; in a
// namespace new on this server, it first waits until the server hears the namespace's
// channel, at most RequestsTimeout, once. The channel is LISTENed on
// the listener's goroutine, after the namespace is made: a client that connected and
// was broadcast to at once by another server missed the message, silently (a tester's
// finding: 15 of 200 dynamic namespaces), and the other servers, which learn of the
// namespace from its announcement, left its sockets out of their requests.
func (a *Adapter) AddAll(id socket.SocketId, rooms *types.Set[socket.Room]) {
	a.awaitHearing()
	a.Adapter.AddAll(id, rooms)
	if a.rec != nil {
		a.rec.joined(id, func() *types.Set[socket.Room] {
			in, _ := a.Sids().Load(id)
			return in
		})
	}
}

// awaitHearing waits until this server has heard its own messages on the channel (its
// announcement, made once the channel is LISTENed, or any later one): the other
// servers have then heard the announcement, and whatever they publish from then on
// reaches this one. It gives up after RequestsTimeout, once (the database away; that is
// reported otherwise), and returns at once when the namespace cannot be heard (refused,
// closed).
func (a *Adapter) awaitHearing() {
	select {
	case <-a.hearing:
		return
	default:
	}
	t := time.NewTimer(a.b.opts.RequestsTimeout)
	defer t.Stop()
	select {
	case <-a.hearing:
	case <-t.C:
		a.heardItself()
	}
}

// heardItself ends the waits of awaitHearing, for good.
func (a *Adapter) heardItself() { a.hearingOnce.Do(func() { close(a.hearing) }) }

// refuse makes the namespace work on this server only: the database refused to LISTEN
// to its channel for its name, so no server can hear it there.
func (a *Adapter) refuse(err error) {
	a.heardItself() // nothing to wait for
	if a.unheard.Swap(true) {
		return
	}
	a.b.report(fmt.Errorf("pgadapter: namespace %q: %w (channel %q): %w; it works on this server only", a.name, ErrChannelRefused, a.channel, err))
}

// listening records that the channel was LISTENed, on the listener's connection conn
// (see Adapter.listenedOn).
func (a *Adapter) listening(conn uint64) {
	a.mu.Lock()
	a.listenedAt, a.listenedOn = time.Now(), conn
	a.mu.Unlock()
}

func later(x, y time.Time) time.Time {
	if x.After(y) {
		return x
	}
	return y
}

// answerAnnouncement publishes a HEARTBEAT for a server that announced itself, unless
// one is queued already, not yet taken into a batch by the publisher (and queued less
// than a heartbeat interval ago): that one is sent after the announcement arrived, so
// the announcing server, which listens before it announces, hears it. A tester's 20,000
// forged announcements made every server publish 19,000 heartbeats, and their receivers
// drop 11,000 messages (Node's adapter answers each too); so would servers that start
// together, each answering each. (Until the publisher's answer came back, as first made,
// a server that announced after the heartbeat was sent got no answer, and counted this
// one only at its next heartbeat: a reviewer's finding.)
func (a *Adapter) answerAnnouncement() {
	now := time.Now().UnixNano()
	at := a.answerQueued.Load()
	if at != 0 && time.Duration(now-at) < a.b.opts.HeartbeatInterval {
		return
	}
	if !a.answerQueued.CompareAndSwap(at, now) {
		return // another goroutine is answering
	}
	release := func() { a.answerQueued.CompareAndSwap(now, 0) }
	a.publishWith(wire.Heartbeat, nil, func(error) { release() }, release)
}

// announce tells the other servers this one is here; they answer with heartbeats.
func (a *Adapter) announce() { a.publish(wire.InitialHeartbeat, nil, nil) }

// heartbeat forgets servers silent for longer than the heartbeat timeout and publishes a
// HEARTBEAT if nothing this adapter published has committed for a heartbeat interval.
// Committed, not queued: a server whose every message failed (attachments it may not
// insert, say) sent no heartbeat, since it kept publishing, and the others dropped it
// while it was up and heard them (TestFailingMessagesKeepTheHeartbeat).
func (a *Adapter) heartbeat(now time.Time) {
	var gone []string
	a.mu.Lock()
	// Only the silence this server could hear: while its LISTEN connection is down,
	// every server falls silent to it. Counted from when it listened again, not from
	// their last message, they are dropped only if they stay silent. Dropped, the others
	// were not waited for: a tester's requests made during an outage of PostgreSQL, and
	// for 2 s after it, completed with this server's answers only and no error.
	//
	// A connection that falls silent without closing is found out only by its ping,
	// a heartbeat interval later at least: until then, the silence is counted up to a
	// heartbeat interval past the last time this server heard its own messages, which it
	// publishes at least that often (a reviewer's finding: a stalled connection had the
	// others dropped before it was found out).
	echo := a.lastEcho.Load()
	if hearing := echo != 0 && a.rt != nil && a.rt.lis != nil && !a.listenedAt.IsZero() && a.listenedOn == a.rt.lis.conns.Load(); hearing {
		until := time.Unix(0, echo).Add(a.b.opts.HeartbeatInterval)
		if now.Before(until) {
			until = now
		}
		for uid, seen := range a.nodes {
			if until.Sub(later(seen, a.listenedAt)) > a.b.opts.HeartbeatTimeout {
				gone = append(gone, uid)
			}
		}
	}
	for uid, at := range a.left {
		if now.Sub(at) > 2*a.b.opts.HeartbeatTimeout {
			delete(a.left, uid)
		}
	}
	for uid, at := range a.timedOut {
		if now.Sub(at) > forgetAfter*a.b.opts.HeartbeatTimeout {
			delete(a.timedOut, uid)
			if _, back := a.nodes[uid]; !back {
				delete(a.capable, uid)
			}
		}
	}
	a.nodes = shrink(a.nodes, &a.peaks[0])
	a.capable = shrink(a.capable, &a.peaks[1])
	a.timedOut = shrink(a.timedOut, &a.peaks[2])
	a.left = shrink(a.left, &a.peaks[3])
	a.inlineWarned = shrink(a.inlineWarned, &a.peaks[4])
	a.mu.Unlock()
	if a.rec != nil {
		a.rec.sweep(now)
	}
	for _, uid := range gone {
		// Only if nothing came from it since gone was made (logged then).
		a.removeNode(uid, now.Add(-a.b.opts.HeartbeatTimeout))
	}
	// Only while this server hears the others: a heartbeat says it can answer their
	// requests, and Node's adapter waits for every server it counts. Listening again,
	// it announces itself, and they count it again. Its other messages (its clients'
	// broadcasts) still count it, as any message does on every server, Node's too: a
	// server that cannot hear but publishes is waited for by the others' requests until
	// their timeout, for as long as its listener reconnects.
	// Due a tick early: the first tick a full interval after the last message came up to
	// a tick period later, which made the interval 1.25 times the setting, or a second
	// more (5 s gave 6 s), and a HeartbeatTimeout less than that above the interval had
	// every server dropped between two heartbeats.
	every := a.b.opts.HeartbeatInterval - tickPeriod(&a.b.opts)
	if now.Sub(time.Unix(0, a.lastPublish.Load())) >= every && now.Sub(time.Unix(0, a.lastHeartbeat.Load())) >= every &&
		a.rt != nil && a.rt.lis.isSynced() {
		a.lastHeartbeat.Store(now.UnixNano())
		a.publish(wire.Heartbeat, nil, nil)
	}
}

// heard records that a message from a known server arrived, when it arrives rather than
// when it is applied: the heartbeat timeout measures the server's silence, not this
// one's delivery, which a slow handler or a backlog can hold up for longer than the
// timeout (every server was dropped then, and their requests completed without their
// answers).
func (a *Adapter) heard(uid string, at time.Time) {
	a.mu.Lock()
	if last, known := a.nodes[uid]; known && at.After(last) {
		a.nodes[uid] = at
	}
	a.mu.Unlock()
}

// onMessage applies a message from another server or an emitter.
func (a *Adapter) onMessage(m *wire.Message) {
	if a.closed.Load() || m.UID == a.uid {
		return
	}
	if m.Type == wire.AdapterClose {
		a.leave(m.UID, true)
		return
	}
	// An empty uid is no server (Node ignores it too): anyone may NOTIFY one, and every
	// request would wait for it.
	if m.UID != wire.EmitterUID && m.UID != "" {
		a.mu.Lock()
		if _, gone := a.left[m.UID]; !gone { // else sent before its ADAPTER_CLOSE, arrived after it
			a.nodes[m.UID] = time.Now()
			if m.Type == wire.InitialHeartbeat || m.Type == wire.Heartbeat {
				a.capable[m.UID] = slices.Contains(m.Caps, wire.CapAllRooms)
			}
		}
		a.mu.Unlock()
	}
	switch m.Type {
	case wire.InitialHeartbeat:
		a.answerAnnouncement()
	case wire.Heartbeat:
	case wire.Broadcast:
		d := m.Data.(*wire.BroadcastData)
		packet := &parser.Packet{Type: parser.EVENT}
		raw := d.Packet.Raw
		var norm []any
		if d.Packet.Data != nil { // decoded in full (an attachment, or an unusual shape)
			// Written as JSON text once a socket is to get it (see encode), not here:
			// on most servers, a broadcast to a room matches none.
			packet.Data, norm = d.Packet.Data, d.Packet.Data
		}
		opts := broadcastOpts(d.Opts)
		if d.RequestID == "" {
			a.localBroadcast(packet, opts, raw, norm)
			return
		}
		a.localBroadcastWithAck(packet, opts, raw, norm, func(n uint64) {
			a.publish(wire.BroadcastClientCount, &wire.ClientCountData{RequestID: d.RequestID, ClientCount: n}, nil)
		}, func(args []any, _ error) {
			a.publish(wire.BroadcastAck, &wire.AckData{RequestID: d.RequestID, Packet: a.firstArg(args)}, nil)
		})
	case wire.SocketsJoin:
		d := m.Data.(*wire.RoomsData)
		a.Adapter.AddSockets(fromWireOpts(d.Opts), socketRooms(d.Rooms))
	case wire.SocketsLeave:
		d := m.Data.(*wire.RoomsData)
		a.Adapter.DelSockets(fromWireOpts(d.Opts), socketRooms(d.Rooms))
	case wire.DisconnectSockets:
		d := m.Data.(*wire.DisconnectData)
		a.Adapter.DisconnectSockets(fromWireOpts(d.Opts), d.Close)
	case wire.FetchSockets:
		d := m.Data.(*wire.FetchData)
		a.Adapter.FetchSockets(fromWireOpts(d.Opts))(func(sockets []socket.SocketDetails, _ error) {
			infos := make([]wire.SocketInfo, 0, len(sockets))
			for _, s := range sockets {
				infos = append(infos, a.socketInfo(s))
			}
			a.publish(wire.FetchSocketsResponse, &wire.FetchResponseData{RequestID: d.RequestID, Sockets: infos}, nil)
		})
	case wire.ServerSideEmit:
		d := m.Data.(*wire.ServerSideEmitData)
		a.serverSideEmit(d)
	case wire.AllRooms:
		d := m.Data.(*wire.AllRoomsData)
		a.publish(wire.AllRoomsResponse, &wire.AllRoomsResponseData{RequestID: d.RequestID, Rooms: roomStrings(a.Rooms().Keys())}, nil)
	default:
		if m.Type.IsResponse() {
			a.onResponse(m)
		}
	}
}

// serverSideEmit runs the application's handlers of a server-side event (see
// runtime.watchHandlers), with an ack that answers the sender when it asked for
// answers.
func (a *Adapter) serverSideEmit(d *wire.ServerSideEmitData) {
	if d.RequestID == "" {
		a.Nsp().OnServerSideEmit(d.Packet)
		return
	}
	var once sync.Once
	reply := socket.Ack(func(args []any, _ error) {
		once.Do(func() {
			a.publish(wire.ServerSideEmitResponse, &wire.AckData{RequestID: d.RequestID, Packet: a.firstArg(args)}, nil)
		})
	})
	a.Nsp().OnServerSideEmit(append(d.Packet[:len(d.Packet):len(d.Packet)], reply))
}

// leave applies a server's ADAPTER_CLOSE: it is no longer counted, nothing it sent
// before that arrives later counts it again, and, with requests, no request waits for
// it any more. ADAPTER_CLOSE is applied twice (see answer in receive.go): in order with
// the server's answers, with requests, and in order with its other messages, without
// them unless the first copy was applied already (see delivery.closeApplied).
func (a *Adapter) leave(uid string, requests bool) {
	if a.closed.Load() {
		return
	}
	if uid != "" {
		a.mu.Lock()
		a.left[uid] = time.Now()
		a.mu.Unlock()
	}
	a.dropNode(uid, time.Time{}, requests)
}

// firstArg is the value that travels in an acknowledgement: the first argument only, as
// Node sends it.
func (a *Adapter) firstArg(args []any) any {
	if len(args) == 0 {
		return nil
	}
	v, _, err := wire.Normalize(args[0])
	if err != nil {
		a.b.report(fmt.Errorf("pgadapter: namespace %q: acknowledgement argument: %w", a.name, err))
		return nil
	}
	return v
}

// membersLocked returns the uids of the other servers known now. a.mu is held.
func (a *Adapter) membersLocked() map[string]struct{} {
	m := make(map[string]struct{}, len(a.nodes))
	for uid := range a.nodes {
		m[uid] = struct{}{}
	}
	return m
}

// allRead reports whether every other server known now reads inline binary
// notifications: it advertised pgadapter's capabilities in a heartbeat. While a Node.js
// server (or a server not yet heard from by heartbeat) is known, Options.InlineBinary
// falls back to the attachments table, so that its clients miss nothing.
func (a *Adapter) allRead() bool {
	a.mu.Lock()
	for uid := range a.nodes {
		if !a.capable[uid] {
			warn := a.warnInlineLocked(uid)
			a.mu.Unlock()
			warn() // the logger is the application's: not under a.mu
			return false
		}
	}
	a.mu.Unlock()
	return true
}

// warnInlineLocked returns the log, once per server, that InlineBinary is held back
// because of it, to run once a.mu, held here, is released.
func (a *Adapter) warnInlineLocked(uid string) (warn func()) {
	if _, seen := a.capable[uid]; !seen || a.inlineWarned[uid] {
		return noReport // not heard by heartbeat yet, or said already
	}
	a.inlineWarned[uid] = true
	return func() {
		a.b.opts.Logger.Warn("pgadapter: InlineBinary is on, but a server that does not read inline binary (a Node.js server?) is in the cluster: binary messages go through the attachments table while it is", "namespace", a.name, "uid", uid)
	}
}

// capableMembersLocked returns the uids of the other servers known now that answer
// AllRooms. a.mu is held.
func (a *Adapter) capableMembersLocked() map[string]struct{} {
	m := map[string]struct{}{}
	for uid := range a.nodes {
		if a.capable[uid] {
			m[uid] = struct{}{}
		}
	}
	return m
}

func clone(m map[string]struct{}) map[string]struct{} {
	c := make(map[string]struct{}, len(m))
	for k := range m {
		c[k] = struct{}{}
	}
	return c
}

func isLocal(opts *socket.BroadcastOptions) bool {
	return opts != nil && opts.Flags != nil && opts.Flags.Local
}

// toOwnSocket reports whether opts target the room named by the id of a socket of this
// server, alone and with no exceptions, on a server with ConnectionStateRecovery. Such a
// server's sockets send their own emits (socket.Emit) through the adapter's Broadcast,
// so that they are kept with offsets for the socket's session (recovery.go): published,
// each would be a NOTIFY that every server decodes for a socket none of them has
// (TestDirectEmitsStayLocal). Socket ids are unique, and sessions are restored on the
// server that kept them, so they are delivered here only. The cost: with recovery on,
// io.To(id) of a socket of this server misses sockets of other servers that an
// application joined to a room named by that id.
func (a *Adapter) toOwnSocket(opts *socket.BroadcastOptions) bool {
	if a.rec == nil || opts == nil || opts.Rooms == nil || opts.Rooms.Len() != 1 || opts.Except != nil && opts.Except.Len() > 0 {
		return false
	}
	id := socket.SocketId(opts.Rooms.Keys()[0])
	_, ok := a.Nsp().Sockets().Load(id)
	return ok || a.rec.restoringSocket(id) // restored, in a middleware: held until it connects
}

func timeoutOf(opts *socket.BroadcastOptions, def time.Duration) time.Duration {
	if opts != nil && opts.Flags != nil && opts.Flags.Timeout != nil && *opts.Flags.Timeout > 0 {
		return *opts.Flags.Timeout
	}
	return def
}

var _ socket.Adapter = (*Adapter)(nil)

// AllRooms returns every room of the namespace across the cluster: this server's, and
// those of every other pgadapter server (socket ids, which are rooms too, included). Node
// servers do not answer this request and are not waited for: pgadapter servers
// advertise the capability in their heartbeats. It returns when every capable server
// has answered or left, or with the rooms so far and an error when ctx ends or
// Options.RequestsTimeout passes.
func (a *Adapter) AllRooms(ctx context.Context) ([]socket.Room, error) {
	rooms := map[string]struct{}{}
	for _, r := range a.Rooms().Keys() {
		rooms[string(r)] = struct{}{}
	}
	collect := func() []socket.Room {
		out := make([]socket.Room, 0, len(rooms))
		for r := range rooms {
			out = append(out, socket.Room(r))
		}
		slices.Sort(out)
		return out
	}
	if a.closed.Load() {
		return collect(), ErrClosed
	}
	if err := ctx.Err(); err != nil {
		// Asked of no one: with other servers known, the request went out all the same
		// and ended at once, and without, the local rooms came with no error.
		return collect(), err
	}
	type result struct {
		rooms map[string]struct{}
		err   error
	}
	done := make(chan result, 1)
	id := randomID()
	if !a.track(id, &request{kind: wire.AllRooms, rooms: rooms,
		onRooms: func(r map[string]struct{}, err error) { done <- result{r, err} }}, a.b.opts.RequestsTimeout, a.capableMembersLocked) {
		return collect(), nil // no other pgadapter server
	}
	a.publish(wire.AllRooms, &wire.AllRoomsData{RequestID: id}, a.abandonOnError(id))
	select {
	case r := <-done:
		rooms = r.rooms
		return collect(), r.err
	case <-ctx.Done():
		a.finish(id, ctx.Err())
		r := <-done
		rooms = r.rooms
		return collect(), r.err
	}
}

// AllRooms returns every room of namespace nsp across the cluster (see Adapter.AllRooms).
// For a namespace whose adapter is not a pgadapter one, it returns the local rooms (with
// ctx's error when ctx has ended, as for a pgadapter one).
func AllRooms(ctx context.Context, nsp socket.Namespace) ([]socket.Room, error) {
	if a, ok := nsp.Adapter().(*Adapter); ok {
		return a.AllRooms(ctx)
	}
	rooms := nsp.Adapter().Rooms().Keys()
	slices.Sort(rooms)
	return rooms, ctx.Err()
}
