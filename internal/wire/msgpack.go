package wire

import (
	"encoding/binary"
	"math"
)

// MessagePack for the generic tree, written and read without reflection. Attachments (a
// 20 KB broadcast, or anything with binary) are encoded by the server that publishes
// them and decoded by every other one; through vmihailenco/msgpack's reflection-based
// encoder and its interface decoder (then a pass turning numbers into float64), each
// direction cost about as much as the rest of the codec. These handle the tree's own
// types; anything else (a struct in a socket's handshake, an extension type) makes them
// give up, and the callers then take the library's path, which stays the reference: a
// differential fuzz test checks that both read every input the same way.

// appendMsgpack appends v's MessagePack encoding to b, with integers in their smallest
// form and integral floats within ±2^53 as integers, as the library's encoder does with
// compact ints and floats (it compacts larger ones too: see appendMsgpackFloat). ok is
// false when v holds a type of no tree (b is then garbage).
func appendMsgpack(b []byte, v any, depth int) ([]byte, bool) {
	if depth > maxDepth {
		return b, false
	}
	switch x := v.(type) {
	case nil:
		return append(b, 0xc0), true
	case bool:
		if x {
			return append(b, 0xc3), true
		}
		return append(b, 0xc2), true
	case string:
		return appendMsgpackStr(b, x), true
	case []byte:
		switch n := len(x); {
		case n <= math.MaxUint8:
			b = append(b, 0xc4, byte(n))
		case n <= math.MaxUint16:
			b = binary.BigEndian.AppendUint16(append(b, 0xc5), uint16(n))
		default:
			b = binary.BigEndian.AppendUint32(append(b, 0xc6), uint32(n))
		}
		return append(b, x...), true
	case float64:
		return appendMsgpackFloat(b, x), true
	case float32:
		return appendMsgpackFloat(b, float64(x)), true
	case int:
		return appendMsgpackInt(b, int64(x)), true
	case int8:
		return appendMsgpackInt(b, int64(x)), true
	case int16:
		return appendMsgpackInt(b, int64(x)), true
	case int32:
		return appendMsgpackInt(b, int64(x)), true
	case int64:
		return appendMsgpackInt(b, x), true
	case uint:
		return appendMsgpackUint(b, uint64(x)), true
	case uint8:
		return appendMsgpackUint(b, uint64(x)), true
	case uint16:
		return appendMsgpackUint(b, uint64(x)), true
	case uint32:
		return appendMsgpackUint(b, uint64(x)), true
	case uint64:
		return appendMsgpackUint(b, x), true
	case []any:
		b = appendMsgpackLen(b, len(x), 0x90, 0xdc)
		for _, e := range x {
			var ok bool
			if b, ok = appendMsgpack(b, e, depth+1); !ok {
				return b, false
			}
		}
		return b, true
	case map[string]any:
		b = appendMsgpackLen(b, len(x), 0x80, 0xde)
		for k, e := range x {
			b = appendMsgpackStr(b, k)
			var ok bool
			if b, ok = appendMsgpack(b, e, depth+1); !ok {
				return b, false
			}
		}
		return b, true
	}
	return b, false
}

func appendMsgpackStr(b []byte, s string) []byte {
	switch n := len(s); {
	case n <= 31:
		b = append(b, 0xa0|byte(n))
	case n <= math.MaxUint8:
		b = append(b, 0xd9, byte(n))
	case n <= math.MaxUint16:
		b = binary.BigEndian.AppendUint16(append(b, 0xda), uint16(n))
	default:
		b = binary.BigEndian.AppendUint32(append(b, 0xdb), uint32(n))
	}
	return append(b, s...)
}

// appendMsgpackLen writes an array or map header: fix is the fixed form's code, code16
// the 16-bit one (the 32-bit one follows it).
func appendMsgpackLen(b []byte, n int, fix, code16 byte) []byte {
	switch {
	case n <= 15:
		return append(b, fix|byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, code16), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(b, code16+1), uint32(n))
}

