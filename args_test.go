package pgadapter

import (
	"bytes"
	"reflect"
	"sync"
	"testing"
	"time"

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

// A server with its own encoder gives its clients the arguments the other servers'
// clients get: normalized for the wire (a struct as its JSON object). Its own clients got
// the application's values, which an encoder of its own (MessagePack, say) could write
// otherwise. Outgoing-packet listeners still get the application's values.
func TestOwnEncoderGetsTheClusterArguments(t *testing.T) {
	rec := &recordingParser{}
	so := socket.DefaultServerOptions()
	so.SetParser(rec)
	io := socket.NewServer(nil, so)
	pool := newPool(t)
	defer pool.Close()
	opts := testOptions(t)
	b := New(pool, &opts)
	io.SetAdapter(b)
	defer func() {
		done := make(chan struct{})
		io.Close(func(error) { close(done) })
		select {
		case <-done:
		case <-time.After(waitFor):
			t.Error("io.Close never returned")
		}
	}()
	io.Emit("m", wireMsg{"hi"})
	io.Emit("b", []byte{1}, wireMsg{"hi"})
	rec.mu.Lock()
	defer rec.mu.Unlock()
	want := [][]any{{"m", map[string]any{"text": "hi"}}, {"b", []byte{1}, map[string]any{"text": "hi"}}}
	if !reflect.DeepEqual(rec.data, want) {
		t.Fatalf("encoded %#v, want %#v", rec.data, want)
	}
}
