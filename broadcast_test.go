package pgadapter

import (
	"testing"
)

func TestSmokeBroadcast(t *testing.T) {
	nodes := cluster(t, 2, testOptions(t))
	a, b := nodes[0], nodes[1]
	ca := a.connect(t, "/", "ca")
	cb := b.connect(t, "/", "cb")
	a.io.Emit("hello", 1, "two")
	for _, c := range []*tclient{ca, cb} {
		args := c.expect(t, "hello")
		if len(args) != 2 || args[0] != 1.0 || args[1] != "two" {
			t.Fatalf("%s got %v", c.name, args)
		}
	}
}
