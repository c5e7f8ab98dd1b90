package qcow2

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/storage"
)

// recordingCrashFile is a crashFile that records, before every write and
// sync, a few of the states a crash at that point could leave.
type recordingCrashFile struct {
	*crashFile
	rng    *rand.Rand
	states []*storage.MemFile
}

func (r *recordingCrashFile) record() {
	for k := 0; k < 2; k++ {
		r.states = append(r.states, r.crash(r.rng))
	}
}

func (r *recordingCrashFile) WriteAt(p []byte, off int64) (int, error) {
	r.record()
	return r.crashFile.WriteAt(p, off)
}

func (r *recordingCrashFile) Sync() error {
	r.record()
	return r.crashFile.Sync()
}

// TestCrashDuringMetadataChanges crashes at every write of snapshot
// operations, shrinking, refcount width changes and downgrades: every
// state a crash can leave must check without corruption (leaks are
// allowed) and read what the image held before (up to the new size).
func TestCrashDuringMetadataChanges(t *testing.T) {
	const size = 2 << 20
	ops := []struct {
		name string
		// prepare runs before the crashes are recorded.
		prepare func(t *testing.T, n block.Image)
		op      func(n block.Image) error
		keep    int64 // bytes whose content must survive
	}{
		{"create snapshot", nil, func(n block.Image) error {
			return n.(block.Snapshotter).CreateSnapshot(block.SnapshotInfo{Name: "c"})
		}, size},
		{"delete snapshot", func(t *testing.T, n block.Image) {
			if err := n.(block.Snapshotter).CreateSnapshot(block.SnapshotInfo{Name: "d"}); err != nil {
				t.Fatal(err)
			}
		}, func(n block.Image) error { return n.(block.Snapshotter).DeleteSnapshot("", "d") }, size},
		{"apply snapshot", func(t *testing.T, n block.Image) {
			if err := n.(block.Snapshotter).CreateSnapshot(block.SnapshotInfo{Name: "a"}); err != nil {
				t.Fatal(err)
			}
		}, func(n block.Image) error { return n.(block.Snapshotter).ApplySnapshot("a") }, size},
		{"shrink", nil, func(n block.Image) error { return n.(block.Resizer).Resize(size/4, block.PreallocOff) }, size / 4},
		{"refcount width", nil, func(n block.Image) error {
			am := n.(block.Amender)
			o := block.NewOptions(am.AmendSpecs())
			_ = o.Set("refcount_bits", "2")
			return am.Amend(o, false, nil)
		}, size},
		{"downgrade", nil, func(n block.Image) error {
			am := n.(block.Amender)
			o := block.NewOptions(am.AmendSpecs())
			_ = o.Set("compat", "0.10")
			return am.Amend(o, false, nil)
		}, size},
	}
	for _, c := range ops {
		t.Run(c.name, func(t *testing.T) {
			env, fs := testEnv(t)
			if err := env.Create(block.CreateParams{Filename: "c.qcow2", Format: "qcow2", Size: size, Options: "cluster_size=4k"}); err != nil {
				t.Fatal(err)
			}
			d := New()
			open := func(f storage.File) *Image {
				t.Helper()
				img, err := d.Open(f, &block.DriverOptions{Filename: "c.qcow2", Write: true, Options: block.NewOptions(d.OpenSpecs())})
				if err != nil {
					t.Fatal(err)
				}
				return img.(*Image)
			}
			img := open(fs.File("c.qcow2"))
			want := make([]byte, size)
			for k, w := range []struct{ off, n int64 }{{0, 70000}, {300000, 5000}, {1 << 20, 200000}, {size - 4096, 4096}} {
				p := bytes.Repeat([]byte{byte(k + 1)}, int(w.n))
				if _, err := img.WriteAt(p, w.off); err != nil {
					t.Fatal(err)
				}
				copy(want[w.off:], p)
			}
			if err := img.WriteZeroes(500000, 8192, 0); err != nil {
				t.Fatal(err)
			}
			clear(want[500000 : 500000+8192])
			if c.prepare != nil {
				c.prepare(t, img)
			}
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			rf := &recordingCrashFile{crashFile: newCrashFile(fs.File("c.qcow2")), rng: rand.New(rand.NewPCG(1, 2))}
			img = open(rf)
			if err := c.op(img); err != nil {
				t.Fatal(err)
			}
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			rf.record()
			for k, st := range rf.states {
				name := fmt.Sprintf("crash%d.qcow2", k)
				fs.Put(name, st)
				n, err := env.Open(name, block.OpenOptions{Format: "qcow2"})
				if err != nil {
					t.Fatalf("crash state %d: %v", k, err)
				}
				if err := crashSafe(n.Image.(*Image)); err != nil {
					t.Fatalf("crash state %d: %v", k, err)
				}
				got := make([]byte, min(c.keep, n.Size()))
				if _, err := n.ReadAt(got, 0); err != nil {
					t.Fatalf("crash state %d: %v", k, err)
				}
				if !bytes.Equal(got, want[:len(got)]) {
					t.Fatalf("crash state %d: content changed", k)
				}
				n.Close()
			}
			qemuCheckMem(t, rf.states[len(rf.states)-1])
		})
	}
}

// crashSafe checks what a crash may leave: no cluster has fewer
// references than its refcount says it has (more are leaks), and a COPIED
// flag in the active tables, which allows writing in place, is only on
// clusters with exactly one reference. (A crash between raising refcounts
// and clearing the flags leaves COPIED on clusters whose refcount is 2 but
// whose only reference is the active one, which qemu-img check reports as
// an error and repairs, but is harmless, as in QEMU.)
func crashSafe(i *Image) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	c, err := i.countAll()
	if err != nil || c.errs > 0 {
		return fmt.Errorf("count references: %v (%d errors)", err, c.errs)
	}
	refs := func(off int64) uint64 {
		if k := off >> i.clusterBits; k < int64(len(c.counts)) {
			return uint64(c.counts[k])
		}
		return 0
	}
	for k := range c.counts {
		rc, err := i.getRefcount(int64(k))
		if err != nil {
			return err
		}
		if rc < uint64(c.counts[k]) {
			return fmt.Errorf("cluster %d: refcount %d, %d references", k, rc, c.counts[k])
		}
	}
	for _, e := range i.l1 {
		l2 := int64(e & l1OffsetMask)
		if l2 == 0 {
			continue
		}
		if e&oflagCopied != 0 && refs(l2) != 1 {
			return fmt.Errorf("L1 entry %#x: COPIED with %d references", e, refs(l2))
		}
		err := i.forEachL2Entry(l2, func(_ int, entry, _ uint64, _ []byte) (bool, error) {
			off := int64(entry & l2OffsetMask)
			if entry&oflagCopied != 0 && i.layout.classify(entry) != clusterCompressed && refs(off) != 1 {
				return false, fmt.Errorf("L2 entry %#x: COPIED with %d references", entry, refs(off))
			}
			return false, nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}
