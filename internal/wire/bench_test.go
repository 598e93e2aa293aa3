package wire

import (
	"strings"
	"testing"
)

func benchMessage(payload any) *Message {
	return &Message{Type: Broadcast, UID: "0123456789abcdef", Nsp: "/", Data: &BroadcastData{
		Packet: Packet{Type: EventPacketType, Data: []any{"bench", payload}},
		Opts:   Opts{Rooms: []string{"room1"}},
	}}
}

var sinkEnc Encoded

func BenchmarkEncode(b *testing.B) {
	for _, c := range []struct {
		name    string
		payload any
	}{
		{"json-100B", strings.Repeat("x", 100)},
		{"json-20KB", strings.Repeat("x", 20000)},
		{"binary-1KB", make([]byte, 1024)},
		{"binary-1KB-inline", make([]byte, 1024)},
	} {
		b.Run(c.name, func(b *testing.B) {
			m := benchMessage(c.payload)
			inline := strings.HasSuffix(c.name, "-inline")
			b.ReportAllocs()
			for b.Loop() {
				var err error
				if sinkEnc, err = EncodeInline(m, 8000, inline); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	// As a server publishes a broadcast: the arguments' text written once (it also goes
	// to the server's own clients), then the envelope around it.
	for _, size := range []int{100, 20000} {
		name := "json-100B-raw"
		if size == 20000 {
			name = "json-20KB-raw"
		}
		b.Run(name, func(b *testing.B) {
			m := benchMessage(strings.Repeat("x", size))
			d := m.Data.(*BroadcastData)
			b.ReportAllocs()
			for b.Loop() {
				text, err := AppendJSON(nil, d.Packet.Data)
				if err != nil {
					b.Fatal(err)
				}
				d.Packet.Raw = string(text)
				if sinkEnc, err = Encode(m, 8000); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkAppendSeq numbers a 100-byte broadcast as the publisher does (into a buffer
// it reuses).
func BenchmarkAppendSeq(b *testing.B) {
	js, _ := EncodeJSON(benchMessage(strings.Repeat("x", 100)))
	b.ReportAllocs()
	var buf []byte
	seq := uint64(0)
	for b.Loop() {
		seq++
		buf = AppendSeq(buf[:0], js, seq)
	}
}

func BenchmarkDecode(b *testing.B) {
	js, _ := EncodeJSON(benchMessage(strings.Repeat("x", 100)))
	b.Run("json-100B", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := DecodeNotification(js); err != nil {
				b.Fatal(err)
			}
		}
	})
	// As a server receives a broadcast: the fast path, arguments kept as text.
	b.Run("json-100B-raw", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := DecodeNotificationRaw(js); err != nil {
				b.Fatal(err)
			}
		}
	})
	// Numbered, as a pgadapter server publishes it: the same, and the number read.
	numbered := string(AppendSeq(nil, js, 123456))
	b.Run("json-100B-raw-numbered", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if n, err := DecodeNotificationRaw(numbered); err != nil || n.Seq == 0 {
				b.Fatal(err)
			}
		}
	})
	for _, c := range []struct {
		name    string
		payload any
	}{{"attachment-20KB", strings.Repeat("x", 20000)}, {"attachment-binary-1KB", make([]byte, 1024)}} {
		body, _ := EncodeMsgpack(benchMessage(c.payload))
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				if _, err := DecodeAttachment(body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	// A binary message as InlineBinary sends it: base64 to undo, then the same reader.
	inline, _ := EncodeInline(benchMessage(make([]byte, 1024)), 8000, true)
	b.Run("inline-binary-1KB", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(inline.JSON)))
		for b.Loop() {
			if _, err := DecodeNotificationRaw(inline.JSON); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkAppendString writes a 20 KB string of printable ASCII, as the cluster
// benchmark's large broadcasts carry.
func BenchmarkAppendString(b *testing.B) {
	s := strings.Repeat("abcdefghij", 2000)
	buf := make([]byte, 0, len(s)+2)
	b.SetBytes(int64(len(s)))
	for b.Loop() {
		buf = appendString(buf[:0], s)
	}
}
