package pgadapter

import (
	"strings"

	"github.com/zishang520/engine.io/v2/types"
	"github.com/zishang520/socket.io-go-parser/v2/parser"
	"github.com/zishang520/socket.io/v2/socket"

	"github.com/socketio-pg/pgadapter/internal/wire"
)

// Conversions between socket.io v2.5.0's Go types and the wire shapes. Never marshal the
// library's own structs onto the wire: their field types are not Node's.

// wirePacketType maps the Go parser's ASCII packet type to socket.io's packet number.
// Binary events travel as EVENT: binary is a property of the encoding, not of the event.
func wirePacketType(t parser.PacketType) int {
	if t == parser.BINARY_EVENT {
		return wire.EventPacketType
	}
	return int(t - '0')
}

func toWireOpts(o *socket.BroadcastOptions) wire.Opts {
	var w wire.Opts
	if o == nil {
		return w
	}
	if o.Rooms != nil {
		w.Rooms = roomStrings(o.Rooms.Keys())
	}
	if o.Except != nil {
		w.Except = roomStrings(o.Except.Keys())
	}
	if f := o.Flags; f != nil {
		yes := true
		set := func(dst **bool, v bool) {
			if v {
				*dst = &yes
			}
		}
		set(&w.Flags.Volatile, f.Volatile)
		set(&w.Flags.Compress, f.Compress)
		set(&w.Flags.Broadcast, f.Broadcast)
		set(&w.Flags.Binary, f.Binary)
		set(&w.Flags.ExpectSingleResponse, f.ExpectSingleResponse)
		if f.Timeout != nil {
			d := *f.Timeout
			w.Flags.Timeout = &d
		}
	}
	return w
}

func fromWireOpts(w wire.Opts) *socket.BroadcastOptions {
	o := broadcastOpts(w)
	if o.Rooms == nil {
		o.Rooms = types.NewSet[socket.Room]()
	}
	if o.Except == nil {
		o.Except = types.NewSet[socket.Room]()
	}
	return o
}

// broadcastOpts is fromWireOpts for a broadcast received, whose options only apply and
// writeOptions read: an empty list of rooms or of exceptions stays nil, which they take
// for none, instead of a set (a map) made for every message received (fromWireOpts took
// 4% of a receiving server's CPU between servers, most of it in its sets). socket.io's
// own adapter methods, which fromWireOpts serves, want both sets.
func broadcastOpts(w wire.Opts) *socket.BroadcastOptions {
	f := &socket.BroadcastFlags{}
	get := func(p *bool) bool { return p != nil && *p }
	f.Volatile = get(w.Flags.Volatile)
	f.Compress = get(w.Flags.Compress)
	f.Broadcast = get(w.Flags.Broadcast)
	f.Binary = get(w.Flags.Binary)
	f.ExpectSingleResponse = get(w.Flags.ExpectSingleResponse)
	if w.Flags.Timeout != nil {
		d := *w.Flags.Timeout
		f.Timeout = &d
	}
	o := &socket.BroadcastOptions{Flags: f}
	if len(w.Rooms) > 0 {
		o.Rooms = types.NewSet(socketRooms(w.Rooms)...)
	}
	if len(w.Except) > 0 {
		o.Except = types.NewSet(socketRooms(w.Except)...)
	}
	return o
}

func roomStrings(rooms []socket.Room) []string {
	out := make([]string, len(rooms))
	for i, r := range rooms {
		out[i] = string(r)
	}
	return out
}

func socketRooms(rooms []string) []socket.Room {
	out := make([]socket.Room, len(rooms))
	for i, r := range rooms {
		out[i] = socket.Room(r)
	}
	return out
}

// socketInfo describes a local socket for a FETCH_SOCKETS_RESPONSE.
func (a *Adapter) socketInfo(s socket.SocketDetails) wire.SocketInfo {
	info := wire.SocketInfo{ID: string(s.Id()), Handshake: handshakeToWire(a, s.Handshake())}
	if rooms := s.Rooms(); rooms != nil {
		info.Rooms = roomStrings(rooms.Keys())
	}
	if d := s.Data(); d != nil {
		v, _, err := wire.Normalize(d)
		if err != nil {
			a.b.report(&MessageError{Channel: a.channel, Err: err})
		}
		info.Data = v
	}
	if info.Data == nil {
		// Node's sockets start with data {}, and Node code reads socket.data.x without
		// a check: null made it throw for the sockets of Go servers.
		info.Data = map[string]any{}
	}
	return info
}

