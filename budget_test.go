package pgadapter

import (
	"bytes"
	"math"
	"testing"
	"time"

	"github.com/zishang520/socket.io/v2/socket"
)

// withRowBudget lowers the least budget of attachment rows (see rowBudget) for the
// servers a test starts next.
func withRowBudget(t *testing.T, n int64) {
	old := minRowBudget
	minRowBudget = n
	t.Cleanup(func() { minRowBudget = old })
}

// TestRowsHeldAreBounded: while an application's listener holds the goroutine that
// applies messages, the attachment rows read for the messages queued behind it hold at
// most the server's budget, and the rest are read again once there is room, in order,
// none lost. Every queued row was held before (512 of up to MaxAttachmentSize: 32 GiB
// with the default), from a burst of large broadcasts or from anyone who may insert
// rows and notify.
//
// An answer to one of the server's own requests, on the other delivery goroutine, is
// read meanwhile, whatever the budget holds: its goroutine waits for it.
func TestRowsHeldAreBounded(t *testing.T) {
	const row, count = 100 << 10, 40
	withRowBudget(t, 1<<20)
	opts := testOptions(t)
	opts.MaxAttachmentSize = 256 << 10
	limit := rowBudgetFor(opts.MaxAttachmentSize)
	a, b := startPair(t, opts, func(*Options) {})
	cb := b.connect(t, "/", "cb")
	release := holdOn(t, b, "/", "cb", "hold")
	a.io.Emit("hold")
	cb.sent.next(t, "B", "hold")
	payload := func(i int) []byte { return bytes.Repeat([]byte{byte(i)}, row) }
	// Each read on its own, so that every row put off waits on a goroutine of its own:
	// each of them read the rows for which the budget had room as soon as it had, and
	// all but one put them off again (a tester's 240 rows were put off 900 times).
	for i := range count {
		examined := b.b.rt.examined.Load()
		a.io.Emit("n", i, payload(i))
		eventually(t, "B reads the notification", func() bool { return b.b.rt.examined.Load() > examined })
	}
	eventually(t, "B puts rows off", func() bool { return b.b.Stats().AttachmentsPutOff > 0 })
	if held, read := b.b.rt.budget.heldBytes(), b.b.Stats().AttachmentsRead; held > limit || read > limit/row+1 {
		t.Fatalf("held %d bytes in %d rows read, budget %d", held, read, limit)
	}

	// An answer with a large binary argument goes through the table, and reaches B's
	// request while its ordered goroutine is held and the budget full.
	a.io.On("q", func(args ...any) {
		if ack, ok := args[len(args)-1].(socket.Ack); ok {
			ack([]any{payload(200)}, nil)
		}
	})
	answered := make(chan error, 1)
	b.io.ServerSideEmitWithAck("q")(func(answers []any, err error) {
		if err == nil && len(answers) != 1 {
			t.Errorf("answers %v", answers)
		}
		answered <- err
	})
	select {
	case err := <-answered:
		if err != nil {
			t.Fatalf("B's request while its budget was full: %v", err)
		}
	case <-time.After(waitFor):
		t.Fatal("B's request while its budget was full: no answer")
	}

	release()
	for i := range count {
		args := cb.sent.next(t, "B", "n")
		if got, ok := args[1].([]byte); len(args) != 2 || args[0] != float64(i) || !ok || !bytes.Equal(got, payload(i)) {
			t.Fatalf("message %d written as %d arguments, %v first", i, len(args), args[0])
		}
	}
	if s := b.b.Stats(); s.AttachmentErrors != 0 || s.Malformed != 0 || s.AttachmentsPutOff > count {
		t.Fatalf("attachment errors %d, malformed %d; %d rows put off, of %d", s.AttachmentErrors, s.Malformed, s.AttachmentsPutOff, count)
	}
	eventually(t, "B holds no row", func() bool { return b.b.rt.budget.heldBytes() == 0 })
	if peak := b.b.rt.budget.peakBytes(); peak > limit+2*row {
		t.Fatalf("peak %d bytes held, budget %d", peak, limit)
	}
}

// TestRowBudgetFor: twice the largest row, 64 MiB at least, and no overflow for the
// largest MaxAttachmentSize.
func TestRowBudgetFor(t *testing.T) {
	for _, c := range []struct {
		max  int
		want int64
	}{
		{1 << 10, minRowBudget},
		{int(minRowBudget), 2 * minRowBudget},
		{math.MaxInt, math.MaxInt64},
	} {
		if got := rowBudgetFor(c.max); got != c.want {
			t.Errorf("rowBudgetFor(%d) = %d, want %d", c.max, got, c.want)
		}
	}
}

// TestCostlyRowsCountForTheirValues: a row counts for the values it decodes into, not
// only for its size: 10 KB of empty maps take 640 KB once decoded, and a tester's
// forged rows of them held 659 MB of a server whose budget had counted 10 MB.
func TestCostlyRowsCountForTheirValues(t *testing.T) {
	const count, maps = 10, 10000 // 10 KB rows, 50,000 in cost each
	withRowBudget(t, 4<<20)       // a row and a quarter
	opts := testOptions(t)
	opts.MaxAttachmentSize = 256 << 10
	a, b := startPair(t, opts, func(*Options) {})
	cb := b.connect(t, "/", "cb")
	release := holdOn(t, b, "/", "cb", "hold")
	a.io.Emit("hold")
	cb.sent.next(t, "B", "hold")
	for i := range count {
		m := make([]any, maps)
		for j := range m {
			m[j] = map[string]any{}
		}
		a.io.Emit("maps", i, m)
	}
	eventually(t, "B puts rows off", func() bool { return b.b.Stats().AttachmentsPutOff > 0 })
	if read := b.b.Stats().AttachmentsRead; read > 1 {
		t.Fatalf("%d rows of %d read while held, for a budget of about one", read, count)
	}
	release()
	for i := range count {
		args := cb.sent.next(t, "B", "maps")
		if m, ok := args[1].([]any); len(args) != 2 || args[0] != float64(i) || !ok || len(m) != maps {
			t.Fatalf("message %d written as %d arguments, %v first", i, len(args), args[0])
		}
	}
}
