package wire

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// A JSON encoder and decoder for the generic trees the codec carries. Every inline
// message is JSON on the wire (Node's adapter sends JSON.stringify's output), and
// encoding/json's reflection made up about a fifth of a server's CPU time in the cluster
// benchmark. These write and read the same bytes and values as encoding/json
// (SetEscapeHTML(false) when writing; decoding into an interface{}), which a differential
// fuzz test checks; values of other types than the tree's go through encoding/json.

// maxJSONDepth is encoding/json's own nesting limit.
const maxJSONDepth = 10000

// errJSONDepth is appendJSON's error for a value nested deeper than maxJSONDepth.
var errJSONDepth = errors.New("json: exceeded max depth")

// AppendJSON appends the JSON text of v to b, as encoding/json with SetEscapeHTML(false)
// writes it. It is for values the codec decoded (a tree), which it writes without
// reflection.
func AppendJSON(b []byte, v any) ([]byte, error) { return appendJSON(b, v, 0) }

// OwnSuffix returns how every inline notification the codec encodes for uid ends: the
// codec writes keys in order, and "uid" is the last top-level key. With the header
// prefix of AttachmentHeaderPrefix, it lets a server recognise its own messages, echoed
// by PostgreSQL, without decoding them.
func OwnSuffix(uid string) string { return `,"uid":` + string(appendString(nil, uid)) + `}` }

// OwnPrefix returns how every attachment header the codec writes for uid begins.
func OwnPrefix(uid string) string { return `{"uid":` + string(appendString(nil, uid)) + `,` }

// RawJSON is JSON text that was validated once and is written verbatim: a broadcast's
// arguments travel from the notification to the clients as the text they arrived in,
// with no tree built and no re-encoding.
type RawJSON string

// appendJSON appends the JSON text of v to b.
func appendJSON(b []byte, v any, depth int) ([]byte, error) {
	if depth > maxJSONDepth {
		return nil, errJSONDepth
	}
	switch x := v.(type) {
	case RawJSON:
		return append(b, x...), nil
	case nil:
		return append(b, "null"...), nil
	case bool:
		return strconv.AppendBool(b, x), nil
	case string:
		return appendString(b, x), nil
	case float64:
		return appendFloat(b, x, 64)
	case float32:
		return appendFloat(b, float64(x), 32)
	case int:
		return strconv.AppendInt(b, int64(x), 10), nil
	case int8:
		return strconv.AppendInt(b, int64(x), 10), nil
	case int16:
		return strconv.AppendInt(b, int64(x), 10), nil
	case int32:
		return strconv.AppendInt(b, int64(x), 10), nil
	case int64:
		return strconv.AppendInt(b, x, 10), nil
	case uint:
		return strconv.AppendUint(b, uint64(x), 10), nil
	case uint8:
		return strconv.AppendUint(b, uint64(x), 10), nil
	case uint16:
		return strconv.AppendUint(b, uint64(x), 10), nil
	case uint32:
		return strconv.AppendUint(b, uint64(x), 10), nil
	case uint64:
		return strconv.AppendUint(b, x, 10), nil
	case []any:
		if x == nil {
			return append(b, "null"...), nil
		}
		b = append(b, '[')
		for i, e := range x {
			if i > 0 {
				b = append(b, ',')
			}
			var err error
			if b, err = appendJSON(b, e, depth+1); err != nil {
				return nil, err
			}
		}
		return append(b, ']'), nil
	case map[string]any:
		if x == nil {
			return append(b, "null"...), nil
		}
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		slices.Sort(keys) // as encoding/json orders map keys
		b = append(b, '{')
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, k)
			b = append(b, ':')
			var err error
			if b, err = appendJSON(b, x[k], depth+1); err != nil {
				return nil, err
			}
		}
		return append(b, '}'), nil
	}
	var buf strings.Builder
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return append(b, strings.TrimSuffix(buf.String(), "\n")...), nil
}

