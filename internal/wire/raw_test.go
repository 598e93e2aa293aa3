package wire

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// sameAsFullDecode checks that DecodeNotificationRaw agrees with DecodeNotification on
// payload: the same verdict, the same message once the raw arguments are decoded, and
// the same text when encoded again. It reports whether the arguments stayed raw.
func sameAsFullDecode(t *testing.T, payload string) (raw bool) {
	t.Helper()
	full, ferr := DecodeNotification(payload)
	lazy, lerr := DecodeNotificationRaw(payload)
	if (ferr == nil) != (lerr == nil) {
		t.Fatalf("%q: full decode error %v, raw decode error %v", payload, ferr, lerr)
	}
	if ferr == nil && full.Seq != lazy.Seq {
		t.Fatalf("%q: full decode gives sequence number %d, raw decode %d", payload, full.Seq, lazy.Seq)
	}
	if ferr != nil || full.HasAttachment {
		return false
	}
	if full.Message.Type != Broadcast {
		if !reflect.DeepEqual(full, lazy) {
			t.Fatalf("%q: a %s decodes differently in raw mode", payload, full.Message.Type)
		}
		return false
	}
	d := lazy.Message.Data.(*BroadcastData)
	wantJS, err := EncodeJSON(full.Message)
	if err != nil {
		t.Fatal(err)
	}
	gotJS, err := EncodeJSON(lazy.Message)
	if err != nil {
		t.Fatal(err)
	}
	raw = d.Packet.Raw != ""
	if raw && d.Packet.Data != nil {
		t.Fatalf("%q: both Raw and Data set", payload)
	}
	args, err := d.Packet.Args()
	if err != nil {
		t.Fatalf("%q: Args: %v", payload, err)
	}
	c := *d
	c.Packet.Data, c.Packet.Raw = args, ""
	m := *lazy.Message
	m.Data = &c
	if !reflect.DeepEqual(full.Message, &m) {
		t.Fatalf("%q: raw decode gives %#v, want %#v", payload, m.Data, full.Message.Data)
	}
	if raw {
		// the text passes through: equal values, and valid JSON of them
		if !reflect.DeepEqual(jsonValue(t, gotJS), jsonValue(t, wantJS)) {
			t.Fatalf("%q: re-encoded as %s, want the value of %s", payload, gotJS, wantJS)
		}
	} else if gotJS != wantJS {
		t.Fatalf("%q: re-encoded as %s, want %s", payload, gotJS, wantJS)
	}
	return raw
}

func TestDecodeNotificationRawVectors(t *testing.T) {
	raws := 0
	for _, v := range loadVectors(t) {
		if sameAsFullDecode(t, v.Notify) {
			raws++
		}
	}
	if raws == 0 {
		t.Fatal("no vector's arguments were kept raw")
	}
}

func TestDecodeNotificationRawCases(t *testing.T) {
	const head = `{"type":3,"uid":"u","data":{"opts":{"rooms":[],"except":[],"flags":{}},"packet":{"type":2,"data":`
	for _, c := range []struct {
		name, payload string
		raw           bool
	}{
		{"event", head + `["ev",{"a":[1,2.50,"\u00e9"]},null,true]}}}`, true},
		{"spaces", head + ` [ "ev" , 1 ] }}}`, true},
		{"invalid UTF-8 is decoded", head + "[\"ev\",\"\xff\"]}}}", false},
		{"invalid UTF-8 after an escape", head + "[\"ev\",\"\\n\xff\"]}}}", false},
		{"event name not a string", head + `[1,"x"]}}}`, false},
		{"empty arguments", head + `[]}}}`, false},
		{"not an array", head + `{"0":"ev"}}}}`, false},
		{"bad number inside", head + `["ev",1e999]}}}`, false},
		{"bad syntax inside", head + `["ev",[1,]]}}}`, false},
		{"trailing data", head + `["ev"]}}}x`, false},
		{"deep", head + `["ev",` + strings.Repeat("[", 10000) + strings.Repeat("]", 10000) + `]}}}`, false},
		{"ack whose answer looks like a packet",
			`{"type":12,"uid":"u","data":{"requestId":"r","packet":{"data":["ev",1]}}}`, false},
		{"emitter packet with nsp", `{"type":3,"uid":"emitter","data":{"opts":{"rooms":["r"],"except":[],"flags":{}},"packet":{"type":2,"data":["ev","x"],"nsp":"/admin"}}}`, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := sameAsFullDecode(t, c.payload); got != c.raw {
				t.Errorf("raw = %v, want %v", got, c.raw)
			}
		})
	}
}