func appendMsgpackFloat(b []byte, f float64) []byte {
	// NaN and the infinities convert to math.MinInt64, which does not convert back.
	// Beyond ±2^53 a float stays one: the reader makes it the integer its shortest text
	// names (see floatValue), which int64(f) is not.
	// -0 stays a float too: as the integer 0, it lost its sign (JSON writes -0).
	if i := int64(f); float64(i) == f && i > -maxExact && i < maxExact && !(i == 0 && math.Signbit(f)) {
		return appendMsgpackInt(b, i)
	}
	return binary.BigEndian.AppendUint64(append(b, 0xcb), math.Float64bits(f))
}

func appendMsgpackInt(b []byte, i int64) []byte {
	switch {
	case i >= 0:
		return appendMsgpackUint(b, uint64(i))
	case i >= -32:
		return append(b, byte(i))
	case i >= math.MinInt8:
		return append(b, 0xd0, byte(i))
	case i >= math.MinInt16:
		return binary.BigEndian.AppendUint16(append(b, 0xd1), uint16(i))
	case i >= math.MinInt32:
		return binary.BigEndian.AppendUint32(append(b, 0xd2), uint32(i))
	}
	return binary.BigEndian.AppendUint64(append(b, 0xd3), uint64(i))
}

func appendMsgpackUint(b []byte, u uint64) []byte {
	switch {
	case u <= 0x7f:
		return append(b, byte(u))
	case u <= math.MaxUint8:
		return append(b, 0xcc, byte(u))
	case u <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, 0xcd), uint16(u))
	case u <= math.MaxUint32:
		return binary.BigEndian.AppendUint32(append(b, 0xce), uint32(u))
	}
	return binary.BigEndian.AppendUint64(append(b, 0xcf), u)
}

// decodeMsgpackTree reads b, which must hold exactly one value, into the tree the
// library's interface decoder and fromMsgpack give: numbers as float64, maps as
// map[string]any (keys str, bin, or nil for ""), bin as []byte, arrays as []any, empty
// containers non-nil. ok is false for an input it does not take: extension types,
// anything malformed, truncated or nested deeper than maxDepth, and trailing bytes. A
// declared length is checked against the bytes left before anything is allocated for it.
func decodeMsgpackTree(b []byte) (v any, ok bool) {
	r := mpReader{b: b}
	if v, ok = r.value(0); !ok || r.i != len(b) {
		return nil, false
	}
	return v, true
}

type mpReader struct {
	b []byte
	i int
	// owed is the bytes that the elements still to read of the open containers take at
	// least (see arrayOf).
	owed uint64
}

// room reports whether n more elements of size bytes at least fit in what is left,
// beside the elements the open containers are owed, and then owes them too. A
// container's length checked against what is left alone let each of 500 nested arrays
// claim the rest of the input: a 1 MB row allocated 8 GB before the decode failed, and a
// 7.7 KB notification 36 MB.
func (r *mpReader) room(n, size uint64) bool {
	left := uint64(len(r.b) - r.i)
	if r.owed > left || n > (left-r.owed)/size {
		return false
	}
	r.owed += n * size
	return true
}

// n reads a big-endian unsigned integer of size bytes: a number, or the length that
// follows a str, bin, array or map code.
func (r *mpReader) n(size int) (uint64, bool) {
	if len(r.b)-r.i < size {
		return 0, false
	}
	p := r.b[r.i:]
	r.i += size
	switch size {
	case 1:
		return uint64(p[0]), true
	case 2:
		return uint64(binary.BigEndian.Uint16(p)), true
	case 4:
		return uint64(binary.BigEndian.Uint32(p)), true
	}
	return binary.BigEndian.Uint64(p), true
}

// bytes returns the next n bytes, without copying.
func (r *mpReader) bytes(n uint64) ([]byte, bool) {
	if uint64(len(r.b)-r.i) < n {
		return nil, false
	}
	p := r.b[r.i : r.i+int(n)]
	r.i += int(n)
	return p, true
}

