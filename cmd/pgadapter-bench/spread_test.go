package main

import "testing"

// TestSpread: each broadcast's first and last receipts are its smallest and largest
// latencies; broadcasts nobody received, and numbers past the record, count for nothing.
// A broadcast received only with negative latencies counts, as negative.
func TestSpread(t *testing.T) {
	s := newSpread(4)
	for _, r := range []struct{ i, us int64 }{
		{0, 500}, {0, 100}, {0, 900}, // broadcast 0: 100 to 900 µs
		{1, 2000}, // broadcast 1: one receipt
		{3, 300}, {3, 7000},
		{-1, 1}, {4, 99999}, // outside the record
	} {
		s.add(r.i, r.us)
	}
	first, last := s.histograms()
	if n := first.total(); n != 3 {
		t.Fatalf("first receipts of %d broadcasts, want 3 (broadcast 2 had none)", n)
	}
	if m := first.max.Load(); m != 2000 {
		t.Errorf("latest first receipt %d µs, want 2000", m)
	}
	if m := last.max.Load(); m != 7000 {
		t.Errorf("latest last receipt %d µs, want 7000", m)
	}
	// The earliest first receipt is 100 µs, the earliest last one 900 µs.
	if q := first.quantile(0.01); q < 0.099 || q > 0.102 {
		t.Errorf("earliest first receipt %.4f ms, want 0.1", q)
	}
	if q := last.quantile(0.01); q < 0.899 || q > 0.91 {
		t.Errorf("earliest last receipt %.4f ms, want 0.9", q)
	}
}

// TestSpreadNegative: a broadcast received only with clocks that disagree (latencies
// below zero) counts, as negative; it was left out.
func TestSpreadNegative(t *testing.T) {
	s := newSpread(2)
	s.add(0, -20)
	s.add(0, -5)
	s.add(1, 300)
	first, last := s.histograms()
	if f, l := first.total(), last.total(); f != 2 || l != 2 {
		t.Fatalf("first / last receipts of %d / %d broadcasts, want 2 / 2", f, l)
	}
	if f, l := first.negative.Load(), last.negative.Load(); f != 1 || l != 1 {
		t.Errorf("negative first / last receipts %d / %d, want 1 / 1", f, l)
	}
}
