package wire

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// vector is one captured Node message (testdata/node-0.5.0.jsonl, a copy of
// shared/wire/node-0.5.0.jsonl).
type vector struct {
	Name          string `json:"name"`
	Channel       string `json:"channel"`
	Notify        string `json:"notify"`
	AttachmentHex string `json:"attachment_msgpack_hex"`
}

func loadVectors(t testing.TB) []vector {
	t.Helper()
	f, err := os.Open("testdata/node-0.5.0.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []vector
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var v vector
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			t.Fatalf("bad vector line: %v", err)
		}
		out = append(out, v)
	}
	if len(out) < 20 {
		t.Fatalf("only %d vectors loaded", len(out))
	}
	return out
}

func jsonValue(t *testing.T, s string) any {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("not JSON: %v: %s", err, s)
	}
	return v
}

func msgpackValue(t *testing.T, b []byte) any {
	t.Helper()
	m, err := DecodeAttachment(b)
	if err != nil {
		t.Fatal(err)
	}
	return m.tree()
}

// TestVectorsBothWays decodes every captured Node message and encodes the decoded value
// again, comparing as values (JSON key order and msgpack map order are free).
func TestVectorsBothWays(t *testing.T) {
	for _, v := range loadVectors(t) {
		t.Run(v.Name, func(t *testing.T) {
			n, err := DecodeNotification(v.Notify)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !n.HasAttachment {
				again, err := EncodeJSON(n.Message)
				if err != nil {
					t.Fatal(err)
				}
				if got, want := jsonValue(t, again), jsonValue(t, v.Notify); !reflect.DeepEqual(got, want) {
					t.Fatalf("re-encoded JSON differs\n got: %s\nwant: %s", again, v.Notify)
				}
				enc, err := Encode(n.Message, 8000)
				if err != nil || enc.Attachment != nil || !reflect.DeepEqual(jsonValue(t, enc.JSON), jsonValue(t, v.Notify)) {
					t.Fatalf("Encode: %v %q", err, enc.JSON)
				}
				return
			}
			header := AttachmentHeaderPrefix(n.UID, n.Type) + strconv.FormatInt(n.AttachmentID, 10) + AttachmentHeaderSuffix
			if !reflect.DeepEqual(jsonValue(t, header), jsonValue(t, v.Notify)) {
				t.Fatalf("header differs\n got: %s\nwant: %s", header, v.Notify)
			}
			body, err := hex.DecodeString(v.AttachmentHex)
			if err != nil {
				t.Fatal(err)
			}
			m, err := DecodeAttachment(body)
			if err != nil {
				t.Fatalf("decode attachment: %v", err)
			}
			if m.UID != n.UID || m.Type != n.Type {
				t.Fatalf("attachment uid/type %s/%s, header %s/%s", m.UID, m.Type, n.UID, n.Type)
			}
			enc, err := Encode(m, 8000)
			if err != nil {
				t.Fatal(err)
			}
			if enc.Attachment == nil {
				t.Fatalf("binary message encoded inline: %s", enc.JSON)
			}
			if got, want := msgpackValue(t, enc.Attachment), msgpackValue(t, body); !reflect.DeepEqual(got, want) {
				t.Fatalf("re-encoded attachment differs\n got: %#v\nwant: %#v", got, want)
			}
		})
	}
}

