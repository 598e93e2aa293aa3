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

// rowBudget bounds the bytes of attachment bodies read and not yet applied. Without it,
// what a server held was the rows of every queued message: up to 512 of MaxAttachmentSize
// each (32 GiB with the default), from a burst of large broadcasts or from anyone who
// may insert rows and notify, while an application's listener held the delivery
// goroutine.
//
// A read takes each row's size from the budget as the row arrives (take), and puts the
// row off when it does not fit; the row is read again once it fits (see fetchLater).
// Rows are applied in order, so a row put off can hold up the messages behind it, whose
// rows hold the budget: a row that its delivery goroutine waits for (wanted) is read
// whatever the budget holds. Each of the two delivery goroutines waits for one row at a
// time, so the budget is exceeded by two rows at most.
type rowBudget struct {
	mu      sync.Mutex
	held    int64
	limit   int64
	peak    int64         // the most held, for tests
	changed chan struct{} // closed, and made anew, when held falls or a row becomes wanted
}

func newRowBudget(limit int64) *rowBudget {
	return &rowBudget{limit: limit, changed: make(chan struct{})}
}

// fits reports whether n more bytes fit, for a row that is wanted or not. The caller
// holds mu.
func (r *rowBudget) fitsLocked(n int64, wanted bool) bool {
	return wanted || r.held == 0 || r.held+n <= r.limit
}

// take holds n bytes for one of ds's rows, unless they do not fit and no delivery of ds
// is wanted, and reports whether it did.
func (r *rowBudget) take(ds []*delivery, n int64) bool {
	if n == 0 {
		return true // a row too large or empty, which holds nothing
	}
	wanted := false
	for _, d := range ds {
		wanted = wanted || d.wanted.Load()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.fitsLocked(n, wanted) {
		return false
	}
	r.held += n
	r.peak = max(r.peak, r.held)
	return true
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
	close(r.changed)
	r.changed = make(chan struct{})
}

// pick returns those of later, in order, whose rows fit the budget now (wanted ones
// always, the others while their sizes add up), and a channel closed when that may
// change. It takes nothing: the rows' sizes may have changed by the time they are read.
func (r *rowBudget) pick(later []*delivery) (now []*delivery, changed <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	room := r.limit - r.held
	first := r.held == 0
	for _, d := range later {
		if d.wanted.Load() || first || d.size <= room {
			now = append(now, d)
			room -= d.size
			first = false
		}
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
