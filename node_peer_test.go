package pgadapter

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/socketio-pg/pgadapter/internal/pgtest"
	"github.com/socketio-pg/pgadapter/internal/testenv"
)

// The mixed-cluster tests run Node.js servers with @socket.io/postgres-adapter next to Go
// servers. testdata/node holds the Node server and its lockfile; it is installed with
// npm ci once per test binary (and not again while package-lock.json is unchanged).

// requireNodeEnv turns the skip of the mixed-cluster tests on a machine without Node.js
// into a failure; .ci/run sets it, so that CI cannot pass without running them.
const requireNodeEnv = "PGADAPTER_REQUIRE_NODE"

const nodeDir = "testdata/node"

// requireNode skips the test when Node.js is not installed (fails when requireNodeEnv is
// set), and installs the Node server's packages.
func requireNode(t testing.TB) {
	t.Helper()
	testenv.Require(t, requireNodeEnv, testenv.Tools("node", "npm"))
	if err := testenv.NpmCI(nodeDir); err != nil {
		t.Fatalf("installing the Node server's packages: %v", err)
	}
}

// mixedDatabase creates a database of its own for a mixed-cluster test: Node servers use
// the default channel prefix and table, so tests are kept apart by database (NOTIFY
// channels are per database). It returns its URL, with the attachments table created.
func mixedDatabase(t testing.TB) string {
	t.Helper()
	return mixedDatabaseWith(t, "")
}

// mixedDatabaseWith is mixedDatabase, created with the CREATE DATABASE options given
// (ENCODING ...).
func mixedDatabaseWith(t testing.TB, options string) string {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil || u.Scheme == "" {
		t.Fatalf("mixed-cluster tests need DATABASE_URL as a postgres:// URL, got %q", dbURL)
	}
	name := pgtest.Name("mixed")
	admin := newPool(t)
	defer admin.Close()
	ctx := context.Background()
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+" "+options); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		admin := newPool(t)
		defer admin.Close()
		admin.Exec(context.Background(), "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	})
	u.Path = "/" + name
	pool := newPoolURL(t, u.String())
	defer pool.Close()
	if err := ensureTable(ctx, pool, newStatements(defaultTableName), false); err != nil {
		t.Fatal(err)
	}
	return u.String()
}

// nodeProc is a Node.js Socket.IO server process, driven through its stdin and stdout.
type nodeProc struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	port  int
	exit  chan struct{}

	mu      sync.Mutex
	nextID  int
	pending map[int]chan nodeResult
	sent    map[string]*recorder
	sse     *recorder // server-side events received
	errs    *recorder // errors the adapter reported
}

type nodeResult struct {
	Result json.RawMessage `json:"result"`
	Error  string          `json:"error"`
}

// startNodeProc starts a Node.js server on the database at dbURL; env adds variables.
func startNodeProc(t testing.TB, name, dbURL string, env ...string) *nodeProc {
	t.Helper()
	requireNode(t)
	p := &nodeProc{name: name, pending: map[int]chan nodeResult{}, sent: map[string]*recorder{},
		sse: newRecorder(), errs: newRecorder(), exit: make(chan struct{})}
	p.cmd = exec.Command("node", "server.js")
	p.cmd.Dir = nodeDir
	p.cmd.Env = append(append(os.Environ(), "DATABASE_URL="+dbURL, "NAME="+name), env...)
	p.cmd.Stderr = os.Stderr
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan int, 1)
	go p.read(stdout, ready)
	t.Cleanup(func() { p.stop(t) })
	select {
	case p.port = <-ready:
	case <-p.exit:
		t.Fatalf("node server %s exited at start", name)
	case <-time.After(waitFor):
		t.Fatalf("node server %s not ready after %v", name, waitFor)
	}
	return p
}

func (p *nodeProc) read(r io.Reader, ready chan<- int) {
	defer close(p.exit)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var msg struct {
			Type    string          `json:"type"`
			Port    int             `json:"port"`
			ID      int             `json:"id"`
			Client  string          `json:"client"`
			Event   string          `json:"event"`
			Args    json.RawMessage `json:"args"`
			Message string          `json:"message"`
			nodeResult
		}
		if err := json.Unmarshal(sc.Bytes(), &msg); err != nil {
			fmt.Fprintf(os.Stderr, "node %s: %s\n", p.name, sc.Text())
			continue
		}
		if os.Getenv("PGADAPTER_NODE_TRACE") != "" {
			fmt.Fprintf(os.Stderr, "node %s> %.200s\n", p.name, sc.Text())
		}
		switch msg.Type {
		case "ready":
			ready <- msg.Port
		case "result":
			p.mu.Lock()
			ch := p.pending[msg.ID]
			delete(p.pending, msg.ID)
			p.mu.Unlock()
			if ch != nil {
				ch <- msg.nodeResult
			}
		case "sent":
			p.sentTo(msg.Client).add(msg.Event, fromNode(msg.Args).([]any)...)
		case "sse":
			p.sse.add(msg.Event, fromNode(msg.Args).([]any)...)
		case "error":
			p.errs.add("error", msg.Message)
		}
	}
}