func (r *mpReader) value(depth int) (any, bool) {
	if r.i >= len(r.b) || depth > maxDepth {
		return nil, false
	}
	c := r.b[r.i]
	r.i++
	switch {
	case c <= 0x7f:
		return float64(c), true
	case c >= 0xe0:
		return float64(int8(c)), true
	case c <= 0x8f:
		return r.mapOf(uint64(c&0x0f), depth)
	case c <= 0x9f:
		return r.arrayOf(uint64(c&0x0f), depth)
	case c <= 0xbf:
		p, ok := r.bytes(uint64(c & 0x1f))
		return string(p), ok
	}
	switch c {
	case 0xc0:
		return nil, true
	case 0xc2:
		return false, true
	case 0xc3:
		return true, true
	case 0xc4, 0xc5, 0xc6:
		n, ok := r.n(1 << (c - 0xc4))
		if !ok {
			return nil, false
		}
		p, ok := r.bytes(n)
		return append(make([]byte, 0, len(p)), p...), ok
	case 0xca:
		u, ok := r.n(4)
		return floatValue(float64(math.Float32frombits(uint32(u)))), ok
	case 0xcb:
		u, ok := r.n(8)
		return floatValue(math.Float64frombits(u)), ok
	case 0xcc, 0xcd, 0xce, 0xcf:
		u, ok := r.n(1 << (c - 0xcc))
		return uintValue(u), ok
	case 0xd0:
		u, ok := r.n(1)
		return float64(int8(u)), ok
	case 0xd1:
		u, ok := r.n(2)
		return float64(int16(u)), ok
	case 0xd2:
		u, ok := r.n(4)
		return float64(int32(u)), ok
	case 0xd3:
		u, ok := r.n(8)
		return intValue(int64(u)), ok
	case 0xd9, 0xda, 0xdb:
		n, ok := r.n(1 << (c - 0xd9))
		if !ok {
			return nil, false
		}
		p, ok := r.bytes(n)
		return string(p), ok
	case 0xdc, 0xdd:
		n, ok := r.n(2 << (c - 0xdc))
		if !ok {
			return nil, false
		}
		return r.arrayOf(n, depth)
	case 0xde, 0xdf:
		n, ok := r.n(2 << (c - 0xde))
		if !ok {
			return nil, false
		}
		return r.mapOf(n, depth)
	}
	return nil, false // 0xc1, and the extension types
}

func (r *mpReader) arrayOf(n uint64, depth int) (any, bool) {
	// A container's nesting level is depth+1; validateMsgpack refuses level maxDepth.
	if depth+1 >= maxDepth || !r.room(n, 1) { // each element takes a byte at least
		return nil, false
	}
	a := make([]any, n)
	for i := range a {
		r.owed-- // this one's byte, read now
		var ok bool
		if a[i], ok = r.value(depth + 1); !ok {
			return nil, false
		}
	}
	return a, true
}

func (r *mpReader) mapOf(n uint64, depth int) (any, bool) {
	if depth+1 >= maxDepth || !r.room(n, 2) { // each entry takes two bytes at least
		return nil, false
	}
	m := make(map[string]any, n)
	for range n {
		r.owed -= 2 // this entry's, read now
		k, ok := r.key()
		if !ok {
			return nil, false
		}
		if m[k], ok = r.value(depth + 1); !ok {
			return nil, false
		}
	}
	return m, true
}

// key reads a map key as the library's DecodeString does: a str or a bin, or nil for "".
func (r *mpReader) key() (string, bool) {
	if r.i >= len(r.b) {
		return "", false
	}
	c := r.b[r.i]
	r.i++
	var n uint64
	var ok bool
	switch {
	case c >= 0xa0 && c <= 0xbf:
		n, ok = uint64(c&0x1f), true
	case c == 0xc0:
		return "", true
	case c == 0xc4 || c == 0xd9:
		n, ok = r.n(1)
	case c == 0xc5 || c == 0xda:
		n, ok = r.n(2)
	case c == 0xc6 || c == 0xdb:
		n, ok = r.n(4)
	}
	if !ok {
		return "", false
	}
	p, ok := r.bytes(n)
	return string(p), ok
}
