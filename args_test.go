package pgadapter

import (
	"bytes"
	"reflect"
	"sync"
	"testing"

	"github.com/zishang520/engine.io/v2/types"
	"github.com/zishang520/socket.io-go-parser/v2/parser"
	"github.com/zishang520/socket.io/v2/socket"
)

// A nil pointer to a reader is null for every client, the sender's included. The
// arguments normalized for the wire made it null for the other servers, but the
// sender's own clients got the application's arguments, encoded by socket.io, which
// reads a reader, and the nil pointer's Read ended the process.
func TestNilReaderArgument(t *testing.T) {
	a, b := startPair(t, testOptions(t), func(*Options) {})
	ca := a.connect(t, "/", "ca")
	cb := b.connect(t, "/", "cb")
	a.io.Emit("x", []byte{1}, (*bytes.Buffer)(nil))
	for _, c := range []*tclient{ca, cb} {
		if got := c.expect(t, "x"); len(got) != 2 || !bytes.Equal(bufBytes(t, got[0]), []byte{1}) || got[1] != nil {
			t.Fatalf("got %#v", got)
		}
	}
}

// recordingParser is socket.io's parser, whose encoder records the arguments it encodes.
type recordingParser struct {
	mu   sync.Mutex
	data [][]any
}

func (p *recordingParser) NewEncoder() parser.Encoder { return p }
func (p *recordingParser) NewDecoder() parser.Decoder { return parser.NewDecoder() }
func (p *recordingParser) Encode(packet *parser.Packet) []types.BufferInterface {
	if d, ok := packet.Data.([]any); ok {
		p.mu.Lock()
		p.data = append(p.data, d)
		p.mu.Unlock()
	}
	return parser.NewEncoder().Encode(packet)
}

// recorded returns what p encoded so far.
func (p *recordingParser) recorded() [][]any {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([][]any(nil), p.data...)
}

// startRecording starts a server clustered with opts whose socket.io encoder records
// what it encodes, and waits until its adapter listens.
func startRecording(t *testing.T, name string, opts Options) (*node, *recordingParser) {
	t.Helper()
	rec := &recordingParser{}
	so := socket.DefaultServerOptions()
	so.SetParser(rec)
	n := newNodeWith(t, name, newPool(t), opts, so)
	n.ready(t)
	return n, rec
}

// A server with its own encoder gives its clients the arguments the other servers'
// clients get: normalized for the wire (a struct as its JSON object). Its own clients got
// the application's values, which an encoder of its own (MessagePack, say) could write
// otherwise. Outgoing-packet listeners still get the application's values.
func TestOwnEncoderGetsTheClusterArguments(t *testing.T) {
	n, rec := startRecording(t, "A", testOptions(t))
	c := n.connect(t, "/", "c")
	n.io.Emit("m", wireMsg{"hi"})
	n.io.Emit("b", []byte{1}, wireMsg{"hi"})
	c.expect(t, "m")
	c.expect(t, "b")
	var got [][]any
	for _, d := range rec.recorded() {
		if len(d) > 0 && (d[0] == "m" || d[0] == "b") {
			got = append(got, d)
		}
	}
	want := [][]any{{"m", map[string]any{"text": "hi"}}, {"b", []byte{1}, map[string]any{"text": "hi"}}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("encoded %#v, want %#v", got, want)
	}
}

// TestNoEncodingWithoutRecipients: a server encodes a broadcast only when one of its
// sockets is to get it. A broadcast to a room matches no socket on most servers, and was
// encoded on each of them anyway (a 20 KB one copied once more, for nothing).
func TestNoEncodingWithoutRecipients(t *testing.T) {
	opts := testOptions(t)
	a := startNode(t, "A", opts)
	b, rec := startRecording(t, "B", opts)
	waitServerCount(t, []*node{a, b}, 2)
	ca := a.connect(t, "/", "ca", "r")
	cb := b.connect(t, "/", "cb")
	a.io.To("r").Emit("room", 1)
	a.io.To("r").EmitWithAck("roomAck", 2)(func([]any, error) {})
	a.io.Emit("all", 3)
	ca.expect(t, "room")
	ca.expect(t, "roomAck")
	cb.expect(t, "all") // after the others, in order: B has applied them
	var events []any
	for _, d := range rec.recorded() {
		if len(d) > 0 && (d[0] == "room" || d[0] == "roomAck" || d[0] == "all") { // not the harness's own
			events = append(events, d[0])
		}
	}
	if !reflect.DeepEqual(events, []any{"all"}) {
		t.Fatalf("B encoded %v, want only the broadcast one of its sockets gets", events)
	}
}
