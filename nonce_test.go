package pgadapter

import (
	"reflect"
	"strings"
	"testing"

	"github.com/socketio-pg/pgadapter/internal/wire"
)

// A repeat made unique with a nonce is still its sender's own message when PostgreSQL
// echoes it, and still the same message to every other server: the nonce goes first in
// what a server knows by how it ends, last in what it knows by how it begins (an
// InlineBinary header; with the nonce first, the sender decoded its own echo, base64
// and MessagePack, before it found its uid).
func TestNonceKeepsMessagesRecognisable(t *testing.T) {
	const uid = "0123456789abcdef"
	m := &wire.Message{Type: wire.Broadcast, UID: uid, Nsp: "/", Data: &wire.BroadcastData{
		Packet: wire.Packet{Type: wire.EventPacketType, Data: []any{"ev", "x"}}}}
	inline, err := wire.Encode(m, 0)
	if err != nil {
		t.Fatal(err)
	}
	mb := *m
	mb.Data = &wire.BroadcastData{Packet: wire.Packet{Type: wire.EventPacketType, Data: []any{"ev", []byte{1, 2}}}}
	binary, err := wire.EncodeInline(&mb, 0, true)
	if err != nil || binary.JSON == "" {
		t.Fatalf("inline binary: %v %+v", err, binary)
	}
	p := &publisher{}
	for _, c := range []struct {
		name    string
		payload string
		want    *wire.Message
	}{{"inline", inline.JSON, m}, {"inline binary", binary.JSON, &mb}} {
		seen := map[string]bool{c.payload: true}
		for range 3 {
			u, ok := p.unique(c.payload)
			if !ok || seen[u] {
				t.Fatalf("%s: unique gave %q, %v (seen: %v)", c.name, u, ok, seen[u])
			}
			seen[u] = true
			if !strings.HasSuffix(u, wire.OwnSuffix(uid)) && !strings.HasPrefix(u, wire.OwnPrefix(uid)) {
				t.Fatalf("%s: %q is no longer recognisable as its sender's", c.name, u)
			}
			if strings.HasPrefix(c.payload, wire.OwnPrefix(uid)) && !strings.HasPrefix(u, wire.OwnPrefix(uid)) {
				t.Fatalf("%s: %q lost the beginning it is known by", c.name, u)
			}
			n, err := wire.DecodeNotification(u)
			if err != nil {
				t.Fatalf("%s: %q: %v", c.name, u, err)
			}
			d, ok := n.Message.Data.(*wire.BroadcastData)
			if !ok || n.Message.UID != uid {
				t.Fatalf("%s: decoded %+v", c.name, n.Message)
			}
			args, err := d.Packet.Args()
			if want := c.want.Data.(*wire.BroadcastData).Packet.Data; err != nil || !reflect.DeepEqual(args, want) {
				t.Fatalf("%s: decoded %#v (%v), want %#v", c.name, args, err, want)
			}
		}
	}
}
