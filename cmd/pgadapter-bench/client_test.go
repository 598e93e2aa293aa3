package main

import (
	"encoding/binary"
	"fmt"
	"strings"
	"syscall"
	"testing"
)

// TestFields reads the sequence number and send time of broadcasts in both key orders
// the servers write (Node's insertion order, and sorted keys), at every padding length
// around the distance number looks at first, where a field may straddle it.
func TestFields(t *testing.T) {
	for n := range 3*fieldsWithin + 8 {
		pad := strings.Repeat("x", n)
		for _, msg := range []string{
			fmt.Sprintf(`42["b",{"s":%d,"t":%d,"p":"%s"}]`, n, 1796277984988195+n, pad),
			fmt.Sprintf(`42["b",{"p":"%s","s":%d,"t":%d}]`, pad, n, 1796277984988195+n),
			fmt.Sprintf(`42["b",{"p":"%s","s":%d,"t":%d,"q":"%s"}]`, pad, n, 1796277984988195+n, pad),
		} {
			seq, sent := fields([]byte(msg))
			if seq != int64(n) || sent != 1796277984988195+int64(n) {
				t.Fatalf("%s: got s=%d t=%d", msg, seq, sent)
			}
		}
	}
	if seq, sent := fields([]byte(`42["b",{"p":"x"}]`)); seq != -1 || sent != -1 {
		t.Fatalf("no fields: got s=%d t=%d", seq, sent)
	}
}

// BenchmarkFields reads the fields of a 20 KB broadcast in both key orders: the load
// generator does it for every receipt.
func BenchmarkFields(b *testing.B) {
	pad := strings.Repeat("x", 20000)
	for _, c := range []struct{ name, msg string }{
		{"written-order", `42["b",{"s":123456,"t":1796277984988195,"p":"` + pad + `"}]`},
		{"sorted-keys", `42["b",{"p":"` + pad + `","s":123456,"t":1796277984988195}]`},
	} {
		b.Run(c.name, func(b *testing.B) {
			msg := []byte(c.msg)
			for range b.N {
				fields(msg)
			}
		})
	}
}

// TestReadFrames feeds a client frames of every size class, from 10 bytes to three
// times its read buffer, through a socket in pieces that cut them anywhere, and checks
// that every broadcast is parsed once and in order: the unparsed bytes of a frame stay
// in place between reads while there is room, and move or grow when there is not.
func TestReadFrames(t *testing.T) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fds[0])
	defer syscall.Close(fds[1])
	c := &client{fd: fds[0], next: -1, buf: make([]byte, 4*minRead)}
	c.in = c.buf[:0]
	c.rec.Store(newHistogram())
	p := &poller{}

	var stream []byte
	sizes := []int{10, 100, 20000, minRead - 20, minRead, 3 * minRead, 12 * minRead, 7, 20000, 20000, 20000}
	for i, n := range sizes {
		msg := fmt.Sprintf(`42["b",{"p":"%s","s":%d,"t":1}]`, strings.Repeat("x", n), i)
		stream = appendHeader(stream, len(msg))
		stream = append(stream, msg...)
	}
	for off, piece := 0, 1; off < len(stream); piece = piece*3 + 1 {
		end := min(len(stream), off+piece%(5*minRead)+1)
		for off < end {
			w, err := syscall.Write(fds[1], stream[off:end])
			if err == syscall.EAGAIN {
				w = 0
			} else if err != nil {
				t.Fatal(err)
			}
			off += w
			if err := p.read(c); err != nil {
				t.Fatal(err)
			}
		}
	}
	for c.count.Load() < int64(len(sizes)) {
		before := len(c.in)
		if err := p.read(c); err != nil {
			t.Fatal(err)
		}
		if len(c.in) == before && c.count.Load() < int64(len(sizes)) {
			t.Fatalf("stuck with %d of %d broadcasts parsed and %d bytes unparsed", c.count.Load(), len(sizes), len(c.in))
		}
	}
	if c.reordered.Load() != 0 || c.next != int64(len(sizes)) || len(c.in) != 0 {
		t.Fatalf("reordered %d, next %d, %d bytes left", c.reordered.Load(), c.next, len(c.in))
	}
}

// appendHeader appends the header of an unmasked, final text frame of n bytes.
func appendHeader(b []byte, n int) []byte {
	b = append(b, 0x81)
	switch {
	case n < 126:
		return append(b, byte(n))
	case n < 1<<16:
		return binary.BigEndian.AppendUint16(append(b, 126), uint16(n))
	default:
		return binary.BigEndian.AppendUint64(append(b, 127), uint64(n))
	}
}

// TestReceiptsCountedOnce: a phase counts each of its broadcasts once per client. It
// counted receipts, so that a duplicate hid a loss, and a late receipt of the phase
// before counted in this one (and, its number restarting at 0, marked the phase's
// receipts out of order).
func TestReceiptsCountedOnce(t *testing.T) {
	c := &client{}
	c.reset(2 * phaseSpan)
	for _, seq := range []int64{phaseSpan + 7, 2 * phaseSpan, 2*phaseSpan + 2, 2*phaseSpan + 2, 2*phaseSpan + 1, -1, 2*phaseSpan + 200} {
		c.received(seq, 1000)
	}
	if got := [4]int64{c.count.Load(), c.dups.Load(), c.stray.Load(), c.reordered.Load()}; got != [4]int64{4, 1, 2, 1} {
		t.Fatalf("counted, repeated, stray, reordered = %v, want [4 1 2 1]", got)
	}
	c.reset(3 * phaseSpan)
	c.received(2*phaseSpan+3, 1000) // late, from the phase before
	c.received(3*phaseSpan, 1000)
	if got := [3]int64{c.count.Load(), c.stray.Load(), c.reordered.Load()}; got != [3]int64{1, 1, 0} {
		t.Fatalf("after reset: counted, stray, reordered = %v, want [1 1 0]", got)
	}
}
