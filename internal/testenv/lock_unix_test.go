//go:build unix

package testenv

import (
	"errors"
	"os"
	"syscall"
	"testing"
)

// The lock excludes any other open file description of the same file, as another
// process's would be, until it is released.
func TestLockAcrossExcludesOthers(t *testing.T) {
	dir := t.TempDir()
	t.Cleanup(func() { os.Remove(lockPath(dir)) })
	unlock, err := lockAcross(dir)
	if err != nil {
		t.Fatal(err)
	}
	other, err := os.OpenFile(lockPath(dir), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := syscall.Flock(int(other.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); !errors.Is(err, syscall.EWOULDBLOCK) {
		t.Fatalf("a second lock while the first is held: %v, want EWOULDBLOCK", err)
	}
	unlock()
	if err := syscall.Flock(int(other.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatalf("a second lock once the first is released: %v", err)
	}
	if lockPath(dir) == lockPath(t.TempDir()) {
		t.Fatal("two projects share a lock file")
	}
}
