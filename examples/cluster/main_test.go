package main

import "testing"

// TestRun runs the example end to end, so that the README's first command keeps working.
func TestRun(t *testing.T) {
	if err := run(); err != nil {
		t.Fatal(err)
	}
}