// A sender that has its arguments' text sets Raw and Data: the JSON carries the text, and
// an attachment the values.
func TestEncodeWithRaw(t *testing.T) {
	for _, size := range []int{100, 9000} {
		data := []any{"ev", map[string]any{"n": int64(3), "b": true}, strings.Repeat("x", size)}
		text, err := AppendJSON(nil, data)
		if err != nil {
			t.Fatal(err)
		}
		msg := func(p Packet) *Message {
			return &Message{Type: Broadcast, UID: "u", Nsp: "/", Data: &BroadcastData{Packet: p}}
		}
		want, err := Encode(msg(Packet{Type: 2, Data: data}), 0)
		if err != nil {
			t.Fatal(err)
		}
		if (want.Attachment != nil) != (size > 8000) {
			t.Fatalf("size %d: attachment %v", size, want.Attachment != nil)
		}
		for _, p := range []Packet{{Type: 2, Data: data, Raw: string(text)}, {Type: 2, Raw: string(text)}} {
			got, err := Encode(msg(p), 0)
			if err != nil {
				t.Fatal(err)
			}
			if got.JSON != want.JSON {
				t.Errorf("size %d, Data set %v: JSON %.80s, want %.80s", size, p.Data != nil, got.JSON, want.JSON)
			}
			if want.Attachment == nil {
				continue
			}
			gm, err := DecodeAttachment(got.Attachment)
			if err != nil {
				t.Fatal(err)
			}
			wm, _ := DecodeAttachment(want.Attachment)
			if !reflect.DeepEqual(gm, wm) {
				t.Errorf("size %d, Data set %v: attachment carries %.80v, want %.80v", size, p.Data != nil, gm.Data, wm.Data)
			}
		}
	}
}

// FuzzDecodeNotificationRaw checks raw decoding against full decoding on any payload.
func FuzzDecodeNotificationRaw(f *testing.F) {
	for _, v := range loadVectors(f) {
		f.Add(v.Notify)
	}
	f.Add("{\"type\":3,\"uid\":\"u\",\"data\":{\"opts\":{},\"packet\":{\"type\":2,\"data\":[\"e\",\"\xff\"]}}}")
	if enc, err := EncodeInline(binaryBroadcast(16), 8000, true); err == nil {
		f.Add(enc.JSON)
		f.Add(string(AppendSeq(nil, enc.JSON, 12)))
	}
	if js, err := EncodeJSON(&Message{Type: Broadcast, UID: "u", Data: &BroadcastData{Packet: Packet{Type: 2, Data: []any{"e"}}}}); err == nil {
		f.Add(string(AppendSeq(nil, js, 3)))
		f.Add(`{"seq":1.5,` + js[1:])
	}
	f.Fuzz(func(t *testing.T, payload string) { sameAsFullDecode(t, payload) })
}

