//go:build !unix

package testenv

// lockAcross does nothing where flock(2) is not available: installs are then ordered
// within one process only (npmMu).
func lockAcross(string) (func(), error) { return func() {}, nil }
