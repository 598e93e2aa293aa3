package pgadapter

import (
	"log/slog"
	"testing"
	"time"
)

// watchHearing over a LISTEN connection that heard nothing for a heartbeat timeout,
// although batches were committed in the first half: reported once, as deaf. The same
// with a reconnection between two ticks (the listener never seen down), whose gap lost
// the echoes: not reported, the watch starting anew from the reconnection.
func TestWatchHearing(t *testing.T) {
	for _, reconnect := range []bool{false, true} {
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
			if reconnect && tick%3 == 2 {
				b.stats.listenerConnects.Add(1)
			}
			rt.watchHearing(now, &w)
		}
		if want := map[bool]int{false: 1, true: 0}[reconnect]; len(reported) != want {
			t.Errorf("reconnecting %v: %d reports, want %d: %v", reconnect, len(reported), want, reported)
		}
	}
}