// fromNode decodes what the Node server sends: JSON with {"$bin": base64} for binary.
func fromNode(raw json.RawMessage) any {
	var v any
	if len(raw) == 0 || json.Unmarshal(raw, &v) != nil {
		return []any{}
	}
	return unbin(v)
}

func unbin(v any) any {
	switch x := v.(type) {
	case []any:
		for i := range x {
			x[i] = unbin(x[i])
		}
	case map[string]any:
		if s, ok := x["$bin"].(string); ok && len(x) == 1 {
			b, _ := base64.StdEncoding.DecodeString(s)
			return b
		}
		for k := range x {
			x[k] = unbin(x[k])
		}
	}
	return v
}

// toNode encodes arguments for the Node server.
func toNode(v any) any {
	switch x := v.(type) {
	case []byte:
		return map[string]any{"$bin": base64.StdEncoding.EncodeToString(x)}
	case []any:
		out := make([]any, len(x))
		for i := range x {
			out[i] = toNode(x[i])
		}
		return out
	case map[string]any:
		out := map[string]any{}
		for k, e := range x {
			out[k] = toNode(e)
		}
		return out
	}
	return v
}

// call runs a command on the Node server and returns its result.
func (p *nodeProc) call(t testing.TB, cmd map[string]any) any {
	t.Helper()
	p.mu.Lock()
	p.nextID++
	id := p.nextID
	ch := make(chan nodeResult, 1)
	p.pending[id] = ch
	p.mu.Unlock()
	cmd["id"] = id
	if args, ok := cmd["args"].([]any); ok {
		cmd["args"] = toNode(args)
	}
	line, err := json.Marshal(cmd)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.stdin.Write(append(line, '\n')); err != nil {
		t.Fatalf("node %s: %v", p.name, err)
	}
	select {
	case r := <-ch:
		if r.Error != "" {
			t.Fatalf("node %s: %s failed: %s", p.name, cmd["op"], r.Error)
		}
		return fromNode(r.Result)
	case <-p.exit:
		t.Fatalf("node %s exited during %s", p.name, cmd["op"])
	case <-time.After(waitFor):
		t.Fatalf("node %s: no answer to %s", p.name, cmd["op"])
	}
	return nil
}

// stop closes the Node server (io.close, which sends ADAPTER_CLOSE) and waits for it.
func (p *nodeProc) stop(t testing.TB) {
	select {
	case <-p.exit:
		return
	default:
	}
	p.call(t, map[string]any{"op": "close"})
	select {
	case <-p.exit:
	case <-time.After(waitFor):
		p.cmd.Process.Kill()
	}
	p.cmd.Wait()
}

func (p *nodeProc) serverCount(t testing.TB) int {
	return int(p.call(t, map[string]any{"op": "serverCount"}).(float64))
}

func (p *nodeProc) label() string   { return "node " + p.name }
func (p *nodeProc) baseURL() string { return fmt.Sprintf("http://127.0.0.1:%d", p.port) }
func (p *nodeProc) sentTo(name string) *recorder {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.sent[name]
	if r == nil {
		r = newRecorder()
		p.sent[name] = r
	}
	return r
}
func (p *nodeProc) forget(name string) {
	p.mu.Lock()
	delete(p.sent, name)
	p.mu.Unlock()
}
func (p *nodeProc) socketIDs(t testing.TB, nsp, name string) []string {
	var ids []string
	for _, id := range p.call(t, map[string]any{"op": "sockets", "nsp": nsp, "name": name}).([]any) {
		ids = append(ids, id.(string))
	}
	return ids
}

// awaitEngine and awaitAnnounced report at once: Node's socket.io listens to a
// connection as soon as it exists and records a socket before it answers CONNECT.
func (p *nodeProc) awaitEngine(string, time.Duration) bool    { return true }
func (p *nodeProc) awaitAnnounced(string, time.Duration) bool { return true }

func (p *nodeProc) connect(t testing.TB, name string, rooms ...string) *tclient {
	t.Helper()
	return connectTo(t, p, "/", name, rooms...)
}
