package main

import (
	"github.com/zishang520/socket.io-go-parser/v2/parser"
	"github.com/zishang520/socket.io/v2/socket"
)

// keepAll makes socket.io's in-memory adapter, with one change: broadcasts are written
// to each client without the pre-encoded WebSocket frame that socket.io v2.5.0's
// adapter attaches to JSON packets. engine.io v2.5.0's WebSocket transport stops writing
// a batch of packets after the first that carries such a frame, so the stock adapter
// loses most broadcasts under load (the bench's "alone" phase loses them all but a few
// per batch). pgadapter writes the same way (see its local.go). This is the "socket.io
// alone" reference: what the library costs to deliver, with no adapter in the way.
type keepAll struct{}

// New implements socket.AdapterConstructor.
func (keepAll) New(nsp socket.Namespace) socket.Adapter {
	a := &keepAllAdapter{Adapter: socket.MakeAdapter()}
	a.Prototype(a)
	a.Construct(nsp)
	return a
}

type keepAllAdapter struct {
	socket.Adapter
}

// Broadcast writes packet to every socket of the namespace (the bench uses neither rooms
// nor exceptions), encoded once.
func (a *keepAllAdapter) Broadcast(packet *parser.Packet, opts *socket.BroadcastOptions) {
	w := &socket.WriteOptions{}
	w.PreEncoded = true
	packet.Nsp = a.Nsp().Name()
	encoded := a.Nsp().Server().Encoder().Encode(packet)
	a.Nsp().Sockets().Range(func(_ socket.SocketId, s *socket.Socket) bool {
		s.Client().WriteToEngine(encoded, w)
		return true
	})
}
