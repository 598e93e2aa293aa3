package main

import (
	"fmt"
	"strings"
	"testing"
)

// TestFields reads the sequence number and send time of broadcasts in both key orders
// the servers write (Node's insertion order, and sorted keys), at every padding length
// around the distance number looks at first, where a field may straddle it.
func TestFields(t *testing.T) {
	for n := range 3*fieldsWithin + 8 {
		pad := strings.Repeat("x", n)
		for _, msg := range []string{
			fmt.Sprintf(`42["b",{"s":%d,"t":%d,"p":"%s"}]`, n, 1796277984988195+n, pad),
			fmt.Sprintf(`42["b",{"p":"%s","s":%d,"t":%d}]`, pad, n, 1796277984988195+n),
			fmt.Sprintf(`42["b",{"p":"%s","s":%d,"t":%d,"q":"%s"}]`, pad, n, 1796277984988195+n, pad),
		} {
			seq, sent := fields([]byte(msg))
			if seq != int64(n) || sent != 1796277984988195+int64(n) {
				t.Fatalf("%s: got s=%d t=%d", msg, seq, sent)
			}
		}
	}
	if seq, sent := fields([]byte(`42["b",{"p":"x"}]`)); seq != -1 || sent != -1 {
		t.Fatalf("no fields: got s=%d t=%d", seq, sent)
	}
}

// BenchmarkFields reads the fields of a 20 KB broadcast in both key orders: the load
// generator does it for every receipt.
func BenchmarkFields(b *testing.B) {
	pad := strings.Repeat("x", 20000)
	for _, c := range []struct{ name, msg string }{
		{"written-order", `42["b",{"s":123456,"t":1796277984988195,"p":"` + pad + `"}]`},
		{"sorted-keys", `42["b",{"p":"` + pad + `","s":123456,"t":1796277984988195}]`},
	} {
		b.Run(c.name, func(b *testing.B) {
			msg := []byte(c.msg)
			for range b.N {
				fields(msg)
			}
		})
	}
}
