package wire

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"math"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// The direct MessagePack reader and writer against vmihailenco/msgpack, the reference.

// libTree decodes b with the library, as DecodeAttachment did before the direct reader.
func libTree(b []byte) (any, error) {
	if err := validateMsgpack(b); err != nil {
		return nil, err
	}
	dec := msgpack.NewDecoder(bytes.NewReader(b))
	v, err := dec.DecodeInterface()
	if err != nil {
		return nil, err
	}
	return fromMsgpack(v)
}

// sameTree is reflect.DeepEqual for trees, with NaN equal to NaN, and -0 to 0 (integral
// floats are written as integers, by the library's compact encoding too).
func sameTree(a, b any) bool {
	switch x := a.(type) {
	case float64:
		y, ok := b.(float64)
		return ok && (x == y || math.IsNaN(x) && math.IsNaN(y))
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) || (x == nil) != (y == nil) {
			return false
		}
		for i := range x {
			if !sameTree(x[i], y[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) || (x == nil) != (y == nil) {
			return false
		}
		for k, e := range x {
			f, present := y[k]
			if !present || !sameTree(e, f) {
				return false
			}
		}
		return true
	case []byte:
		y, ok := b.([]byte)
		return ok && bytes.Equal(x, y) && (x == nil) == (y == nil)
	}
	return a == b
}

// checkMsgpack checks that what the direct reader takes from b, the library reads the
// same, and that the direct writer's encoding of it reads back the same.
func checkMsgpack(t *testing.T, b []byte) {
	t.Helper()
	v, ok := decodeMsgpackTree(b)
	if !ok {
		return
	}
	want, err := libTree(b)
	if err != nil {
		t.Fatalf("%x: the direct reader took it as %#v, the library fails: %v", b, v, err)
	}
	if !sameTree(v, want) {
		t.Fatalf("%x: the direct reader gives %#v, the library %#v", b, v, want)
	}
	enc, ok := appendMsgpack(nil, v, 0)
	if !ok {
		t.Fatalf("%#v: the direct writer refuses a tree the reader gave", v)
	}
	again, err := libTree(enc)
	if err != nil || !sameTree(again, v) {
		t.Fatalf("%#v written as %x reads back as %#v (%v)", v, enc, again, err)
	}
}

func TestMsgpackAgainstLibrary(t *testing.T) {
	var values []any
	for _, n := range []int64{0, 1, 127, 128, 255, 256, 65535, 65536, math.MaxUint32, math.MaxUint32 + 1, math.MaxInt64,
		-1, -32, -33, -128, -129, -32768, -32769, math.MinInt32, math.MinInt32 - 1, math.MinInt64} {
		values = append(values, n, float64(n))
	}
	values = append(values, uint64(math.MaxUint64), 0.5, -0.25, 1e300, -1e-300, math.Inf(1), math.Inf(-1), math.NaN(),
		float32(0.1), float32(3), nil, true, false, int(7), int8(-8), int16(300), int32(-70000), uint(9), uint8(200), uint16(60000), uint32(1<<31))
	for _, n := range []int{0, 1, 31, 32, 255, 256, 65535, 65536} {
		values = append(values, strings.Repeat("é", n/2)+strings.Repeat("x", n%2), bytes.Repeat([]byte{7}, n))
		a := make([]any, n%20000)
		m := map[string]any{}
		for i := range a {
			a[i] = float64(i)
			if i < 40 {
				m[strings.Repeat("k", i)] = float64(i)
			}
		}
		values = append(values, a, m)
	}
	values = append(values, []any{}, map[string]any{}, []byte{}, map[string]any{"a": []any{map[string]any{"b": []byte{1}}}})
	for _, v := range values {
		enc, ok := appendMsgpack(nil, v, 0)
		if !ok {
			t.Fatalf("%#v: not written", v)
		}
		norm, _ := fromMsgpack(v) // numbers as the readers give them
		switch x := v.(type) {
		case int:
			norm = intValue(int64(x))
		case uint:
			norm = uintValue(uint64(x))
		}
		if lib, err := libTree(enc); err != nil || !sameTree(lib, norm) {
			t.Fatalf("%.60v written as %.40x reads back with the library as %.60v (%v)", v, enc, lib, err)
		}
		if got, ok := decodeMsgpackTree(enc); !ok || !sameTree(got, norm) {
			t.Fatalf("%.60v written as %.40x reads back directly as %.60v (%v)", v, enc, got, ok)
		}
		checkMsgpack(t, enc)
	}
	// What the direct path leaves to the library: extension types, a type of no tree.
	if _, ok := decodeMsgpackTree([]byte{0xd4, 0x01, 0x00}); ok {
		t.Error("an extension type was taken")
	}
	if _, ok := appendMsgpack(nil, map[string]any{"t": struct{ A int }{1}}, 0); ok {
		t.Error("a struct was written")
	}
	// Keys as the library reads them: bin and nil keys are strings, others refused.
	checkMsgpack(t, []byte{0x82, 0xc4, 0x01, 'a', 0x01, 0xc0, 0x02})
	if _, ok := decodeMsgpackTree([]byte{0x81, 0x01, 0x01}); ok {
		t.Error("an integer key was taken")
	}
}

func FuzzMsgpackTree(f *testing.F) {
	for _, v := range loadVectors(f) {
		if v.AttachmentHex != "" {
			b, _ := hex.DecodeString(v.AttachmentHex)
			f.Add(b)
		}
	}
	for _, b := range [][]byte{{0x80}, {0x90}, {0xc4, 0x00}, {0x81, 0xc0, 0xc0}, {0xdf, 0xff, 0xff, 0xff, 0xff},
		{0x92, 0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 1, 0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0}} {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) { checkMsgpack(t, b) })
}

