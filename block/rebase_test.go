package block_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/internal/drivers"
	"github.com/qimg/qimg/storage"
)

const kib = 1 << 10

// memChain creates qcow2 images in memory: each spec names an image, its
// backing file ("" for none), its size and the runs of bytes to write.
type imageSpec struct {
	name, backing string
	size          int64
	writes        []run
}

type run struct {
	off, n int64
	b      byte
}

func memEnv(t *testing.T, specs ...imageSpec) *block.Env {
	t.Helper()
	env := &block.Env{Registry: drivers.Registry(), Files: storage.NewMemFS()}
	for _, s := range specs {
		p := block.CreateParams{Filename: s.name, Format: "qcow2", Size: s.size}
		if s.backing != "" {
			p.BackingFile, p.BackingFormat = s.backing, "qcow2"
		}
		if err := env.Create(p); err != nil {
			t.Fatal(err)
		}
		n, err := env.Open(s.name, block.OpenOptions{Format: "qcow2", Write: true})
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range s.writes {
			if _, err := n.WriteAt(bytes.Repeat([]byte{w.b}, int(w.n)), w.off); err != nil {
				t.Fatal(err)
			}
		}
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return env
}

func readAll(t *testing.T, img block.Image) []byte {
	t.Helper()
	b := make([]byte, img.Size())
	if _, err := img.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// allocated lists the runs img itself allocates.
func allocated(t *testing.T, img block.Image) []run {
	t.Helper()
	var out []run
	for off := int64(0); off < img.Size(); {
		e, err := img.BlockStatus(off, img.Size()-off)
		if err != nil {
			t.Fatal(err)
		}
		if e.Has(block.Allocated) {
			if k := len(out) - 1; k >= 0 && out[k].off+out[k].n == off {
				out[k].n += e.Length
			} else {
				out = append(out, run{off: off, n: e.Length})
			}
		}
		off += e.Length
	}
	return out
}

func TestRebase(t *testing.T) {
	specs := []imageSpec{
		{name: "base", size: 1024 * kib, writes: []run{{0, 1024 * kib, 1}}},
		{name: "mid", backing: "base", size: 1024 * kib, writes: []run{{64 * kib, 64 * kib, 2}, {600 * kib, kib, 3}}},
		{name: "old", size: 1024 * kib, writes: []run{{0, 512 * kib, 1}}},
		{name: "new", size: 1024 * kib, writes: []run{{0, 256 * kib, 1}, {256 * kib, 44 * kib, 5}}},
		{name: "top", backing: "old", size: 2048 * kib, writes: []run{{128 * kib, 64 * kib, 4}}},
		{name: "top2", backing: "mid", size: 1024 * kib, writes: []run{{0, 4 * kib, 4}}},
		{name: "alone", size: 1024 * kib, writes: []run{{0, 4 * kib, 4}}},
	}
	cases := []struct {
		name, top, newName string
		prefix             bool
		// want lists the runs the top allocates afterwards (whole
		// clusters).
		want []run
	}{
		// [256k, 512k) differs (the old backing has data, the new one
		// pattern 5 or zeroes); [0, 256k) and beyond 512k do not.
		{name: "other image", top: "top", newName: "new", want: []run{{128 * kib, 64 * kib, 0}, {256 * kib, 256 * kib, 0}}},
		// Everything the old chain holds that is not zero.
		{name: "standalone", top: "top", want: []run{{0, 512 * kib, 0}}},
		// Onto the base of its chain: what mid changes.
		{name: "prefix", top: "top2", newName: "base", prefix: true, want: []run{{0, 128 * kib, 0}, {576 * kib, 64 * kib, 0}}},
		{name: "prefix compared in full", top: "top2", newName: "base", want: []run{{0, 128 * kib, 0}, {576 * kib, 64 * kib, 0}}},
		// No old backing: zeroes are written where the new one has
		// data.
		{name: "gets a backing file", top: "alone", newName: "new", want: []run{{0, 320 * kib, 0}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := memEnv(t, specs...)
			n, err := env.Open(tc.top, block.OpenOptions{Format: "qcow2", Write: true})
			if err != nil {
				t.Fatal(err)
			}
			defer n.Close()
			before := readAll(t, n)
			p := block.RebaseParams{Image: n}
			if n.Backing != nil {
				p.OldBacking = n.Backing
			}
			if tc.newName != "" {
				if tc.prefix {
					pre := n.FindBackingImage(tc.newName)
					if pre == nil {
						t.Fatalf("%s not found in the chain of %s", tc.newName, tc.top)
					}
					p.NewBacking, p.Prefix = pre, pre
				} else {
					nb, err := env.Open(tc.newName, block.OpenOptions{Format: "qcow2"})
					if err != nil {
						t.Fatal(err)
					}
					defer nb.Close()
					p.NewBacking = nb
				}
			}
			steps := 0
			p.Step = func() { steps++ }
			if err := block.Rebase(p); err != nil {
				t.Fatal(err)
			}
			if steps == 0 {
				t.Error("Step was never called")
			}
			var got []run
			for _, r := range allocated(t, n) {
				got = append(got, run{off: r.off, n: r.n})
			}
			if len(got) != len(tc.want) {
				t.Fatalf("allocated runs %v, want %v", got, tc.want)
			}
			for k := range got {
				if got[k] != tc.want[k] {
					t.Fatalf("allocated runs %v, want %v", got, tc.want)
				}
			}
			// With the new backing file in place, the content is what it
			// was.
			if err := n.Image.(block.BackingChanger).ChangeBackingFile(tc.newName, "qcow2"); err != nil {
				t.Fatal(err)
			}
			n.Close()
			n2, err := env.Open(tc.top, block.OpenOptions{Format: "qcow2"})
			if err != nil {
				t.Fatal(err)
			}
			defer n2.Close()
			if !bytes.Equal(readAll(t, n2), before) {
				t.Error("content changed")
			}
		})
	}
}

func TestFindBackingImage(t *testing.T) {
	dir := t.TempDir()
	env := &block.Env{Registry: drivers.Registry()}
	p := func(name string) string { return filepath.Join(dir, name) }
	if err := os.Mkdir(p("sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []block.CreateParams{
		{Filename: p("base.qcow2"), Format: "qcow2", Size: 1 << 20},
		{Filename: p("sub/mid.qcow2"), Format: "qcow2", Size: -1, BackingFile: "../base.qcow2", BackingFormat: "qcow2"},
		{Filename: p("sub/top.qcow2"), Format: "qcow2", Size: -1, BackingFile: "mid.qcow2", BackingFormat: "qcow2"},
	} {
		if err := env.Create(c); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("base.qcow2", p("link.qcow2")); err != nil {
		t.Fatal(err)
	}
	top, err := env.Open(p("sub/top.qcow2"), block.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer top.Close()
	mid, base := top.Backing, top.Backing.Backing
	for _, tc := range []struct {
		name string
		want *block.Node
	}{
		{"mid.qcow2", mid},
		{"../base.qcow2", base},
		{p("base.qcow2"), base},
		{p("sub/../link.qcow2"), base},
		{"../link.qcow2", base},
		{"base.qcow2", nil}, // relative to sub/, where there is none
		{"top.qcow2", nil},
		{"", nil},
		{"nonexist", nil},
		{"nbd://host/x", nil},
	} {
		if got := top.FindBackingImage(tc.name); got != tc.want {
			t.Errorf("FindBackingImage(%q) = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestAllocatedAbove(t *testing.T) {
	env := memEnv(t,
		imageSpec{name: "base", size: 512 * kib, writes: []run{{0, 64 * kib, 1}}},
		imageSpec{name: "mid", backing: "base", size: 256 * kib, writes: []run{{64 * kib, 64 * kib, 2}}},
		imageSpec{name: "top", backing: "mid", size: 1024 * kib, writes: []run{{192 * kib, 64 * kib, 3}}},
	)
	top, err := env.Open("top", block.OpenOptions{Format: "qcow2"})
	if err != nil {
		t.Fatal(err)
	}
	defer top.Close()
	mid, base := top.Backing, top.Backing.Backing
	for _, tc := range []struct {
		img, base block.Image
		off       int64
		alloc     bool
		n         int64
	}{
		{top, nil, 0, true, 64 * kib},           // base's data
		{top, base, 0, false, 64 * kib},         // not above base
		{top, mid, 64 * kib, false, 128 * kib},  // mid is below the range
		{top, base, 64 * kib, true, 64 * kib},   // mid's data
		{top, base, 192 * kib, true, 64 * kib},  // top's data
		{top, base, 256 * kib, true, 768 * kib}, // past mid's end: its zeroes
		{top, top, 0, false, 1024 * kib},        // nothing above top
		{mid, nil, 128 * kib, false, 128 * kib}, // unallocated to the end of the chain
		{top, nil, 128 * kib, false, 64 * kib},  // not in any image
	} {
		alloc, n, err := block.AllocatedAbove(tc.img, tc.base, tc.off, tc.img.Size()-tc.off)
		if err != nil {
			t.Fatal(err)
		}
		if alloc != tc.alloc || n != tc.n {
			t.Errorf("AllocatedAbove(%s, %v, %d) = %v, %d; want %v, %d", tc.img.(*block.Node).Filename, tc.base, tc.off, alloc, n, tc.alloc, tc.n)
		}
	}
}

func TestWriteBackingLevel(t *testing.T) {
	env := memEnv(t,
		imageSpec{name: "l0", size: 64 * kib},
		imageSpec{name: "l1", backing: "l0", size: 64 * kib},
		imageSpec{name: "l2", backing: "l1", size: 64 * kib},
		imageSpec{name: "l3", backing: "l2", size: 64 * kib},
	)
	for _, tc := range []struct {
		writeBacking bool
		level        int
		want         []bool // writable, top first
	}{
		{false, 0, []bool{true, false, false, false}},
		{true, 0, []bool{true, true, true, true}},
		{true, 1, []bool{true, true, false, false}},
		{true, 2, []bool{true, false, true, false}},
		{true, 3, []bool{true, false, false, true}},
	} {
		n, err := env.Open("l3", block.OpenOptions{Format: "qcow2", Write: true, WriteBacking: tc.writeBacking, WriteBackingLevel: tc.level})
		if err != nil {
			t.Fatal(err)
		}
		for k, x := range n.Chain() {
			if x.Writable() != tc.want[k] {
				t.Errorf("WriteBacking %v, level %d: %s writable %v", tc.writeBacking, tc.level, x.Filename, x.Writable())
			}
			_, err := x.WriteAt([]byte{1}, 0)
			if (err == nil) != tc.want[k] {
				t.Errorf("WriteBacking %v, level %d: write to %s: %v", tc.writeBacking, tc.level, x.Filename, err)
			}
		}
		n.Close()
	}
}
