package wire

import (
	"math"
	"strconv"
	"strings"
	"time"
)

// The fast path for the message every server receives most: a BROADCAST notification,
// read straight into a Message, its arguments kept as text. The generic decoder builds
// a map for each of the envelope's five objects first; in the cluster benchmark that was
// a sixth of a receiving server's CPU time. The fast path accepts only the shape that
// the codec and Node's packages write (known keys, each once, with values of the
// expected types) and gives up on anything else, which the generic decoder then reads,
// with its leniencies and its error messages. A differential fuzz test checks that the
// two agree wherever the fast path answers.

// decodeBroadcastFast decodes payload if it is a BROADCAST of the expected shape; ok is
// false otherwise.
func decodeBroadcastFast(payload string) (n *Notification, ok bool) {
	p := parser{s: payload}
	m := &Message{}
	d := &BroadcastData{}
	var seen uint8
	const (
		sawType = 1 << iota
		sawUID
		sawNsp
		sawData
		sawSeq
	)
	typ := 0
	var seq uint64
	ok = p.fastObject(func(key string) bool {
		switch key {
		case "type":
			if !first(&seen, sawType) {
				return false
			}
			var ok bool
			typ, ok = p.fastInt()
			return ok
		case "uid":
			if !first(&seen, sawUID) {
				return false
			}
			var ok bool
			m.UID, ok = p.fastString()
			return ok
		case "nsp":
			if !first(&seen, sawNsp) {
				return false
			}
			var ok bool
			m.Nsp, ok = p.fastStringOrNull()
			return ok
		case "data":
			if !first(&seen, sawData) {
				return false
			}
			return p.fastBroadcastData(d)
		case NonceKey:
			_, ok := p.fastString()
			return ok
		case SeqKey:
			if !first(&seen, sawSeq) {
				return false
			}
			var ok bool
			seq, ok = p.fastSeq()
			return ok
		}
		return false
	})
	if !ok || p.rest() || typ != int(Broadcast) || seen&(sawType|sawUID|sawData) != sawType|sawUID|sawData {
		return nil, false
	}
	m.Type = Broadcast
	m.Data = d
	return &Notification{UID: m.UID, Type: Broadcast, Message: m, Seq: seq}, true
}

// inlineFast finds the parts of a notification in the shape EncodeInline writes, without
// building a tree; ok is false for any other shape, which the general parser then reads.
func inlineFast(payload string) (uid string, typ int, seq uint64, b64 string, ok bool) {
	p := parser{s: payload}
	var seen uint8
	const (
		sawUID = 1 << iota
		sawType
		sawBody
		sawSeq
	)
	ok = p.fastObject(func(key string) bool {
		var ok bool
		switch key {
		case "uid":
			if !first(&seen, sawUID) {
				return false
			}
			uid, ok = p.fastString()
		case "type":
			if !first(&seen, sawType) {
				return false
			}
			typ, ok = p.fastInt()
		case "msgpack":
			if !first(&seen, sawBody) {
				return false
			}
			b64, ok = p.plainString()
		case NonceKey:
			_, ok = p.fastString()
		case SeqKey:
			if !first(&seen, sawSeq) {
				return false
			}
			seq, ok = p.fastSeq()
		}
		return ok
	})
	return uid, typ, seq, b64, ok && !p.rest() && seen&^sawSeq == sawUID|sawType|sawBody
}

func (p *parser) fastBroadcastData(d *BroadcastData) bool {
	var seen uint8
	const (
		sawPacket = 1 << iota
		sawOpts
		sawRequestID
	)
	ok := p.fastObject(func(key string) bool {
		switch key {
		case "packet":
			if !first(&seen, sawPacket) {
				return false
			}
			return p.fastPacket(&d.Packet)
		case "opts":
			if !first(&seen, sawOpts) {
				return false
			}
			return p.fastOpts(&d.Opts)
		case "requestId":
			if !first(&seen, sawRequestID) {
				return false
			}
			var ok bool
			d.RequestID, ok = p.fastStringOrNull()
			return ok
		}
		return false
	})
	return ok && seen&sawPacket != 0
}

func (p *parser) fastPacket(pk *Packet) bool {
	var seen uint8
	const (
		sawType = 1 << iota
		sawData
		sawNsp
	)
	ok := p.fastObject(func(key string) bool {
		switch key {
		case "type":
			if !first(&seen, sawType) {
				return false
			}
			var ok bool
			pk.Type, ok = p.fastInt()
			return ok
		case "data":
			if !first(&seen, sawData) || p.i >= len(p.s) || p.s[p.i] != '[' {
				return false
			}
			v, err := p.raw(3)
			raw, ok := v.(RawJSON)
			pk.Raw = string(raw)
			return err == nil && ok
		case "nsp":
			if !first(&seen, sawNsp) {
				return false
			}
			var ok bool
			pk.Nsp, ok = p.fastString()
			return ok
		}
		return false
	})
	return ok && seen&(sawType|sawData) == sawType|sawData
}