// TestVectorMeanings checks what the decoded vectors mean, not only that they round-trip.
func TestVectorMeanings(t *testing.T) {
	byName := map[string]vector{}
	for _, v := range loadVectors(t) {
		byName[v.Name] = v
	}
	decode := func(name string) *Message {
		t.Helper()
		v, ok := byName[name]
		if !ok {
			t.Fatalf("no vector %q", name)
		}
		n, err := DecodeNotification(v.Notify)
		if err != nil {
			t.Fatal(err)
		}
		if n.HasAttachment {
			body, _ := hex.DecodeString(v.AttachmentHex)
			m, err := DecodeAttachment(body)
			if err != nil {
				t.Fatal(err)
			}
			return m
		}
		return n.Message
	}

	b := decode("broadcast_rooms_flags").Data.(*BroadcastData)
	if b.Packet.Type != EventPacketType || b.Packet.Data[0] != "roomed" || !reflect.DeepEqual(b.Opts.Rooms, []string{"room1"}) ||
		!reflect.DeepEqual(b.Opts.Except, []string{"room2"}) || !*b.Opts.Flags.Volatile || *b.Opts.Flags.Compress || b.Opts.Flags.Local != nil {
		t.Fatalf("broadcast_rooms_flags: %+v", b)
	}
	ack := decode("broadcast_with_ack").Data.(*BroadcastData)
	if ack.RequestID != "f3ae522f7b6c75e7" || ack.Opts.Flags.Timeout == nil || *ack.Opts.Flags.Timeout != time.Second {
		t.Fatalf("broadcast_with_ack: %+v", ack)
	}
	if cc := decode("broadcast_client_count").Data.(*ClientCountData); cc.ClientCount != 1 {
		t.Fatalf("client count: %+v", cc)
	}
	if a := decode("broadcast_ack").Data.(*AckData); a.Packet != "ack-from-cB" {
		t.Fatalf("broadcast ack: %+v", a)
	}
	fr := decode("fetch_sockets_response").Data.(*FetchResponseData)
	if len(fr.Sockets) != 1 || fr.Sockets[0].ID != "-tq5wJQm6RnBHTdQAAAB" || fr.Sockets[0].Handshake["address"] != "127.0.0.1" ||
		!reflect.DeepEqual(fr.Sockets[0].Data, map[string]any{"name": "B", "n": 1.0}) {
		t.Fatalf("fetch response: %+v", fr)
	}
	if s := decode("server_side_emit").Data.(*ServerSideEmitData); s.RequestID != "" || !reflect.DeepEqual(s.Packet, []any{"sse", 1.0, "a"}) {
		t.Fatalf("server side emit: %+v", s)
	}
	bin := decode("attachment_header_binary_broadcast")
	bd := bin.Data.(*BroadcastData)
	if bin.Nsp != "/" || !bytes.Equal(bd.Packet.Data[1].([]byte), []byte{1, 2, 3}) ||
		!bytes.Equal(bd.Packet.Data[2].(map[string]any)["nested"].([]byte), []byte{4, 5}) {
		t.Fatalf("binary broadcast: %#v", bd.Packet.Data)
	}
	em := decode("emitter_broadcast")
	if em.UID != EmitterUID || em.Nsp != "" || em.Data.(*BroadcastData).Packet.Nsp != "/" {
		t.Fatalf("emitter broadcast: %+v", em)
	}
	eb := decode("emitter_binary_to_room").Data.(*BroadcastData)
	if !reflect.DeepEqual(eb.Opts.Rooms, []string{"room1"}) || !bytes.Equal(eb.Packet.Data[1].([]byte), []byte{9}) {
		t.Fatalf("emitter binary: %+v", eb)
	}
	for _, name := range []string{"initial_heartbeat", "heartbeat", "adapter_close"} {
		if m := decode(name); m.Data != nil || m.Nsp != "/" {
			t.Fatalf("%s: %+v", name, m)
		}
	}
}

func TestEncodeThreshold(t *testing.T) {
	// The JSON envelope around the argument is fixed; find the argument length that makes
	// the payload exactly 7999 and 8000 bytes.
	msg := func(n int) *Message {
		return &Message{Type: Broadcast, UID: "0123456789abcdef", Nsp: "/", Data: &BroadcastData{
			Packet: Packet{Type: EventPacketType, Data: []any{"e", strings.Repeat("x", n)}},
		}}
	}
	base, _ := EncodeJSON(msg(0))
	for _, size := range []int{7999, 8000} {
		m := msg(size - len(base))
		js, _ := EncodeJSON(m)
		if len(js) != size {
			t.Fatalf("built %d bytes, want %d", len(js), size)
		}
		enc, err := Encode(m, 8000)
		if err != nil {
			t.Fatal(err)
		}
		if inline := enc.Attachment == nil; inline != (size < 8000) {
			t.Fatalf("%d bytes: inline=%v", size, inline)
		}
		if size == 7999 && len(enc.JSON) != 7999 {
			t.Fatalf("inline payload is %d bytes", len(enc.JSON))
		}
	}
	// A threshold above PostgreSQL's limit is capped.
	m := msg(9000)
	if enc, _ := Encode(m, 100000); enc.Attachment == nil {
		t.Fatal("9000-byte message sent inline with a too-large threshold")
	}
}

