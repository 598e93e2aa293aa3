//go:build !race

// See acks_test.go for why broadcasts with acknowledgements are tested without -race.

package pgadapter

import (
	"slices"
	"testing"
	"time"
)

func TestMixedBroadcastWithAcks(t *testing.T) {
	m := newMixed(t)
	const timeout = 8 * time.Second
	// From Go: Node's clients answer, and Node reports its client count, 0 included.
	for _, tc := range []struct {
		rooms []string
		want  []string
	}{
		{nil, m.all()},
		{[]string{"only-n"}, []string{"n1"}},
		{[]string{"only-g"}, []string{"g1"}},
	} {
		op := m.g.io.Timeout(timeout)
		for _, r := range tc.rooms {
			op = op.To(roomOf(r))
		}
		got, err := emitWithAck(t, op, "ask")
		if err != nil || !slices.Equal(sortedStrings(t, got), tc.want) {
			t.Fatalf("from Go to %v: %v %v", tc.rooms, got, err)
		}
	}
	// From Node: Go's clients answer, and Go reports its client count, 0 included.
	for _, tc := range []struct {
		rooms []string
		want  []string
	}{
		{nil, m.all()},
		{[]string{"only-g"}, []string{"g1"}},
		{[]string{"only-n"}, []string{"n1"}},
	} {
		res := m.n.call(t, map[string]any{"op": "emitWithAck", "event": "ask", "rooms": tc.rooms, "timeout": timeout.Milliseconds()}).(map[string]any)
		if res["error"] != nil {
			t.Fatalf("from Node to %v: %v", tc.rooms, res["error"])
		}
		if got := sortedStrings(t, res["responses"].([]any)); !slices.Equal(got, tc.want) {
			t.Fatalf("from Node to %v: %v", tc.rooms, got)
		}
	}
}