func (p *parser) fastOpts(o *Opts) bool {
	if p.i >= len(p.s) || p.s[p.i] != '{' {
		return false
	}
	var seen uint8
	const (
		sawRooms = 1 << iota
		sawExcept
		sawFlags
	)
	return p.fastObject(func(key string) bool {
		switch key {
		case "rooms":
			if !first(&seen, sawRooms) {
				return false
			}
			var ok bool
			o.Rooms, ok = p.fastStrings()
			return ok
		case "except":
			if !first(&seen, sawExcept) {
				return false
			}
			var ok bool
			o.Except, ok = p.fastStrings()
			return ok
		case "flags":
			if !first(&seen, sawFlags) {
				return false
			}
			return p.fastFlags(&o.Flags)
		}
		return false
	})
}

func (p *parser) fastFlags(f *Flags) bool {
	if p.i >= len(p.s) || p.s[p.i] != '{' {
		return false
	}
	var seen uint8
	return p.fastObject(func(key string) bool {
		var dst **bool
		var bit uint8
		switch key {
		case "volatile":
			dst, bit = &f.Volatile, 1
		case "compress":
			dst, bit = &f.Compress, 2
		case "local":
			dst, bit = &f.Local, 4
		case "broadcast":
			dst, bit = &f.Broadcast, 8
		case "binary":
			dst, bit = &f.Binary, 16
		case "expectSingleResponse":
			dst, bit = &f.ExpectSingleResponse, 32
		case "timeout":
			if !first(&seen, 64) {
				return false
			}
			ms, ok := p.fastFloat()
			if !ok || ms < 0 || ms > float64(math.MaxInt64/int64(time.Millisecond)) {
				return false
			}
			d := time.Duration(ms * float64(time.Millisecond))
			f.Timeout = &d
			return true
		default:
			return false
		}
		if !first(&seen, bit) {
			return false
		}
		switch {
		case p.match("true"):
			yes := true
			*dst = &yes
		case p.match("false"):
			no := false
			*dst = &no
		default:
			return false
		}
		return true
	})
}

// first marks bit in seen and reports whether it was unmarked: each key is read once,
// and a repeated one (whose last value encoding/json would keep) is left to the generic
// decoder.
func first(seen *uint8, bit uint8) bool {
	if *seen&bit != 0 {
		return false
	}
	*seen |= bit
	return true
}

// fastObject reads an object, calling field for each key with p at its value; field
// reads the value and reports whether it was of the expected shape.
func (p *parser) fastObject(field func(key string) bool) bool {
	p.space()
	if p.i >= len(p.s) || p.s[p.i] != '{' {
		return false
	}
	p.i++
	p.space()
	if p.i < len(p.s) && p.s[p.i] == '}' {
		p.i++
		return true
	}
	for {
		p.space()
		if p.i >= len(p.s) || p.s[p.i] != '"' {
			return false
		}
		k, err := p.string()
		if err != nil {
			return false
		}
		p.space()
		if p.i >= len(p.s) || p.s[p.i] != ':' {
			return false
		}
		p.i++
		p.space()
		if !field(k) {
			return false
		}
		p.space()
		if p.i >= len(p.s) {
			return false
		}
		switch p.s[p.i] {
		case ',':
			p.i++
		case '}':
			p.i++
			return true
		default:
			return false
		}
	}
}

// fastStrings reads an array of strings; an empty one is a non-nil empty slice, as the
// generic decoder gives.
func (p *parser) fastStrings() ([]string, bool) {
	if p.i >= len(p.s) || p.s[p.i] != '[' {
		return nil, false
	}
	p.i++
	out := make([]string, 0)
	p.space()
	if p.i < len(p.s) && p.s[p.i] == ']' {
		p.i++
		return out, true
	}
	for {
		p.space()
		s, ok := p.fastString()
		if !ok {
			return nil, false
		}
		out = append(out, s)
		p.space()
		if p.i >= len(p.s) {
			return nil, false
		}
		switch p.s[p.i] {
		case ',':
			p.i++
		case ']':
			p.i++
			return out, true
		default:
			return nil, false
		}
	}
}

// plainString reads a string holding no escape with one search for its end; ok is false
// for any other. It does not check the characters: it reads base64, whose decoder
// rejects any that JSON would have (controls, bytes beyond ASCII).
func (p *parser) plainString() (string, bool) {
	if p.i >= len(p.s) || p.s[p.i] != '"' {
		return "", false
	}
	end := strings.IndexByte(p.s[p.i+1:], '"')
	if end < 0 {
		return "", false
	}
	s := p.s[p.i+1 : p.i+1+end]
	if strings.IndexByte(s, '\\') >= 0 {
		return "", false
	}
	p.i += end + 2
	return s, true
}