// nestedLengths is depth array32 (code 0xdd, div 1) or map32 (0xdf, div 2) headers, each
// declaring as many elements as bytes remain, then nils up to size bytes.
func nestedLengths(depth, size int, code byte, div int) []byte {
	b := make([]byte, 0, size)
	for range depth {
		b = append(b, code)
		b = binary.BigEndian.AppendUint32(b, uint32((size-len(b)-4)/div))
	}
	for len(b) < size {
		b = append(b, 0xc0)
	}
	return b
}

// TestNestedLengthsAllocateLittle: every container's length was checked against what
// was left of the input, not against what the containers around it were owed already,
// so that each of 500 nested arrays claimed the rest of a row, and allocated for it,
// before the decode failed (a reviewer: 492 MB for a 64 KB row, 8 GB for 1 MB, 36 MB
// for a notification of 7.7 KB that anyone allowed to NOTIFY may send). A tree decoder
// allocates more than its input (an interface is 16 bytes), but not that much.
func TestNestedLengthsAllocateLittle(t *testing.T) {
	allocated := func(f func()) uint64 {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		f()
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}
	for _, c := range []struct {
		name string
		code byte
		div  int
	}{{"arrays", 0xdd, 1}, {"maps", 0xdf, 2}} {
		row := nestedLengths(500, 64<<10, c.code, c.div)
		var err error
		if n := allocated(func() { _, err = DecodeAttachment(row) }); n > 64*uint64(len(row)) || err == nil {
			t.Errorf("%s: a %d-byte row allocated %d bytes (%v)", c.name, len(row), n, err)
		}
		payload := `{"uid":"x","type":3,"msgpack":"` + base64.StdEncoding.EncodeToString(nestedLengths(500, 5800, c.code, c.div)) + `"}`
		if n := allocated(func() { _, err = DecodeNotification(payload) }); n > 64*uint64(len(payload)) || err == nil {
			t.Errorf("%s: a %d-byte notification allocated %d bytes (%v)", c.name, len(payload), n, err)
		}
	}
}

