package wire

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// The codec goes through a generic tree (map[string]any, []any, scalars, []byte) in both
// directions: JSON and MessagePack then need no type-specific code, and a value decoded
// from one can be re-encoded in the other.

func (m *Message) tree() map[string]any {
	t := make(map[string]any, 4)
	t["type"] = int(m.Type)
	t["uid"] = m.UID
	if m.Nsp != "" {
		t["nsp"] = m.Nsp
	}
	if d := dataTree(m.Data); d != nil {
		t["data"] = d
	}
	if len(m.Caps) > 0 {
		t["caps"] = stringsTree(m.Caps)
	}
	return t
}

func dataTree(data any) map[string]any {
	switch d := data.(type) {
	case *BroadcastData:
		var data any = orEmpty(d.Packet.Data)
		if d.Packet.Raw != "" {
			data = RawJSON(d.Packet.Raw)
		}
		p := map[string]any{"type": d.Packet.Type, "data": data}
		if d.Packet.Nsp != "" {
			p["nsp"] = d.Packet.Nsp
		}
		t := map[string]any{"packet": p, "opts": d.Opts.tree()}
		if d.RequestID != "" {
			t["requestId"] = d.RequestID
		}
		return t
	case *RoomsData:
		return map[string]any{"opts": d.Opts.tree(), "rooms": stringsTree(d.Rooms)}
	case *DisconnectData:
		return map[string]any{"opts": d.Opts.tree(), "close": d.Close}
	case *FetchData:
		return map[string]any{"opts": d.Opts.tree(), "requestId": d.RequestID}
	case *FetchResponseData:
		sockets := make([]any, len(d.Sockets))
		for i, s := range d.Sockets {
			hs := s.Handshake
			if hs == nil {
				hs = map[string]any{}
			}
			sockets[i] = map[string]any{"id": s.ID, "handshake": hs, "rooms": stringsTree(s.Rooms), "data": s.Data}
		}
		return map[string]any{"requestId": d.RequestID, "sockets": sockets}
	case *ServerSideEmitData:
		t := map[string]any{"packet": orEmpty(d.Packet)}
		if d.RequestID != "" {
			t["requestId"] = d.RequestID
		}
		return t
	case *AckData:
		return map[string]any{"requestId": d.RequestID, "packet": d.Packet}
	case *ClientCountData:
		return map[string]any{"requestId": d.RequestID, "clientCount": d.ClientCount}
	case *AllRoomsData:
		return map[string]any{"requestId": d.RequestID}
	case *AllRoomsResponseData:
		return map[string]any{"requestId": d.RequestID, "rooms": stringsTree(d.Rooms)}
	}
	return nil
}

func orEmpty(a []any) []any {
	if a == nil {
		return []any{}
	}
	return a
}

