package qcow2

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/internal/oracle"
	"github.com/qimg/qimg/storage"
)

// model is the expected content of an image under test.
type model struct {
	data []byte
}

// imageOps applies the same operations to an image and its model.
type imageOps struct {
	t   testing.TB
	img block.Image
	m   *model
	rng *rand.Rand
}

func (o *imageOps) write(off int64, n int) {
	p := make([]byte, n)
	for k := range p {
		p[k] = byte(o.rng.Uint32())
	}
	if n > 64 {
		// Some runs of repeated bytes so compression has work.
		clear(p[:n/4])
	}
	if _, err := o.img.WriteAt(p, off); err != nil {
		o.t.Fatalf("write %d at %d: %v", n, off, err)
	}
	copy(o.m.data[off:], p)
}

func (o *imageOps) zero(off, n int64, flags block.ZeroFlags) {
	if err := o.img.WriteZeroes(off, n, flags); err != nil {
		o.t.Fatalf("write zeroes %d at %d: %v", n, off, err)
	}
	clear(o.m.data[off : off+n])
}

// discard discards and records what a discard guarantees: whole clusters
// (and the image's last partial cluster) read as zeroes without a backing
// file; other bytes keep their content.
func (o *imageOps) discard(off, n, cs int64) {
	if err := o.img.Discard(off, n); err != nil {
		o.t.Fatalf("discard %d at %d: %v", n, off, err)
	}
	start := (off + cs - 1) / cs * cs
	end := (off + n) / cs * cs
	if off+n == int64(len(o.m.data)) {
		end = off + n
	}
	if start < end {
		clear(o.m.data[start:end])
	}
}

func (o *imageOps) compressed(off int64, n int) {
	p := bytes.Repeat([]byte{byte(o.rng.Uint32()), 0, 1, 2}, n/4+1)[:n]
	img := o.img
	if n, ok := img.(*block.Node); ok {
		img = n.Image
	}
	c, ok := img.(block.Compressor)
	if !ok {
		o.t.Fatal("not a Compressor")
	}
	if err := c.WriteCompressed(p, off); err != nil {
		o.t.Fatalf("compressed write %d at %d: %v", n, off, err)
	}
	copy(o.m.data[off:], p)
}

func (o *imageOps) verify() {
	o.t.Helper()
	got := make([]byte, len(o.m.data))
	if _, err := o.img.ReadAt(got, 0); err != nil {
		o.t.Fatal(err)
	}
	if !bytes.Equal(got, o.m.data) {
		for k := range got {
			if got[k] != o.m.data[k] {
				o.t.Fatalf("content differs at %d: %#x, want %#x", k, got[k], o.m.data[k])
			}
		}
	}
}

// hostWrite opens host images for writing in tests that run QEMU in
// parallel. Locking is off: a qemu-img forked by another test inherits,
// until it execs, the descriptors (and so the OFD locks) of files this
// process just closed, which makes a fresh open of such a file fail.
func hostWrite() block.OpenOptions { return block.OpenOptions{Write: true, Locking: block.LockOff} }

// memCreate creates a qcow2 image in a MemFS and opens it for writing.
func memCreate(t testing.TB, opts string, size int64) (*block.Env, *block.Node) {
	t.Helper()
	env, _ := testEnv(t)
	if err := env.Create(block.CreateParams{Filename: "new.qcow2", Format: "qcow2", Size: size, Options: opts}); err != nil {
		t.Fatal(err)
	}
	n, err := env.Open("new.qcow2", block.OpenOptions{Write: true})
	if err != nil {
		t.Fatal(err)
	}
	return env, n
}

