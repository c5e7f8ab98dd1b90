package hostiletest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qimg/qimg/internal/oracle"
)

// OpenStack runs `qemu-img info` on uploads as
// `prlimit --as=1073741824 --cpu=30 qemu-img info …`. A Go program reserves
// about 700 MiB of address space before main runs, so under that limit qimg
// has about 300 MiB to work in: it must fit, on small and on huge sparse
// images, and on the hostile images with the largest tables QEMU allows.
var prlimitArgs = []string{"--as=1073741824", "--cpu=30"}

// TestPrlimitInfo runs info (human and JSON, default and untrusted mode)
// under OpenStack's prlimit wrapper.
func TestPrlimitInfo(t *testing.T) {
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		if oracle.InCI() {
			t.Fatal("prlimit (util-linux) is required under CI=true")
		}
		t.Skip("prlimit not installed")
	}
	h := newHost(t)
	dir := filepath.Join(h.root, "images")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	type image struct {
		name string
		// fails: the image is refused (cleanly); otherwise info works
		fails bool
	}
	var images []image
	create := func(name string, args ...string) {
		size := args[len(args)-1]
		args = append([]string{"create", "-q"}, args[:len(args)-1]...)
		r := h.run(t, dir, nil, append(args, name, size)...)
		if r.code != 0 {
			t.Fatalf("create %s: %s", name, r)
		}
		images = append(images, image{name: name})
	}
	create("small.raw", "-f", "raw", "1M")
	create("small.qcow2", "-f", "qcow2", "1G")
	create("huge.qcow2", "-f", "qcow2", "-o", "cluster_size=2M", "2P")
	create("big.qcow2", "-f", "qcow2", "16T")
	if f, err := os.Create(filepath.Join(dir, "sparse.raw")); err == nil {
		if f.Truncate(8<<40) == nil {
			images = append(images, image{name: "sparse.raw"})
		}
		f.Close()
	}
	// The hostile images with the largest tables.
	cases := h.essentialCases(t, "qcow2")
	for k, name := range []string{"qcow2/v3/huge-l1-32MiB-8TiB", "qcow2/v3/huge-l1-over-limit",
		"qcow2/v3/huge-l1-32MiB-one-l2", "qcow2/v3/huge-reftable-8MiB",
		"qcow2/v3/huge-reftable-over-limit", "qcow2/snap/snapshot-table-65536-large"} {
		c := cases[name]
		if c == nil {
			t.Fatalf("no case %s", name)
		}
		writeCase(t, c, filepath.Join(dir, fmt.Sprint(k)))
		images = append(images, image{name: filepath.Join(fmt.Sprint(k), c.Main), fails: strings.HasSuffix(name, "over-limit")})
	}
	for _, img := range images {
		for _, env := range [][]string{nil, {"QIMG_UNTRUSTED=1"}} {
			for _, out := range []string{"human", "json"} {
				args := append(append([]string{}, prlimitArgs...), h.bin, "info", "--output="+out, img.name)
				r := h.runTool(t, dir, env, prlimit, args...)
				code := 0
				if img.fails {
					code = 1
				}
				h.checkRun(t, r, code)
				if !img.fails && !strings.Contains(r.stdout, "virtual") {
					t.Errorf("%s: no output: %s", img.name, r)
				}
			}
		}
	}
}
