//go:build linux

package fastws

import (
	"net"
	"syscall"
	"unsafe"
)

// rawWriter returns what writes to c without waiting (see sendNow), or nil.
func rawWriter(c net.Conn) syscall.RawConn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// maxIov is Linux's IOV_MAX, the most buffers one writev(2) takes.
const maxIov = 1024

// writeNow writes *bufs with one writev(2) through rc without waiting for the socket to
// take them, and reports whether all of it went out. What did not (a full socket
// buffer, an error, which the writer that waits meets again and reports) is left in
// *bufs, from its start: a batch's buffers are pooled, and keep their array.
func writeNow(rc syscall.RawConn, bufs *net.Buffers) bool {
	b := *bufs
	if len(b) > maxIov {
		return false
	}
	iov := make([]syscall.Iovec, 0, len(b))
	total := 0
	for _, p := range b {
		if len(p) > 0 {
			v := syscall.Iovec{Base: &p[0]}
			v.SetLen(len(p))
			iov = append(iov, v)
			total += len(p)
		}
	}
	if total == 0 {
		return true
	}
	n := 0
	err := rc.Write(func(fd uintptr) bool {
		for {
			r, _, e := syscall.Syscall(syscall.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
			if e == syscall.EINTR {
				continue
			}
			if e == 0 {
				n = int(r)
			}
			return true // written, or not: this writer does not wait (EAGAIN)
		}
	})
	if err != nil {
		n = 0 // the connection is closed, or its deadline passed: nothing was tried
	}
	if n >= total {
		return true
	}
	// Drop the n bytes written: the buffers done, and the start of the next.
	k := 0
	for k < len(b) && n >= len(b[k]) {
		n -= len(b[k])
		k++
	}
	m := copy(b, b[k:])
	clear(b[m:])
	b = b[:m]
	b[0] = b[0][n:]
	*bufs = b
	return false
}