// appendFloat writes f as encoding/json does: shortest representation, exponent form
// outside [1e-6, 1e21), and no NaN or infinity.
func appendFloat(b []byte, f float64, bits int) ([]byte, error) {
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return nil, fmt.Errorf("json: unsupported value: %s", strconv.FormatFloat(f, 'g', -1, bits))
	}
	abs := math.Abs(f)
	format := byte('f')
	if abs != 0 {
		if bits == 64 && (abs < 1e-6 || abs >= 1e21) || bits == 32 && (float32(abs) < 1e-6 || float32(abs) >= 1e21) {
			format = 'e'
		}
	}
	b = strconv.AppendFloat(b, f, format, -1, bits)
	if format == 'e' {
		// clean up e-09 to e-9
		n := len(b)
		if n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b, nil
}

const hexDigits = "0123456789abcdef"

// appendString writes s quoted as encoding/json does without HTML escaping: invalid
// UTF-8 becomes U+FFFD, and U+2028 and U+2029 are escaped for JavaScript's sake.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		// Eight bytes at a time while they are all written as they are: most strings
		// are, and a 20 KB one then costs a quarter of the byte-by-byte loop (BenchmarkAppendString).
		if n := plainWords(s[i:]); n > 0 {
			i += n
			continue
		}
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

const (
	lsb8 = 0x0101010101010101
	msb8 = 0x8080808080808080
)

// plainWords returns the length of the longest run of whole eight-byte words at the start
// of s whose bytes are all printable ASCII other than '"' and '\\', which JSON writes
// unescaped. Each test sets a byte's high bit where the byte may need care (below 0x20,
// equal to '"' or '\\', or not ASCII), and some byte's exactly when one does.
func plainWords(s string) int {
	n := 0
	for ; n+8 <= len(s); n += 8 {
		x := s[n : n+8]
		w := uint64(x[0]) | uint64(x[1])<<8 | uint64(x[2])<<16 | uint64(x[3])<<24 |
			uint64(x[4])<<32 | uint64(x[5])<<40 | uint64(x[6])<<48 | uint64(x[7])<<56
		quote, backslash := w^(lsb8*'"'), w^(lsb8*'\\')
		if ((w-lsb8*0x20)|(quote-lsb8)&^quote|(backslash-lsb8)&^backslash|w)&msb8 != 0 {
			break
		}
	}
	return n
}

// parseJSON decodes one JSON value that fills s (surrounding whitespace allowed), into
// what encoding/json gives for an interface{}: nil, bool, float64, string, []any and
// map[string]any.
func parseJSON(s string) (any, error) {
	p := parser{s: s}
	p.space()
	v, err := p.value(0)
	if err != nil {
		return nil, err
	}
	p.space()
	if p.i < len(p.s) {
		return nil, p.errorf("invalid character %q after top-level value", p.s[p.i])
	}
	return v, nil
}

type parser struct {
	s string
	i int
	// skip makes value check syntax only, returning nil and allocating nothing;
	// badUTF8 records that a skipped string holds invalid UTF-8.
	skip    bool
	badUTF8 bool
}

// raw reads the array at p.i, an event's arguments, as RawJSON: its text, checked as
// value would check it. It returns the decoded value instead when the first element is
// not a string (not an event), or when the text holds invalid UTF-8 (decoding replaces
// it, as encoding/json does; passed through, it would break a client's WebSocket, which
// requires UTF-8 text).
func (p *parser) raw(depth int) (any, error) {
	start := p.i
	p.skip, p.badUTF8 = true, false
	_, err := p.value(depth)
	p.skip = false
	if err != nil {
		return nil, err
	}
	text := p.s[start:p.i]
	if !p.badUTF8 {
		rest := strings.TrimLeft(text[1:], " \t\n\r")
		if rest != "" && rest[0] == '"' {
			return RawJSON(text), nil
		}
	}
	sub := parser{s: text}
	return sub.value(depth)
}

func (p *parser) errorf(format string, args ...any) error {
	return fmt.Errorf("json: offset %d: %s", p.i, fmt.Sprintf(format, args...))
}