func TestNoNullRequestID(t *testing.T) {
	m := &Message{Type: ServerSideEmit, UID: "u", Nsp: "/", Data: &ServerSideEmitData{Packet: []any{"ev"}}}
	js, _ := EncodeJSON(m)
	if strings.Contains(js, "requestId") {
		t.Fatalf("requestId present without ack: %s", js)
	}
	b := &Message{Type: Broadcast, UID: "u", Nsp: "/", Data: &BroadcastData{Packet: Packet{Type: 2, Data: []any{"ev"}}}}
	js, _ = EncodeJSON(b)
	if strings.Contains(js, "requestId") || !strings.Contains(js, `"rooms":[]`) || !strings.Contains(js, `"except":[]`) {
		t.Fatalf("bad broadcast: %s", js)
	}
	c := &Message{Type: BroadcastClientCount, UID: "u", Nsp: "/", Data: &ClientCountData{RequestID: "r"}}
	js, _ = EncodeJSON(c)
	if !strings.Contains(js, `"clientCount":0`) {
		t.Fatalf("clientCount 0 dropped: %s", js)
	}
	f := &Message{Type: FetchSocketsResponse, UID: "u", Nsp: "/", Data: &FetchResponseData{RequestID: "r"}}
	js, _ = EncodeJSON(f)
	if !strings.Contains(js, `"sockets":[]`) {
		t.Fatalf("empty sockets dropped: %s", js)
	}
}

