package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// maxDepth bounds the nesting of containers in an attachment: the same bound as JSON's,
// which is also what a message's arguments may have. At 512, arguments nested 508
// levels or deeper were published, and every receiver refused them as malformed when
// they travelled as an attachment, not when they travelled inline.
const maxDepth = maxJSONDepth + envelopeDepth

// envelopeDepth bounds the levels a message adds around its arguments (message, data,
// packet, arguments array): arguments at normalize's bound, maxJSONDepth, fit.
const envelopeDepth = 8

var errTruncated = errors.New("truncated")

// validateMsgpack checks that b holds exactly one MessagePack value whose declared lengths
// fit in b, before a decoder allocates for them: without it, a five-byte body declaring a
// map of four billion entries makes the decoder allocate for hours. Every element takes at
// least one byte, so a container of n elements needs n more bytes.
func validateMsgpack(b []byte) error {
	_, err := walkMsgpack(b, 0)
	return err
}

// containerWeight is what a container counts for in a value budget (see CostOf), beyond
// the one it counts as a value: a Go map or slice costs several times an element.
const containerWeight = 4

// CostOf returns what body, MessagePack, costs once decoded, in values (each container
// counting containerWeight more), up to max+1: the walk stops there. A body is decoded
// into a tree of Go values, 16 bytes each at least (a nil in an []any) and 50 or more for
// an empty map, each of which may take a single byte in the body: 16 MB of empty maps
// decoded into 1.3 GB. A malformed body costs what was walked before the fault: its
// decoding reports the fault.
func CostOf(body []byte, max int) int {
	n, _ := walkMsgpack(body, max)
	return n
}

// walkMsgpack is validateMsgpack, which also counts the cost of what it walks (see
// CostOf), and stops once that is over maxCost when maxCost is positive.
func walkMsgpack(b []byte, maxCost int) (int, error) {
	cost := 0
	var stack [32]int               // the common depths without an allocation: every attachment is walked
	pending := append(stack[:0], 1) // elements still expected, per open container
	i := 0
	for len(pending) > 0 {
		if maxCost > 0 && cost > maxCost {
			return cost, nil
		}
		if pending[len(pending)-1] == 0 {
			pending = pending[:len(pending)-1]
			continue
		}
		pending[len(pending)-1]--
		cost++
		if i >= len(b) {
			return cost, fmt.Errorf("msgpack: %w at byte %d", errTruncated, i)
		}
		c := b[i]
		i++
		var skip, elems int // bytes of payload to skip; elements of a container
		var err error
		switch {
		case c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3:
		case c >= 0x80 && c <= 0x8f:
			elems = 2 * int(c&0x0f)
		case c >= 0x90 && c <= 0x9f:
			elems = int(c & 0x0f)
		case c >= 0xa0 && c <= 0xbf:
			skip = int(c & 0x1f)
		case c == 0xc4 || c == 0xd9:
			skip, i, err = length(b, i, 1)
		case c == 0xc5 || c == 0xda:
			skip, i, err = length(b, i, 2)
		case c == 0xc6 || c == 0xdb:
			skip, i, err = length(b, i, 4)
		case c == 0xc7:
			skip, i, err = length(b, i, 1)
			skip++ // type byte
		case c == 0xc8:
			skip, i, err = length(b, i, 2)
			skip++
		case c == 0xc9:
			skip, i, err = length(b, i, 4)
			skip++
		case c == 0xca || c == 0xce || c == 0xd2:
			skip = 4
		case c == 0xcb || c == 0xcf || c == 0xd3:
			skip = 8
		case c == 0xcc || c == 0xd0:
			skip = 1
		case c == 0xcd || c == 0xd1:
			skip = 2
		case c >= 0xd4 && c <= 0xd8:
			skip = 1 + 1<<(c-0xd4)
		case c == 0xdc:
			elems, i, err = length(b, i, 2)
		case c == 0xdd:
			elems, i, err = length(b, i, 4)
		case c == 0xde:
			elems, i, err = length(b, i, 2)
			elems *= 2
		case c == 0xdf:
			elems, i, err = length(b, i, 4)
			elems *= 2
		default: // 0xc1 is never used
			return cost, fmt.Errorf("msgpack: invalid code 0x%02x at byte %d", c, i-1)
		}
		if err != nil {
			return cost, err
		}
		if c >= 0x80 && c <= 0x9f || c >= 0xdc && c <= 0xdf { // a container, empty or not
			cost += containerWeight
		}
		if skip > len(b)-i {
			return cost, fmt.Errorf("msgpack: value at byte %d declares %d bytes, %d remain", i, skip, len(b)-i)
		}
		i += skip
		if elems > 0 {
			if elems > len(b)-i {
				return cost, fmt.Errorf("msgpack: container at byte %d declares %d elements, %d bytes remain", i, elems, len(b)-i)
			}
			if len(pending) >= maxDepth {
				return cost, fmt.Errorf("msgpack: nested deeper than %d", maxDepth)
			}
			pending = append(pending, elems)
		}
	}
	if i != len(b) {
		return cost, fmt.Errorf("msgpack: %d bytes of trailing data", len(b)-i)
	}
	return cost, nil
}

// length reads a big-endian length of size bytes at b[i:].
func length(b []byte, i, size int) (int, int, error) {
	if len(b)-i < size {
		return 0, i, fmt.Errorf("msgpack: %w length at byte %d", errTruncated, i)
	}
	var n uint64
	switch size {
	case 1:
		n = uint64(b[i])
	case 2:
		n = uint64(binary.BigEndian.Uint16(b[i:]))
	case 4:
		n = uint64(binary.BigEndian.Uint32(b[i:]))
	}
	return int(n), i + size, nil
}

// bytesPerValue is the part of an attachment's size limit that each of its values (see
// CostOf) takes: an attachment within a limit of n bytes may decode into n/bytesPerValue
// values, and minCostBound at least, so that the tree it decodes into is of the order of
// the limit, not 80 times it.
const bytesPerValue = 16

const minCostBound = 1 << 16

// CostBound is the cost (see CostOf) of an attachment within maxSize bytes at most.
func CostBound(maxSize int) int { return max(maxSize/bytesPerValue, minCostBound) }

// Oversize says why body, an attachment, is over the limit of maxSize bytes (the
// servers' MaxAttachmentSize), or returns "" when it is within it: its size, or the
// values it would decode into (see CostBound). The one check of publishers and readers,
// Go servers and the emitter, so that what one publishes the others read.
func Oversize(body []byte, maxSize int) string {
	_, why := Weigh(body, maxSize)
	return why
}

// Weigh is Oversize, which also returns the body's cost (see CostOf) when it is within
// the limit: a reader holds its body, then its tree, and bounds what it holds by both.
func Weigh(body []byte, maxSize int) (cost int, why string) {
	if len(body) > maxSize {
		return 0, fmt.Sprintf("%d bytes, more than %d", len(body), maxSize)
	}
	bound := CostBound(maxSize)
	if cost = CostOf(body, bound); cost > bound {
		return 0, fmt.Sprintf("%d bytes that decode into more than %d values (%d bytes / %d)", len(body), bound, maxSize, bytesPerValue)
	}
	return cost, ""
}

// BytesPerCost is how many bytes of memory a unit of cost (see CostOf) takes once
// decoded, at most, as measured: 50 for a map of one entry (7 units), 40 for an empty
// binary, 13 for an empty map, 16 for a nil.
const BytesPerCost = 64
