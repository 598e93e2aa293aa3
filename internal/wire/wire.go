// Package wire is the cluster protocol spoken by pgadapter nodes, Node.js servers running
// @socket.io/postgres-adapter 0.5.0 and emitters: JSON notifications, MessagePack
// attachments, and the message shapes of each type. It is shared by the adapter and the
// emitter so that both write exactly the same bytes.
//
// Decoding is lenient where the Node packages vary (a missing nsp, a missing flags object,
// an attachment id as a string or a number) and strict where a wrong guess would deliver
// the wrong thing (an unknown type, a packet that is not an array): such messages return
// an error that names what is wrong.
package wire

import (
	"fmt"
	"time"
	"unicode/utf8"
)

// Type is the cluster message type, as numbered by socket.io-adapter's ClusterAdapter.
type Type int

// The message types. Their numbers are part of the wire protocol.
const (
	InitialHeartbeat       Type = 1
	Heartbeat              Type = 2
	Broadcast              Type = 3
	SocketsJoin            Type = 4
	SocketsLeave           Type = 5
	DisconnectSockets      Type = 6
	FetchSockets           Type = 7
	FetchSocketsResponse   Type = 8
	ServerSideEmit         Type = 9
	ServerSideEmitResponse Type = 10
	BroadcastClientCount   Type = 11
	BroadcastAck           Type = 12
	AdapterClose           Type = 13

	// AllRooms and AllRoomsResponse are pgadapter's own: Node servers ignore unknown
	// types, and are never asked (see CapAllRooms).
	AllRooms         Type = 100
	AllRoomsResponse Type = 101
)

// CapAllRooms is the capability a server advertises in its heartbeats when it answers
// AllRooms requests.
const CapAllRooms = "allRooms"

var typeNames = [...]string{
	InitialHeartbeat:       "INITIAL_HEARTBEAT",
	Heartbeat:              "HEARTBEAT",
	Broadcast:              "BROADCAST",
	SocketsJoin:            "SOCKETS_JOIN",
	SocketsLeave:           "SOCKETS_LEAVE",
	DisconnectSockets:      "DISCONNECT_SOCKETS",
	FetchSockets:           "FETCH_SOCKETS",
	FetchSocketsResponse:   "FETCH_SOCKETS_RESPONSE",
	ServerSideEmit:         "SERVER_SIDE_EMIT",
	ServerSideEmitResponse: "SERVER_SIDE_EMIT_RESPONSE",
	BroadcastClientCount:   "BROADCAST_CLIENT_COUNT",
	BroadcastAck:           "BROADCAST_ACK",
	AdapterClose:           "ADAPTER_CLOSE",
}

// String returns the name socket.io-adapter uses for the type.
func (t Type) String() string {
	switch {
	case t >= InitialHeartbeat && t <= AdapterClose:
		return typeNames[t]
	case t == AllRooms:
		return "ALL_ROOMS"
	case t == AllRoomsResponse:
		return "ALL_ROOMS_RESPONSE"
	}
	return fmt.Sprintf("Type(%d)", int(t))
}

// Valid reports whether t is a known type.
func (t Type) Valid() bool {
	return t >= InitialHeartbeat && t <= AdapterClose || t == AllRooms || t == AllRoomsResponse
}

// IsResponse reports whether t answers a request (and is routed by request id).
func (t Type) IsResponse() bool {
	switch t {
	case FetchSocketsResponse, ServerSideEmitResponse, BroadcastClientCount, BroadcastAck, AllRoomsResponse:
		return true
	}
	return false
}

// EmitterUID is the uid of messages published by emitters. It is never a node.
const EmitterUID = "emitter"

// EventPacketType is the socket.io EVENT packet number carried in packet.type.
const EventPacketType = 2

// Message is one cluster message, whatever the encoding it travelled in.
type Message struct {
	Type Type
	// UID identifies the sending namespace adapter, or EmitterUID.
	UID string
	// Nsp is the namespace, or "" when the sender left it out (Node's emitter and every
	// attachment header do): the receiver then takes it from the channel.
	Nsp string
	// Data is nil for the types without data (1, 2, 13), otherwise one of *BroadcastData,
	// *RoomsData, *DisconnectData, *FetchData, *FetchResponseData, *ServerSideEmitData,
	// *AckData, *ClientCountData, *AllRoomsData or *AllRoomsResponseData, by type.
	Data any
	// Caps lists the sender's optional capabilities (CapAllRooms), on heartbeats; Node
	// servers neither send nor read it.
	Caps []string
}

// AllRoomsData is the data of ALL_ROOMS.
type AllRoomsData struct {
	RequestID string
}

// AllRoomsResponseData is the data of ALL_ROOMS_RESPONSE.
type AllRoomsResponseData struct {
	RequestID string
	Rooms     []string
}

// Opts selects sockets: rooms to target (all when empty), rooms to skip, and flags.
type Opts struct {
	Rooms  []string
	Except []string
	Flags  Flags
}