func (p *parser) fastString() (string, bool) {
	if p.i >= len(p.s) || p.s[p.i] != '"' {
		return "", false
	}
	s, err := p.string()
	return s, err == nil
}

func (p *parser) fastStringOrNull() (string, bool) {
	if p.match("null") {
		return "", true
	}
	return p.fastString()
}

// fastFloat reads a number, if one starts at p.i.
func (p *parser) fastFloat() (float64, bool) {
	if p.i >= len(p.s) || (p.s[p.i] != '-' && (p.s[p.i] < '0' || p.s[p.i] > '9')) {
		return 0, false
	}
	f, err := p.float()
	return f, err == nil
}

// fastInt reads a number that is an integer in int32's range, as asInt accepts.
func (p *parser) fastInt() (int, bool) {
	f, ok := p.fastFloat()
	if !ok || f != math.Trunc(f) || f > math.MaxInt32 || f < math.MinInt32 {
		return 0, false
	}
	return int(f), true
}

// fastSeq reads a sequence number (SeqKey); it declines any other value, which the
// generic decoder then reads (and ignores).
func (p *parser) fastSeq() (uint64, bool) {
	// The digits AppendSeq writes, read as they are: ParseFloat cost a numbered
	// broadcast's decoding 7% more than an unnumbered one's.
	i, n := p.i, uint64(0)
	for i < len(p.s) && i-p.i < 16 && p.s[i] >= '0' && p.s[i] <= '9' {
		n = n*10 + uint64(p.s[i]-'0')
		i++
	}
	if i > p.i && p.s[p.i] != '0' && i < len(p.s) && (p.s[i] == ',' || p.s[i] == '}') && n <= maxSeq {
		p.i = i
		return n, true
	}
	f, ok := p.fastFloat()
	if !ok || f < 1 || f > maxSeq || f != math.Trunc(f) {
		return 0, false
	}
	return uint64(f), true
}

// match consumes word if the input continues with it.
func (p *parser) match(word string) bool {
	if len(p.s)-p.i >= len(word) && p.s[p.i:p.i+len(word)] == word {
		p.i += len(word)
		return true
	}
	return false
}

// rest reports whether anything but whitespace follows.
func (p *parser) rest() bool {
	p.space()
	return p.i < len(p.s)
}

// appendBroadcastJSON writes a BROADCAST whose arguments are text (Packet.Raw) straight
// from the Message: the bytes marshalJSON writes for its tree (keys in sorted order, so
// "uid" last, see OwnSuffix), without building the tree's maps or sorting their keys.
func appendBroadcastJSON(b []byte, m *Message, d *BroadcastData) []byte {
	b = append(b, `{"data":{"opts":{"except":`...)
	b = appendStrings(b, d.Opts.Except)
	b = append(b, `,"flags":{`...)
	f := &d.Opts.Flags
	n := 0
	flag := func(name string, v *bool) {
		if v == nil {
			return
		}
		if n > 0 {
			b = append(b, ',')
		}
		n++
		b = append(b, '"')
		b = append(b, name...)
		b = append(b, `":`...)
		b = strconv.AppendBool(b, *v)
	}
	flag("binary", f.Binary)
	flag("broadcast", f.Broadcast)
	flag("compress", f.Compress)
	flag("expectSingleResponse", f.ExpectSingleResponse)
	flag("local", f.Local)
	if f.Timeout != nil {
		if n > 0 {
			b = append(b, ',')
		}
		n++
		b = append(b, `"timeout":`...)
		b = strconv.AppendInt(b, f.Timeout.Milliseconds(), 10)
	}
	flag("volatile", f.Volatile)
	b = append(b, `},"rooms":`...)
	b = appendStrings(b, d.Opts.Rooms)
	b = append(b, `},"packet":{"data":`...)
	b = append(b, d.Packet.Raw...)
	if d.Packet.Nsp != "" {
		b = append(b, `,"nsp":`...)
		b = appendString(b, d.Packet.Nsp)
	}
	b = append(b, `,"type":`...)
	b = strconv.AppendInt(b, int64(d.Packet.Type), 10)
	b = append(b, '}')
	if d.RequestID != "" {
		b = append(b, `,"requestId":`...)
		b = appendString(b, d.RequestID)
	}
	b = append(b, '}')
	if m.Nsp != "" {
		b = append(b, `,"nsp":`...)
		b = appendString(b, m.Nsp)
	}
	b = append(b, `,"type":`...)
	b = strconv.AppendInt(b, int64(m.Type), 10)
	b = append(b, `,"uid":`...)
	b = appendString(b, m.UID)
	return append(b, '}')
}

func appendStrings(b []byte, list []string) []byte {
	b = append(b, '[')
	for i, s := range list {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, s)
	}
	return append(b, ']')
}
