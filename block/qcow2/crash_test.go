package qcow2

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/storage"
)

// crashFile is a File whose writes become durable only at Sync; crash
// returns what a crash could leave: the synced data plus a random subset
// of the later writes.
type crashFile struct {
	*storage.FaultFile
}

func newCrashFile(f *storage.MemFile) *crashFile {
	ff, err := storage.NewFaultFile(f, nil)
	if err != nil {
		panic(err) // a MemFile cannot fail to be copied
	}
	return &crashFile{ff}
}

// crash returns the file as a crash now could leave it.
func (c *crashFile) crash(rng *rand.Rand) *storage.MemFile {
	f, err := c.Crash(storage.CrashOptions{Mode: storage.CrashRandom, Rand: rng})
	if err != nil {
		panic(err)
	}
	return f
}

// TestCrashConsistency runs random writes, zero writes, discards,
// compressed writes and flushes, and at random points "crashes": every
// crashed image must have refcounts covering all references (leaks are
// allowed), read without errors, and keep the data of the last flush
// where nothing was written since.
func TestCrashConsistency(t *testing.T) {
	for _, opts := range []string{"cluster_size=4k", "cluster_size=64k,refcount_bits=4", "extended_l2=on,cluster_size=32k"} {
		t.Run(opts, func(t *testing.T) {
			crashConsistency(t, opts, 1)
		})
	}
}

func crashConsistency(t *testing.T, opts string, seed uint64) {
	const size = 3 << 20
	env, fs := testEnv(t)
	if err := env.Create(block.CreateParams{Filename: "c.qcow2", Format: "qcow2", Size: size, Options: opts}); err != nil {
		t.Fatal(err)
	}
	cf := newCrashFile(fs.File("c.qcow2"))
	d := New()
	o := &block.DriverOptions{Filename: "c.qcow2", Write: true, Options: block.NewOptions(d.OpenSpecs())}
	bimg, err := d.Open(cf, o)
	if err != nil {
		t.Fatal(err)
	}
	img := bimg.(*Image)
	cs := img.clusterSize
	rng := rand.New(rand.NewPCG(seed, 99))
	model := make([]byte, size)
	flushed := make([]byte, size)
	dirty := make([]bool, size)
	touch := func(off, n int64) {
		for k := off; k < off+n; k++ {
			dirty[k] = true
		}
	}
	var crashes []*storage.MemFile
	var crashFlushed [][]byte
	var crashDirty [][]bool
	for step := 0; step < 120; step++ {
		off := rng.Int64N(size - 1)
		n := min(1+rng.Int64N(3*cs), size-off)
		switch r := rng.IntN(10); {
		case r < 5:
			p := bytes.Repeat([]byte{byte(step + 1)}, int(n))
			if _, err := img.WriteAt(p, off); err != nil {
				t.Fatal(err)
			}
			copy(model[off:], p)
			touch(off, n)
		case r == 5:
			if err := img.WriteZeroes(off, n, block.MayUnmap); err != nil {
				t.Fatal(err)
			}
			clear(model[off : off+n])
			touch(off, n)
		case r == 6:
			if err := img.Discard(off, n); err != nil {
				t.Fatal(err)
			}
			start, end := (off+cs-1)/cs*cs, (off+n)/cs*cs
			if start < end {
				clear(model[start:end])
			}
			touch(off, n)
		case r == 7:
			coff := off / cs * cs
			cn := min(cs, size-coff)
			if img.allocatedAt(coff) {
				continue
			}
			p := bytes.Repeat([]byte{byte(step), 0}, int(cn))[:cn]
			if err := img.WriteCompressed(p, coff); err != nil {
				t.Fatal(err)
			}
			copy(model[coff:], p)
			touch(coff, cn)
		default:
			if err := img.Flush(); err != nil {
				t.Fatal(err)
			}
			copy(flushed, model)
			clear(dirty)
		}
		if rng.IntN(6) == 0 {
			crashes = append(crashes, cf.crash(rng))
			crashFlushed = append(crashFlushed, append([]byte(nil), flushed...))
			crashDirty = append(crashDirty, append([]bool(nil), dirty...))
		}
	}
	img.Close()
	for k, f := range crashes {
		name := fmt.Sprintf("crash%d.qcow2", k)
		fs.Put(name, f)
		n, err := env.Open(name, block.OpenOptions{Format: "qcow2"})
		if err != nil {
			t.Fatalf("crash %d: %v", k, err)
		}
		ci := n.Image.(*Image)
		res, err := ci.Check(block.FixNone, nil)
		if err != nil || res.Corruptions != 0 || res.CheckErrors != 0 {
			t.Fatalf("crash %d: check found %+v (%v)", k, res, err)
		}
		// A cluster written since the last flush may hold anything,
		// including compressed data another write overwrote after
		// freeing it (as in QEMU): it may fail to read.
		got := make([]byte, cs)
		for off := int64(0); off < size; off += cs {
			if _, err := n.ReadAt(got, off); err != nil {
				for j := off; j < off+cs; j++ {
					if !crashDirty[k][j] {
						t.Fatalf("crash %d: read of flushed cluster at %d: %v", k, off, err)
					}
				}
				continue
			}
			if bytes.Equal(got, crashFlushed[k][off:off+cs]) {
				continue
			}
			for j := range got {
				if !crashDirty[k][off+int64(j)] && got[j] != crashFlushed[k][off+int64(j)] {
					t.Fatalf("crash %d: flushed byte %d is %#x, was %#x", k, off+int64(j), got[j], crashFlushed[k][off+int64(j)])
				}
			}
		}
		n.Close()
		if k%8 == 0 {
			qemuCheckMem(t, f)
		}
	}
}

// allocatedAt reports whether the cluster at off has a host cluster.
func (i *Image) allocatedAt(off int64) bool {
	i.mu.Lock()
	defer i.mu.Unlock()
	m, err := i.getHostOffset(off, 1)
	return err != nil || (m.typ != subUnallocatedPlain && m.typ != subZeroPlain)
}

// qemuCheckMem runs the real qemu-img check on an in-memory image when
// QEMU is installed: it must find no corruption (leaks are allowed).
func qemuCheckMem(t *testing.T, f *storage.MemFile) {
	if code := qemuCheckCode(t, f); code != 0 && code != 3 {
		t.Fatalf("qemu-img check of a crashed image: exit %d", code)
	}
}