// singleHeaders are the headers of which Node's http module keeps the first value only
// (IncomingMessage's matchKnownFields).
var singleHeaders = map[string]bool{
	"age": true, "authorization": true, "content-length": true, "content-type": true, "etag": true,
	"expires": true, "from": true, "host": true, "if-modified-since": true, "if-unmodified-since": true,
	"last-modified": true, "location": true, "max-forwards": true, "proxy-authorization": true,
	"referer": true, "retry-after": true, "server": true, "user-agent": true,
}

// nodeHeader is the value Node's http module gives a header received with values v:
// set-cookie an array, cookie joined with "; ", the single-value headers their first
// value, the others joined with ", ".
func nodeHeader(name string, v []string) any {
	switch {
	case name == "set-cookie":
		list := make([]any, len(v))
		for i, s := range v {
			list[i] = s
		}
		return list
	case name == "cookie":
		return strings.Join(v, "; ")
	case singleHeaders[name] && len(v) > 0:
		return v[0]
	}
	return strings.Join(v, ", ")
}

// handshakeToWire gives a handshake Node's shape: header names lower-case and values
// as Node's http module gives them (nodeHeader), query values
// strings (arrays when repeated), issued in milliseconds, auth an object.
func handshakeToWire(a *Adapter, h *socket.Handshake) map[string]any {
	if h == nil {
		return map[string]any{}
	}
	headers := make(map[string]any, len(h.Headers))
	for k, v := range h.Headers {
		name := strings.ToLower(k)
		headers[name] = nodeHeader(name, v)
	}
	query := make(map[string]any, len(h.Query))
	for k, v := range h.Query {
		switch len(v) {
		case 0:
			query[k] = ""
		case 1:
			query[k] = v[0]
		default:
			list := make([]any, len(v))
			for i, s := range v {
				list[i] = s
			}
			query[k] = list
		}
	}
	var auth any = map[string]any{}
	if h.Auth != nil {
		v, _, err := wire.Normalize(h.Auth)
		if err == nil && v != nil {
			auth = v
		}
	}
	return map[string]any{
		"headers": headers, "time": h.Time, "address": h.Address, "xdomain": h.Xdomain,
		"secure": h.Secure, "issued": h.Issued, "url": h.Url, "query": query, "auth": auth,
	}
}

func handshakeFromWire(m map[string]any) *socket.Handshake {
	h := &socket.Handshake{Headers: map[string][]string{}, Query: map[string][]string{}}
	if m == nil {
		return h
	}
	h.Headers = stringLists(m["headers"])
	h.Query = stringLists(m["query"])
	h.Time, _ = m["time"].(string)
	h.Address, _ = m["address"].(string)
	h.Xdomain, _ = m["xdomain"].(bool)
	h.Secure, _ = m["secure"].(bool)
	h.Url, _ = m["url"].(string)
	switch n := m["issued"].(type) {
	case float64:
		h.Issued = int64(n)
	case int64:
		h.Issued = n
	}
	h.Auth = m["auth"]
	return h
}

func stringLists(v any) map[string][]string {
	out := map[string][]string{}
	obj, _ := v.(map[string]any)
	for k, e := range obj {
		switch x := e.(type) {
		case string:
			out[k] = []string{x}
		case []any:
			for _, s := range x {
				if s, ok := s.(string); ok {
					out[k] = append(out[k], s)
				}
			}
		}
	}
	return out
}

// remoteSocket is a socket of another server, as FetchSockets returns it. socket.io wraps
// it in a *socket.RemoteSocket whose Emit, Join, Leave and Disconnect go through the
// cluster.
type remoteSocket struct {
	id    socket.SocketId
	hs    *socket.Handshake
	rooms *types.Set[socket.Room]
	data  any
}

func newRemoteSocket(info wire.SocketInfo) *remoteSocket {
	return &remoteSocket{id: socket.SocketId(info.ID), hs: handshakeFromWire(info.Handshake),
		rooms: types.NewSet(socketRooms(info.Rooms)...), data: info.Data}
}

// Id, Handshake, Rooms and Data implement socket.SocketDetails.
func (r *remoteSocket) Id() socket.SocketId            { return r.id }
func (r *remoteSocket) Handshake() *socket.Handshake   { return r.hs }
func (r *remoteSocket) Rooms() *types.Set[socket.Room] { return r.rooms }
func (r *remoteSocket) Data() any                      { return r.data }

var _ socket.SocketDetails = (*remoteSocket)(nil)
