package pgadapter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	goruntime "runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zishang520/socket.io/v2/socket"
)

// The reporter calls its callbacks in order, goes on after one that panics or ends its
// goroutine (runtime.Goexit), and wait returns once all have returned.
func TestReporterSurvivesItsCallbacks(t *testing.T) {
	var r reporter
	r.log = slog.New(slog.DiscardHandler)
	var mu sync.Mutex
	var got []int
	record := func(i int) func() {
		return func() { mu.Lock(); got = append(got, i); mu.Unlock() }
	}
	r.add(record(1), 0)
	r.add(func() { panic("handler") }, 0)
	r.add(record(2), 0)
	r.add(func() { goruntime.Goexit() }, 0)
	r.add(record(3), 0)
	if !r.wait(waitFor) {
		t.Fatal("wait timed out")
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(got) != "[1 2 3]" {
		t.Fatalf("delivered %v, want [1 2 3]", got)
	}
}

// A callback that blocks holds up only the reports: beyond maxPendingReports waiting,
// the rest are dropped, and the callback is told how many once it has caught up. wait
// reports the block.
func TestReporterBounded(t *testing.T) {
	var r reporter
	release := make(chan struct{})
	var mu sync.Mutex
	delivered, behind := 0, 0
	r.behind = func(n int) { mu.Lock(); behind += n; mu.Unlock() }
	entered := make(chan struct{})
	r.add(func() { close(entered); <-release }, 0)
	await(t, entered, "the first callback runs")
	for range maxPendingReports + 10 {
		r.add(func() { mu.Lock(); delivered++; mu.Unlock() }, 0)
	}
	if r.wait(10 * time.Millisecond) {
		t.Fatal("wait returned true while a callback blocks")
	}
	close(release)
	if !r.wait(waitFor) {
		t.Fatal("wait timed out")
	}
	mu.Lock()
	defer mu.Unlock()
	// The blocked call had left the queue: maxPendingReports more fit in it.
	if delivered != maxPendingReports || behind != 10 {
		t.Fatalf("delivered %d and told of %d dropped, want %d and 10", delivered, behind, maxPendingReports)
	}
}

// An ErrorHandler that blocks (it sends errors over the network, say) no longer holds up
// the messages: it ran on the goroutine that met the error, here the one that decodes
// notifications, and every message behind waited for it.
func TestBlockingErrorHandlerHoldsNoMessage(t *testing.T) {
	opts := testOptions(t)
	a := startNode(t, "A", opts)
	release := make(chan struct{})
	defer close(release)
	told := make(chan error, 1)
	bopts := opts
	bopts.ErrorHandler = func(err error) {
		select {
		case told <- err:
		default:
		}
		<-release
	}
	pool := newPool(t)
	defer pool.Close()
	b := newServerFor(t, New(pool, &bopts), pool)
	waitServerCount(t, []*node{a, b}, 2)
	got := make(chan []any, 1)
	b.io.On("after", func(args ...any) { got <- args })
	if _, err := pool.Exec(context.Background(), "SELECT pg_notify($1, 'not a message')", ChannelName(opts.ChannelPrefix, "/")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-told:
		if !errors.Is(err, ErrMalformed) {
			t.Fatalf("told %v, want ErrMalformed", err)
		}
	case <-time.After(waitFor):
		t.Fatal("the ErrorHandler was not told")
	}
	if err := a.io.ServerSideEmit("after", 1.0); err != nil {
		t.Fatal(err)
	}
	select {
	case args := <-got:
		if len(args) != 1 || args[0] != 1.0 {
			t.Fatalf("got %v", args)
		}
	case <-time.After(waitFor):
		t.Fatal("the message after the report waited for the ErrorHandler")
	}
}

// An ErrorHandler that closes its server when told of an error, from the goroutine that
// met it: Close waited for that goroutine, which was running the handler, RequestsTimeout
// and 5 s, then reported that the goroutines did not stop. From the publisher (a
// broadcast whose attachment cannot be inserted), with io.Close and with Builder.Close,
// which closes the adapters on a goroutine of its own and waited for the handler there;
// and from the delivery goroutine (a notification naming an attachment that is not
// there).
func TestErrorHandlerClosesItsServer(t *testing.T) {
	for _, c := range []struct {
		name, closer string
		told         func(error) bool
		trigger      func(t *testing.T, io *socket.Server, b *Builder, opts Options)
	}{
		{"publisher/io.Close", "io", isPublishError, emitBinary},
		{"publisher/Builder.Close", "builder", isPublishError, emitBinary},
		{"delivery/io.Close", "io", func(err error) bool { return errors.As(err, new(*MessageError)) },
			func(t *testing.T, _ *socket.Server, b *Builder, opts Options) {
				if _, err := b.pool.Exec(context.Background(), "SELECT pg_notify($1, $2)", ChannelName(opts.ChannelPrefix, "/"), `{"uid":"x","type":2,"attachmentId":"999999999"}`); err != nil {
					t.Fatal(err)
				}
			}},
	} {
		t.Run(c.name, func(t *testing.T) {
			opts := testOptions(t)
			opts.RequestsTimeout = time.Second
			opts.SkipTableCreation = true // the attachment insert fails: no table
			logs := &logRecorder{}
			opts.Logger = slog.New(logs)
			var closeIt func()
			var once sync.Once
			took := make(chan time.Duration, 1)
			opts.ErrorHandler = func(err error) {
				if c.told(err) {
					once.Do(func() {
						start := time.Now()
						closeIt()
						took <- time.Since(start)
					})
				}
			}
			io, b := startServer(t, opts)
			closeIt = map[string]func(){"io": func() { io.Close(nil) }, "builder": func() { b.Close(context.Background()) }}[c.closer]
			c.trigger(t, io, b, opts)
			select {
			case d := <-took:
				if d >= opts.RequestsTimeout {
					t.Fatalf("Close took %v", d)
				}
			case <-time.After(waitFor):
				t.Fatal("the ErrorHandler was not told")
			}
			if m := logs.matching("did not"); len(m) != 0 {
				t.Fatalf("logged %v", m)
			}
		})
	}
}

func isPublishError(err error) bool { return errors.As(err, new(*PublishError)) }

// emitBinary broadcasts a binary message, which goes through the attachments table.
func emitBinary(_ *testing.T, io *socket.Server, _ *Builder, _ Options) {
	io.Emit("binary", []byte{1, 2, 3})
}

// startServer starts a socket.io server with a Builder of opts, closed at the test's end,
// and waits until the Builder is ready.
func startServer(t *testing.T, opts Options) (*socket.Server, *Builder) {
	t.Helper()
	pool := newPool(t)
	t.Cleanup(pool.Close) // after the server's Close, registered below
	b := New(pool, &opts)
	io := socket.NewServer(nil, nil)
	io.SetAdapter(b)
	t.Cleanup(func() { io.Close(nil) })
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := b.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	return io, b
}

// Close returns once the ErrorHandler has had every report: an application closes what
// its handler uses (a connection to an error tracker) after Close.
func TestCloseWaitsForTheReports(t *testing.T) {
	opts := testOptions(t)
	opts.SkipTableCreation = true
	opts.Logger = slog.New(slog.DiscardHandler)
	gate := make(chan struct{})
	entered := make(chan struct{}, 1)
	var mu sync.Mutex
	lost := 0
	opts.ErrorHandler = func(err error) {
		select {
		case entered <- struct{}{}:
		default:
		}
		<-gate
		mu.Lock()
		defer mu.Unlock()
		if pe := (*PublishError)(nil); errors.As(err, &pe) {
			lost += pe.Messages
		}
	}
	io, _ := startServer(t, opts)
	for i := range 50 {
		io.Emit("binary", []byte{byte(i)}) // each fails: no table
	}
	await(t, entered, "the first callback runs")
	closed := make(chan struct{})
	go func() { io.Close(nil); close(closed) }()
	select {
	case <-closed:
		t.Error("Close returned while the ErrorHandler was still to be told")
	case <-time.After(200 * time.Millisecond): // the window in which it would return
	}
	close(gate)
	select {
	case <-closed:
	case <-time.After(waitFor):
		t.Fatal("Close did not return")
	}
	mu.Lock()
	defer mu.Unlock()
	if lost != 50 {
		t.Fatalf("%d of the 50 lost broadcasts reported before Close returned", lost)
	}
}

// The queue is bounded by the size of what its reports hold too: a malformed
// notification's error carries its payload.
func TestReporterBoundedBySize(t *testing.T) {
	var r reporter
	release, entered := make(chan struct{}), make(chan struct{})
	behind := 0
	r.behind = func(n int) { behind += n }
	r.add(func() { close(entered); <-release }, 0)
	await(t, entered, "the first callback runs")
	delivered := 0
	for range 40 {
		r.add(func() { delivered++ }, 1<<20)
	}
	close(release)
	if !r.wait(waitFor) {
		t.Fatal("wait timed out")
	}
	if want := maxPendingBytes / (1<<20 + reportSize); delivered != want || behind != 40-want {
		t.Fatalf("delivered %d and told of %d dropped, want %d and %d", delivered, behind, want, 40-want)
	}
}

// Close reports what the once-a-second counters held back: a second namespace refused
// for its name within the second was reported a second later, after Close returned.
func TestCloseReportsWhatCountersHeldBack(t *testing.T) {
	opts := testOptions(t)
	opts.Logger = slog.New(slog.DiscardHandler)
	var mu sync.Mutex
	var reports []string
	opts.ErrorHandler = func(err error) {
		if errors.Is(err, ErrInvalidName) {
			mu.Lock()
			reports = append(reports, err.Error())
			mu.Unlock()
		}
	}
	io, _ := startServer(t, opts)
	io.Of("/bad\xff", nil)
	io.Of("/worse\xfe", nil)
	io.Close(nil)
	mu.Lock()
	defer mu.Unlock()
	if len(reports) != 2 || !strings.Contains(reports[1], "(2 such so far)") {
		t.Fatalf("reported before Close returned: %q", reports)
	}
}
