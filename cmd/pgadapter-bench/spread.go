package main

import (
	"math"
	"sync/atomic"
)

// spread records, for each broadcast of a paced phase, its first and its last receipt
// among the clients of the other servers. A receipt's latency is the sum of two parts:
// the way to the receiving server (PostgreSQL, the sender, the listener) and the fan-out
// to that server's clients. The first receipt of a broadcast has paid only the first;
// the last, both. Their quantiles tell which of the two sets a phase's tail.
type spread struct {
	first, last []atomic.Int64 // µs; first starts at MaxInt64, last at MinInt64 (none)
}

func newSpread(n int) *spread {
	s := &spread{first: make([]atomic.Int64, n), last: make([]atomic.Int64, n)}
	for i := range n {
		s.first[i].Store(math.MaxInt64)
		s.last[i].Store(math.MinInt64)
	}
	return s
}

// add records a receipt of the i-th broadcast of the phase.
func (s *spread) add(i, us int64) {
	if i < 0 || i >= int64(len(s.first)) {
		return
	}
	for f := &s.first[i]; ; {
		v := f.Load()
		if us >= v || f.CompareAndSwap(v, us) {
			break
		}
	}
	for l := &s.last[i]; ; {
		v := l.Load()
		if us <= v || l.CompareAndSwap(v, us) {
			break
		}
	}
}

// histograms returns the first and last receipts' latencies of the broadcasts received,
// those received only with clocks that disagreed (latencies below zero) too: the
// histograms count them as negative, as the phase's own does.
func (s *spread) histograms() (first, last *histogram) {
	first, last = newHistogram(), newHistogram()
	for i := range s.first {
		if l := s.last[i].Load(); l != math.MinInt64 {
			first.add(s.first[i].Load())
			last.add(l)
		}
	}
	return first, last
}
