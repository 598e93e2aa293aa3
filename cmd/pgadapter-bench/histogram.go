package main

import (
	"math"
	"sync/atomic"
)

// histogram records latencies in microseconds in logarithmic buckets 1% wide, so that
// millions of receipts cost a fixed 16 KB per client and a percentile is exact to 1%.
type histogram struct {
	buckets  [histBuckets]atomic.Int64
	max      atomic.Int64
	negative atomic.Int64 // samples below zero: the processes' clocks disagree
}

const histBuckets = 2048 // 1.01^2047 µs is far beyond any phase's length

var logStep = math.Log(1.01)

func newHistogram() *histogram { return &histogram{} }

func bucketOf(us int64) int {
	if us <= 1 {
		return 0
	}
	return min(histBuckets-1, int(math.Log(float64(us))/logStep))
}

func (h *histogram) add(us int64) {
	if us < 0 {
		h.negative.Add(1) // counted in bucket 0 too, and reported (see cluster.run)
	}
	h.buckets[bucketOf(us)].Add(1)
	for {
		m := h.max.Load()
		if us <= m || h.max.CompareAndSwap(m, us) {
			return
		}
	}
}

// merge adds o's counts to h.
func (h *histogram) merge(o *histogram) {
	h.negative.Add(o.negative.Load())
	for i := range o.buckets {
		if n := o.buckets[i].Load(); n != 0 {
			h.buckets[i].Add(n)
		}
	}
	if m := o.max.Load(); m > h.max.Load() {
		h.max.Store(m)
	}
}

func (h *histogram) total() int64 {
	var n int64
	for i := range h.buckets {
		n += h.buckets[i].Load()
	}
	return n
}

// quantile returns the latency in milliseconds below which a fraction q of the samples
// fall (the upper edge of the bucket that holds the q-th sample).
func (h *histogram) quantile(q float64) float64 {
	total := h.total()
	if total == 0 {
		return 0
	}
	rank := int64(math.Ceil(q * float64(total)))
	var seen int64
	for i := range h.buckets {
		seen += h.buckets[i].Load()
		if seen >= rank {
			return math.Min(math.Pow(1.01, float64(i+1)), float64(h.max.Load())) / 1000
		}
	}
	return float64(h.max.Load()) / 1000
}
