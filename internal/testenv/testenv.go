// Package testenv gives tests the outside tools they need: npm packages installed from a
// lockfile (once, and not again while the lockfile is unchanged), and a skip that CI turns
// into a failure.
package testenv

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// Require skips t when missing is not nil, unless the environment variable env is set,
// in which case it fails: CI sets env so that it can never pass without running the test.
func Require(t testing.TB, env string, missing error) {
	t.Helper()
	if missing == nil {
		return
	}
	if os.Getenv(env) != "" {
		t.Fatalf("%v (%s is set, so this test must run)", missing, env)
	}
	t.Skipf("skipping: %v (set %s=1 to make this a failure)", missing, env)
}

// Tools returns an error naming the first of tools not on the PATH.
func Tools(tools ...string) error {
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found on PATH", tool)
		}
	}
	return nil
}

var (
	npmMu   sync.Mutex
	npmDone = map[string]error{}
)

// NpmCI installs the packages of the npm project in dir with npm ci, unless the
// node_modules it made last time match the current package-lock.json.
func NpmCI(dir string) error {
	npmMu.Lock()
	defer npmMu.Unlock()
	if err, done := npmDone[dir]; done {
		return err
	}
	unlock, err := lockAcross(dir)
	if err != nil {
		return fmt.Errorf("locking %s for npm ci: %w", dir, err)
	}
	err = npmCI(dir)
	unlock()
	npmDone[dir] = err
	return err
}

func npmCI(dir string) error {
	if err := Tools("node", "npm"); err != nil {
		return err
	}
	lock, err := os.ReadFile(filepath.Join(dir, "package-lock.json"))
	if err != nil {
		return err
	}
	sum := sha256.Sum256(lock)
	want := hex.EncodeToString(sum[:])
	stamp := filepath.Join(dir, "node_modules", ".testenv-stamp")
	if got, err := os.ReadFile(stamp); err == nil && string(got) == want {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund", "--loglevel=error")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("npm ci in %s: %w: %s", dir, err, out)
	}
	return os.WriteFile(stamp, []byte(want), 0o644)
}
