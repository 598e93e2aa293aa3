package main

import (
	"syscall"
	"time"
	"unsafe"
)

// Latency is measured across processes: a server stamps each broadcast, the load
// generator reads the stamp on receipt. Every process must read the same clock.
// Node's performance.timeOrigin + performance.now() does not: its origin's wall-clock
// time is taken at another instant than its monotonic origin, and on a loaded machine
// the two differ by up to a millisecond or more (runs here saw Node's stamps ahead of Go's
// wall clock, and half of its latencies below zero). Every process therefore stamps
// with CLOCK_MONOTONIC, which Linux keeps system-wide: Node's process.hrtime, and here the
// runtime's monotonic clock, placed on CLOCK_MONOTONIC's scale once at start.

const clockMonotonic = 1 // CLOCK_MONOTONIC, from <time.h>

// monoBase carries the runtime's monotonic reading, and monoBaseUs the same instant on
// CLOCK_MONOTONIC's scale (see placeBase).
var monoBase, monoBaseUs = placeBase()

// placeBase reads the runtime's clock between two readings of CLOCK_MONOTONIC, and
// keeps the narrowest of a few such brackets, at its middle. Read one after the other,
// the two clocks were apart by however long the process waited for a processor in
// between, milliseconds on a loaded machine: a server's stamps then ran ahead of the
// load generator's clock, and some receipts came out stamped before their emit.
func placeBase() (time.Time, int64) {
	var base time.Time
	var baseNs int64
	width := int64(1 << 62)
	for range 200 {
		before := rawMonotonicNs()
		now := time.Now()
		after := rawMonotonicNs()
		if after-before < width {
			width, base, baseNs = after-before, now, before+(after-before)/2
		}
		if width < 2000 {
			break
		}
	}
	return base, baseNs / 1000
}

// rawMonotonicNs reads CLOCK_MONOTONIC by system call, in nanoseconds.
func rawMonotonicNs() int64 {
	var ts syscall.Timespec
	if _, _, errno := syscall.Syscall(syscall.SYS_CLOCK_GETTIME, clockMonotonic, uintptr(unsafe.Pointer(&ts)), 0); errno != 0 {
		panic("clock_gettime(CLOCK_MONOTONIC): " + errno.Error())
	}
	return ts.Sec*1e9 + ts.Nsec
}

// nowUs is CLOCK_MONOTONIC in microseconds, read through the runtime's clock (no system
// call): the clock every server stamps broadcasts with.
func nowUs() int64 { return monoBaseUs + time.Since(monoBase).Microseconds() }
