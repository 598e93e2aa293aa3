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

var (
	monoBase   = time.Now() // carries the runtime's monotonic reading
	monoBaseUs = rawMonotonicUs()
)

// rawMonotonicUs reads CLOCK_MONOTONIC by system call, in microseconds.
func rawMonotonicUs() int64 {
	var ts syscall.Timespec
	if _, _, errno := syscall.Syscall(syscall.SYS_CLOCK_GETTIME, clockMonotonic, uintptr(unsafe.Pointer(&ts)), 0); errno != 0 {
		panic("clock_gettime(CLOCK_MONOTONIC): " + errno.Error())
	}
	return ts.Sec*1e6 + ts.Nsec/1e3
}

// nowUs is CLOCK_MONOTONIC in microseconds, read through the runtime's clock (no system
// call): the clock every server stamps broadcasts with.
func nowUs() int64 { return monoBaseUs + time.Since(monoBase).Microseconds() }
