package pgadapter

import (
	"math"
	"sync"
)

// minRowBudget is the least memory a server lets attachment rows hold between their read
// and their application (see rowBudget); a variable so that tests can reach it with
// small rows.
var minRowBudget int64 = 64 << 20

// rowBudgetFor is the bound of a server's rowBudget: twice the largest row, so that a row
// of any allowed size can be read while another waits to be applied.
func rowBudgetFor(maxAttachment int) int64 {
	if int64(maxAttachment) > math.MaxInt64/2 {
		return math.MaxInt64 // no bound: what is allowed cannot be held twice anyway
	}
	return max(2*int64(maxAttachment), minRowBudget)
}

// rowBudget bounds the memory of attachment rows read and not yet applied. Without it,
// what a server held was the rows of every queued message: up to 512 of MaxAttachmentSize
// each (32 GiB with the default), from a burst of large broadcasts or from anyone who
// may insert rows and notify, while an application's listener held the delivery
// goroutine. A row counts for its body and for the values it decodes into
// (wire.BytesPerCost each): a row of empty maps takes 60 times its size once decoded.
//
// A read takes each row's share of the budget as the row arrives (take), and puts the
// row off when it does not fit; the row is read again once it fits (see fetchLater).
// Rows are applied in order, so a row put off can hold up the messages behind it, whose
// rows hold the budget: a row that its delivery goroutine waits for (wanted) is read
// whatever the budget holds. Each of the two delivery goroutines waits for one row at a
// time, so the budget is exceeded by two rows at most, and by the rows of messages whose
// server-side event handlers are still running after another goroutine took over the
// queue (see watchHandlers): they hold the message meanwhile.
type rowBudget struct {
	mu    sync.Mutex
	held  int64
	limit int64
	peak  int64 // the most held, for tests
	// changed is closed when held falls or a row becomes wanted, if a read waits for
	// that (made by pick, for it): a channel made at every release cost an allocation a
	// message.
	changed chan struct{}
}

func newRowBudget(limit int64) *rowBudget {
	return &rowBudget{limit: limit}
}

// fitsLocked reports whether n more bytes fit, for a row that is wanted or not. The
// caller holds mu.
func (r *rowBudget) fitsLocked(n int64, wanted bool) bool {
	return wanted || r.held == 0 || r.held+n <= r.limit
}

// take holds n bytes for one of ds's rows, in place of what pick reserved for them,
// unless they are more than that, do not fit, and no delivery of ds is wanted; it
// reports whether it did.
func (r *rowBudget) take(ds []*delivery, n int64) bool {
	wanted := false
	var reserved int64
	for _, d := range ds {
		wanted = wanted || d.wanted.Load()
		reserved += d.reserved
		d.reserved = 0
	}
	if n == 0 && reserved == 0 {
		return true // a row too large or empty, which holds nothing
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.held -= reserved
	if n > reserved && !r.fitsLocked(n, wanted) {
		if reserved > 0 {
			r.signalLocked()
		}
		return false
	}
	r.held += n
	r.peak = max(r.peak, r.held)
	if n < reserved {
		r.signalLocked()
	}
	return true
}

// unreserve gives back what pick reserved for the rows of group that a read did not
// return (gone, or the read failed).
func (r *rowBudget) unreserve(group []*delivery) {
	var n int64
	for _, d := range group {
		n += d.reserved
		d.reserved = 0
	}
	r.release(n)
}

// release gives back n bytes taken.
func (r *rowBudget) release(n int64) {
	if n == 0 {
		return
	}
	r.mu.Lock()
	r.held -= n
	r.signalLocked()
	r.mu.Unlock()
}

// want records that d's delivery goroutine waits for its row.
func (r *rowBudget) want(d *delivery) {
	d.wanted.Store(true)
	r.mu.Lock()
	r.signalLocked()
	r.mu.Unlock()
}

func (r *rowBudget) signalLocked() {
	if r.changed != nil {
		close(r.changed)
		r.changed = nil
	}
}

// pick returns those of later, in order, whose rows fit the budget now (wanted ones
// always, the others while their sizes add up), and a channel closed when that may
// change. It reserves their sizes, which take exchanges for the rows' sizes when they
// are read again: without that, every read waiting for room saw the same room, read its
// rows, and all but one put them off again (a tester's 240 rows were read 1,100 times).
func (r *rowBudget) pick(later []*delivery) (now []*delivery, changed <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, d := range later {
		if d.wanted.Load() || r.held == 0 || r.held+d.size <= r.limit {
			now = append(now, d)
			d.reserved = d.size
			r.held += d.size
		}
	}
	r.peak = max(r.peak, r.held)
	if r.changed == nil {
		r.changed = make(chan struct{})
	}
	return now, r.changed
}

// heldBytes returns the bytes held now.
func (r *rowBudget) heldBytes() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.held
}

// peakBytes returns the most bytes held at once.
func (r *rowBudget) peakBytes() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.peak
}