func TestWriteReadBack(t *testing.T) {
	for _, opts := range []string{"cluster_size=512", "cluster_size=4k,compat=0.10", "", "extended_l2=on,cluster_size=16k",
		"refcount_bits=1,cluster_size=1k", "compression_type=zstd,cluster_size=4k", "lazy_refcounts=on,cluster_size=4k"} {
		t.Run(opts, func(t *testing.T) {
			const size = 3<<20 + 512
			env, n := memCreate(t, opts, size)
			info, _ := n.Info()
			cs := info.ClusterSize
			o := &imageOps{t: t, img: n, m: &model{data: make([]byte, size)}, rng: rand.New(rand.NewPCG(1, 2))}
			o.write(0, 100)
			o.write(cs-7, 30)
			o.write(5*cs+3, int(3*cs))
			o.zero(2*cs, cs, 0)
			o.zero(cs+1, 2*cs, block.MayUnmap)
			o.compressed(20*cs, int(cs))
			o.compressed((size-1)/cs*cs, int(size-(size-1)/cs*cs))
			o.discard(5*cs, 2*cs, cs)
			o.write(1<<20, 1<<20)
			o.verify()
			if err := n.Close(); err != nil {
				t.Fatal(err)
			}
			n2, err := env.Open("new.qcow2", block.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer n2.Close()
			info, _ = n2.Info()
			if info.Dirty {
				t.Error("dirty after close")
			}
			o.img = n2
			o.verify()
		})
	}
}

// TestInteropWriteCheck writes with qimg and has QEMU check the image and
// compare its content.
func TestInteropWriteCheck(t *testing.T) {
	oracle.QemuImgPath(t)
	for _, opts := range []string{"cluster_size=512", "cluster_size=4k,compat=0.10", "", "cluster_size=2M",
		"extended_l2=on", "refcount_bits=1,cluster_size=1k", "refcount_bits=64", "compression_type=zstd",
		"lazy_refcounts=on", "preallocation=metadata,cluster_size=4k", "preallocation=falloc",
		"data_file=DIR/data.raw", "data_file=DIR/data.raw,data_file_raw=on"} {
		t.Run(opts, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			img := filepath.Join(dir, "img.qcow2")
			opts := bytes.ReplaceAll([]byte(opts), []byte("DIR"), bytes.ReplaceAll([]byte(dir), []byte(","), []byte(",,")))
			size := int64(5 << 20)
			if bytes.Contains(opts, []byte("2M")) {
				size = 40 << 20
			}
			env := hostEnv()
			if err := env.Create(block.CreateParams{Filename: img, Format: "qcow2", Size: size, Options: string(opts)}); err != nil {
				t.Fatal(err)
			}
			n, err := env.Open(img, hostWrite())
			if err != nil {
				t.Fatal(err)
			}
			info, _ := n.Info()
			cs := info.ClusterSize
			o := &imageOps{t: t, img: n, m: &model{data: make([]byte, size)}, rng: rand.New(rand.NewPCG(3, 4))}
			o.write(0, 4096)
			o.write(cs/2, int(cs))
			o.write(3*cs+17, 100000)
			o.zero(4*cs, 4*cs, block.MayUnmap)
			o.zero(9*cs, cs, 0)
			if !bytes.Contains(opts, []byte("data_file")) && !bytes.Contains(opts, []byte("prealloc")) {
				o.compressed(max(2<<20, 10*cs), int(cs))
				o.compressed((size/cs-1)*cs, int(cs))
			}
			o.discard(1<<20, 1<<20, cs)
			o.write(4<<20-100, 200)
			o.verify()
			if err := n.Close(); err != nil {
				t.Fatal(err)
			}
			oracle.Check(t, img, "qcow2")
			rawPath := filepath.Join(dir, "want.raw")
			if err := os.WriteFile(rawPath, o.m.data, 0o644); err != nil {
				t.Fatal(err)
			}
			oracle.Compare(t, img, "qcow2", rawPath, "raw")
		})
	}
}

// TestCrashLeavesAtMostLeaks cuts a sequence of writes short at every
// flush point (only data a Sync made durable survives) and expects every
// crashed image to open and read without corruption.
func TestCrashLeavesAtMostLeaks(t *testing.T) {
	env, _ := testEnv(t)
	fs := env.Files.(*storage.MemFS)
	if err := env.Create(block.CreateParams{Filename: "c.qcow2", Format: "qcow2", Size: 8 << 20, Options: "cluster_size=4k"}); err != nil {
		t.Fatal(err)
	}
	n, err := env.Open("c.qcow2", block.OpenOptions{Write: true})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	var snapshots []*storage.MemFile
	for k := 0; k < 40; k++ {
		off := int64(rng.IntN(8<<20-70000)) &^ 511
		if _, err := n.WriteAt(bytes.Repeat([]byte{byte(k + 1)}, 1+rng.IntN(65536)), off); err != nil {
			t.Fatal(err)
		}
		if k%5 == 4 {
			if err := n.Flush(); err != nil {
				t.Fatal(err)
			}
			snapshots = append(snapshots, fs.File("c.qcow2").Clone())
		}
	}
	n.Close()
	for k, snap := range snapshots {
		fs.Put(fmt.Sprintf("crash%d.qcow2", k), snap)
		m, err := env.Open(fmt.Sprintf("crash%d.qcow2", k), block.OpenOptions{})
		if err != nil {
			t.Fatalf("crash %d: %v", k, err)
		}
		buf := make([]byte, 8<<20)
		if _, err := m.ReadAt(buf, 0); err != nil {
			t.Fatalf("crash %d: %v", k, err)
		}
		m.Close()
	}
}

