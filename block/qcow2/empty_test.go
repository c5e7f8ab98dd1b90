package qcow2

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/storage"
)

// syncSpyFile is a fault-injecting file that takes crash images just
// before each Sync.
type syncSpyFile struct {
	*storage.FaultFile
	onSync func()
}

func (s *syncSpyFile) Sync() error {
	s.onSync()
	return s.FaultFile.Sync()
}

// crashImages returns what a crash now could leave: every change since the
// last Sync lost, kept, a prefix of them, a random subset, torn sectors.
func (s *syncSpyFile) crashImages(t *testing.T, rng *rand.Rand) []*storage.MemFile {
	t.Helper()
	opts := []storage.CrashOptions{
		{Mode: storage.CrashSynced}, {Mode: storage.CrashAll},
		{Mode: storage.CrashPrefix, Keep: 1 + rng.IntN(max(s.Pending(), 1))},
		{Mode: storage.CrashRandom, Rand: rng}, {Mode: storage.CrashTorn, Rand: rng},
	}
	var out []*storage.MemFile
	for _, o := range opts {
		f, err := s.Crash(o)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, f)
	}
	return out
}

// emptyCase builds an image with data in many clusters and returns its
// content.
type emptyCase struct {
	name string
	opts string
	size int64
	// grow resizes the image after creation, moving the L1 table.
	grow int64
	// canonical says that MakeEmpty gives the layout of a new image.
	canonical bool
}

var emptyCases = []emptyCase{
	{name: "64k", opts: "cluster_size=64k", size: 4 << 20, canonical: true},
	{name: "4k refcount bits 1", opts: "cluster_size=4k,refcount_bits=1", size: 4 << 20, canonical: true},
	// 512-byte clusters: the refcount table and L1 table move as the
	// image grows.
	{name: "512 grown", opts: "cluster_size=512", size: 1 << 20, grow: 3 << 20, canonical: true},
	{name: "extended l2", opts: "extended_l2=on,cluster_size=32k", size: 4 << 20, canonical: true},
	{name: "version 2", opts: "compat=0.10,cluster_size=4k", size: 4 << 20},
}

// fillForEmpty writes data into every other few clusters of img and
// returns the image's content.
func fillForEmpty(t *testing.T, img *Image, seed uint64) []byte {
	t.Helper()
	size := img.Size()
	want := make([]byte, size)
	rng := rand.New(rand.NewPCG(seed, 7))
	for k := 0; k < 60; k++ {
		off := rng.Int64N(size - 1)
		n := min(1+rng.Int64N(3*img.clusterSize), size-off)
		p := bytes.Repeat([]byte{byte(k + 1)}, int(n))
		if _, err := img.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], p)
	}
	if err := img.Flush(); err != nil {
		t.Fatal(err)
	}
	return want
}

// TestMakeEmptyCrashSafe empties images and "crashes" at every flush of the
// process, keeping any subset of the writes since the last flush: every
// crashed image must be consistent (refcounts cover every reference) and
// read, cluster by cluster, either as before or as empty; the emptied image
// must be empty, without leaks, in the layout of a new image where QEMU
// gives it.
func TestMakeEmptyCrashSafe(t *testing.T) {
	for ci, tc := range emptyCases {
		t.Run(tc.name, func(t *testing.T) {
			env, fs := testEnv(t)
			if err := env.Create(block.CreateParams{Filename: "e.qcow2", Format: "qcow2", Size: tc.size, Options: tc.opts}); err != nil {
				t.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(uint64(ci), 3))
			ff, err := storage.NewFaultFile(fs.File("e.qcow2"), nil)
			if err != nil {
				t.Fatal(err)
			}
			spy := &syncSpyFile{FaultFile: ff}
			var crashes []*storage.MemFile
			spy.onSync = func() { crashes = append(crashes, spy.crashImages(t, rng)...) }
			d := New()
			bimg, err := d.Open(spy, &block.DriverOptions{Filename: "e.qcow2", Write: true, Options: block.NewOptions(d.OpenSpecs())})
			if err != nil {
				t.Fatal(err)
			}
			img := bimg.(*Image)
			if tc.grow > 0 {
				if err := img.Resize(tc.grow, block.PreallocOff); err != nil {
					t.Fatal(err)
				}
			}
			want := fillForEmpty(t, img, uint64(ci))
			crashes = nil
			if err := img.MakeEmpty(); err != nil {
				t.Fatal(err)
			}
			if err := img.Close(); err != nil {
				t.Fatal(err)
			}
			crashes = append(crashes, spy.crashImages(t, rng)...)
			last, err := spy.Crash(storage.CrashOptions{Mode: storage.CrashAll})
			if err != nil {
				t.Fatal(err)
			}
			crashes = append(crashes, last)
			if len(crashes) < 4 {
				t.Fatalf("only %d crash images: MakeEmpty flushed too rarely to test", len(crashes))
			}
			for k, f := range crashes {
				verifyEmptied(t, env, fs, fmt.Sprintf("crash%d.qcow2", k), f, want, k == len(crashes)-1)
				if k%5 == 0 || k == len(crashes)-1 {
					qemuCheckMem(t, f)
				}
			}
			final := crashes[len(crashes)-1]
			size, _ := final.Size()
			l1Clusters := img.sizeToClusters(int64(len(img.l1)) * l1EntrySize)
			if tc.canonical && size != (3+l1Clusters)*img.clusterSize {
				t.Errorf("emptied file is %d bytes, want %d", size, (3+l1Clusters)*img.clusterSize)
			}
		})
	}
}