func stringsTree(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

func (o *Opts) tree() map[string]any {
	f := make(map[string]any)
	setBool := func(k string, v *bool) {
		if v != nil {
			f[k] = *v
		}
	}
	setBool("volatile", o.Flags.Volatile)
	setBool("compress", o.Flags.Compress)
	setBool("local", o.Flags.Local)
	setBool("broadcast", o.Flags.Broadcast)
	setBool("binary", o.Flags.Binary)
	setBool("expectSingleResponse", o.Flags.ExpectSingleResponse)
	if o.Flags.Timeout != nil {
		f["timeout"] = o.Flags.Timeout.Milliseconds()
	}
	return map[string]any{"rooms": stringsTree(o.Rooms), "except": stringsTree(o.Except), "flags": f}
}

// fromTree builds a Message from a decoded JSON or MessagePack object.
func fromTree(t map[string]any) (*Message, error) {
	typ, ok := asInt(t["type"])
	if !ok {
		return nil, fmt.Errorf("wire: message type is %s, want an integer", describe(t["type"]))
	}
	m := &Message{Type: Type(typ)}
	if !m.Type.Valid() {
		return nil, fmt.Errorf("wire: unknown message type %d", typ)
	}
	if m.UID, ok = t["uid"].(string); !ok {
		return nil, fmt.Errorf("wire: %s: uid is %s, want a string", m.Type, describe(t["uid"]))
	}
	if n, present := t["nsp"]; present && n != nil {
		if m.Nsp, ok = n.(string); !ok {
			return nil, fmt.Errorf("wire: %s: nsp is %s, want a string", m.Type, describe(n))
		}
	}
	var err error
	m.Data, err = dataFromTree(m.Type, t["data"])
	if err != nil {
		return nil, fmt.Errorf("wire: %s: %w", m.Type, err)
	}
	if m.Caps, err = stringsFromTree("caps", t["caps"]); err != nil {
		return nil, fmt.Errorf("wire: %s: %w", m.Type, err)
	}
	return m, nil
}

func dataFromTree(typ Type, raw any) (any, error) {
	switch typ {
	case InitialHeartbeat, Heartbeat, AdapterClose:
		return nil, nil
	}
	d, ok := raw.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("data is %s, want an object", describe(raw))
	}
	var err error
	switch typ {
	case Broadcast:
		b := &BroadcastData{}
		p, ok := d["packet"].(map[string]any)
		if !ok {
			return nil, fmt.Errorf("packet is %s, want an object", describe(d["packet"]))
		}
		if b.Packet.Type, ok = asInt(p["type"]); !ok {
			return nil, fmt.Errorf("packet.type is %s, want an integer", describe(p["type"]))
		}
		if b.Packet.Data, ok = p["data"].([]any); !ok || len(b.Packet.Data) == 0 {
			return nil, fmt.Errorf("packet.data is %s, want a non-empty array", describe(p["data"]))
		}
		if b.Packet.Data[0], ok = eventName(b.Packet.Data[0]); !ok {
			return nil, fmt.Errorf("event name is %s, want a string", describe(b.Packet.Data[0]))
		}
		b.Packet.Nsp, _ = p["nsp"].(string)
		if b.Opts, err = optsFromTree(d["opts"]); err != nil {
			return nil, err
		}
		b.RequestID, err = optionalString(d, "requestId")
		return b, err
	case SocketsJoin, SocketsLeave:
		r := &RoomsData{}
		if r.Opts, err = optsFromTree(d["opts"]); err != nil {
			return nil, err
		}
		r.Rooms, err = stringsFromTree("rooms", d["rooms"])
		return r, err
	case DisconnectSockets:
		x := &DisconnectData{}
		if x.Opts, err = optsFromTree(d["opts"]); err != nil {
			return nil, err
		}
		if c, present := d["close"]; present && c != nil {
			if x.Close, ok = c.(bool); !ok {
				return nil, fmt.Errorf("close is %s, want a boolean", describe(c))
			}
		}
		return x, nil
	case FetchSockets:
		f := &FetchData{}
		if f.Opts, err = optsFromTree(d["opts"]); err != nil {
			return nil, err
		}
		f.RequestID, err = requiredString(d, "requestId")
		return f, err
	case FetchSocketsResponse:
		f := &FetchResponseData{}
		if f.RequestID, err = requiredString(d, "requestId"); err != nil {
			return nil, err
		}
		list, ok := d["sockets"].([]any)
		if !ok && d["sockets"] != nil {
			return nil, fmt.Errorf("sockets is %s, want an array", describe(d["sockets"]))
		}
		f.Sockets = make([]SocketInfo, 0, len(list))
		for i, item := range list {
			s, ok := item.(map[string]any)
			if !ok {
				return nil, fmt.Errorf("sockets[%d] is %s, want an object", i, describe(item))
			}
			info := SocketInfo{Data: s["data"]}
			if info.ID, err = requiredString(s, "id"); err != nil {
				return nil, fmt.Errorf("sockets[%d]: %w", i, err)
			}
			if hs, present := s["handshake"]; present && hs != nil {
				if info.Handshake, ok = hs.(map[string]any); !ok {
					return nil, fmt.Errorf("sockets[%d].handshake is %s, want an object", i, describe(hs))
				}
			}
			if info.Rooms, err = stringsFromTree("rooms", s["rooms"]); err != nil {
				return nil, fmt.Errorf("sockets[%d]: %w", i, err)
			}
			f.Sockets = append(f.Sockets, info)
		}
		return f, nil
	case ServerSideEmit:
		s := &ServerSideEmitData{}
		if s.Packet, ok = d["packet"].([]any); !ok || len(s.Packet) == 0 {
			return nil, fmt.Errorf("packet is %s, want a non-empty array", describe(d["packet"]))
		}
		if s.Packet[0], ok = eventName(s.Packet[0]); !ok {
			return nil, fmt.Errorf("event name is %s, want a string", describe(s.Packet[0]))
		}
		if ev := s.Packet[0].(string); ReservedServerEvent(ev) {
			return nil, fmt.Errorf("event name %q is reserved: socket.io emits it itself", ev)
		}
		s.RequestID, err = optionalString(d, "requestId")
		return s, err
	case ServerSideEmitResponse, BroadcastAck:
		a := &AckData{Packet: d["packet"]}
		a.RequestID, err = requiredString(d, "requestId")
		return a, err
	case BroadcastClientCount:
		c := &ClientCountData{}
		if c.RequestID, err = requiredString(d, "requestId"); err != nil {
			return nil, err
		}
		n, ok := asInt(d["clientCount"])
		if !ok || n < 0 {
			return nil, fmt.Errorf("clientCount is %s, want a non-negative integer", describe(d["clientCount"]))
		}
		c.ClientCount = uint64(n)
		return c, nil
	case AllRooms:
		r := &AllRoomsData{}
		r.RequestID, err = requiredString(d, "requestId")
		return r, err
	case AllRoomsResponse:
		r := &AllRoomsResponseData{}
		if r.RequestID, err = requiredString(d, "requestId"); err != nil {
			return nil, err
		}
		r.Rooms, err = stringsFromTree("rooms", d["rooms"])
		return r, err
	}
	return nil, fmt.Errorf("unknown message type %d", typ)
}