func (p *parser) space() {
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *parser) value(depth int) (any, error) {
	if depth >= maxJSONDepth {
		return nil, p.errorf("exceeded max depth")
	}
	if p.i >= len(p.s) {
		return nil, p.errorf("unexpected end of JSON input")
	}
	switch c := p.s[p.i]; {
	case c == '{':
		return p.object(depth)
	case c == '[':
		return p.array(depth)
	case c == '"':
		if p.skip {
			_, err := p.string() // boxing the string would allocate
			return nil, err
		}
		return p.string()
	case c == 't':
		return true, p.literal("true")
	case c == 'f':
		return false, p.literal("false")
	case c == 'n':
		return nil, p.literal("null")
	case c == '-' || c >= '0' && c <= '9':
		return p.number()
	default:
		return nil, p.errorf("invalid character %q looking for beginning of value", c)
	}
}

func (p *parser) literal(word string) error {
	if !strings.HasPrefix(p.s[p.i:], word) {
		return p.errorf("invalid literal")
	}
	p.i += len(word)
	return nil
}

func (p *parser) object(depth int) (any, error) {
	p.i++ // {
	var m map[string]any
	if !p.skip {
		m = make(map[string]any)
	}
	p.space()
	if p.i < len(p.s) && p.s[p.i] == '}' {
		p.i++
		return m, nil
	}
	for {
		p.space()
		if p.i >= len(p.s) || p.s[p.i] != '"' {
			return nil, p.errorf("looking for beginning of object key string")
		}
		k, err := p.string()
		if err != nil {
			return nil, err
		}
		p.space()
		if p.i >= len(p.s) || p.s[p.i] != ':' {
			return nil, p.errorf("after object key")
		}
		p.i++
		p.space()
		v, err := p.value(depth + 1)
		if err != nil {
			return nil, err
		}
		if !p.skip {
			m[k] = v
		}
		p.space()
		if p.i >= len(p.s) {
			return nil, p.errorf("unexpected end of JSON input")
		}
		switch p.s[p.i] {
		case ',':
			p.i++
		case '}':
			p.i++
			return m, nil
		default:
			return nil, p.errorf("invalid character %q after object key:value pair", p.s[p.i])
		}
	}
}

func (p *parser) array(depth int) (any, error) {
	p.i++ // [
	var a []any
	if !p.skip {
		a = []any{}
	}
	p.space()
	if p.i < len(p.s) && p.s[p.i] == ']' {
		p.i++
		return a, nil
	}
	for {
		p.space()
		v, err := p.value(depth + 1)
		if err != nil {
			return nil, err
		}
		if !p.skip {
			a = append(a, v)
		}
		p.space()
		if p.i >= len(p.s) {
			return nil, p.errorf("unexpected end of JSON input")
		}
		switch p.s[p.i] {
		case ',':
			p.i++
		case ']':
			p.i++
			return a, nil
		default:
			return nil, p.errorf("invalid character %q after array element", p.s[p.i])
		}
	}
}

func (p *parser) number() (any, error) {
	start := p.i
	f, err := p.float()
	if err != nil || p.skip {
		return nil, err // boxing f would allocate
	}
	// At ±2^53 too: the text 9007199254740993 reads as the float 2^53.
	if f >= maxExact || f <= -maxExact {
		if v, ok := exactInteger(p.s[start:p.i]); ok {
			return v, nil
		}
		return floatValue(f), nil
	}
	return f, nil
}

