package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/socketio-pg/pgadapter/internal/testenv"
)

// requireBrowserEnv turns the skip of the browser test on a machine without Chromium into
// a failure; .ci/run sets it.
const requireBrowserEnv = "PGADAPTER_REQUIRE_BROWSER"

func chromium() string {
	if p := os.Getenv("CHROMIUM"); p != "" {
		return p
	}
	return "/usr/bin/chromium"
}

// TestChatInBrowser runs the chat example's two servers and drives one page on each in
// headless Chromium: each person sees the other's message and both users online. The
// screenshot is saved in artifacts/chat.png (or $PGADAPTER_ARTIFACTS).
func TestChatInBrowser(t *testing.T) {
	missing := testenv.Tools("node", "npm")
	if _, err := os.Stat(chromium()); missing == nil && err != nil {
		missing = errors.New("Chromium not found at " + chromium() + " (Debian: apt-get install chromium)")
	}
	testenv.Require(t, requireBrowserEnv, missing)
	if err := testenv.NpmCI("browser"); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	urls := make(chan []string, 1)
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"127.0.0.1:0", "127.0.0.1:0"}, func(u []string) { urls <- u }) }()
	stopped := false // run returned, and its error was seen
	defer func() {
		cancel()
		if stopped {
			return
		}
		select {
		case err := <-done:
			if err != nil {
				t.Error(err)
			}
		case <-time.After(time.Minute):
			t.Error("the chat servers did not stop within a minute of being cancelled")
		}
	}()
	var u []string
	select {
	case u = <-urls:
	case err := <-done:
		stopped = true
		t.Fatalf("chat servers did not start: %v", err)
	case <-time.After(time.Minute):
		t.Fatal("chat servers not ready after a minute")
	}

	dir := os.Getenv("PGADAPTER_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join("..", "..", "artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	shot, err := filepath.Abs(filepath.Join(dir, "chat.png"))
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(shot)
	bctx, bcancel := context.WithTimeout(ctx, 2*time.Minute)
	defer bcancel()
	cmd := exec.CommandContext(bctx, "node", "chat.mjs", u[0], u[1], shot)
	cmd.Dir = "browser"
	cmd.Env = append(os.Environ(), "CHROMIUM="+chromium())
	out, err := cmd.CombinedOutput()
	t.Logf("browser test output:\n%s", out)
	if err != nil {
		t.Fatalf("browser test failed: %v", err)
	}
	if st, err := os.Stat(shot); err != nil || st.Size() == 0 {
		t.Fatalf("no screenshot at %s: %v", shot, err)
	}
}