func optsFromTree(raw any) (Opts, error) {
	var o Opts
	if raw == nil {
		return o, nil
	}
	t, ok := raw.(map[string]any)
	if !ok {
		return o, fmt.Errorf("opts is %s, want an object", describe(raw))
	}
	var err error
	if o.Rooms, err = stringsFromTree("opts.rooms", t["rooms"]); err != nil {
		return o, err
	}
	if o.Except, err = stringsFromTree("opts.except", t["except"]); err != nil {
		return o, err
	}
	if t["flags"] == nil {
		return o, nil
	}
	f, ok := t["flags"].(map[string]any)
	if !ok {
		return o, fmt.Errorf("opts.flags is %s, want an object", describe(t["flags"]))
	}
	for k, v := range f {
		var dst **bool
		switch k {
		case "volatile":
			dst = &o.Flags.Volatile
		case "compress":
			dst = &o.Flags.Compress
		case "local":
			dst = &o.Flags.Local
		case "broadcast":
			dst = &o.Flags.Broadcast
		case "binary":
			dst = &o.Flags.Binary
		case "expectSingleResponse":
			dst = &o.Flags.ExpectSingleResponse
		case "timeout":
			if v == nil {
				continue
			}
			ms, ok := asFloat(v)
			if !ok || ms < 0 || ms > float64(math.MaxInt64/int64(time.Millisecond)) {
				return o, fmt.Errorf("opts.flags.timeout is %s, want milliseconds", describe(v))
			}
			d := time.Duration(ms * float64(time.Millisecond))
			o.Flags.Timeout = &d
			continue
		default:
			continue // unknown flags are ignored, as Node does
		}
		if v == nil {
			continue
		}
		b, ok := v.(bool)
		if !ok {
			return o, fmt.Errorf("opts.flags.%s is %s, want a boolean", k, describe(v))
		}
		*dst = &b
	}
	return o, nil
}

