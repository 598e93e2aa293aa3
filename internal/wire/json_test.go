package wire

import (
	"encoding/json"
	"math"
	"math/big"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// The codec's JSON must be encoding/json's, byte for byte and value for value: Node and
// earlier versions of this codec read and write it.

func stdEncode(t testing.TB, v any) (string, error) {
	t.Helper()
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return "", err
	}
	return strings.TrimSuffix(b.String(), "\n"), nil
}

func TestAppendJSONMatchesEncodingJSON(t *testing.T) {
	values := []any{
		nil, true, false, "", "plain", `quote " backslash \ slash /`, "\x00\x01\b\f\n\r\t\x1f\x7f",
		"<html> & 'x'", "é ü 世界 😀", "\u2028\u2029", "bad \xff\xfe utf8 \xc3", "\xed\xa0\x80",
		0.0, math.Copysign(0, -1), 1.0, -1.5, 0.1, 1e20, 1e21, 1e-6, 1e-7, 123456789.125, math.MaxFloat64,
		math.SmallestNonzeroFloat64, float32(0.1), float32(1e21), float32(1e-7),
		int(-42), int8(-8), int16(16), int32(-32), int64(math.MaxInt64), uint(7), uint8(8), uint16(16), uint32(32), uint64(math.MaxUint64),
		[]any{}, []any(nil), map[string]any{}, map[string]any(nil),
		[]any{1.0, "a", nil, []any{true}, map[string]any{"z": 1.0, "a": []any{}, "é": "x", "": nil}},
		map[string]any{"b\n": 1, "a\u2028": 2, "\xff": 3},
		[]string{"typed", "slice"}, map[string]int{"x": 1}, struct{ A int }{1}, json.Number("12.50"), []byte("bin"),
	}
	for _, v := range values {
		want, werr := stdEncode(t, v)
		got, gerr := appendJSON(nil, v, 0)
		if (werr != nil) != (gerr != nil) {
			t.Errorf("%#v: error %v, encoding/json's %v", v, gerr, werr)
			continue
		}
		if string(got) != want {
			t.Errorf("%#v: got %s, encoding/json writes %s", v, got, want)
		}
	}
	for _, bad := range []any{math.NaN(), math.Inf(1), float32(math.Inf(-1)), []any{math.NaN()}} {
		if _, err := appendJSON(nil, bad, 0); err == nil {
			t.Errorf("%v: no error", bad)
		}
	}
}

// Strings are scanned eight bytes at a time: every byte that needs care, at every offset
// in and around a word, next to every byte that does not.
func TestAppendStringWordAtATime(t *testing.T) {
	specials := []string{"\x00", "\x1f", "\x20", "\"", "\\", "\x7f", "\x80", "\xff", "é", "\u2028", "\u2029", "😀", "\xe2\x80"}
	fillers := []string{"x", "\x21", "\x5b", "\x5d", "\x7e", "!"}
	for _, sp := range specials {
		for _, fill := range fillers {
			for n := 0; n < 26; n++ {
				for at := 0; at <= n; at++ {
					s := strings.Repeat(fill, at) + sp + strings.Repeat(fill, n-at)
					want, _ := stdEncode(t, s)
					if got := string(appendString(nil, s)); got != want {
						t.Fatalf("%q: got %s, encoding/json writes %s", s, got, want)
					}
				}
			}
		}
	}
}

func TestParseJSONMatchesEncodingJSON(t *testing.T) {
	inputs := []string{
		`null`, ` true `, `false`, `0`, `-0`, `1.5e3`, `1E-2`, `-12.25`, `1e400`, `01`, `1.`, `.5`, `-`, `1e`, `+1`,
		`""`, `"a\"b\\c\/d\b\f\n\r\t"`, `"\u00e9\u4e16"`, `"\ud83d\ude00"`, `"\ud83d"`, `"\ud83dx"`, `"\ud83d\u0041"`, `"\ude00\ud83d"`,
		`"\u12"`, `"\x"`, "\"raw\x01control\"", "\"bad \xff utf8\"", "\"\xed\xa0\x80\"", `"unterminated`,
		`[]`, `[1,2,[3,{}]]`, `[1,]`, `[,1]`, `[1 2]`, `{}`, `{"a":1,"a":2}`, `{"a":1,}`, `{"a" 1}`, `{1:2}`, `{"a":1} x`,
		`{"a":1}]`, `{"a":1} {"b":2}`, "\t{\n\"k\" : [ ] }\r\n", `tru`, `nul`, `[`, `{`, `{"a":`, ``, ` `,
		strings.Repeat("[", 10001) + strings.Repeat("]", 10001), strings.Repeat("[", 9999) + strings.Repeat("]", 9999),
	}
	for _, in := range inputs {
		checkParse(t, in)
	}
}

