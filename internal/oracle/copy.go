package oracle

import (
	"os"
	"testing"
)

// CopyFile copies a file, as tests do to give qimg and qemu-img the same
// input.
func CopyFile(t testing.TB, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
