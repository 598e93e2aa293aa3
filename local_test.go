package pgadapter

import (
	"encoding/json"
	"io"
	goruntime "runtime"
	"strings"
	"testing"

	"github.com/zishang520/engine.io/v2/types"
	"github.com/zishang520/socket.io-go-parser/v2/parser"

	"github.com/socketio-pg/pgadapter/internal/wire"
)

// Broadcasts that arrive from other servers reach clients as the JSON text they arrived
// in, not encoded again by socket.io's encoder: the text must be the same, byte for byte,
// except for HTML escaping, which socket.io's encoder adds and which decodes to the same
// JSON.
func TestEncodeEventMatchesSocketIO(t *testing.T) {
	id := uint64(42)
	trees := []any{
		[]any{"chat", "hello"},
		[]any{"e", 1.5, nil, true, []any{"x", 2.0}, map[string]any{"b": "é😀\u2028", "a": map[string]any{}}},
		[]any{"quotes\"\\\n\t", -0.000001, 1e21},
		[]any{"html", "<b>&amp;</b>"},
	}
	for _, nsp := range []string{"/", "/chat", "/a,b"} {
		for _, id := range []*uint64{nil, &id} {
			for _, data := range trees {
				// Round-trip through the codec, as a remote broadcast's data does.
				js, err := wire.AppendJSON(nil, data)
				if err != nil {
					t.Fatal(err)
				}
				payload := `{"type":3,"uid":"u","data":{"opts":{"rooms":[],"except":[],"flags":{}},"packet":{"type":2,"data":` + string(js) + `}}}`
				n, err := wire.DecodeNotification(payload)
				if err != nil {
					t.Fatal(err)
				}
				tree := n.Message.Data.(*wire.BroadcastData).Packet.Data
				n, err = wire.DecodeNotificationRaw(payload)
				if err != nil {
					t.Fatal(err)
				}
				raw := n.Message.Data.(*wire.BroadcastData).Packet.Raw
				if raw == "" {
					t.Fatalf("%s: arguments not kept raw", payload)
				}
				ours := encodeEvent(&parser.Packet{Type: parser.EVENT, Nsp: nsp, Id: id}, raw)
				theirs := parser.NewEncoder().Encode(&parser.Packet{Type: parser.EVENT, Nsp: nsp, Id: id, Data: tree})
				if len(theirs) != 1 {
					t.Fatalf("socket.io encoded %d parts", len(theirs))
				}
				want := theirs[0].String()
				if string(ours) == want {
					continue
				}
				// Only HTML escaping may differ: the same header, and the same JSON.
				i := strings.IndexByte(want, '[')
				if i < 0 || string(ours[:i]) != want[:i] || !sameJSON(t, string(ours[i:]), want[i:]) {
					t.Errorf("nsp %q id %v: ours %s, socket.io's %s", nsp, id, ours, want)
				}
			}
		}
	}
}

func sameJSON(t *testing.T, a, b string) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal([]byte(a), &x); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(b), &y); err != nil {
		t.Fatal(err)
	}
	xs, _ := json.Marshal(x)
	ys, _ := json.Marshal(y)
	return string(xs) == string(ys)
}

// TestShareable: what socket.io copies for each client on engine.io's own transports is
// a buffer of the type engine.io tells text from binary by, over the same bytes, each
// read from its own position.
func TestShareable(t *testing.T) {
	for _, tc := range []struct {
		part types.BufferInterface
		text bool
	}{
		{types.NewStringBuffer([]byte(`2["e","x"]`)), true},
		{types.NewBytesBuffer([]byte{1, 2, 3, 4}), false},
	} {
		want := string(tc.part.Bytes())
		s := share(tc.part)
		a, b := s.Clone(), s.Clone()
		for _, c := range []types.BufferInterface{a, b} {
			if _, text := c.(*types.StringBuffer); text != tc.text {
				t.Fatalf("%q: a copy is %T", want, c)
			}
		}
		if &a.Bytes()[0] != &tc.part.Bytes()[0] || &b.Bytes()[0] != &tc.part.Bytes()[0] {
			t.Fatalf("%q: a copy holds bytes of its own", want)
		}
		read, err := io.ReadAll(a)
		if err != nil || string(read) != want {
			t.Fatalf("%q: read %q, %v", want, read, err)
		}
		if read, _ := io.ReadAll(b); string(read) != want {
			t.Fatalf("%q: the second copy read %q after the first was read", want, read)
		}
		if string(tc.part.Bytes()) != want {
			t.Fatalf("%q: the part now holds %q", want, tc.part.Bytes())
		}
	}
}

