package pgadapter

import (
	"bytes"
	"testing"
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
