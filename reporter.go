package pgadapter

import (
	"fmt"
	"log/slog"
	goruntime "runtime"
	"runtime/debug"
	"sync"
	"time"
)

// maxPendingReports bounds the calls of the application's callbacks waiting for the
// reporter. Beyond it, a report is logged but not passed on, and the callback is told
// how many it missed once it has caught up.
const maxPendingReports = 1 << 16

// maxPendingBytes bounds them by size too, reckoned from what each report holds: a
// malformed notification's error carries its payload, up to 8000 bytes, and 65,536 of
// them held half a gigabyte while a handler was blocked.
const maxPendingBytes = 16 << 20

// reportSize is what a queued report is reckoned to hold, beyond its payload.
const reportSize = 256

// reporter calls the application's callbacks (Options.ErrorHandler and
// OnListenerState) on a goroutine of its own, one at a time, in the order of the
// reports. They used to run on the goroutine that met the error (the publisher, the
// listener, the cleanup...). A slow handler, one that sends the error over the network,
// then held up the publishing of every message; and a handler that closed its own server
// made Close wait for the very goroutine that was running it, RequestsTimeout and 5 s,
// then report that the adapter's goroutines did not stop. The goroutine is started when
// there is something to deliver, and ends when there is nothing left: a Builder with
// nothing to report has none.
//
// The zero value is ready to use.
type reporter struct {
	log *slog.Logger // for a callback that panics; slog.Default() when nil
	// behind, when set, is called on the delivering goroutine with the number of calls
	// dropped because the queue was full, once the queue has emptied.
	behind func(dropped int)

	mu       sync.Mutex
	queue    []pending
	bytes    int           // reckoned size of the queue (see maxPendingBytes)
	busy     bool          // a goroutine is delivering (see run)
	gid      uint64        // that goroutine's id, to know when wait is called from a callback
	released uint64        // the delivering goroutine's id, when its callback is not waited for (see release)
	dropped  int           // reports not queued since the last summary (see add)
	idle     chan struct{} // closed when the delivering goroutine ends; nil while no one waits
}

// pending is a queued call, and its reckoned size.
type pending struct {
	call func()
	size int
}

// add queues a call of the application's callback, reckoned to hold size bytes.
func (r *reporter) add(call func(), size int) {
	size += reportSize
	r.mu.Lock()
	if len(r.queue) >= maxPendingReports || r.bytes+size > maxPendingBytes {
		r.dropped++
		r.mu.Unlock()
		return
	}
	r.queue = append(r.queue, pending{call, size})
	r.bytes += size
	start := !r.busy
	r.busy = true
	r.mu.Unlock()
	if start {
		go r.run()
	}
}

// run delivers the queued calls until none is left.
func (r *reporter) run() {
	id := goid()
	for {
		r.mu.Lock()
		r.gid, r.released = id, 0
		if len(r.queue) == 0 && r.dropped > 0 && r.behind != nil {
			n := r.dropped
			r.dropped = 0
			r.queue = append(r.queue, pending{call: func() { r.behind(n) }})
		}
		if len(r.queue) == 0 {
			r.busy, r.gid = false, 0
			if r.idle != nil {
				close(r.idle)
				r.idle = nil
			}
			r.mu.Unlock()
			return
		}
		call := r.queue[0].call
		r.bytes -= r.queue[0].size
		r.queue[0] = pending{}
		r.queue = r.queue[1:]
		if len(r.queue) == 0 {
			r.queue = nil // the array would otherwise grow with every report
		}
		r.mu.Unlock()
		if !r.call(call) {
			return // another goroutine carries on
		}
	}
}

// call runs one callback, and reports whether this goroutine may go on delivering: a
// callback that panics is logged, and the next one is called; one that ends its
// goroutine (runtime.Goexit, as t.FailNow does) leaves the rest to a new goroutine.
func (r *reporter) call(f func()) (goOn bool) {
	returned := false
	defer func() {
		if returned {
			return
		}
		if p := recover(); p != nil {
			// Logged, not passed to the ErrorHandler: it may be the one that panicked,
			// and would again.
			log := r.log
			if log == nil {
				log = slog.Default()
			}
			log.Error("pgadapter: an ErrorHandler or OnListenerState callback panicked", "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			goOn = true
			return
		}
		go r.run()
	}()
	f()
	returned = true
	return true
}

// wait returns true once no call is left to deliver (every one queued so far has
// returned, and any queued meanwhile), or false when d runs out first. Called from a
// callback (which closes its server), it returns true at once: the callback cannot wait
// for itself, and the calls queued behind it follow it.
func (r *reporter) wait(d time.Duration) bool {
	r.mu.Lock()
	if !r.busy || r.gid == goid() || r.released != 0 && r.released == r.gid {
		r.mu.Unlock()
		return true
	}
	if r.idle == nil {
		r.idle = make(chan struct{})
	}
	idle := r.idle
	r.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-idle:
		return true
	case <-t.C:
		return false
	}
}

// release, called from a callback, lets wait return without waiting for that callback
// to return: it closes the Builder, whose Close closes the adapters on a goroutine of its
// own and waits for it, while that goroutine would wait for the callback.
func (r *reporter) release() {
	r.mu.Lock()
	if id := goid(); r.busy && r.gid == id {
		r.released = id
	}
	r.mu.Unlock()
}

// goid returns the id of the calling goroutine, from the first line of its stack
// ("goroutine 18 [running]:"). Go keeps the id to itself; the reporter needs it only to
// tell whether Close is called from one of the callbacks it runs, which a callback may
// do, and is then not to wait for itself.
func goid() uint64 {
	var buf [32]byte
	n := goruntime.Stack(buf[:], false)
	var id uint64
	for _, c := range buf[len("goroutine "):n] {
		if c < '0' || c > '9' {
			break
		}
		id = id*10 + uint64(c-'0')
	}
	return id
}
