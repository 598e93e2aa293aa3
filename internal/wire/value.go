package wire

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// Normalize turns event arguments into the generic tree the codec carries: nil, bool,
// string, numbers, []byte, []any and map[string]any. Readers are read once into []byte
// (they are binary to socket.io, and a reader cannot be read twice: once for the wire and
// once for local clients), and not closed (see CloseReaders); any other value (structs, typed slices and maps) goes through
// encoding/json, as socket.io's own encoder would send it to a client, with integers kept
// exact. The input is not modified.
//
// It reports whether the result holds binary anywhere. A nil []any or map[string]any is
// nil (JSON's null, as socket.io sends it); a float32 is the float64 of its shortest
// decimal form, the number a client receives from socket.io's encoder; a value nested
// deeper than encoding/json allows, such as a map that contains itself, is an error.
func Normalize(v any) (any, bool, error) {
	return normalize(v, 0)
}

// errTooDeep is returned, unwrapped, from the depth where normalize gives up: a path
// of 10,000 levels added at every level made a value that contains itself cost seconds
// and hundreds of megabytes to refuse.
var errTooDeep = fmt.Errorf("wire: value nested deeper than %d levels (does it contain itself?)", maxJSONDepth)

// maxExact is 2^53: integers of larger magnitude are not all float64s.
const maxExact = 1 << 53

// The tree holds numbers as float64, as JavaScript does, except integers beyond ±2^53,
// where float64 does not hold every integer: those are int64 (uint64 above
// math.MaxInt64) when one holds them. By value, whatever their encoding: JSON does not
// tell 1e18 the float from 1e18 the integer (encoding/json writes both as digits), and a
// number must read the same whichever way its message travelled, inline as JSON or as a
// MessagePack attachment. An id such as a snowflake then reaches clients as it was sent:
// the attachment's reader made it a float64, and rounded it, where the same message
// inline kept it exact.

// intValue is how the tree holds an integer (see above).
func intValue(v int64) any {
	if v >= -maxExact && v <= maxExact {
		return float64(v)
	}
	return v
}

// uintValue is how the tree holds an unsigned integer (see above).
func uintValue(u uint64) any {
	switch {
	case u <= maxExact:
		return float64(u)
	case u <= math.MaxInt64:
		return int64(u)
	}
	return u
}

// exactInteger reads the JSON number text as intValue or uintValue would hold it, when
// it is an integer (no fraction, no exponent) that int64 or uint64 holds; ok is false
// otherwise.
func exactInteger(text string) (v any, ok bool) {
	if strings.ContainsAny(text, ".eE") {
		return nil, false
	}
	if i, err := strconv.ParseInt(text, 10, 64); err == nil {
		return intValue(i), true
	}
	if u, err := strconv.ParseUint(text, 10, 64); err == nil {
		return uintValue(u), true
	}
	return nil, false
}

// floatValue is how the tree holds a float (see above): nil when it is not finite, as
// JSON has no such number. Beyond ±2^53 a float is an integer, held as the one its
// shortest decimal text names, the text JSON carries it as (encoding/json's, and
// JavaScript's): 2^60 as 1152921504606847000, not 1152921504606846976, so that it
// reads the same from a MessagePack float (Node's) as from that text.
func floatValue(f float64) any {
	switch {
	case math.IsNaN(f) || math.IsInf(f, 0):
		return nil
	case f >= -maxExact && f <= maxExact:
		return f
	}
	if v, ok := exactInteger(strconv.FormatFloat(f, 'f', -1, 64)); ok {
		return v
	}
	return f
}

// finite returns f, or nil for NaN and the infinities, as JavaScript's JSON.stringify
// writes them (null), which is what a Node server's clients get. JSON cannot carry them:
// a message holding one failed to encode and was not published, and one from a Node
// server (in MessagePack, which can) reached this server's clients without its data.
func finite(f float64) any {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil
	}
	return f
}

// jsDate returns t as JavaScript's Date.prototype.toISOString does, which is how a Date
// that a Node server sends in MessagePack (the timestamp extension) reaches its clients:
// UTC, milliseconds, years outside 0-9999 with a sign and six digits.
func jsDate(t time.Time) string {
	t = t.UTC()
	year := ""
	switch y := t.Year(); {
	case y < 0:
		year = fmt.Sprintf("-%06d", -y)
	case y > 9999:
		year = fmt.Sprintf("+%06d", y)
	default:
		year = fmt.Sprintf("%04d", y)
	}
	return year + t.Format("-01-02T15:04:05.000Z")
}