// TestLazyRefcountsCrashRepair crashes a lazy-refcounts image while it is
// dirty; opening the crashed image for writing repairs its refcounts.
func TestLazyRefcountsCrashRepair(t *testing.T) {
	env, _ := testEnv(t)
	fs := env.Files.(*storage.MemFS)
	if err := env.Create(block.CreateParams{Filename: "l.qcow2", Format: "qcow2", Size: 4 << 20, Options: "lazy_refcounts=on,cluster_size=4k"}); err != nil {
		t.Fatal(err)
	}
	n, err := env.Open("l.qcow2", block.OpenOptions{Write: true})
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 4<<20)
	for k := 0; k < 20; k++ {
		p := bytes.Repeat([]byte{byte(k + 1)}, 10000)
		off := int64(k * 150000)
		if _, err := n.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], p)
	}
	if err := n.Flush(); err != nil {
		t.Fatal(err)
	}
	info, _ := n.Info()
	if !info.Dirty {
		t.Fatal("lazy refcounts image not dirty while written")
	}
	fs.Put("crash.qcow2", fs.File("l.qcow2").Clone())
	n.Close()

	r, err := env.Open("crash.qcow2", block.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	info, _ = r.Info()
	r.Close()
	if !info.Dirty {
		t.Fatal("crashed image not dirty")
	}
	w, err := env.Open("crash.qcow2", block.OpenOptions{Write: true})
	if err != nil {
		t.Fatal(err)
	}
	info, _ = w.Info()
	if info.Dirty {
		t.Error("still dirty after repair")
	}
	img := w.Image.(*Image)
	img.mu.Lock()
	checkRefcounts(t, img)
	img.mu.Unlock()
	got := make([]byte, len(want))
	if _, err := w.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("content after repair differs (%v)", err)
	}
	w.Close()
}

