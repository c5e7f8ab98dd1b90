package hostiletest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qimg/qimg/internal/mutate"
)

// TestBackingLoops opens images that are their own backing file (directly,
// through a symbolic link, through a second image, and further down a
// chain) with every command that opens the backing chain, in default and
// untrusted mode: each gives a clear error at once (qemu-img 7.2 runs away
// in memory on them). Plain info opens only the image and succeeds.
func TestBackingLoops(t *testing.T) {
	h := newHost(t)
	cases, err := mutate.NewRegistry().GenerateFormat("qcow2", mutate.Target{Secret: h.secret, NetAddr: h.addr, Sample: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	loops := map[string]bool{
		"qcow2/v3/backing-self": true, "qcow2/v3/backing-self-via-symlink": true,
		"qcow2/v3/loop-pair": true, "qcow2/v3/loop-via-symlink": true, "qcow2/v3/loop-below": true,
	}
	found := 0
	for i := range cases {
		c := &cases[i]
		if !loops[c.Name] {
			continue
		}
		found++
		for _, mode := range []string{"default", "untrusted"} {
			t.Run(c.Name+"/"+mode, func(t *testing.T) {
				dir := filepath.Join(h.root, "loops", fmt.Sprint(i), mode)
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := c.Write(dir); err != nil {
					t.Fatal(err)
				}
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
					h.checkRun(t, r, 1)
					if !strings.Contains(r.stderr, "creates an infinite loop") && !strings.Contains(r.stderr, "not yet implemented") {
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
	if found != len(loops) {
		t.Fatalf("found %d of the %d loop cases", found, len(loops))
	}
}

// TestChainDepth opens a chain of 40 images: default mode follows it;
// untrusted mode stops at its depth limit (16), or at the one --limits sets.
func TestChainDepth(t *testing.T) {
	h := newHost(t)
	cases, err := mutate.NewRegistry().GenerateFormat("qcow2", mutate.Target{Secret: h.secret, NetAddr: h.addr, Sample: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	var c *mutate.Case
	for i := range cases {
		if cases[i].Name == "qcow2/v3/chain-depth-40" {
			c = &cases[i]
		}
	}
	if c == nil {
		t.Fatal("no chain case")
	}
	dir := filepath.Join(h.root, "chain")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := c.Write(dir); err != nil {
		t.Fatal(err)
	}
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