func normalize(v any, depth int) (any, bool, error) {
	if depth > maxJSONDepth {
		return nil, false, errTooDeep
	}
	switch x := v.(type) {
	case nil, bool, string, int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64:
		return v, false, nil
	case float64:
		return finite(x), false, nil
	case float32:
		// float64(x) would carry float32's rounding error (0.1 becomes
		// 0.10000000149011612) into MessagePack, where the JSON path writes 0.1.
		f, _ := strconv.ParseFloat(strconv.FormatFloat(float64(x), 'g', -1, 32), 64)
		return finite(f), false, nil
	case []byte:
		return x, true, nil
	case *strings.Reader:
		if x == nil {
			return nil, false, nil // as every nil pointer: JSON's null
		}
		// socket.io does not treat a strings.Reader as binary; send its text.
		s, err := io.ReadAll(x)
		return string(s), false, err
	case fmt.Stringer:
		if r, ok := v.(io.Reader); ok && isStringBuffer(v) {
			if isNilPointer(v) {
				return nil, false, nil
			}
			s, err := io.ReadAll(r)
			return string(s), false, err
		}
	case []any:
		if x == nil {
			return nil, false, nil
		}
		out := make([]any, len(x))
		bin := false
		for i, e := range x {
			n, b, err := normalize(e, depth+1)
			if err == errTooDeep {
				return nil, false, err
			} else if err != nil {
				return nil, false, fmt.Errorf("[%d]: %w", i, err)
			}
			out[i], bin = n, bin || b
		}
		return out, bin, nil
	case map[string]any:
		if x == nil {
			return nil, false, nil
		}
		out := make(map[string]any, len(x))
		bin := false
		for k, e := range x {
			n, b, err := normalize(e, depth+1)
			if err == errTooDeep {
				return nil, false, err
			} else if err != nil {
				return nil, false, fmt.Errorf("%q: %w", k, err)
			}
			out[k], bin = n, bin || b
		}
		return out, bin, nil
	}
	if r, ok := v.(io.Reader); ok && !isNilPointer(v) {
		// A nil *bytes.Buffer is a Reader whose Read dereferences nil; it is null, as
		// every nil pointer is (encoding/json, below).
		b, err := io.ReadAll(r)
		if err != nil {
			return nil, false, fmt.Errorf("read binary argument: %w", err)
		}
		return b, true, nil
	}
	js, err := json.Marshal(v)
	if err != nil {
		return nil, false, err
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	var out any
	if err := dec.Decode(&out); err != nil {
		return nil, false, err
	}
	return numbers(out), false, nil
}

// isNilPointer reports whether v is a nil pointer: a typed nil, which an interface
// check does not catch.
func isNilPointer(v any) bool {
	rv := reflect.ValueOf(v)
	return rv.Kind() == reflect.Pointer && rv.IsNil()
}

// CloseReaders closes the arguments that are both io.Reader and io.Closer, in args and
// the []any and map[string]any in them, the values that Normalize reads. Normalize does
// not close them: a caller that promises to (the emitter) must do it on every path,
// including those that fail before the readers are reached.
func CloseReaders(args []any) {
	eachReader(args, 0, func(r io.Reader) bool {
		if c, ok := r.(io.Closer); ok && !isNilPointer(r) {
			c.Close()
		}
		return true
	})
}

// HasReader reports whether args, or the []any and map[string]any in them, hold an
// io.Reader: a value that Normalize consumes, which cannot be used again, or a nil
// pointer to one, which socket.io's encoder reads, and dereferences.
func HasReader(args []any) bool {
	return !eachReader(args, 0, func(io.Reader) bool { return false })
}

// eachReader calls fn with each reader in v, and in the []any and map[string]any in it,
// until fn returns false; it reports whether every call returned true.
func eachReader(v any, depth int, fn func(io.Reader) bool) bool {
	if depth > maxJSONDepth {
		return true
	}
	switch x := v.(type) {
	case []any:
		for _, e := range x {
			if !eachReader(e, depth+1, fn) {
				return false
			}
		}
	case map[string]any:
		for _, e := range x {
			if !eachReader(e, depth+1, fn) {
				return false
			}
		}
	case io.Reader:
		return fn(x)
	}
	return true
}

// isStringBuffer recognises engine.io's *types.StringBuffer by name, which socket.io sends
// as text although it is a Reader, without making the codec depend on engine.io.
func isStringBuffer(v any) bool {
	return fmt.Sprintf("%T", v) == "*types.StringBuffer"
}

// numbers replaces json.Number with int64 (uint64 above math.MaxInt64) when the number
// is an integer that fits, and float64 otherwise, so that MessagePack gets numbers
// rather than strings. A uint64 above math.MaxInt64 in a struct became a float64, and
// reached even the sender's own clients rounded.
func numbers(v any) any {
	switch x := v.(type) {
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		if u, err := strconv.ParseUint(string(x), 10, 64); err == nil {
			return u
		}
		f, _ := x.Float64()
		return f
	case []any:
		for i := range x {
			x[i] = numbers(x[i])
		}
	case map[string]any:
		for k := range x {
			x[k] = numbers(x[k])
		}
	}
	return v
}

// NormalizeArgs normalizes each argument of an event.
func NormalizeArgs(args []any) ([]any, bool, error) {
	out := make([]any, len(args))
	bin := false
	for i, a := range args {
		n, b, err := Normalize(a)
		if err != nil {
			return nil, false, fmt.Errorf("argument %d: %w", i, err)
		}
		out[i], bin = n, bin || b
	}
	return out, bin, nil
}

// HasBinary reports whether a normalized tree holds a []byte anywhere.
func HasBinary(v any) bool {
	switch x := v.(type) {
	case []byte:
		return true
	case []any:
		for _, e := range x {
			if HasBinary(e) {
				return true
			}
		}
	case map[string]any:
		for _, e := range x {
			if HasBinary(e) {
				return true
			}
		}
	}
	return false
}
