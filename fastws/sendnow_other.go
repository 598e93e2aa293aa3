//go:build !linux

package fastws

import (
	"net"
	"syscall"
)

// rawWriter returns nil: batches are written by a goroutine of their own (see sendNow).
func rawWriter(net.Conn) syscall.RawConn { return nil }

// writeNow is not used where rawWriter returns nil.
func writeNow(syscall.RawConn, *net.Buffers) bool { return false }