func TestDecodeErrors(t *testing.T) {
	bad := map[string]string{
		"empty":            ``,
		"not json":         `{"type":`,
		"array":            `[1,2]`,
		"trailing":         `{"type":2,"uid":"a"} {}`,
		"unknown type":     `{"type":99,"uid":"a"}`,
		"string type":      `{"type":"3","uid":"a"}`,
		"no uid":           `{"type":2}`,
		"data not object":  `{"type":3,"uid":"a","data":7}`,
		"packet data str":  `{"type":3,"uid":"a","data":{"packet":{"type":2,"data":"x"},"opts":{}}}`,
		"event not string": `{"type":3,"uid":"a","data":{"packet":{"type":2,"data":[null]},"opts":{}}}`,
		"rooms not array":  `{"type":4,"uid":"a","data":{"opts":{"rooms":"r"},"rooms":[]}}`,
		"flag type":        `{"type":3,"uid":"a","data":{"packet":{"type":2,"data":["e"]},"opts":{"flags":{"volatile":"yes"}}}}`,
		"timeout negative": `{"type":3,"uid":"a","data":{"packet":{"type":2,"data":["e"]},"opts":{"flags":{"timeout":-1}}}}`,
		"count negative":   `{"type":11,"uid":"a","data":{"requestId":"r","clientCount":-1}}`,
		"no request id":    `{"type":12,"uid":"a","data":{"packet":1}}`,
		"attachment zero":  `{"type":3,"uid":"a","attachmentId":"0"}`,
		"attachment junk":  `{"type":3,"uid":"a","attachmentId":"1; DROP TABLE x"}`,
		"attachment float": `{"type":3,"uid":"a","attachmentId":1.5}`,
		"attachment type":  `{"type":42,"uid":"a","attachmentId":"1"}`,
		"created number":   `{"type":3,"uid":"a","attachmentId":"1","createdAt":1}`,
		"created junk":     `{"type":3,"uid":"a","attachmentId":"1","createdAt":"yesterday"}`,
		// socket.io's own namespace events, which Node's emitter sends as server-side
		// events: a handler of "connection" got a string, where it asserts a socket.
		"sse connection":    `{"type":9,"uid":"a","nsp":"/","data":{"packet":["connection","x"]}}`,
		"sse connect":       `{"type":9,"uid":"a","nsp":"/","data":{"packet":["connect"],"requestId":"r"}}`,
		"sse new_namespace": `{"type":9,"uid":"a","nsp":"/","data":{"packet":["new_namespace",{}]}}`,
	}
	for name, payload := range bad {
		if _, err := DecodeNotification(payload); err == nil {
			t.Errorf("%s: no error for %q", name, payload)
		}
	}
	if n, err := DecodeNotification(`{"type":3,"uid":"a","attachmentId":12}`); err != nil || n.AttachmentID != 12 {
		t.Fatalf("numeric attachment id: %v %+v", err, n)
	}
	// createdAt as InsertNotify writes it; absent (Node) or empty (a row without one), zero.
	header := `{"uid":"a","type":3,"attachmentId":"12","createdAt":"2026-12-06T05:40:01.000120Z"}`
	want := time.Date(2026, 12, 6, 5, 40, 1, 120000, time.UTC)
	if got := AttachmentHeader("a", Broadcast, 12, want.In(time.FixedZone("x", 3600))); got != header {
		t.Fatalf("AttachmentHeader wrote %s, want %s", got, header)
	}
	n, err := DecodeNotification(header)
	if err != nil || !n.CreatedAt.Equal(want) {
		t.Fatalf("createdAt: %v %+v, want %v", err, n, want)
	}
	for _, payload := range []string{`{"type":3,"uid":"a","attachmentId":"12"}`, `{"type":3,"uid":"a","attachmentId":"12","createdAt":""}`} {
		if n, err := DecodeNotification(payload); err != nil || !n.CreatedAt.IsZero() {
			t.Fatalf("%s: %v %+v", payload, err, n)
		}
	}
	body, err := EncodeMsgpack(&Message{Type: ServerSideEmit, UID: "a", Nsp: "/", Data: &ServerSideEmitData{Packet: []any{"connection", []byte{1}}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeAttachment(body); err == nil {
		t.Error("no error for a server-side \"connection\" in an attachment")
	}
	deep := bytes.Repeat([]byte{0x91}, 10000)
	deep = append(deep, 0xc0)
	for _, body := range [][]byte{nil, {0xc1}, {0x93, 1, 2, 3}, {0x81, 0x01, 0x02},
		// Declared sizes far beyond the input: rejected before any allocation (these hung
		// the decoder, found by FuzzDecodeAttachment).
		{0xdf, 0xff, 0xff, 0xff, 0xff}, {0xc6, 0x7f, 0xff, 0xff, 0xff}, {0xdd, 0x7f, 0xff, 0xff, 0xff}, deep} {
		if _, err := DecodeAttachment(body); err == nil {
			t.Errorf("no error for attachment %x", body)
		}
	}
}

type point struct {
	X   int    `json:"x"`
	Tag string `json:"tag,omitempty"`
}

func TestNormalize(t *testing.T) {
	big := int64(1) << 60
	in := []any{point{X: 3}, []string{"a"}, map[string]int{"n": 1}, big, bytes.NewReader([]byte{1, 2}), strings.NewReader("txt"), map[string]any{"b": []byte{7}}}
	out, bin, err := NormalizeArgs(in)
	if err != nil || !bin {
		t.Fatalf("err=%v bin=%v", err, bin)
	}
	want := []any{map[string]any{"x": int64(3)}, []any{"a"}, map[string]any{"n": int64(1)}, big, []byte{1, 2}, "txt", map[string]any{"b": []byte{7}}}
	if !reflect.DeepEqual(out, want) {
		t.Fatalf("got %#v\nwant %#v", out, want)
	}
	if _, bin, _ := NormalizeArgs([]any{"x", 1, map[string]any{"a": []any{true}}}); bin {
		t.Fatal("binary reported for plain values")
	}
	if _, _, err := Normalize(func() {}); err == nil {
		t.Fatal("no error for a func argument")
	}
	// A large integer survives both encodings exactly.
	m := &Message{Type: ServerSideEmit, UID: "u", Nsp: "/", Data: &ServerSideEmitData{Packet: []any{"e", big}}}
	js, _ := EncodeJSON(m)
	if !strings.Contains(js, strconv.FormatInt(big, 10)) {
		t.Fatalf("integer changed: %s", js)
	}
}

// A nil pointer to a reader is null, as any nil pointer (encoding/json): reading it
// dereferenced nil, and ended the process of an emitter or a server. HasReader counts
// it: socket.io's encoder would read it.
func TestNormalizeNilReaders(t *testing.T) {
	in := []any{(*bytes.Buffer)(nil), (*strings.Reader)(nil), (*bytes.Reader)(nil), []any{(*bytes.Buffer)(nil)}, map[string]any{"r": (*bytes.Reader)(nil)}}
	out, bin, err := NormalizeArgs(in)
	if err != nil || bin {
		t.Fatalf("err=%v bin=%v", err, bin)
	}
	if want := []any{nil, nil, nil, []any{nil}, map[string]any{"r": nil}}; !reflect.DeepEqual(out, want) {
		t.Fatalf("got %#v, want %#v", out, want)
	}
	if !HasReader([]any{1, (*bytes.Buffer)(nil)}) {
		t.Error("nil reader pointer not counted")
	}
	CloseReaders(in) // no panic
	if !HasReader([]any{1, map[string]any{"r": strings.NewReader("x")}}) {
		t.Error("nested reader not found")
	}
}

// Plain JavaScript emits numbers as event names (io.emit(42), serverSideEmit(7)), which
// a Node server's clients take as the event "42": they were refused as malformed, and
// lost. They are the string JavaScript makes of them, through both decoding paths and
// in MessagePack.
func TestNumericEventNames(t *testing.T) {
	for name, decode := range map[string]func(string) (*Notification, error){"generic": DecodeNotification, "raw": DecodeNotificationRaw} {
		n, err := decode(`{"type":3,"uid":"x","nsp":"/","data":{"packet":{"type":2,"data":[42,"a"]},"opts":{}}}`)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := n.Message.Data.(*BroadcastData).Packet.Data; !reflect.DeepEqual(got, []any{"42", "a"}) {
			t.Fatalf("%s: broadcast data %#v", name, got)
		}
		n, err = decode(`{"type":9,"uid":"x","nsp":"/","data":{"packet":[1.5]}}`)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := n.Message.Data.(*ServerSideEmitData).Packet; !reflect.DeepEqual(got, []any{"1.5"}) {
			t.Fatalf("%s: server-side data %#v", name, got)
		}
	}
	body, err := EncodeMsgpack(&Message{Type: Broadcast, UID: "x", Nsp: "/", Data: &BroadcastData{Packet: Packet{Type: EventPacketType, Data: []any{int64(7)}}}})
	if err != nil {
		t.Fatal(err)
	}
	m, err := DecodeAttachment(body)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Data.(*BroadcastData).Packet.Data; !reflect.DeepEqual(got, []any{"7"}) {
		t.Fatalf("MessagePack: %#v", got)
	}
}

// Node servers send rooms joined by number (socket.join(42) in plain JavaScript) as JSON
// numbers; a Go server took the whole message for malformed. They are read as the string
// JavaScript makes of them, which is what Node keys its rooms by.
func TestNumericRooms(t *testing.T) {
	payload := `{"type":3,"uid":"x","nsp":"/","data":{"packet":{"type":2,"data":["e"]},"opts":{"rooms":[42,"r",1.5],"except":[1e21],"flags":{}}}}`
	for name, decode := range map[string]func(string) (*Notification, error){"generic": DecodeNotification, "raw": DecodeNotificationRaw} {
		n, err := decode(payload)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		o := n.Message.Data.(*BroadcastData).Opts
		if !slices.Equal(o.Rooms, []string{"42", "r", "1.5"}) || !slices.Equal(o.Except, []string{"1e+21"}) {
			t.Fatalf("%s: rooms %q except %q", name, o.Rooms, o.Except)
		}
	}
	for f, want := range map[float64]string{0: "0", -7: "-7", 0.1: "0.1", 123456789012345680000: "123456789012345680000", 1e21: "1e+21", 1.5e-7: "1.5e-7", 1e-6: "0.000001", -2.5e300: "-2.5e+300"} {
		if got := JSNumber(f); got != want {
			t.Errorf("JSNumber(%v) = %q, want %q", f, got, want)
		}
	}
}

// What Normalize makes of values socket.io's encoder sends in its own way: a nil slice or
// map is null (it became [] and {} for every client, local ones too), a float32 is its
// shortest decimal form in MessagePack as in JSON (0.1 reached clients of other servers
// as 0.10000000149011612 when the message went through the attachments table), and a
// value that contains itself is an error, not a stack overflow that ends the process.
func TestNormalizeEdges(t *testing.T) {
	out, _, err := NormalizeArgs([]any{[]any(nil), map[string]any(nil), map[string]any{"k": []any(nil)}, float32(0.1), []any{float32(1.1)}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []any{nil, nil, map[string]any{"k": nil}, 0.1, []any{1.1}}; !reflect.DeepEqual(out, want) {
		t.Fatalf("got %#v, want %#v", out, want)
	}
	m := &Message{Type: ServerSideEmit, UID: "u", Nsp: "/", Data: &ServerSideEmitData{Packet: append([]any{"e"}, out...)}}
	js, err := EncodeJSON(m)
	if err != nil || !strings.Contains(js, `["e",null,null,{"k":null},0.1,[1.1]]`) {
		t.Fatalf("JSON %s, %v", js, err)
	}
	body, err := EncodeMsgpack(m)
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeAttachment(body)
	if err != nil {
		t.Fatal(err)
	}
	if got := back.Data.(*ServerSideEmitData).Packet; !reflect.DeepEqual(got, []any{"e", nil, nil, map[string]any{"k": nil}, 0.1, []any{1.1}}) {
		t.Fatalf("through MessagePack: %#v", got)
	}

	self := map[string]any{}
	self["self"] = self
	loop := []any{nil}
	loop[0] = loop
	for _, v := range []any{self, loop} {
		allocs := testing.AllocsPerRun(1, func() {
			if _, _, err := Normalize(v); err == nil || !strings.Contains(err.Error(), "contain itself") || len(err.Error()) > 200 {
				t.Fatalf("value that contains itself: %.300v", err)
			}
		})
		// One map or slice per level, and no path of 10,000 levels built at each.
		if allocs > 3*maxJSONDepth {
			t.Errorf("%.0f allocations to refuse a value that contains itself", allocs)
		}
	}
}
