package pgadapter

import (
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/socketio-pg/pgadapter/internal/wire"
)

// watchHearing over a LISTEN connection that heard none of this server's messages for a
// heartbeat timeout, although batches were committed in the first half: reported once,
// as deaf, whether it heard nothing or other servers' notifications (another cluster in
// the database it reached, which it used to take for hearing). Not reported when it
// reconnected between two ticks (the listener never seen down), whose gap lost the
// echoes, nor while the notifications heard wait to be examined, nor when the receive
// queue dropped some, nor when echoes arrive.
func TestWatchHearing(t *testing.T) {
	for _, c := range []struct {
		name string
		want int
		tick func(rt *runtime)
	}{
		{"silent", 1, func(*runtime) {}},
		{"others", 1, func(rt *runtime) { rt.lis.heard.Add(5); rt.examined.Add(5) }},
		{"reconnecting", 0, func() func(*runtime) {
			ticks := 0
			return func(rt *runtime) {
				if ticks++; ticks%3 == 0 {
					rt.b.stats.listenerConnects.Add(1)
				}
			}
		}()},
		{"behind", 0, func(rt *runtime) { rt.lis.heard.Add(5) }},
		{"dropping", 0, func(rt *runtime) { rt.lis.heard.Add(5); rt.examined.Add(4); rt.b.drops.n.Add(1) }},
		{"echoes", 0, func(rt *runtime) { rt.lis.heard.Add(5); rt.examined.Add(5); rt.echoes.Add(1) }},
	} {
		var reported []error
		b := &Builder{opts: Options{HeartbeatTimeout: 4 * time.Second, Logger: slog.New(slog.DiscardHandler),
			ErrorHandler: func(err error) { reported = append(reported, err) }}}
		rt := &runtime{b: b, lis: &listener{synced: true}, pub: &publisher{}}
		var w hearing
		start := time.Unix(1000, 0)
		for tick := 0; tick <= 12; tick++ { // a tick a second, three timeouts long
			now := start.Add(time.Duration(tick) * time.Second)
			if tick%2 == 1 {
				rt.pub.commits.Add(1) // a heartbeat every other second, never heard
			}
			c.tick(rt)
			rt.watchHearing(now, &w)
		}
		b.reports.wait(waitFor)
		if len(reported) != c.want {
			t.Errorf("%s: %d reports, want %d: %v", c.name, len(reported), c.want, reported)
		}
	}
}

// A runtime that stops while a newer one serves the same channel (the last namespace
// closed, and another server's namespace given the Builder at once) leaves the newer
// runtime's adapters alone: it handed them what its own listener still heard, beside
// the newer listener, which hears the same, so that an adapter could get a message twice.
func TestStaleRuntimeLeavesNewerAdapters(t *testing.T) {
	b := &Builder{adapters: map[string]*Adapter{}, opts: Options{HeartbeatTimeout: time.Second, Logger: slog.New(slog.DiscardHandler)}}
	stale := &runtime{b: b, heardAt: map[heardKey]time.Time{}}
	current := &runtime{b: b, heardAt: map[heardKey]time.Time{}}
	a := &Adapter{b: b, channel: "ch", uid: "me", ownSuffix: wire.OwnSuffix("me"), ownPrefix: wire.OwnPrefix("me"),
		rt: current, nodes: map[string]time.Time{}}
	b.adapters[a.channel] = a
	n := &pgconn.Notification{Channel: a.channel, Payload: `{"type":3,"uid":"other","nsp":"/","data":{"packet":{"type":2,"data":["e"]},"opts":{}}}`}
	if d := stale.decode(n); d != nil {
		t.Fatal("a stopping runtime decoded a message for a newer runtime's adapter")
	}
	if d := current.decode(n); d == nil || d.a != a {
		t.Fatalf("the adapter's own runtime did not decode its message: %+v", d)
	}
}