// TestArgsTextAllocatesOnce: the JSON text of a broadcast's arguments is written into
// one buffer, sized from its strings, and that buffer is the string returned. Grown from
// a small buffer and then copied, a 20 KB argument cost twice its size (41 KB).
func TestArgsTextAllocatesOnce(t *testing.T) {
	big := strings.Repeat("x", 20000)
	for _, args := range [][]any{
		{"e", big},
		{"e", map[string]any{"text": big, "n": 1.0}},
		{"e", []any{big, "y"}},
	} {
		want, err := wire.AppendJSON(nil, args)
		if err != nil {
			t.Fatal(err)
		}
		if got := argsText(args); got != string(want) {
			t.Fatalf("argsText wrote %d bytes, want %d", len(got), len(want))
		}
		const calls = 20
		var before, after goruntime.MemStats
		goruntime.ReadMemStats(&before)
		for range calls {
			argsText(args)
		}
		goruntime.ReadMemStats(&after)
		// One buffer of the text's size class, and the slice boxed as an interface.
		if per := (after.TotalAlloc - before.TotalAlloc) / calls; per > uint64(len(want))*5/4 {
			t.Errorf("%d bytes allocated for %d bytes of text", per, len(want))
		}
	}
}

// TestNoTextWithoutRecipients: a broadcast decoded in full (one that came as an
// attachment) is written as JSON text for this server's clients only once one of its
// sockets is to get it. A broadcast to a room matches none on most servers, and each of
// them wrote a 20 KB argument's text anyway.
func TestNoTextWithoutRecipients(t *testing.T) {
	n := startNode(t, "A", testOptions(t))
	a := n.io.Sockets().Adapter().(*Adapter)
	big := strings.Repeat("x", 20000)
	m := &wire.Message{Type: wire.Broadcast, UID: wire.EmitterUID, Nsp: "/", Data: &wire.BroadcastData{
		Packet: wire.Packet{Type: 2, Data: []any{"e", big}},
		Opts:   wire.Opts{Rooms: []string{"nobody"}},
	}}
	a.onMessage(m)
	const calls = 20
	var before, after goruntime.MemStats
	goruntime.ReadMemStats(&before)
	for range calls {
		a.onMessage(m)
	}
	goruntime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / calls; per > uint64(len(big))/2 {
		t.Fatalf("%d bytes allocated per broadcast that no socket gets", per)
	}
}

// A broadcast received without rooms or exceptions makes no set for them: apply reads
// nil as none. One with them gets them, and fromWireOpts, which socket.io's own adapter
// methods are given, still makes both sets.
func TestReceivedBroadcastOptions(t *testing.T) {
	yes := true
	o := broadcastOpts(wire.Opts{Flags: wire.Flags{Volatile: &yes}})
	if o.Rooms != nil || o.Except != nil {
		t.Fatalf("rooms %v, except %v: want nil for none", o.Rooms, o.Except)
	}
	if !o.Flags.Volatile || o.Flags.Compress {
		t.Fatalf("flags %+v: want volatile only", *o.Flags)
	}
	o = broadcastOpts(wire.Opts{Rooms: []string{"r1", "r2"}, Except: []string{"r3"}})
	if o.Rooms == nil || o.Rooms.Len() != 2 || !o.Rooms.Has("r1") || !o.Rooms.Has("r2") {
		t.Fatalf("rooms %v: want r1 and r2", o.Rooms)
	}
	if o.Except == nil || o.Except.Len() != 1 || !o.Except.Has("r3") {
		t.Fatalf("except %v: want r3", o.Except)
	}
	o = fromWireOpts(wire.Opts{})
	if o.Rooms == nil || o.Except == nil || o.Rooms.Len() != 0 || o.Except.Len() != 0 {
		t.Fatalf("fromWireOpts: rooms %v, except %v: want two empty sets", o.Rooms, o.Except)
	}
}
