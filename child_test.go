package pgadapter

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zishang520/socket.io/v2/socket"
)

// A child server is this test binary started again with childEnv set: TestMain runs a
// Socket.IO server with the adapter instead of the tests, so that a test can kill a real
// server process with SIGKILL.
const childEnv = "PGADAPTER_TEST_CHILD"

// childConfig is what the parent passes to a child server.
type childConfig struct {
	DatabaseURL       string
	ChannelPrefix     string
	TableName         string
	HeartbeatInterval time.Duration
	HeartbeatTimeout  time.Duration
}

// runChild is the child's main: a server with the adapter, answering server-side events,
// until killed.
func runChild() {
	var cfg childConfig
	if err := json.Unmarshal([]byte(os.Getenv(childEnv)), &cfg); err != nil {
		fmt.Println("bad config:", err)
		os.Exit(2)
	}
	pool := newPoolURL(&testing.T{}, cfg.DatabaseURL)
	b := New(pool, &Options{ChannelPrefix: cfg.ChannelPrefix, TableName: cfg.TableName,
		HeartbeatInterval: cfg.HeartbeatInterval, HeartbeatTimeout: cfg.HeartbeatTimeout, Logger: testLogger()})
	io := socket.NewServer(nil, nil)
	io.SetAdapter(b)
	io.On("who", func(args ...any) {
		if ack, ok := args[len(args)-1].(socket.Ack); ok {
			ack([]any{"child"}, nil)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := b.Ready(ctx); err != nil {
		fmt.Println("not ready:", err)
		os.Exit(2)
	}
	fmt.Println("ready")
	select {}
}

// startChild starts a child server clustered with opts on the database at url.
func startChild(t *testing.T, url string, opts Options) *exec.Cmd {
	t.Helper()
	cfg, err := json.Marshal(childConfig{DatabaseURL: url, ChannelPrefix: opts.ChannelPrefix, TableName: opts.TableName,
		HeartbeatInterval: opts.HeartbeatInterval, HeartbeatTimeout: opts.HeartbeatTimeout})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(cfg))
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if line := sc.Text(); strings.HasPrefix(line, "ready") || strings.HasPrefix(line, "bad") || strings.HasPrefix(line, "not") {
				ready <- line
			}
		}
		close(ready)
	}()
	select {
	case line := <-ready:
		if line != "ready" {
			t.Fatalf("child server: %q", line)
		}
	case <-time.After(waitFor):
		t.Fatal("child server not ready")
	}
	return cmd
}
