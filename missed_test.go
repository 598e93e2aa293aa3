package pgadapter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/socketio-pg/pgadapter/internal/wire"
	"github.com/zishang520/socket.io/v2/socket"
)

// total sums a Stats count by type.
func total(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

// accounting is what server A published, and what B received, counted missed and
// dropped, since a moment of the test.
type accounting struct{ published, received, missed, dropped int64 }

// awaitAccounted waits until every message a published since a0 (a's Stats then), at
// least least of them, is one b received, counted missed or dropped since b0, and returns
// the counts; it fails the test after waitFor. (a counts a message published once its
// batch's commit returns, which can be after b has it.)
func awaitAccounted(t *testing.T, a, b *node, a0, b0 Stats, least int64) accounting {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		sa, sb := a.b.Stats(), b.b.Stats()
		c := accounting{total(sa.Published) - total(a0.Published), total(sb.Received) - total(b0.Received),
			sb.Missed - b0.Missed, sb.ReceiveDrops - b0.ReceiveDrops}
		if c.published >= least && c.published == c.received+c.missed+c.dropped {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("A published %d messages; B received %d, counted %d missed and dropped %d", c.published, c.received, c.missed, c.dropped)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestMissedMessagesAreCounted: what A publishes while B's LISTEN connection is down
// never reaches B (PostgreSQL keeps nothing for an absent listener); B counts it from
// the gap in A's numbers, and reports it. Every message of A is then either received by
// B or counted missed, exactly.
func TestMissedMessagesAreCounted(t *testing.T) {
	opts := testOptions(t)
	quiet(&opts) // every message A publishes is then one the test accounts for
	a, b := startPair(t, opts, func(*Options) {})
	cb := b.connect(t, "/", "cb")
	fence := func(name string) {
		a.io.Emit(name)
		cb.sent.next(t, "B", name)
	}
	fence("before")
	b0 := b.b.Stats()
	// A counts a message published once its batch's commit returns, which may be after
	// B heard it: the count is taken once it has the fence.
	eventually(t, "A counts its fence published", func() bool { return a.b.Stats().Published["BROADCAST"] == 1 })
	a0 := a.b.Stats()
	if b0.Missed != 0 || b0.ReceiveDrops != 0 {
		t.Fatalf("B counts %d missed and %d dropped before any fault", b0.Missed, b0.ReceiveDrops)
	}

	const kills = 3
	sent := 0
	for k := range kills {
		pid := b.b.listenerPID()
		terminate(t, a.pool, pid)
		// A goes on publishing until B listens again: what commits meanwhile is lost
		// for B.
		deadline := time.Now().Add(waitFor)
		for i := 0; ; i++ {
			a.io.Emit("m", k, i)
			sent++
			if p := b.b.listenerPID(); p != 0 && p != pid && b.b.Stats().ListenerUp {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("B's listener not back")
			}
			if i%10 == 9 {
				time.Sleep(time.Millisecond) // pace A, so that its messages span the outage
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		err := b.b.Ready(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	fence("after")
	// B's announcement after each reconnection has A answer it, maybe after the fence:
	// every message A published is received by B or counted missed, once it has arrived.
	c := awaitAccounted(t, a, b, a0, b0, 0)
	missed := c.missed
	if a.b.Stats().PublishErrors != 0 {
		t.Fatalf("A failed to publish: %d", a.b.Stats().PublishErrors)
	}
	if missed == 0 {
		t.Fatalf("nothing missed over %d kills of B's listener (%d broadcasts sent meanwhile): the test did not test", kills, sent)
	}
	delivered := len(cb.sent.drain("m"))
	if int64(sent-delivered) > missed {
		t.Errorf("%d of %d broadcasts not delivered, %d counted missed", sent-delivered, sent, missed)
	}
	var reported uint64
	for _, e := range b.errs.drain("error") {
		var me *MissedError
		if err := e[0].(error); errors.As(err, &me) && errors.Is(err, ErrMissed) {
			if me.Server != a.io.Sockets().Adapter().(*Adapter).UID() || me.Namespace != "/" || me.Next-me.After-1 != me.Missed {
				t.Errorf("report %+v: not A's, or its numbers do not add up", me)
			}
			reported += me.Missed
		}
	}
	if reported != uint64(missed) {
		t.Errorf("%d missed counted, %d reported", missed, reported)
	}
	t.Logf("%d messages of A: %d received by B, %d missed; %d of %d broadcasts delivered", c.published, c.received, missed, delivered, sent)
}

// TestNothingMissedWithoutFaults: numbers that run on through batches, and namespaces
// removed and made again on either side (a new adapter, with another uid, on the side
// that removed it; on the other, numbers that went on while it did not listen), leave
// no gap.
func TestNothingMissedWithoutFaults(t *testing.T) {
	opts := testOptions(t)
	so := socket.DefaultServerOptions()
	so.SetCleanupEmptyChildNamespaces(true)
	nodes := make([]*node, 2)
	for i, name := range []string{"A", "B"} {
		n := newNodeWith(t, name, newPool(t), opts, so)
		n.io.Of(regexpNamespace(`^/dyn$`), nil)
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		err := n.b.Ready(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		nodes[i] = n
	}
	waitServerCount(t, nodes, 2)
	clients := make([]*tclient, 2)
	for round := range 4 {
		for i, n := range nodes {
			if clients[i] == nil {
				clients[i] = n.connect(t, "/dyn", fmt.Sprintf("c%d-%d", i, round))
			}
		}
		for i := range 300 {
			for _, n := range nodes {
				n.io.Of("/dyn", nil).Emit("m", i)
			}
		}
		end := fmt.Sprintf("end-%d", round)
		for i, n := range nodes {
			n.io.Of("/dyn", nil).Emit(end)
			clients[1-i].sent.next(t, nodes[1-i].name, end)
		}
		// One side's namespace empties, and socket.io removes it; the other goes on
		// publishing meanwhile, unheard by it.
		gone := round % 2
		channel := ChannelName(opts.ChannelPrefix, "/dyn")
		adapter := nodes[gone].b.adapter(channel)
		clients[gone].s.Disconnect()
		clients[gone] = nil
		eventually(t, "the namespace's adapter closes", func() bool { return adapter.closed.Load() })
		for i := range 100 {
			nodes[1-gone].io.Of("/dyn", nil).Emit("unheard", i)
		}
	}
	for _, n := range nodes {
		n.io.Of("/dyn", nil).Emit("last")
	}
	for i := range clients {
		if clients[i] != nil {
			clients[i].sent.next(t, nodes[i].name, "last")
		}
	}
	for _, n := range nodes {
		if m := n.b.Stats().Missed; m != 0 {
			t.Errorf("%s counts %d missed messages without a fault", n.name, m)
		}
	}
}

// TestSlowReceiverDropsNotCountedMissed: a receiver that keeps up only in part (an
// outgoing-packet listener that takes 2 ms a message) lets a notification in now and
// then between runs it drops, up to ReceiveQueueSize runs waiting at once. Its drops are
// reported as drops, and not again as missed: every message of A is received by B,
// dropped by it, or (none here) missed. Keeping 64 runs per sender counted 1,154 of a
// tester's 1,325 drops again.
func TestSlowReceiverDropsNotCountedMissed(t *testing.T) {
	opts := testOptions(t)
	quiet(&opts)
	opts.ReceiveQueueSize = 300
	opts.Logger = slog.New(slog.DiscardHandler) // the drops are expected
	a, b := startPair(t, opts, func(*Options) {})
	cb := b.connect(t, "/", "cb")
	for _, s := range b.socketsNamed("/", "cb") {
		s.OnAnyOutgoing(func(args ...any) {
			if args[0] == "n" {
				time.Sleep(2 * time.Millisecond) // the application's work, not a wait
			}
		})
	}
	a.io.Emit("before")
	cb.sent.next(t, "B", "before")
	b0 := b.b.Stats()
	eventually(t, "A counts its fence published", func() bool { return a.b.Stats().Published["BROADCAST"] == 1 })
	a0 := a.b.Stats()
	for i := range 3000 {
		a.io.Emit("n", i)
		if i%5 == 4 {
			time.Sleep(5 * time.Millisecond) // about 1000 a second: B takes half
		}
	}
	c := awaitAccounted(t, a, b, a0, b0, 3000)
	if c.dropped == 0 {
		t.Fatal("B dropped nothing: the test did not test")
	}
	if c.missed != 0 {
		t.Errorf("B counts %d of its %d drops again as missed", c.missed, c.dropped)
	}
	t.Logf("A published %d; B received %d and dropped %d", c.published, c.received, c.dropped)
}

// TestForgedNumbers: any role can notify on the channel, with another server's uid and
// any number. A jump beyond maxGap, or a number below the last, is ignored, not taken
// for billions missed, and the count never wraps. Forged gaps that look real are
// reported, each to the ErrorHandler, but to the log at most maxMalformedLogs a second.
func TestForgedNumbers(t *testing.T) {
	opts := testOptions(t)
	quiet(&opts)
	logs := &logRecorder{}
	a, b := startPair(t, opts, func(o *Options) { o.Logger = slog.New(logs) })
	cb := b.connect(t, "/", "cb")
	root := a.io.Sockets().Adapter().(*Adapter)
	js, err := wire.EncodeJSON(&wire.Message{Type: wire.Broadcast, UID: root.UID(), Nsp: "/",
		Data: &wire.BroadcastData{Packet: wire.Packet{Type: wire.EventPacketType, Data: []any{"forged"}}}})
	if err != nil {
		t.Fatal(err)
	}
	forge := func(seqs []uint64) {
		payloads := make([]string, len(seqs))
		for i, seq := range seqs {
			payloads[i] = string(wire.AppendSeq(nil, js, seq))
		}
		if _, err := a.pool.Exec(context.Background(), "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", root.Channel(), payloads); err != nil {
			t.Fatal(err)
		}
		a.io.Emit("after")
		cb.sent.next(t, "B", "after")
	}
	var seqs []uint64
	for i := range 200 {
		seqs = append(seqs, []uint64{1, 1 << 53}[i%2])
	}
	forge(seqs)
	if m := b.b.Stats().Missed; m != 0 {
		t.Errorf("B counts %d missed after 200 forged numbers below the last or beyond maxGap", m)
	}
	seqs = seqs[:0]
	for i := range 300 {
		seqs = append(seqs, 1000+2*uint64(i)) // one skipped before each
	}
	forge(seqs)
	if m := b.b.Stats().Missed; m < 300 || m > 1300 { // the jump to 1,000, and one a message
		t.Errorf("B counts %d missed after 300 forged gaps from 1,000 on", m)
	}
	if n := logs.warnings(); n > 5*maxMalformedLogs {
		t.Errorf("%d warnings logged for 300 forged gaps", n)
	}
	var reported int
	for _, e := range b.errs.drain("error") {
		if errors.Is(e[0].(error), ErrMissed) {
			reported++
		}
	}
	if reported < 300 {
		t.Errorf("%d gaps reported to the ErrorHandler, want 300 at least", reported)
	}
}

// sequenceRig is a runtime and an adapter of a Builder made by hand, whose decode sees
// numbered notifications from server "other" on channel "ch" (and its own, "me").
func sequenceRig(t *testing.T) (rt *runtime, notify func(payload string)) {
	var b Builder
	b.init()
	b.opts.Logger = slog.New(slog.DiscardHandler)
	b.opts.HeartbeatTimeout = time.Second
	b.opts.ReceiveQueueSize = 100
	b.adapters = map[string]*Adapter{}
	rt = &runtime{b: &b, heardAt: map[heardKey]time.Time{}}
	a := &Adapter{b: &b, name: "/", channel: "ch", uid: "me", ownSuffix: wire.OwnSuffix("me"), ownPrefix: wire.OwnPrefix("me"),
		rt: rt, nodes: map[string]time.Time{}}
	b.adapters[a.channel] = a
	return rt, func(payload string) { rt.decode(&pgconn.Notification{Channel: "ch", Payload: payload}) }
}

// numberedFrom is a broadcast of uid numbered seq.
func numberedFrom(uid string, seq uint64) string {
	js, _ := wire.EncodeJSON(&wire.Message{Type: wire.Broadcast, UID: uid, Nsp: "/",
		Data: &wire.BroadcastData{Packet: wire.Packet{Type: wire.EventPacketType, Data: []any{"e"}}}})
	return string(wire.AppendSeq(nil, js, seq))
}

// A batch PostgreSQL committed after a later one (its connection failed once sent, and
// its sender reported it lost) arrives with lower numbers: counted missed once, when the
// later batch showed the gap, and not again; the numbers received since are not counted
// missed at the next message.
func TestLateNumbersCountedOnce(t *testing.T) {
	rt, notify := sequenceRig(t)
	for _, seq := range []uint64{1, 2, 3, 7, 8, 4, 5, 6, 9} {
		notify(numberedFrom("other", seq))
	}
	if m := rt.b.stats.missed.Load(); m != 3 {
		t.Errorf("%d counted missed, want 3 (4 to 6, when 7 came)", m)
	}
}

// Notifications dropped unread are not counted missed: the listener's drops, and one
// dispatch could not decode (reported as malformed). This server's own echoes, which
// no gap is looked for in, are not kept.
func TestDroppedNumbersNotMissed(t *testing.T) {
	rt, notify := sequenceRig(t)
	notify(numberedFrom("other", 1))
	rt.dropped(&pgconn.Notification{Channel: "ch", Payload: numberedFrom("other", 2)})
	rt.dropped(&pgconn.Notification{Channel: "ch", Payload: numberedFrom("me", 7)})
	notify(`{"seq":3,"type":99,"data":1,"uid":"other"}`) // malformed
	notify(numberedFrom("other", 4))
	if m := rt.b.stats.missed.Load(); m != 0 {
		t.Errorf("%d counted missed, want 0", m)
	}
	if mal := rt.b.stats.malformed.Load(); mal != 1 {
		t.Errorf("%d malformed, want 1", mal)
	}
	if len(rt.drops) != 0 || rt.dropRuns != 0 {
		t.Errorf("drops kept: %v (%d runs)", rt.drops, rt.dropRuns)
	}
	notify(numberedFrom("other", 6))
	if m := rt.b.stats.missed.Load(); m != 1 {
		t.Errorf("%d counted missed, want 1 (5)", m)
	}
}

// A late number the listener drops is in no gap: it does not hide the next one.
func TestLateDroppedNumberHidesNoGap(t *testing.T) {
	rt, notify := sequenceRig(t)
	for _, seq := range []uint64{1, 2, 3, 7} {
		notify(numberedFrom("other", seq)) // 4 to 6 missed
	}
	rt.dropped(&pgconn.Notification{Channel: "ch", Payload: numberedFrom("other", 5)}) // late, and dropped
	notify(numberedFrom("other", 8))
	notify(numberedFrom("other", 10))
	if m := rt.b.stats.missed.Load(); m != 4 {
		t.Errorf("%d counted missed, want 4 (4 to 6, and 9)", m)
	}
}