// Flags carries the broadcast flags a sender set. A nil field was not set; the wire holds
// only the set keys.
type Flags struct {
	Volatile             *bool
	Compress             *bool
	Local                *bool
	Broadcast            *bool
	Binary               *bool
	ExpectSingleResponse *bool
	// Timeout travels as whole milliseconds.
	Timeout *time.Duration
}

// Packet is the socket.io packet inside a BROADCAST.
type Packet struct {
	// Type is the socket.io packet number (EventPacketType), not the Go parser's ASCII
	// constant.
	Type int
	// Data is the event name followed by its arguments.
	Data []any
	// Raw, when set, is the JSON text of the arguments array, which encoders write
	// instead of Data. DecodeNotificationRaw may set it and leave Data nil; a sender that
	// has the text already sets both, so that the arguments are encoded once for the
	// wire and for its own clients.
	Raw string
	// Nsp is set by Node's emitter inside the packet; empty otherwise.
	Nsp string
}

// Args returns Data, decoding Raw when Data is nil.
func (p *Packet) Args() ([]any, error) {
	if p.Data != nil || p.Raw == "" {
		return p.Data, nil
	}
	v, err := parseJSON(p.Raw)
	if err != nil {
		return nil, fmt.Errorf("wire: packet.data: %w", err)
	}
	a, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("wire: packet.data is %s, want an array", describe(v))
	}
	return a, nil
}

// BroadcastData is the data of a BROADCAST.
type BroadcastData struct {
	Packet Packet
	Opts   Opts
	// RequestID is set when the sender waits for acknowledgements; "" means none.
	RequestID string
}

// BadRoom returns the first room that data names (to select sockets, or to join or
// leave) which is not valid UTF-8, and whether there is one. Such a name cannot travel:
// JSON replaces its bad bytes with U+FFFD and MessagePack keeps them, so the message
// would select other rooms on the other servers, depending on its size. Rooms that
// merely describe (a FETCH_SOCKETS answer's) are not checked. Servers and the emitter
// both refuse such messages.
func BadRoom(data any) (string, bool) {
	var lists [3][]string
	switch d := data.(type) {
	case *BroadcastData:
		lists = [3][]string{d.Opts.Rooms, d.Opts.Except}
	case *RoomsData:
		lists = [3][]string{d.Opts.Rooms, d.Opts.Except, d.Rooms}
	case *DisconnectData:
		lists = [3][]string{d.Opts.Rooms, d.Opts.Except}
	case *FetchData:
		lists = [3][]string{d.Opts.Rooms, d.Opts.Except}
	}
	for _, list := range lists {
		for _, r := range list {
			if !utf8.ValidString(r) {
				return r, true
			}
		}
	}
	return "", false
}

// RoomsData is the data of SOCKETS_JOIN and SOCKETS_LEAVE.
type RoomsData struct {
	Opts  Opts
	Rooms []string
}

// DisconnectData is the data of DISCONNECT_SOCKETS.
type DisconnectData struct {
	Opts  Opts
	Close bool
}

// FetchData is the data of FETCH_SOCKETS.
type FetchData struct {
	Opts      Opts
	RequestID string
}

// SocketInfo describes one socket in a FETCH_SOCKETS_RESPONSE.
type SocketInfo struct {
	ID string
	// Handshake is kept as the JSON object Node sends (headers and query map names to
	// strings, time a string, issued milliseconds, auth an object).
	Handshake map[string]any
	Rooms     []string
	Data      any
}

// FetchResponseData is the data of FETCH_SOCKETS_RESPONSE.
type FetchResponseData struct {
	RequestID string
	Sockets   []SocketInfo
}

// ServerSideEmitData is the data of SERVER_SIDE_EMIT.
type ServerSideEmitData struct {
	// Packet is the event name followed by its arguments.
	Packet []any
	// RequestID is set when the sender waits for answers; "" means none.
	RequestID string
}

// AckData is the data of SERVER_SIDE_EMIT_RESPONSE and BROADCAST_ACK: the first argument
// the acknowledging side passed, as a bare value.
type AckData struct {
	RequestID string
	Packet    any
}

// ClientCountData is the data of BROADCAST_CLIENT_COUNT.
type ClientCountData struct {
	RequestID   string
	ClientCount uint64
}

// RequestID returns the request id a message carries, or "".
func (m *Message) RequestID() string {
	switch d := m.Data.(type) {
	case *BroadcastData:
		return d.RequestID
	case *FetchData:
		return d.RequestID
	case *FetchResponseData:
		return d.RequestID
	case *ServerSideEmitData:
		return d.RequestID
	case *AckData:
		return d.RequestID
	case *ClientCountData:
		return d.RequestID
	case *AllRoomsData:
		return d.RequestID
	case *AllRoomsResponseData:
		return d.RequestID
	}
	return ""
}
