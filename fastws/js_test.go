package fastws

import (
	"encoding/json"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/zishang520/socket.io/v2/socket"

	"github.com/socketio-pg/pgadapter/internal/testenv"
)

// The JavaScript client (Node's ws under socket.io's client) gets a server's last
// events, compressed ones included, then the DISCONNECT: "io server disconnect", once.
// When the server closed its half of the connection right after its Close frame, ws
// reported the end of the stream before the compressed messages it was still inflating,
// and the client lost them and the DISCONNECT ("transport close"), in every run.
func TestJavaScriptClientGetsTheLastPackets(t *testing.T) {
	testenv.Require(t, "PGADAPTER_REQUIRE_NODE", testenv.Tools("node", "npm"))
	const modules = "../testdata/node"
	if err := testenv.NpmCI(modules); err != nil {
		t.Fatalf("installing the Node packages: %v", err)
	}
	io, url := serverWith(t, variant{deflate: true})
	const clients, events = 10, 20
	io.On("connection", func(args ...any) {
		s := args[0].(*socket.Socket)
		s.On("go", func(...any) {
			for k := range events {
				s.Compress(k%2 == 1).Emit("e", k, strings.Repeat("z", 2000))
			}
			idle(s.Conn().Transport().(*webSocket)) // see idle; the client's check fails otherwise
			s.Disconnect(true)
		})
		// The client asks only now: see testdata/disconnect.js.
		s.Emit("ready")
	})
	cmd := exec.Command("node", "testdata/disconnect.js", url, "10")
	cmd.Env = append(os.Environ(), "NODE_MODULES="+modules+"/node_modules")
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	var got []struct {
		Got     []int
		Reasons []string
	}
	if jerr := json.Unmarshal(out, &got); jerr != nil || len(got) != clients {
		t.Fatalf("node: %v, %v: %s", err, jerr, out)
	}
	want := make([]int, events)
	for k := range want {
		want[k] = k
	}
	for i, c := range got {
		if !slices.Equal(c.Got, want) || !slices.Equal(c.Reasons, []string{"io server disconnect"}) {
			t.Errorf("client %d got events %v, then %q; want all %d, then io server disconnect", i, c.Got, c.Reasons, events)
		}
	}
}
