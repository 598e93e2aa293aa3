package pgadapter

import (
	"errors"
	goruntime "runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/zishang520/socket.io/v2/socket"
)

// TestPanicsAreRecovered makes user code panic on every goroutine of the adapter that
// runs it: a server-side event handler and an outgoing-packet listener (the delivery
// goroutine), a request callback given answers (the answers' delivery goroutine) and one
// given a timeout (a timer). Each panic is reported as a *PanicError, counted, and the
// servers go on delivering: without recovery the test binary would die.
func TestPanicsAreRecovered(t *testing.T) {
	opts := testOptions(t)
	opts.RequestsTimeout = 500 * time.Millisecond
	nodes := cluster(t, 2, opts)
	a, b := nodes[0], nodes[1]
	cb := b.connect(t, "/", "cb")

	got := newRecorder()
	b.io.On("boom", func(...any) { panic("boom!") })
	b.io.On("nil-map", func(...any) {
		var m map[string]int
		m["x"] = 1 // a runtime error
	})
	b.io.On("after", func(args ...any) { got.add("after", args...) })
	b.io.On("question", func(args ...any) { args[len(args)-1].(socket.Ack)([]any{"answer"}, nil) })
	b.io.On("silent", func(...any) {}) // never answers: the request times out
	for _, s := range b.socketsNamed("/", "cb") {
		s.OnAnyOutgoing(func(args ...any) {
			if args[0] == "explode" {
				panic("in an outgoing listener")
			}
		})
	}

	for _, ev := range []string{"boom", "nil-map"} {
		if err := a.io.ServerSideEmit(ev); err != nil {
			t.Fatal(err)
		}
	}
	a.io.Emit("explode")
	a.io.Emit("fine")
	if err := a.io.ServerSideEmit("after", 1.0); err != nil {
		t.Fatal(err)
	}
	if args := got.next(t, "B", "after"); len(args) != 1 || args[0] != 1.0 {
		t.Fatalf("after: %v", args)
	}
	cb.expect(t, "fine")

	callbacks := newRecorder()
	a.io.ServerSideEmitWithAck("question")(func(args []any, err error) {
		callbacks.add("answered", err)
		panic("in an answered callback")
	})
	a.io.ServerSideEmitWithAck("silent")(func(args []any, err error) {
		callbacks.add("expired", err)
		panic("in an expired callback")
	})
	if args := callbacks.next(t, "A", "answered"); args[0] != nil {
		t.Fatalf("answered with error %v", args[0])
	}
	if args := callbacks.next(t, "A", "expired"); !errors.Is(args[0].(error), ErrTimeout) {
		t.Fatalf("expired with %v, want ErrTimeout", args[0])
	}

	// B's three panics, then A's two, are reported; the servers still work both ways.
	checkPanics(t, b, []string{"boom!", "assignment to entry in nil map", "in an outgoing listener"})
	eventually(t, "A reports its two panics", func() bool { return a.errs.count("error") >= 2 })
	checkPanics(t, a, []string{"in an answered callback", "in an expired callback"})
	ca := a.connect(t, "/", "ca")
	a.io.Emit("again")
	ca.expect(t, "again")
	cb.expect(t, "again")
}

// checkPanics checks that n reported exactly the panics whose values contain want, in
// any order (they come from several goroutines), as *PanicError with a stack, and
// counted them.
func checkPanics(t *testing.T, n *node, want []string) {
	t.Helper()
	eventually(t, n.name+" reports its panics", func() bool { return n.errs.count("error") >= len(want) })
	errs := n.errs.drain("error")
	if len(errs) != len(want) {
		t.Fatalf("%s reported %d errors, want %d: %v", n.name, len(errs), len(want), errs)
	}
	matched := make([]bool, len(want))
	for _, e := range errs {
		err := e[0].(error)
		var p *PanicError
		if !errors.As(err, &p) || !errors.Is(err, ErrPanic) {
			t.Fatalf("%s: error %v, want a *PanicError", n.name, err)
		}
		i := slices.IndexFunc(want, func(w string) bool { return strings.Contains(err.Error(), w) })
		if i < 0 || matched[i] {
			t.Errorf("%s: error %q is none of %q, or one of them again", n.name, err, want)
			continue
		}
		matched[i] = true
		if !strings.Contains(string(p.Stack), "panic_test.go") {
			t.Errorf("%s: error %d's stack does not show where it panicked:\n%s", n.name, i, p.Stack)
		}
		var re goruntime.Error
		if isRuntime := errors.As(err, &re); isRuntime != strings.Contains(want[i], "nil map") {
			t.Errorf("%s: error %d: runtime error %v, want one only for the nil map", n.name, i, isRuntime)
		}
	}
	if got := n.b.Stats().Panics; got != int64(len(want)) {
		t.Errorf("%s: Stats().Panics = %d, want %d", n.name, got, len(want))
	}
}
