package wire

import (
	"encoding/hex"
	"testing"
)

// The decoders face anything any database role can NOTIFY, or any row in the table:
// they must return an error, never panic, and what they accept must encode again.

func FuzzDecodeNotification(f *testing.F) {
	for _, v := range loadVectors(f) {
		f.Add(v.Notify)
	}
	for _, s := range []string{``, `{}`, `null`, `{"type":3}`, `{"uid":"x","type":3,"attachmentId":1e300}`,
		`{"uid":"x","type":3,"attachmentId":"5","createdAt":"2026-12-06T05:40:01.000120Z"}`,
		`{"uid":"x","seq":9,"type":3,"attachmentId":"5","createdAt":"2026-12-06T05:40:01.000120Z"}`,
		`{"seq":4,"type":9,"uid":"u","data":{"requestId":"r"}}`,
		`{"type":8,"uid":"u","data":{"requestId":"r","sockets":[{"id":"i","handshake":[],"rooms":[1]}]}}`} {
		f.Add(s)
	}
	for _, n := range []int{0, 3, 1024} {
		if enc, err := EncodeInline(binaryBroadcast(n), 8000, true); err == nil {
			f.Add(enc.JSON)
		}
	}
	f.Fuzz(func(t *testing.T, payload string) {
		n, err := DecodeNotification(payload)
		if err != nil || n.HasAttachment {
			return
		}
		// What was accepted encodes again, inline or not, and that decodes.
		for _, inline := range []bool{false, true} {
			enc, err := EncodeInline(n.Message, 8000, inline)
			if err != nil {
				t.Fatalf("accepted %q but cannot encode it again: %v", payload, err)
			}
			if enc.Attachment != nil {
				if _, err := DecodeAttachment(enc.Attachment); err != nil {
					t.Fatalf("accepted %q, re-encoded as an attachment, which does not decode: %v", payload, err)
				}
				continue
			}
			if _, err := DecodeNotification(enc.JSON); err != nil {
				t.Fatalf("accepted %q, re-encoded as %q, which does not decode: %v", payload, enc.JSON, err)
			}
		}
	})
}

func FuzzDecodeAttachment(f *testing.F) {
	for _, v := range loadVectors(f) {
		if v.AttachmentHex != "" {
			b, _ := hex.DecodeString(v.AttachmentHex)
			f.Add(b)
		}
	}
	f.Add([]byte{0x80})
	f.Add([]byte{0xdf, 0xff, 0xff, 0xff, 0xff}) // a map claiming 4 billion entries
	f.Add([]byte{0xc6, 0x7f, 0xff, 0xff, 0xff}) // a 2 GB bin
	f.Fuzz(func(t *testing.T, body []byte) {
		m, err := DecodeAttachment(body)
		if err != nil {
			return
		}
		again, err := EncodeMsgpack(m)
		if err != nil {
			t.Fatalf("accepted %x but cannot encode it again: %v", body, err)
		}
		if _, err := DecodeAttachment(again); err != nil {
			t.Fatalf("accepted %x, re-encoded as %x, which does not decode: %v", body, again, err)
		}
	})
}