// The fast path must answer for the broadcasts the codec and Node write; what it
// answers is checked against the generic decoder by sameAsFullDecode.
func TestBroadcastFastPathTaken(t *testing.T) {
	var payloads []string
	for _, v := range loadVectors(t) {
		if n, err := DecodeNotification(v.Notify); err == nil && !n.HasAttachment && n.Type == Broadcast {
			payloads = append(payloads, v.Notify)
		}
	}
	if len(payloads) == 0 {
		t.Fatal("no BROADCAST vector")
	}
	yes, ms := true, 1500*time.Millisecond
	for _, d := range []*BroadcastData{
		{Packet: Packet{Type: 2, Data: []any{"ev", 1.0}}},
		{Packet: Packet{Type: 2, Data: []any{"ev"}, Nsp: "/x"}, RequestID: "r1",
			Opts: Opts{Rooms: []string{"a", `b"\`}, Except: []string{"c"}, Flags: Flags{Volatile: &yes, Compress: &yes, Local: &yes, Broadcast: &yes, Binary: &yes, ExpectSingleResponse: &yes, Timeout: &ms}}},
	} {
		js, err := EncodeJSON(&Message{Type: Broadcast, UID: "u", Nsp: "/ns", Data: d})
		if err != nil {
			t.Fatal(err)
		}
		payloads = append(payloads, js)
	}
	// The emitter's nonce, added to payloads sent in a transaction, is skipped: declined,
	// the message was read through the generic tree, which rounds integers beyond 2^53.
	js, err := EncodeJSON(&Message{Type: Broadcast, UID: EmitterUID, Nsp: "/", Data: &BroadcastData{Packet: Packet{Type: 2, Data: []any{"ev", int64(9007199254740993)}}}})
	if err != nil {
		t.Fatal(err)
	}
	withNonce := js[:len(js)-1] + `,"nonce":"0123456789abcdef"}`
	payloads = append(payloads, withNonce)
	if n, ok := decodeBroadcastFast(withNonce); !ok || !strings.Contains(n.Message.Data.(*BroadcastData).Packet.Raw, "9007199254740993") {
		t.Errorf("nonce: fast path declined, or integer changed")
	}
	enc, err := EncodeInline(&Message{Type: ServerSideEmit, UID: EmitterUID, Nsp: "/", Data: &ServerSideEmitData{Packet: []any{"e", []byte{1}}}}, 8000, true)
	if err != nil || enc.Attachment != nil {
		t.Fatalf("inline: %v", err)
	}
	if _, _, _, _, ok := inlineFast(enc.JSON[:len(enc.JSON)-1] + `,"nonce":"0123456789abcdef"}`); !ok {
		t.Errorf("inline fast path declined a nonce")
	}
	for _, s := range payloads {
		if _, ok := decodeBroadcastFast(s); !ok {
			t.Errorf("fast path declined %s", s)
		}
		sameAsFullDecode(t, s)
	}
	// and declines what it does not know, leaving it to the generic decoder
	for _, s := range []string{
		`{"type":3,"uid":"u","data":{"packet":{"type":2,"data":["e"]}},"caps":[]}`,
		`{"type":3,"type":3,"uid":"u","data":{"packet":{"type":2,"data":["e"]}}}`,
		`{"type":3,"uid":"u","data":{"packet":{"type":2,"data":["e"]},"opts":null}}`,
		`{"type":3,"uid":"u","data":{"packet":{"type":2,"data":["e"]},"opts":{"flags":{"other":1}}}}`,
		`{"type":9,"uid":"u","data":{"packet":{"type":2,"data":["e"]}}}`,
		`{"type":3,"uid":"u","data":{"packet":{"type":2.5,"data":["e"]}}}`,
		`{"type":3,"uid":"u","data":{"packet":{"type":2,"data":[1]}}}`,
	} {
		if _, ok := decodeBroadcastFast(s); ok {
			t.Errorf("fast path took %s", s)
		}
		sameAsFullDecode(t, s)
	}
}

// The direct BROADCAST writer gives the bytes of the generic one.
func TestAppendBroadcastJSONMatchesTree(t *testing.T) {
	yes, no, ms := true, false, 2500*time.Millisecond
	raw := `["ev",{"a":1},"x\"y"]`
	var cases []*Message
	for _, nsp := range []string{"", "/", `/we"ird\é`} {
		for _, d := range []BroadcastData{
			{},
			{RequestID: "req-1", Opts: Opts{Rooms: []string{"a", "b"}, Except: []string{"c"}}},
			{Opts: Opts{Flags: Flags{Volatile: &yes, Local: &no}}},
			{Opts: Opts{Flags: Flags{Binary: &no, Broadcast: &yes, Compress: &yes, ExpectSingleResponse: &yes, Local: &yes, Timeout: &ms, Volatile: &no}}},
			{Opts: Opts{Flags: Flags{Timeout: &ms}}},
		} {
			d := d
			d.Packet = Packet{Type: 2, Raw: raw, Nsp: nsp}
			cases = append(cases, &Message{Type: Broadcast, UID: "uid-" + nsp, Nsp: nsp, Data: &d})
		}
	}
	for _, m := range cases {
		want, err := marshalJSON(m.tree())
		if err != nil {
			t.Fatal(err)
		}
		if got := string(appendBroadcastJSON(nil, m, m.Data.(*BroadcastData))); got != want {
			t.Errorf("wrote %s\nwant  %s", got, want)
		}
		enc, err := Encode(m, 0)
		if err != nil || enc.JSON != want {
			t.Errorf("Encode gives %q, %v; want %s", enc.JSON, err, want)
		}
	}
}