// float reads a number.
func (p *parser) float() (float64, error) {
	start := p.i
	s := p.s
	if s[p.i] == '-' {
		p.i++
	}
	digits := func() int {
		n := 0
		for p.i < len(s) && s[p.i] >= '0' && s[p.i] <= '9' {
			p.i++
			n++
		}
		return n
	}
	switch {
	case p.i < len(s) && s[p.i] == '0':
		p.i++
	case digits() == 0:
		return 0, p.errorf("invalid number")
	}
	if p.i < len(s) && s[p.i] == '.' {
		p.i++
		if digits() == 0 {
			return 0, p.errorf("invalid number")
		}
	}
	if p.i < len(s) && (s[p.i] == 'e' || s[p.i] == 'E') {
		p.i++
		if p.i < len(s) && (s[p.i] == '+' || s[p.i] == '-') {
			p.i++
		}
		if digits() == 0 {
			return 0, p.errorf("invalid number")
		}
	}
	f, err := strconv.ParseFloat(s[start:p.i], 64)
	if err != nil {
		return 0, p.errorf("number %s out of range", s[start:p.i])
	}
	return f, nil
}

// string reads a quoted string. A string without escapes and with valid UTF-8 is a
// slice of the input, with no copy.
func (p *parser) string() (string, error) {
	p.i++ // "
	start := p.i
	s := p.s
	for p.i < len(s) {
		c := s[p.i]
		switch {
		case c == '"':
			p.i++
			return s[start : p.i-1], nil
		case c == '\\':
			return p.unquote(start)
		case c < 0x20:
			return "", p.errorf("invalid character %q in string literal", c)
		case c < utf8.RuneSelf:
			p.i++
		default:
			r, size := utf8.DecodeRuneInString(s[p.i:])
			if r == utf8.RuneError && size == 1 {
				return p.unquote(start)
			}
			p.i += size
		}
	}
	return "", p.errorf("unexpected end of JSON input")
}

// unquote reads the string that began at start, the slow way: escapes, and invalid
// UTF-8 replaced by U+FFFD, as encoding/json does.
func (p *parser) unquote(start int) (string, error) {
	s := p.s
	b := make([]byte, 0, p.i-start+16)
	b = append(b, s[start:p.i]...)
	for p.i < len(s) {
		c := s[p.i]
		switch {
		case c == '"':
			p.i++
			return string(b), nil
		case c == '\\':
			p.i++
			if p.i >= len(s) {
				return "", p.errorf("unexpected end of JSON input")
			}
			e := s[p.i]
			p.i++
			switch e {
			case '"', '\\', '/':
				b = append(b, e)
			case 'b':
				b = append(b, '\b')
			case 'f':
				b = append(b, '\f')
			case 'n':
				b = append(b, '\n')
			case 'r':
				b = append(b, '\r')
			case 't':
				b = append(b, '\t')
			case 'u':
				r, ok := hex4(s, p.i)
				if !ok {
					return "", p.errorf("invalid \\u escape")
				}
				p.i += 4
				if utf16.IsSurrogate(r) {
					// A pair makes one rune; a lone half is U+FFFD, and what follows is read
					// on its own.
					if p.i+1 < len(s) && s[p.i] == '\\' && s[p.i+1] == 'u' {
						if r2, ok := hex4(s, p.i+2); ok {
							if d := utf16.DecodeRune(r, r2); d != utf8.RuneError {
								p.i += 6
								b = utf8.AppendRune(b, d)
								continue
							}
						}
					}
					r = utf8.RuneError
				}
				b = utf8.AppendRune(b, r)
			default:
				return "", p.errorf("invalid escape character %q in string", e)
			}
		case c < 0x20:
			return "", p.errorf("invalid character %q in string literal", c)
		case c < utf8.RuneSelf:
			b = append(b, c)
			p.i++
		default:
			r, size := utf8.DecodeRuneInString(s[p.i:])
			if r == utf8.RuneError && size == 1 {
				p.badUTF8 = true
			}
			p.i += size
			b = utf8.AppendRune(b, r) // RuneError for an invalid byte
		}
	}
	return "", p.errorf("unexpected end of JSON input")
}

func hex4(s string, i int) (rune, bool) {
	if i+4 > len(s) {
		return 0, false
	}
	var r rune
	for _, c := range []byte(s[i : i+4]) {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			c = c - 'A' + 10
		default:
			return 0, false
		}
		r = r*16 + rune(c)
	}
	return r, true
}
