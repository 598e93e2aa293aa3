//go:build unix

package testenv

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"syscall"
)

// lockAcross takes an exclusive lock on the npm project in dir, shared by every process
// of the machine, and returns its release. go test runs several packages' test binaries
// at once, and each may install the same project: npm ci removes node_modules first, so
// one binary's install could pull the packages from under another's node, or two
// installs could write the same files. npmMu only orders the installs of one process.
func lockAcross(dir string) (unlock func(), err error) {
	f, err := os.OpenFile(lockPath(dir), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return nil, err
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil // closing the last descriptor releases the lock
}

// lockPath is the lock file of the npm project in dir: in the temporary directory, not
// in the project, whose checkout it would clutter.
func lockPath(dir string) string {
	abs, err := filepath.Abs(dir)
	if err != nil {
		abs = dir
	}
	sum := sha256.Sum256([]byte(abs))
	return filepath.Join(os.TempDir(), "pgadapter-npm-"+hex.EncodeToString(sum[:8])+".lock")
}
