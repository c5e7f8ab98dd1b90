package hostiletest

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

// TestBackingLoops opens images that are their own backing file (directly,
// through a symbolic link, through a second image, and further down a
// chain) with every command that opens the backing chain, in default and
// untrusted mode: each gives a clear error at once (qemu-img 7.2 runs away
// in memory on them). Plain info opens only the image and succeeds.
func TestBackingLoops(t *testing.T) {
	h := newHost(t)
	cases := h.essentialCases(t, "qcow2")
	for k, name := range []string{
		"qcow2/v3/backing-self", "qcow2/v3/backing-self-via-symlink",
		"qcow2/v3/loop-pair", "qcow2/v3/loop-via-symlink", "qcow2/v3/loop-below",
	} {
		c := cases[name]
		if c == nil {
			t.Fatalf("no case %s", name)
		}
		for _, mode := range []string{"default", "untrusted"} {
			t.Run(c.Name+"/"+mode, func(t *testing.T) {
				dir := filepath.Join(h.root, "loops", fmt.Sprint(k), mode)
				writeCase(t, c, dir)
				var env []string
				if mode == "untrusted" {
					env = []string{"QIMG_UNTRUSTED=1"}
				}
				for _, args := range [][]string{
					{"info", "--backing-chain", c.Main},
					{"info", "--backing-chain", "--output=json", c.Main},
					{"convert", "-O", "raw", c.Main, filepath.Join(h.root, "loop.raw")},
					{"check", c.Main},
					{"compare", c.Main, c.Main},
				} {
					r := h.readOnly(t, dir, env, args...)
					if args[0] == "compare" {
						// compare's exit status for an image it cannot
						// open.
						h.checkRun(t, r, 2)
					} else {
						h.checkRun(t, r, 1)
					}
					if !strings.Contains(r.stderr, "creates an infinite loop") {
						t.Errorf("no loop error: %s", r)
					}
					if strings.Count(r.stderr, "\n") > 1 {
						t.Errorf("more than one line on stderr: %s", r)
					}
				}
				r := h.readOnly(t, dir, env, "info", c.Main)
				h.checkRun(t, r, 0)
			})
		}
	}
}

// TestChainDepth opens a chain of 40 images: default mode follows it;
// untrusted mode stops at its depth limit (16), or at the one --limits sets.
func TestChainDepth(t *testing.T) {
	h := newHost(t)
	c := h.essentialCases(t, "qcow2")["qcow2/v3/chain-depth-40"]
	if c == nil {
		t.Fatal("no chain case")
	}
	dir := filepath.Join(h.root, "chain")
	writeCase(t, c, dir)
	out := filepath.Join(h.root, "chain.raw")
	r := h.readOnly(t, dir, nil, "convert", "-O", "raw", c.Main, out)
	h.checkRun(t, r, 0)
	r = h.readOnly(t, dir, []string{"QIMG_UNTRUSTED=1"}, "convert", "-O", "raw", c.Main, out)
	h.checkRun(t, r, 1)
	if !strings.Contains(r.stderr, "deeper than 16 images") {
		t.Errorf("untrusted: %s", r)
	}
	r = h.readOnly(t, dir, []string{"QIMG_UNTRUSTED=1"}, "--limits", "depth=64", "info", "--backing-chain", c.Main)
	h.checkRun(t, r, 0)
	r = h.readOnly(t, dir, nil, "--limits", "depth=8", "info", "--backing-chain", c.Main)
	h.checkRun(t, r, 1)
	if !strings.Contains(r.stderr, "deeper than 8 images") {
		t.Errorf("depth=8: %s", r)
	}
}
