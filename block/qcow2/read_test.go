package qcow2

import (
	"bytes"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/block/raw"
	"github.com/qimg/qimg/storage"
)

// testEnv returns an environment whose file system holds every testdata
// file (ungzipped).
func testEnv(t testing.TB) (*block.Env, *storage.MemFS) {
	t.Helper()
	fs := storage.NewMemFS()
	m, err := filepath.Glob(filepath.Join("testdata", "*.gz"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range m {
		name := strings.TrimSuffix(filepath.Base(p), ".gz")
		f := storage.NewMemFile(name)
		if _, err := f.WriteAt(testImage(t, name), 0); err != nil {
			t.Fatal(err)
		}
		fs.Put(name, f)
	}
	return &block.Env{Registry: block.NewRegistry(New(), raw.New()), Files: fs}, fs
}

// pattern returns n bytes of b.
func pattern(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

// expectRuns builds expected content from (offset, length, byte) runs over
// zeroes.
func expectRuns(size int, runs ...[3]int) []byte {
	b := make([]byte, size)
	for _, r := range runs {
		copy(b[r[0]:], pattern(byte(r[2]), r[1]))
	}
	return b
}

// TestReadQEMUImages reads the images QEMU wrote (testdata/gen.sh) and
// expects the patterns it wrote.
func TestReadQEMUImages(t *testing.T) {
	const k = 1024
	v3 := expectRuns(64*k, [3]int{0, k, 0x11}, [3]int{4 * k, 512, 0x22}, [3]int{60 * k, 3 * k, 0x33})
	tests := []struct {
		name string
		want []byte
	}{
		{"v3-512.qcow2", v3},
		{"v2-512.qcow2", expectRuns(64*k, [3]int{k, 2 * k, 0x44})},
		{"rc1.qcow2", expectRuns(64*k, [3]int{0, 5 * k, 0x55})},
		{"zstd.qcow2", expectRuns(32*k, [3]int{0, 512, 0x66}, [3]int{512, 512, 0x67})},
		{"backed.qcow2", func() []byte { b := append([]byte(nil), v3...); copy(b[512:], pattern(0x77, 512)); return b }()},
		{"lazy.qcow2", make([]byte, 16*k)},
		{"snap.qcow2", expectRuns(16*k, [3]int{0, k, 1}, [3]int{512, k, 2})},
		{"datafile.qcow2", expectRuns(16*k, [3]int{0, k, 8})},
		{"bitmaps.qcow2", make([]byte, 64*k)},
		{"extl2.qcow2", expectRuns(1024*k, [3]int{k, 2 * k, 9})},
	}
	env, _ := testEnv(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n, err := env.Open(tc.name, block.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer n.Close()
			if n.Size() != int64(len(tc.want)) {
				t.Fatalf("size %d, want %d", n.Size(), len(tc.want))
			}
			// Read in odd-sized pieces to cross cluster boundaries.
			got := make([]byte, len(tc.want))
			for off := 0; off < len(got); off += 1000 {
				end := min(off+1000, len(got))
				if _, err := n.ReadAt(got[off:end], int64(off)); err != nil {
					t.Fatalf("read at %d: %v", off, err)
				}
			}
			if !bytes.Equal(got, tc.want) {
				for j := range got {
					if got[j] != tc.want[j] {
						t.Fatalf("content differs at %d: %#x, want %#x", j, got[j], tc.want[j])
					}
				}
			}
		})
	}
}

func TestBlockStatusQEMUImage(t *testing.T) {
	env, _ := testEnv(t)
	n, err := env.Open("v3-512.qcow2", block.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	tests := []struct {
		off    int64
		status block.Status
		length int64
	}{
		{0, block.Allocated | block.Data | block.OffsetValid, 1024},
		{1024, block.Zero, 3072},
		{4096, block.Allocated | block.Data | block.Compressed, 512},
		{8192, block.Allocated | block.Zero, 1024},
	}
	for _, tc := range tests {
		e, err := n.BlockStatus(tc.off, n.Size()-tc.off)
		if err != nil {
			t.Fatal(err)
		}
		if e.Status != tc.status || e.Length != tc.length {
			t.Errorf("at %d: status %#x length %d, want %#x %d", tc.off, e.Status, e.Length, tc.status, tc.length)
		}
	}
}

// corruptImage returns a copy of the v3-512 test image changed by fn, in a
// fresh environment, under the name "bad.qcow2".
func corruptImage(t *testing.T, fn func(b []byte) []byte) *block.Env {
	env, fs := testEnv(t)
	b := fn(testImage(t, "v3-512.qcow2"))
	f := storage.NewMemFile("bad.qcow2")
	f.WriteAt(b, 0)
	fs.Put("bad.qcow2", f)
	return env
}

func TestOpenBadImages(t *testing.T) {
	put64 := func(off int, v uint64) func(b []byte) []byte {
		return func(b []byte) []byte {
			for k := 0; k < 8; k++ {
				b[off+k] = byte(v >> (56 - 8*k))
			}
			return b
		}
	}
	put32 := func(off int, v uint32) func(b []byte) []byte {
		return func(b []byte) []byte {
			for k := 0; k < 4; k++ {
				b[off+k] = byte(v >> (24 - 8*k))
			}
			return b
		}
	}
	tests := []struct {
		name string
		fn   func(b []byte) []byte
		want string
	}{
		{"unknown incompatible", put64(72, 1<<20), "Unsupported qcow2 feature(s): Unknown incompatible feature: 100000"},
		{"no refcount table", put32(56, 0), "Image does not contain a reference count table"},
		{"refcount table too large", put32(56, 1<<30), "Reference count table too large"},
		{"refcount table unaligned", put64(48, 1000), "Reference count table offset invalid"},
		{"refcount table beyond end", put64(48, 1<<40), "Reference count table extends beyond the end of the file"},
		{"snapshots too many", put32(60, 70000), "Snapshot table too large"},
		{"snapshots unaligned", put64(64, 7), "Snapshot table offset invalid"},
		{"l1 too large", put32(36, 1<<23), "Active L1 table too large"},
		{"l1 unaligned", put64(40, 513), "Active L1 table offset invalid"},
		{"l1 beyond end", put64(40, 1<<30), "Active L1 table extends beyond the end of the file"},
		{"l1 too small", put64(24, 1<<40), "L1 table is too small"},
		{"image too big", put64(24, 1<<62), "Image is too big"},
		{"refcount order", put32(96, 7), "Reference count entry width too large; may not exceed 64 bits"},
		{"encryption method", put32(32, 3), "Unsupported encryption method 3"},
		{"backing name too long", func(b []byte) []byte {
			put64(8, 400)(b)
			return put32(16, 200)(b)
		}, "Backing file name too long"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := corruptImage(t, tc.fn)
			n, err := env.Open("bad.qcow2", block.OpenOptions{Format: "qcow2"})
			if err == nil {
				n.Close()
				t.Fatalf("opened; want %q", tc.want)
			}
			if err.Error() != tc.want {
				t.Fatalf("error %q, want %q", err, tc.want)
			}
		})
	}
}

func TestCorruptBitRefusesWrite(t *testing.T) {
	env := corruptImage(t, func(b []byte) []byte { b[79] |= incompatCorrupt; return b })
	_, err := env.Open("bad.qcow2", block.OpenOptions{Format: "qcow2", Write: true})
	if err == nil || err.Error() != "qcow2: Image is corrupt; cannot be opened read/write" {
		t.Fatalf("error %v", err)
	}
	n, err := env.Open("bad.qcow2", block.OpenOptions{Format: "qcow2"})
	if err != nil {
		t.Fatal(err)
	}
	n.Close()
}

// TestCorruptL2Entries reads through hostile L2 entries: errors, never
// panics or wrong-sized reads.
func TestCorruptL2Entries(t *testing.T) {
	img := testImage(t, "v3-512.qcow2")
	h, _ := DecodeHeader(firstCluster(t, img))
	l1 := int(h.L1TableOffset)
	l2 := int(uint64(img[l1])<<56|uint64(img[l1+1])<<48|uint64(img[l1+2])<<40|uint64(img[l1+3])<<32|
		uint64(img[l1+4])<<24|uint64(img[l1+5])<<16|uint64(img[l1+6])<<8|uint64(img[l1+7])) & l1OffsetMask
	for _, entry := range []uint64{
		oflagCopied | 1000,             // unaligned data cluster
		oflagCompressed | 1<<53 | 4000, // compressed beyond the file
		oflagCompressed | 0x3fffffffffffffff,
		oflagCopied | 1<<50, // beyond the file: reads as zeroes
	} {
		env := corruptImage(t, func(b []byte) []byte {
			for k := 0; k < 8; k++ {
				b[l2+k] = byte(entry >> (56 - 8*k))
			}
			return b
		})
		n, err := env.Open("bad.qcow2", block.OpenOptions{Format: "qcow2"})
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 512)
		_, err = n.ReadAt(buf, 0)
		if err != nil && !errors.Is(err, block.ErrCorrupt) && err != errDecompress {
			t.Errorf("entry %#x: unexpected error %v", entry, err)
		}
		n.Close()
	}
}

// TestBlockStatusMetadataPreallocation: in an image that looks
// preallocated with metadata, data clusters that are holes in the file read
// as zeroes, cut at the file's data; elsewhere data clusters stay data.
func TestBlockStatusMetadataPreallocation(t *testing.T) {
	const mb = 1 << 20
	data := block.Allocated | block.Data | block.OffsetValid
	tests := []struct {
		name string
		opts string
		want []block.Extent // from 0, until the image's end
	}{
		{name: "metadata", opts: "preallocation=metadata", want: []block.Extent{
			{Length: mb, Status: data | block.Zero},
			{Length: 64 << 10, Status: data},
			{Length: 15*mb - 64<<10, Status: data | block.Zero},
		}},
		{name: "off", opts: "preallocation=off", want: []block.Extent{
			{Length: mb, Status: block.Zero},
			{Length: 64 << 10, Status: data},
			{Length: 15*mb - 64<<10, Status: block.Zero},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env, _ := testEnv(t)
			if err := env.Create(block.CreateParams{Filename: "p.qcow2", Format: "qcow2", Size: 16 * mb, Options: tc.opts}); err != nil {
				t.Fatal(err)
			}
			n, err := env.Open("p.qcow2", block.OpenOptions{Write: true})
			if err != nil {
				t.Fatal(err)
			}
			defer n.Close()
			if _, err := n.WriteAt(pattern(5, 64<<10), mb); err != nil {
				t.Fatal(err)
			}
			var off int64
			for k, w := range tc.want {
				e, err := n.BlockStatus(off, n.Size()-off)
				if err != nil {
					t.Fatal(err)
				}
				if e.Status != w.Status || e.Length != w.Length {
					t.Fatalf("run %d at %d: status %#x length %d, want %#x %d", k, off, e.Status, e.Length, w.Status, w.Length)
				}
				off += e.Length
			}
			if off != n.Size() {
				t.Fatalf("runs end at %d, want %d", off, n.Size())
			}
		})
	}
}
