package hostiletest

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLimitsEndRuns runs the binary on a small image that describes 8 TiB
// (every L1 entry of a 32 MiB table names the same L2 table): converting or
// checking it takes hours, and its L1 table takes 64 MiB of memory. The
// time and memory limits end such runs with one line and exit status 1.
func TestLimitsEndRuns(t *testing.T) {
	h := newHost(t)
	c := h.essentialCases(t, "qcow2")["qcow2/v3/huge-l1-32MiB-one-l2"]
	if c == nil {
		t.Fatal("case not generated")
	}
	dir := filepath.Join(h.root, "slow")
	writeCase(t, c, dir)
	out := filepath.Join(h.root, "out.raw")
	tests := []struct {
		env    []string
		args   []string
		stderr string
	}{
		{nil, []string{"--limits", "time=0.5", "convert", "-O", "raw", c.Main, out},
			"qimg: Time limit of 500ms exceeded; raise it with --limits time=SECONDS\n"},
		{[]string{"QIMG_UNTRUSTED=1", "QIMG_LIMITS=time=300ms"}, []string{"check", c.Main},
			"qimg: Time limit of 300ms exceeded; raise it with --limits time=SECONDS\n"},
		{[]string{"QIMG_UNTRUSTED=1"}, []string{"--limits", "memory=24M,time=30", "convert", "-O", "raw", c.Main, out},
			"qimg: Memory limit of 24 MiB exceeded; raise it with --limits memory=SIZE\n"},
	}
	for _, tc := range tests {
		r := h.readOnly(t, dir, tc.env, tc.args...)
		h.checkRun(t, r, 1)
		// check reports what it finds until the limit stops it.
		if !strings.HasSuffix(r.stderr, tc.stderr) {
			t.Errorf("stderr ends %q, want %q", r.stderr[max(len(r.stderr)-200, 0):], tc.stderr)
		}
		// A convert the limit ended leaves no target that could pass
		// for a complete copy.
		if _, err := os.Stat(out); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%v: incomplete target %s left behind (stat: %v)", tc.args, out, err)
		}
	}
}