func stringsFromTree(name string, raw any) ([]string, error) {
	if raw == nil {
		return nil, nil
	}
	list, ok := raw.([]any)
	if !ok {
		return nil, fmt.Errorf("%s is %s, want an array of strings", name, describe(raw))
	}
	out := make([]string, len(list))
	for i, v := range list {
		switch v := v.(type) {
		case string:
			out[i] = v
		case float64:
			// A room joined by number in Node (socket.join(user.id)): JavaScript's
			// Room type is a string only in TypeScript, and Node servers agree on
			// String(n) among themselves, which is what rooms are keyed by there.
			out[i] = JSNumber(v)
		case int64:
			out[i] = strconv.FormatInt(v, 10)
		case uint64:
			out[i] = strconv.FormatUint(v, 10)
		default:
			return nil, fmt.Errorf("%s[%d] is %s, want a string", name, i, describe(v))
		}
	}
	return out, nil
}

// ReservedServerEvent reports whether ev is one of the names socket.io refuses for
// server-side events, because a namespace emits them itself with values of its own
// ("connection" with a *socket.Socket). Node's emitter sends them all the same (it checks
// only its broadcasts): delivered, a handler written for socket.io's values met a string,
// and panicked on its type assertion.
func ReservedServerEvent(ev string) bool {
	switch ev {
	case "connect", "connection", "new_namespace":
		return true
	}
	return false
}

// eventName returns v as an event name: a string, or a number as the string JavaScript
// makes of it. Plain JavaScript emits numbers as event names (io.emit(42)), which a Node
// server's clients take as the event "42": they were refused as malformed, and lost.
func eventName(v any) (any, bool) {
	if s, ok := v.(string); ok {
		return s, true
	}
	if f, ok := asFloat(v); ok {
		return JSNumber(f), true
	}
	return v, false
}

// JSNumber formats f as JavaScript's String(f) does: integers below 1e21 in full, other
// numbers in their shortest form, with an exponent below 1e-6 and from 1e21 ("1e+21",
// "1.5e-7").
func JSNumber(f float64) string {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	case f == 0:
		return "0" // -0 too
	}
	if abs := math.Abs(f); abs >= 1e-6 && abs < 1e21 {
		return strconv.FormatFloat(f, 'f', -1, 64)
	}
	mant, exp, _ := strings.Cut(strconv.FormatFloat(f, 'e', -1, 64), "e")
	return mant + "e" + exp[:1] + strings.TrimLeft(exp[1:], "0")
}

func requiredString(t map[string]any, key string) (string, error) {
	s, ok := t[key].(string)
	if !ok || s == "" {
		return "", fmt.Errorf("%s is %s, want a non-empty string", key, describe(t[key]))
	}
	return s, nil
}

// optionalString reads a key that may be absent; null counts as absent.
func optionalString(t map[string]any, key string) (string, error) {
	v, present := t[key]
	if !present || v == nil {
		return "", nil
	}
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("%s is %s, want a string", key, describe(v))
	}
	return s, nil
}

func asInt(v any) (int, bool) {
	f, ok := asFloat(v)
	if !ok || f != math.Trunc(f) || f > math.MaxInt32 || f < math.MinInt32 {
		return 0, false
	}
	return int(f), true
}

func asFloat(v any) (float64, bool) {
	switch n := v.(type) {
	case float64:
		return n, !math.IsNaN(n) && !math.IsInf(n, 0)
	case int64:
		return float64(n), true
	case uint64:
		return float64(n), true
	case int:
		return float64(n), true
	}
	return 0, false
}

func describe(v any) string {
	switch x := v.(type) {
	case nil:
		return "missing or null"
	case string:
		if len(x) > 40 {
			x = x[:40] + "…"
		}
		return fmt.Sprintf("the string %q", x)
	case bool:
		return fmt.Sprintf("the boolean %t", x)
	case float64, int64, uint64, int:
		return fmt.Sprintf("the number %v", x)
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	case []byte:
		return "binary"
	}
	return fmt.Sprintf("a %T", v)
}

var errEmpty = errors.New("wire: empty payload")