func checkParse(t *testing.T, in string) {
	t.Helper()
	var want any
	werr := json.Unmarshal([]byte(in), &want)
	if werr == nil {
		// Again, for the numbers' text.
		d := json.NewDecoder(strings.NewReader(in))
		d.UseNumber()
		want = nil
		d.Decode(&want)
		want = stdNumbers(want)
	}
	got, gerr := parseJSON(in)
	short := in
	if len(short) > 40 {
		short = short[:40] + "..."
	}
	if (werr != nil) != (gerr != nil) {
		t.Fatalf("%q: error %v, encoding/json's %v", short, gerr, werr)
	}
	if werr == nil && !reflect.DeepEqual(got, want) {
		t.Fatalf("%q: got %#v, encoding/json gives %#v", short, got, want)
	}
}

// stdNumbers turns encoding/json's numbers (json.Number) into the tree's: float64, and
// integers beyond ±2^53 as int64, or uint64 (see intValue), exact when written as
// integers.
func stdNumbers(v any) any {
	switch x := v.(type) {
	case json.Number:
		// Independently of the codec's functions: big.Int holds any integer text.
		f, _ := x.Float64()
		classify := func(n *big.Int) (any, bool) {
			switch {
			case n.IsInt64() && (n.Int64() > maxExact || n.Int64() < -maxExact):
				return n.Int64(), true
			case n.IsInt64():
				return float64(n.Int64()), true
			case n.IsUint64():
				return n.Uint64(), true
			}
			return nil, false
		}
		text := string(x)
		switch {
		case (f <= -maxExact || f >= maxExact) && !strings.ContainsAny(text, ".eE"):
			if n, ok := new(big.Int).SetString(text, 10); ok {
				if v, ok := classify(n); ok {
					return v
				}
			}
		case f < -maxExact || f > maxExact:
			// A float beyond 2^53 is the integer its shortest text names.
			if n, ok := new(big.Int).SetString(strconv.FormatFloat(f, 'f', -1, 64), 10); ok {
				if v, ok := classify(n); ok {
					return v
				}
			}
		}
		return f
	case []any:
		for i := range x {
			x[i] = stdNumbers(x[i])
		}
	case map[string]any:
		for k := range x {
			x[k] = stdNumbers(x[k])
		}
	}
	return v
}

// FuzzJSON compares the codec's JSON with encoding/json on any input: the same verdict,
// the same value, and the same text when written again.
func FuzzJSON(f *testing.F) {
	for _, v := range loadVectors(f) {
		f.Add(v.Notify)
	}
	for _, s := range []string{`{"a":[1,2.5,"x\u2028\ud83d\ude00"],"b":null}`, `"\ud800\udc00"`, "\"\xff\"", `1e21`, `-0.000001`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		checkParse(t, in)
		v, err := parseJSON(in)
		if err != nil {
			return
		}
		want, werr := stdEncode(t, v)
		got, gerr := appendJSON(nil, v, 0)
		if werr != nil || gerr != nil {
			t.Fatalf("%q: encode errors %v / %v", in, gerr, werr)
		}
		if string(got) != want {
			t.Fatalf("%q: wrote %s, encoding/json writes %s", in, got, want)
		}
	})
}

// A server drops PostgreSQL's echo of its own messages by their first or last bytes:
// every message the codec encodes must end with OwnSuffix, and every attachment header
// begin with OwnPrefix.
func TestOwnMessagesRecognised(t *testing.T) {
	for _, v := range loadVectors(t) {
		n, err := DecodeNotification(v.Notify)
		if err != nil {
			t.Fatalf("%s: %v", v.Name, err)
		}
		if n.HasAttachment {
			continue
		}
		for _, uid := range []string{n.Message.UID, "0123456789abcdef", `we"ird\`} {
			m := *n.Message
			m.UID = uid
			js, err := EncodeJSON(&m)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasSuffix(js, OwnSuffix(uid)) {
				t.Errorf("%s: %s does not end with %s", v.Name, js, OwnSuffix(uid))
			}
			if strings.HasSuffix(js, OwnSuffix(uid+"x")) || strings.HasPrefix(js, OwnPrefix(uid)) {
				t.Errorf("%s: %s taken for another uid's", v.Name, js)
			}
		}
	}
	if h := AttachmentHeaderPrefix("abc", Broadcast); !strings.HasPrefix(h, OwnPrefix("abc")) || strings.HasPrefix(h, OwnPrefix("ab")) {
		t.Errorf("attachment header %s", h)
	}
}