// verifyEmptied opens a (crashed) image and checks that it is consistent,
// reads every cluster either as want or as zeroes (or, when final, only as
// zeroes), and, when final, has no leaked clusters.
func verifyEmptied(t *testing.T, env *block.Env, fs *storage.MemFS, name string, f *storage.MemFile, want []byte, final bool) {
	t.Helper()
	fs.Put(name, f)
	defer fs.Remove(name)
	n, err := env.Open(name, block.OpenOptions{Format: "qcow2"})
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	defer n.Close()
	ci := n.Image.(*Image)
	ci.mu.Lock()
	c, err := ci.countAll()
	if err != nil {
		ci.mu.Unlock()
		t.Fatalf("%s: %v", name, err)
	}
	fileClusters := ci.sizeToClusters(int64(len(f.Bytes())))
	for idx := int64(0); idx < max(int64(len(c.counts)), fileClusters); idx++ {
		var refs uint64
		if idx < int64(len(c.counts)) {
			refs = uint64(c.counts[idx])
		}
		rc, err := ci.getRefcount(idx)
		if err != nil {
			ci.mu.Unlock()
			t.Fatalf("%s: %v", name, err)
		}
		if rc < refs || (final && rc != refs) {
			ci.mu.Unlock()
			t.Fatalf("%s: cluster %d has refcount %d and %d references", name, idx, rc, refs)
		}
	}
	ci.mu.Unlock()
	cs := ci.clusterSize
	got := make([]byte, cs)
	zero := make([]byte, cs)
	for off := int64(0); off < int64(len(want)); off += cs {
		m := min(cs, int64(len(want))-off)
		if _, err := n.ReadAt(got[:m], off); err != nil {
			t.Fatalf("%s: read at %d: %v", name, off, err)
		}
		if !bytes.Equal(got[:m], zero[:m]) && (final || !bytes.Equal(got[:m], want[off:off+m])) {
			t.Fatalf("%s: cluster at %d reads neither as before nor as empty", name, off)
		}
	}
}

// TestMakeEmptyThenWrite checks that an emptied image can be written at
// once and reads back, and that qemu-img finds it clean.
func TestMakeEmptyThenWrite(t *testing.T) {
	for _, tc := range emptyCases {
		t.Run(tc.name, func(t *testing.T) {
			env, fs := testEnv(t)
			if err := env.Create(block.CreateParams{Filename: "e.qcow2", Format: "qcow2", Size: tc.size, Options: tc.opts}); err != nil {
				t.Fatal(err)
			}
			n, err := env.Open("e.qcow2", block.OpenOptions{Format: "qcow2", Write: true})
			if err != nil {
				t.Fatal(err)
			}
			img := n.Image.(*Image)
			fillForEmpty(t, img, 9)
			if err := img.MakeEmpty(); err != nil {
				t.Fatal(err)
			}
			want := make([]byte, img.Size())
			for k, off := range []int64{0, img.Size() / 3, img.Size() - 3*img.clusterSize} {
				p := bytes.Repeat([]byte{byte(0x61 + k)}, int(2*img.clusterSize+100))
				if _, err := n.WriteAt(p, off); err != nil {
					t.Fatal(err)
				}
				copy(want[off:], p)
			}
			if err := n.Close(); err != nil {
				t.Fatal(err)
			}
			n, err = env.Open("e.qcow2", block.OpenOptions{Format: "qcow2"})
			if err != nil {
				t.Fatal(err)
			}
			defer n.Close()
			got := make([]byte, len(want))
			if _, err := n.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Error("content written after MakeEmpty differs")
			}
			qemuCheckMem(t, fs.File("e.qcow2"))
		})
	}
}
