package wire

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// The escaped text is ASCII and reads back as the same values, characters beyond the
// Basic Multilingual Plane included (as surrogate pairs).
func FuzzEscapeNonASCII(f *testing.F) {
	for _, s := range []string{"", "plain", "日本語", "é", "😀 emoji", "\u2028", "a\"b\\c", "\xff\xfe"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		js, err := AppendJSON(nil, []any{"ev", s, map[string]any{s: s}})
		if err != nil {
			t.Skip()
		}
		esc := EscapeNonASCII(string(js))
		if !IsASCII(esc) {
			t.Fatalf("%q escaped to %q", js, esc)
		}
		var want, got any
		if err := json.Unmarshal(js, &want); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal([]byte(esc), &got); err != nil {
			t.Fatalf("%q escaped to %q: %v", js, esc, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q escaped reads %v, want %v", esc, got, want)
		}
	})
}

// A message whose escapes take it past the threshold becomes an attachment carrying the
// same message; one that fits stays inline, escaped; ASCII ones are left as they are.
func TestASCII(t *testing.T) {
	msg := func(s string) *Message {
		return &Message{Type: Broadcast, UID: "u", Nsp: "/", Data: &BroadcastData{
			Packet: Packet{Type: EventPacketType, Data: []any{"e", s}}}}
	}
	for _, tc := range []struct {
		arg        string
		attachment bool
	}{
		{"plain", false},
		{"日本語", false},
		{strings.Repeat("日", 2000), true}, // 6 KB of UTF-8, 12 KB escaped
		{strings.Repeat("😀", 100), false},
	} {
		m := msg(tc.arg)
		enc, err := Encode(m, 8000)
		if err != nil || enc.Attachment != nil {
			t.Fatalf("%.20q: %v, attachment %v", tc.arg, err, enc.Attachment != nil)
		}
		got, err := ASCII(enc, m, 8000)
		if err != nil {
			t.Fatal(err)
		}
		if (got.Attachment != nil) != tc.attachment {
			t.Fatalf("%.20q: attachment %v, want %v", tc.arg, got.Attachment != nil, tc.attachment)
		}
		var back *Message
		if got.Attachment != nil {
			back, err = DecodeAttachment(got.Attachment)
		} else {
			if !IsASCII(got.JSON) || len(got.JSON) >= 8000 {
				t.Fatalf("%.20q: inline %d bytes, ASCII %v", tc.arg, len(got.JSON), IsASCII(got.JSON))
			}
			var n *Notification
			if n, err = DecodeNotification(got.JSON); err == nil {
				back = n.Message
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		args, err := back.Data.(*BroadcastData).Packet.Args()
		if err != nil || len(args) != 2 || args[1] != tc.arg {
			t.Fatalf("%.20q: read back %.40v, %v", tc.arg, args, err)
		}
	}
}