// TestOverlapMarksCorrupt points an L2 entry at the L1 table: writing
// there marks the image corrupt instead of overwriting the table.
func TestOverlapMarksCorrupt(t *testing.T) {
	env, fs := testEnv(t)
	if err := env.Create(block.CreateParams{Filename: "o.qcow2", Format: "qcow2", Size: 1 << 20, Options: "cluster_size=4k"}); err != nil {
		t.Fatal(err)
	}
	n, err := env.Open("o.qcow2", block.OpenOptions{Write: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.WriteAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	img := n.Image.(*Image)
	img.mu.Lock()
	e, idx, err := img.getClusterTable(0)
	if err != nil {
		t.Fatal(err)
	}
	img.setL2Entry(e.data, idx, uint64(img.l1Offset)|oflagCopied)
	img.l2Cache.markDirty(e)
	img.l2Cache.put(e)
	img.mu.Unlock()
	_, err = n.WriteAt([]byte("overwrite"), 0)
	if err == nil || !strings.Contains(err.Error(), "Preventing invalid write on metadata (overlaps with active L1 table)") {
		t.Fatalf("error %v", err)
	}
	if _, err := n.WriteAt([]byte("x"), 8192); err == nil {
		t.Fatal("image usable after corruption")
	}
	n.Close()
	f := fs.File("o.qcow2")
	hdr := make([]byte, 80)
	f.ReadAt(hdr, 0)
	if hdr[79]&incompatCorrupt == 0 {
		t.Fatal("corrupt bit not set on disk")
	}
	if _, err := env.Open("o.qcow2", block.OpenOptions{Write: true}); err == nil {
		t.Fatal("corrupt image opened for writing")
	}
}

// TestConcurrentWriters has eight goroutines write and read disjoint (but
// cluster-sharing) ranges at once, as convert's writers do.
func TestConcurrentWriters(t *testing.T) {
	for _, opts := range []string{"cluster_size=4k", "cluster_size=64k", "extended_l2=on,cluster_size=32k"} {
		t.Run(opts, func(t *testing.T) {
			const size = 16 << 20
			_, n := memCreate(t, opts, size)
			defer n.Close()
			want := make([]byte, size)
			const writers = 8
			errs := make(chan error, writers)
			for w := 0; w < writers; w++ {
				go func(w int) {
					rng := rand.New(rand.NewPCG(uint64(w), 7))
					// Writer w owns every 3000-byte stripe s with s%8 == w,
					// so neighbours share clusters.
					for k := 0; k < 300; k++ {
						s := int64(rng.IntN(size/3000/writers))*writers + int64(w)
						off := s * 3000
						p := bytes.Repeat([]byte{byte(w*31 + k)}, 3000)
						if _, err := n.WriteAt(p, off); err != nil {
							errs <- err
							return
						}
						copy(want[off:], p)
						got := make([]byte, 3000)
						if _, err := n.ReadAt(got, off); err != nil {
							errs <- err
							return
						}
						if !bytes.Equal(got, p) {
							errs <- fmt.Errorf("writer %d: read back differs at %d", w, off)
							return
						}
					}
					errs <- nil
				}(w)
			}
			for w := 0; w < writers; w++ {
				if err := <-errs; err != nil {
					t.Fatal(err)
				}
			}
			got := make([]byte, size)
			if _, err := n.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("content differs after concurrent writes")
			}
			img := n.Image.(*Image)
			img.mu.Lock()
			defer img.mu.Unlock()
			checkRefcounts(t, img)
		})
	}
}

// checkRefcounts expects every cluster's refcount to equal its references
// and the COPIED flags to be right: a check finds nothing (the caller holds
// the lock).
func checkRefcounts(t testing.TB, img *Image) {
	t.Helper()
	var lines []string
	res, err := img.check(0, func(l string) { lines = append(lines, l) })
	if err != nil || res.Corruptions != 0 || res.Leaks != 0 || res.CheckErrors != 0 {
		t.Fatalf("check: %+v, %v\n%s", res, err, strings.Join(lines, "\n"))
	}
}

// TestInteropCompressedReadByQEMU writes compressed clusters at every
// cluster size, zlib and zstd, and has QEMU read them: a constant pattern
// with qemu-io's read -P, and data whose repeats lie further apart than
// the 4 KiB deflate window with qemu-img compare.
func TestInteropCompressedReadByQEMU(t *testing.T) {
	oracle.QemuIOPath(t)
	for bits := minClusterBits; bits <= maxClusterBits; bits++ {
		for _, ct := range []string{"zlib", "zstd"} {
			cs := int64(1) << bits
			t.Run(fmt.Sprintf("%s-%d", ct, cs), func(t *testing.T) {
				t.Parallel()
				dir := t.TempDir()
				img := filepath.Join(dir, "c.qcow2")
				size := 4 * cs
				env := hostEnv()
				if err := env.Create(block.CreateParams{Filename: img, Format: "qcow2", Size: size,
					Options: fmt.Sprintf("cluster_size=%d,compression_type=%s", cs, ct)}); err != nil {
					t.Fatal(err)
				}
				n, err := env.Open(img, hostWrite())
				if err != nil {
					t.Fatal(err)
				}
				c := n.Image.(block.Compressor)
				if err := c.WriteCompressed(bytes.Repeat([]byte{0x5a}, int(cs)), 0); err != nil {
					t.Fatal(err)
				}
				far := oracle.RandomBytes(uint64(bits), 6000)
				rep := bytes.Repeat(far, int(cs)/6000+1)[:cs]
				if err := c.WriteCompressed(rep, cs); err != nil {
					t.Fatal(err)
				}
				rnd := oracle.RandomBytes(uint64(bits)+100, int(cs)) // incompressible: stored plain
				if err := c.WriteCompressed(rnd, 2*cs); err != nil {
					t.Fatal(err)
				}
				// Skewed bytes without repeats (base64), which only
				// Huffman coding shrinks.
				b64 := []byte(base64.StdEncoding.EncodeToString(oracle.RandomBytes(uint64(bits)+200, int(cs))))[:cs]
				if err := c.WriteCompressed(b64, 3*cs); err != nil {
					t.Fatal(err)
				}
				if e, err := n.BlockStatus(3*cs, cs); err != nil || !e.Has(block.Compressed) {
					t.Fatalf("base64 cluster not compressed: %+v %v", e, err)
				}
				if err := n.Close(); err != nil {
					t.Fatal(err)
				}
				oracle.ReadPattern(t, img, "qcow2", 0x5a, 0, cs)
				oracle.Check(t, img, "qcow2")
				want := make([]byte, size)
				copy(want, bytes.Repeat([]byte{0x5a}, int(cs)))
				copy(want[cs:], rep)
				copy(want[2*cs:], rnd)
				copy(want[3*cs:], b64)
				raw := filepath.Join(dir, "want.raw")
				if err := os.WriteFile(raw, want, 0o644); err != nil {
					t.Fatal(err)
				}
				oracle.Compare(t, img, "qcow2", raw, "raw")
				m := oracle.MustQemuImg(t, "map", "--output=json", img)
				if cs >= 4096 && !strings.Contains(m, `"compressed": true`) && !strings.Contains(m, `"data": true`) {
					t.Fatalf("map: %s", m)
				}
			})
		}
	}
}

// TestInteropRefcountTableGrowth writes enough to 512-byte clusters that
// the refcount table must move and grow several times.
func TestInteropRefcountTableGrowth(t *testing.T) {
	oracle.QemuImgPath(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "g.qcow2")
	const size = 24 << 20
	env := hostEnv()
	if err := env.Create(block.CreateParams{Filename: img, Format: "qcow2", Size: size, Options: "cluster_size=512,refcount_bits=64"}); err != nil {
		t.Fatal(err)
	}
	n, err := env.Open(img, hostWrite())
	if err != nil {
		t.Fatal(err)
	}
	want := oracle.RandomBytes(9, size)
	// Scattered writes first, so that data and metadata interleave.
	for k := int64(0); k < 64; k++ {
		off := (k * 7919 * 512) % (size - 4096)
		if _, err := n.WriteAt(want[off:off+4096], off); err != nil {
			t.Fatal(err)
		}
	}
	for off := int64(0); off < size; off += 1 << 20 {
		if _, err := n.WriteAt(want[off:off+1<<20], off); err != nil {
			t.Fatal(err)
		}
	}
	img2 := n.Image.(*Image)
	img2.mu.Lock()
	reftableMoved := img2.reftableOff != 512
	img2.mu.Unlock()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if !reftableMoved {
		t.Fatal("the refcount table did not grow")
	}
	oracle.Check(t, img, "qcow2")
	raw := filepath.Join(dir, "want.raw")
	if err := os.WriteFile(raw, want, 0o644); err != nil {
		t.Fatal(err)
	}
	oracle.Compare(t, img, "qcow2", raw, "raw")
}

// TestLongHeaderKept rewrites the header of an image whose header_length
// is beyond what QEMU 7.2 knows: the unknown fields and unknown extensions
// survive.
func TestLongHeaderKept(t *testing.T) {
	env, fs := testEnv(t)
	img := testImage(t, "v3-512.qcow2")
	c := firstCluster(t, img)
	long := make([]byte, 0, len(img))
	long = append(long, c[:headerV3Length]...)
	long = append(long, 1, 2, 3, 4, 5, 6, 7, 8)
	var exts []byte
	exts = appendExtension(exts, 0xabcd0001, []byte("kept"))
	long = append(long, exts...)
	long = append(long, c[headerV3Length:len(c)-8-len(exts)]...)
	long = append(long, img[len(c):]...)
	binary.BigEndian.PutUint32(long[100:], headerV3Length+8)
	f := storage.NewMemFile("long.qcow2")
	f.WriteAt(long, 0)
	fs.Put("long.qcow2", f)
	n, err := env.Open("long.qcow2", block.OpenOptions{Write: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Image.(block.BackingChanger).ChangeBackingFile("base.raw", "raw"); err != nil {
		t.Fatal(err)
	}
	if _, err := n.WriteAt([]byte("data"), 100); err != nil {
		t.Fatal(err)
	}
	n.Close()
	out := make([]byte, 512)
	fs.File("long.qcow2").ReadAt(out, 0)
	h, err := DecodeHeader(out)
	if err != nil {
		t.Fatal(err)
	}
	x, err := ParseExtensions(out, h)
	if err != nil {
		t.Fatal(err)
	}
	if h.HeaderLength != headerV3Length+8 || !bytes.Equal(h.UnknownFields, []byte{1, 2, 3, 4, 5, 6, 7, 8}) {
		t.Fatalf("header length %d, unknown fields %v", h.HeaderLength, h.UnknownFields)
	}
	if len(x.Unknown) != 1 || string(x.Unknown[0].Data) != "kept" || x.BackingFormat != "raw" {
		t.Fatalf("extensions %+v", x)
	}
}
