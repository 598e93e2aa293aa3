package wire

import (
	"bytes"
	"encoding/base64"
	"reflect"
	"strings"
	"testing"
)

func binaryBroadcast(n int) *Message {
	return &Message{Type: Broadcast, UID: "0123456789abcdef", Nsp: "/chat", Data: &BroadcastData{
		Packet: Packet{Type: 5, Nsp: "/chat", Data: []any{"bin", bytes.Repeat([]byte{0xff}, n), map[string]any{"k": 1.0}}},
		Opts:   Opts{Rooms: []string{"r"}},
	}}
}

// TestInlineBinary checks that a message EncodeInline puts in the notification decodes
// to what the same message gives through the attachments table, and that what does not
// fit still becomes an attachment.
func TestInlineBinary(t *testing.T) {
	m := binaryBroadcast(1024)
	if enc, err := EncodeInline(m, 8000, false); err != nil || enc.Attachment == nil {
		t.Fatalf("without inlineBinary: %+v %v", enc, err)
	}
	enc, err := EncodeInline(m, 8000, true)
	if err != nil {
		t.Fatal(err)
	}
	if enc.Attachment != nil || !strings.HasPrefix(enc.JSON, InlineHeaderPrefix(m.UID, Broadcast)) || !strings.HasPrefix(enc.JSON, OwnPrefix(m.UID)) {
		t.Fatalf("not inline: %.80q", enc.JSON)
	}
	body, err := EncodeMsgpack(m)
	if err != nil {
		t.Fatal(err)
	}
	want, err := DecodeAttachment(body)
	if err != nil {
		t.Fatal(err)
	}
	for name, decode := range map[string]func(string) (*Notification, error){"DecodeNotification": DecodeNotification, "DecodeNotificationRaw": DecodeNotificationRaw} {
		n, err := decode(enc.JSON)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if n.HasAttachment || n.UID != m.UID || n.Type != Broadcast || !reflect.DeepEqual(n.Message, want) {
			t.Fatalf("%s: %+v, want %+v", name, n.Message, want)
		}
	}
	// A header in another key order or with spaces takes the general parser, same result.
	b64 := enc.JSON[len(InlineHeaderPrefix(m.UID, Broadcast)) : len(enc.JSON)-2]
	n, err := DecodeNotification(`{ "msgpack" : "` + b64 + `", "type": 3, "uid": "0123456789abcdef" }`)
	if err != nil || !reflect.DeepEqual(n.Message, want) {
		t.Fatalf("reordered header: %v %v", n, err)
	}

	// The whole payload must stay below the threshold.
	limit := len(enc.JSON) + 1
	if e, _ := EncodeInline(m, limit, true); e.Attachment != nil || len(e.JSON) != limit-1 {
		t.Fatalf("at threshold %d: %d bytes inline, attachment %v", limit, len(e.JSON), e.Attachment != nil)
	}
	if e, _ := EncodeInline(m, limit-1, true); e.Attachment == nil {
		t.Fatalf("a %d-byte payload went inline under threshold %d", len(enc.JSON), limit-1)
	}
	if e, _ := EncodeInline(binaryBroadcast(7000), 100000, true); e.Attachment == nil {
		t.Fatal("7000 bytes of binary inline: base64 exceeds PostgreSQL's limit")
	}
	// Text that fits goes as JSON, as before.
	text := binaryBroadcast(0)
	text.Data.(*BroadcastData).Packet.Data = []any{"e", "x"}
	if e, _ := EncodeInline(text, 8000, true); e.Attachment != nil || strings.Contains(e.JSON, "msgpack") {
		t.Fatalf("small JSON: %q", e.JSON)
	}
}

// TestInlineChunks checks Inline's base64, written a chunk at a time, against the
// encoding of the whole body, for bodies on and around the chunks' edges.
func TestInlineChunks(t *testing.T) {
	m := binaryBroadcast(0)
	for _, n := range []int{0, 1, 2, 3, inlineChunk - 1, inlineChunk, inlineChunk + 1, 2*inlineChunk - 2, 2 * inlineChunk, 3*inlineChunk + 2, 5000} {
		body := make([]byte, n)
		for i := range body {
			body[i] = byte(i*7 + n)
		}
		got := Inline(Encoded{Attachment: body}, m, 100000)
		want := InlineHeaderPrefix(m.UID, m.Type) + base64.StdEncoding.EncodeToString(body) + AttachmentHeaderSuffix
		if got.Attachment != nil || got.JSON != want {
			t.Fatalf("%d bytes: %.60q..., want %.60q...", n, got.JSON, want)
		}
	}
}

func TestInlineBinaryErrors(t *testing.T) {
	body, err := EncodeMsgpack(binaryBroadcast(10))
	if err != nil {
		t.Fatal(err)
	}
	good := base64.StdEncoding.EncodeToString(body)
	for name, payload := range map[string]string{
		"not base64":     `{"uid":"0123456789abcdef","type":3,"msgpack":"!!!!"}`,
		"not msgpack":    `{"uid":"0123456789abcdef","type":3,"msgpack":"` + base64.StdEncoding.EncodeToString([]byte{0xc1}) + `"}`,
		"not a string":   `{"uid":"0123456789abcdef","type":3,"msgpack":12}`,
		"other uid":      `{"uid":"fedcba9876543210","type":3,"msgpack":"` + good + `"}`,
		"other type":     `{"uid":"0123456789abcdef","type":4,"msgpack":"` + good + `"}`,
		"no type":        `{"uid":"0123456789abcdef","msgpack":"` + good + `"}`,
		"control char":   "{\"uid\":\"0123456789abcdef\",\"type\":3,\"msgpack\":\"AA\x01A\"}",
		"beyond ASCII":   `{"uid":"0123456789abcdef","type":3,"msgpack":"AAé="}`,
		"empty":          `{"uid":"0123456789abcdef","type":3,"msgpack":""}`,
		"trailing bytes": `{"uid":"0123456789abcdef","type":3,"msgpack":"` + good + `"}x`,
	} {
		if n, err := DecodeNotification(payload); err == nil {
			t.Errorf("%s: decoded %+v", name, n)
		} else if !strings.HasPrefix(err.Error(), "wire: ") {
			t.Errorf("%s: error %q", name, err)
		}
	}
}

// A broadcast that merely looks inline (an argument with a "msgpack" key) still takes
// the broadcast fast path, its arguments kept as text.
func TestInlineLookalikeBroadcastStaysRaw(t *testing.T) {
	js, err := EncodeJSON(&Message{Type: Broadcast, UID: "u", Nsp: "/", Data: &BroadcastData{
		Packet: Packet{Type: 2, Data: []any{"e", map[string]any{"msgpack": "x"}}}}})
	if err != nil {
		t.Fatal(err)
	}
	if !looksInline(js) {
		t.Fatalf("%s does not look inline: the test needs another payload", js)
	}
	if !sameAsFullDecode(t, js) {
		t.Fatalf("%s: arguments not kept raw", js)
	}
}
