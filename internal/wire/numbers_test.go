package wire

import (
	"math"
	"reflect"
	"strings"
	"testing"
)

// Integers beyond ±2^53 read the same whichever way their message travelled: inline as
// JSON, or as a MessagePack attachment (a large message, or one with binary). The
// attachment's reader turned them into float64, so that remote clients got
// 1152921504606847000 for 1152921504606846977, and 2^64 for math.MaxUint64, while the
// sender's own clients, and everyone for a small message, got them exact.
func TestBigIntegersTravelExactly(t *testing.T) {
	// int64(1<<53+1): its JSON text reads as the float 2^53. float64(1<<60): a float
	// beyond 2^53 is the integer its shortest text names, 1152921504606847000, from JSON
	// and from a MessagePack float (Node's) alike.
	// -0: as the integer 0 through the table, it lost its sign.
	args := []any{"ev", int64(1<<60 + 1), uint64(math.MaxUint64), int64(-(1<<60 + 1)), int64(math.MinInt64), int64(1 << 53), 1e18, 0.5,
		int64(1<<53 + 1), float64(1 << 60), math.Copysign(0, -1)}
	want := []any{"ev", int64(1<<60 + 1), uint64(math.MaxUint64), int64(-(1<<60 + 1)), int64(math.MinInt64), float64(1 << 53), int64(1e18), 0.5,
		int64(1<<53 + 1), int64(1152921504606847000), math.Copysign(0, -1)}
	for _, c := range []struct {
		name  string
		extra []any // what makes it an attachment, or not
	}{
		{"inline", nil},
		{"large", []any{strings.Repeat("z", 9000)}},
		{"binary", []any{[]byte{1, 2, 3}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			data := append(append([]any{}, args...), c.extra...)
			m := &Message{Type: ServerSideEmit, UID: "u", Nsp: "/", Data: &ServerSideEmitData{Packet: data}}
			enc, err := Encode(m, 0)
			if err != nil {
				t.Fatal(err)
			}
			if (enc.Attachment != nil) != (c.extra != nil) {
				t.Fatalf("attachment %v", enc.Attachment != nil)
			}
			var got *Message
			if enc.Attachment != nil {
				got, err = DecodeAttachment(enc.Attachment)
			} else {
				var n *Notification
				if n, err = DecodeNotification(enc.JSON); err == nil {
					got = n.Message
				}
			}
			if err != nil {
				t.Fatal(err)
			}
			packet := got.Data.(*ServerSideEmitData).Packet
			if !reflect.DeepEqual(packet[:len(want)], want) {
				t.Fatalf("got %#v, want %#v", packet[:len(want)], want)
			}
			js, err := marshalJSON(packet[:len(want)])
			if err != nil {
				t.Fatal(err)
			}
			if text := `["ev",1152921504606846977,18446744073709551615,-1152921504606846977,-9223372036854775808,9007199254740992,1000000000000000000,0.5,9007199254740993,1152921504606847000,-0]`; js != text {
				t.Fatalf("written again for clients as %s, want %s", js, text)
			}
		})
	}
}

// Arguments nested as deep as a message may be arrive, whichever way they travel: the
// attachment's reader stopped at 512 levels, the encoder at 10000, and a message of 508
// levels or more with binary was published, then refused by every receiver as
// malformed, while the same without binary arrived.
func TestDeepArgumentsTravel(t *testing.T) {
	for _, depth := range []int{600, maxJSONDepth - 10, maxJSONDepth - 3, maxJSONDepth - 1, maxJSONDepth} {
		var deep any = "leaf"
		for range depth {
			deep = []any{deep}
		}
		for _, extra := range []any{"small", []byte{1}} {
			m := &Message{Type: ServerSideEmit, UID: "u", Nsp: "/", Data: &ServerSideEmitData{Packet: []any{"ev", deep, extra}}}
			enc, err := Encode(m, 0)
			if err != nil {
				t.Fatalf("depth %d: %v", depth, err)
			}
			if enc.Attachment != nil {
				_, err = DecodeAttachment(enc.Attachment)
			} else {
				_, err = DecodeNotification(enc.JSON)
			}
			if err != nil {
				t.Fatalf("depth %d, attachment %v: %v", depth, enc.Attachment != nil, err)
			}
		}
	}
}

// A struct's unsigned integer above math.MaxInt64 is normalized exact, as socket.io's
// own encoder writes it: it became a float64, and reached even the sender's own clients
// rounded, as 18446744073709552000.
func TestNormalizeKeepsUint64(t *testing.T) {
	v, _, err := Normalize(struct{ V uint64 }{math.MaxUint64})
	if err != nil {
		t.Fatal(err)
	}
	js, err := marshalJSON(v)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"V":18446744073709551615}`; js != want {
		t.Fatalf("written as %s, want %s", js, want)
	}
}
