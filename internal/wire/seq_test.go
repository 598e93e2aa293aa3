package wire

import (
	"math"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// A numbered payload keeps what it said, says its number through every decoding path,
// and stays recognisable as its sender's own.
func TestAppendSeq(t *testing.T) {
	for _, uid := range []string{"0123456789abcdef", `u"\,x`} {
		js, err := EncodeJSON(&Message{Type: Broadcast, UID: uid, Nsp: "/", Data: &BroadcastData{Packet: Packet{Type: 2, Data: []any{"ev", 1.0}}}})
		if err != nil {
			t.Fatal(err)
		}
		hb, err := EncodeJSON(&Message{Type: Heartbeat, UID: uid, Nsp: "/"})
		if err != nil {
			t.Fatal(err)
		}
		in, err := EncodeInline(&Message{Type: ServerSideEmit, UID: uid, Nsp: "/", Data: &ServerSideEmitData{Packet: []any{"e", []byte{1, 2}}}}, 8000, true)
		if err != nil || in.Attachment != nil {
			t.Fatalf("inline: %v", err)
		}
		created := time.Date(2026, 12, 7, 9, 0, 0, 1000, time.UTC)
		header := AttachmentHeader(uid, Broadcast, 42, created)
		for _, seq := range []uint64{1, 77, maxSeq} {
			stamp := func(s string) string {
				got := string(AppendSeq([]byte("x"), s, seq))[1:]
				var sb strings.Builder
				WriteSeq(&sb, s, seq)
				if sb.String() != got {
					t.Errorf("WriteSeq gives %s, AppendSeq %s", sb.String(), got)
				}
				return got
			}
			// The attachment header is numbered in its prefix, as the publisher does.
			numberedHeader := stamp(AttachmentHeaderPrefix(uid, Broadcast)) + "42" + createdAtKey + created.Format(createdAtLayout) + AttachmentHeaderSuffix
			for _, c := range []struct {
				name, plain, numbered string
				own                   func(string) bool
				fast                  func(string) bool
			}{
				{"broadcast", js, stamp(js), func(s string) bool { return strings.HasSuffix(s, OwnSuffix(uid)) },
					func(s string) bool { _, ok := decodeBroadcastFast(s); return ok }},
				{"heartbeat", hb, stamp(hb), func(s string) bool { return strings.HasSuffix(s, OwnSuffix(uid)) }, nil},
				{"inline", in.JSON, stamp(in.JSON), func(s string) bool { return strings.HasPrefix(s, OwnPrefix(uid)) },
					func(s string) bool {
						_, _, got, _, ok := inlineFast(s)
						return ok && looksInline(s) && got == seq
					}},
				{"header", header, numberedHeader, func(s string) bool { return strings.HasPrefix(s, OwnPrefix(uid)) }, nil},
			} {
				if !c.own(c.numbered) {
					t.Errorf("%s, uid %q: numbered %s is not recognisable as its own", c.name, uid, c.numbered)
				}
				if c.fast != nil && !c.fast(c.numbered) {
					t.Errorf("%s, uid %q: fast path declined %s", c.name, uid, c.numbered)
				}
				want, err := DecodeNotification(c.plain)
				if err != nil {
					t.Fatal(err)
				}
				if want.Seq != 0 {
					t.Errorf("%s: unnumbered payload decodes with number %d", c.name, want.Seq)
				}
				want.Seq = seq
				for _, decode := range []func(string) (*Notification, error){DecodeNotification, DecodeNotificationRaw} {
					got, err := decode(c.numbered)
					if err != nil {
						t.Fatalf("%s: %s: %v", c.name, c.numbered, err)
					}
					if got.Seq != seq {
						t.Errorf("%s: %s decodes with number %d", c.name, c.numbered, got.Seq)
					}
					if c.name != "broadcast" && !reflect.DeepEqual(got, want) {
						t.Errorf("%s: %s decodes as %+v, want %+v", c.name, c.numbered, got, want)
					}
				}
				sameAsFullDecode(t, c.numbered)
			}
		}
	}
}

// A number that is not one a sender writes is ignored, and the message read as if it
// had none.
func TestSeqIgnoredWhenInvalid(t *testing.T) {
	js, err := EncodeJSON(&Message{Type: Broadcast, UID: "u", Nsp: "/", Data: &BroadcastData{Packet: Packet{Type: 2, Data: []any{"ev"}}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"0", "-1", "1.5", "9007199254740994", "1e300", `"7"`, "null", "true"} {
		payload := `{"seq":` + v + `,` + js[1:]
		for _, decode := range []func(string) (*Notification, error){DecodeNotification, DecodeNotificationRaw} {
			n, err := decode(payload)
			if err != nil {
				t.Fatalf("%s: %v", payload, err)
			}
			if n.Seq != 0 || n.UID != "u" {
				t.Errorf("%s: number %d, uid %q", payload, n.Seq, n.UID)
			}
		}
		sameAsFullDecode(t, payload)
	}
}

// A payload encoded below SeqThreshold still fits in a notification once numbered with
// the largest number.
func TestSeqThresholdLeavesRoom(t *testing.T) {
	limit := SeqThreshold(0)
	if SeqThreshold(MaxNotifyPayload+1) != limit || SeqThreshold(100) != 100 || SeqThreshold(-1) != limit {
		t.Fatalf("SeqThreshold: %d, %d, %d", SeqThreshold(MaxNotifyPayload+1), SeqThreshold(100), SeqThreshold(-1))
	}
	pad := strings.Repeat("x", limit+200)
	for n := limit - 200; n < limit+200; n++ {
		m := &Message{Type: Broadcast, UID: "0123456789abcdef", Nsp: "/", Data: &BroadcastData{Packet: Packet{Type: 2, Data: []any{"ev", pad[:n]}}}}
		enc, err := Encode(m, limit)
		if err != nil {
			t.Fatal(err)
		}
		if enc.Attachment != nil {
			continue
		}
		if got := len(AppendSeq(nil, enc.JSON, math.MaxUint64)); got > MaxNotifyPayload {
			t.Fatalf("payload of %d bytes numbered is %d bytes, more than %d", len(enc.JSON), got, MaxNotifyPayload)
		}
	}
	if SeqRoom != len(`,"seq":`)+len(strconv.FormatUint(math.MaxUint64, 10)) {
		t.Errorf("SeqRoom %d", SeqRoom)
	}
}