// TestNodeNonFiniteAndDates decodes what a Node server sends (captured from
// @msgpack/msgpack 2.8.0, the adapter's encoder) for io.emit("e", Buffer.from([1]), ...)
// with NaN and the infinities, and with Dates: its clients get them as JSON.stringify
// writes them, null and toISOString(). NaN reached this server's clients as an event
// without its data (socket.io's JSON encoding failed), and a Date as a time.Time in the
// server's time zone.
func TestNodeNonFiniteAndDates(t *testing.T) {
	for _, c := range []struct {
		name, hex string
		want      []any
	}{
		{"NaN, Infinity, -Infinity, {x: NaN}",
			"84a3756964b061616161616161616161616161616161a47479706503a46461746182a67061636b657482a47479706502a46461746196a165c40101cb7ff8000000000000cb7ff0000000000000cbfff000000000000081a178cb7ff8000000000000a46f70747383a5726f6f6d7390a665786365707490a5666c61677380a36e7370a12f",
			[]any{"e", []byte{1}, nil, nil, nil, map[string]any{"x": nil}}},
		{"new Date(1700000000123), new Date(-1), new Date(8.64e15)",
			"84a3756964b061616161616161616161616161616161a47479706503a46461746182a67061636b657482a47479706502a46461746195a165c40101d7ff1d5353006553f100c70cff3b8b87c0ffffffffffffffffc70cff00000000000007dba8218000a46f70747383a5726f6f6d7390a665786365707490a5666c61677380a36e7370a12f",
			[]any{"e", []byte{1}, "2023-11-14T22:13:20.123Z", "1969-12-31T23:59:59.999Z", "+275760-09-13T00:00:00.000Z"}},
	} {
		b, err := hex.DecodeString(c.hex)
		if err != nil {
			t.Fatal(err)
		}
		m, err := DecodeAttachment(b)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		got := m.Data.(*BroadcastData).Packet.Data
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: got %#v, want %#v", c.name, got, c.want)
		}
		if _, err := AppendJSON(nil, got); err != nil {
			t.Errorf("%s: not JSON for the clients: %v", c.name, err)
		}
	}
	// Sent: as JSON.stringify writes them, not a failure to encode.
	args, _, err := NormalizeArgs([]any{"e", math.NaN(), math.Inf(-1), float32(math.Inf(1)), map[string]any{"x": math.NaN()}})
	if err != nil || !reflect.DeepEqual(args, []any{"e", nil, nil, nil, map[string]any{"x": nil}}) {
		t.Errorf("normalized %#v, %v", args, err)
	}
}

// TestCostOf: each value counts one, each container, empty or not, containerWeight more;
// the walk stops past its bound.
func TestCostOf(t *testing.T) {
	for _, c := range []struct {
		body []byte
		want int
	}{
		{[]byte{0xc0}, 1},                                 // nil
		{[]byte{0x80}, 1 + containerWeight},               // {}
		{[]byte{0x92, 0x80, 0xc0}, 3 + 2*containerWeight}, // [{}, nil]
		{[]byte{0xa3, 'a', 'b', 'c'}, 1},                  // a string is one value, whatever its length
		{[]byte{0x92, 0xc0}, 1 + containerWeight},         // two elements declared, one byte left: refused at the array
	} {
		if got := CostOf(c.body, 0); got != c.want {
			t.Errorf("CostOf(% x) = %d, want %d", c.body, got, c.want)
		}
	}
	maps := append([]byte{0xdd, 0, 1, 0, 0}, bytes.Repeat([]byte{0x80}, 1<<16)...) // 65,536 empty maps
	if got := CostOf(maps, 100); got <= 100 || got > 100+1+containerWeight {
		t.Errorf("CostOf stopped at %d, want just past 100", got)
	}
	if Oversize(maps, 1<<20) == "" || Oversize(maps[:5+CostBound(1<<20)/(1+containerWeight)-1], 1<<20) != "" {
		t.Errorf("Oversize: 65,536 empty maps are over CostBound(1 MiB) = %d, fewer are not", CostBound(1<<20))
	}
	if why := Oversize(make([]byte, 11), 10); why != "11 bytes, more than 10" {
		t.Errorf("Oversize of 11 bytes within 10: %q", why)
	}
}

// TestCostOfAllocatesNothing: every attachment is walked, published and read.
func TestCostOfAllocatesNothing(t *testing.T) {
	body := []byte{0x93, 0x81, 0xa1, 'k', 0x92, 0xc0, 0x80, 0xa3, 'a', 'b', 'c', 0xc3} // [{"k":[nil,{}]},"abc",true]
	if n := testing.AllocsPerRun(100, func() { CostOf(body, 1000) }); n != 0 {
		t.Fatalf("CostOf allocates %v times", n)
	}
}
