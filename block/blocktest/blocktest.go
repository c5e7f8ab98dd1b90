// Package blocktest is the conformance suite every image format driver must
// pass, and a generator of random image layouts with a model of their
// expected content.
//
// A driver package runs the suite from a test:
//
//	func TestConformance(t *testing.T) {
//		blocktest.Run(t, blocktest.Factory{Driver: qcow2.New(), Options: "cluster_size=4096"})
//	}
//
// Run creates images through the block layer (block.Env.Create, then
// block.Env.Open with the format named, so no probing is involved), in
// memory (storage.MemFS) and in a temporary directory, and checks reads and
// writes at byte granularity, requests that cross sector and cluster
// boundaries, out-of-range requests (block.ErrRange), BlockStatus
// invariants, WriteZeroes with and without MayUnmap, Discard, Flush,
// persistence across reopening, read-only opens, concurrent requests on
// disjoint ranges, and a terabyte-sized sparse image.
//
// RandomImage, Model and Verify are usable on their own, for instance to
// write a layout with qimg and check it with qemu-io (Op.QemuIO,
// Model.ConstantRuns), or the other way round.
package blocktest

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/storage"
)

// Factory describes the format under test.
type Factory struct {
	// Driver is the format. Unless Create is set it must implement
	// block.Creator.
	Driver block.Driver
	// Others are further drivers the registry needs (none for most
	// formats).
	Others []block.Driver
	// Options is the create option list, as -o takes it
	// ("cluster_size=4096"); empty means the format's defaults.
	Options string
	// OpenOptions are the runtime options passed at every open.
	OpenOptions map[string]string
	// Create, if set, creates a new image of the given size in env under
	// name instead of env.Create.
	Create func(env *block.Env, name string, size int64) error
	// Granularity is the format's allocation unit (the cluster size),
	// used to place requests on and across its boundaries; 0 means 64 KiB.
	Granularity int64
	// MemOnly skips the runs on host files.
	MemOnly bool
}

func (f *Factory) granularity() int64 {
	if f.Granularity > 0 {
		return f.Granularity
	}
	return 64 << 10
}

// store is where the suite's images live.
type store struct {
	name string
	// env returns a fresh environment and a directory to name images in.
	env func(t *testing.T) (*block.Env, string)
}

func (f *Factory) stores() []store {
	registry := func() *block.Registry {
		return block.NewRegistry(append([]block.Driver{f.Driver}, f.Others...)...)
	}
	s := []store{{"mem", func(t *testing.T) (*block.Env, string) {
		return &block.Env{Registry: registry(), Files: storage.NewMemFS()}, "/mem"
	}}}
	if !f.MemOnly {
		s = append(s, store{"file", func(t *testing.T) (*block.Env, string) {
			return &block.Env{Registry: registry()}, t.TempDir()
		}})
	}
	return s
}

// harness is one image of the format under test and the model of its
// content.
type harness struct {
	T       *testing.T
	Env     *block.Env
	Name    string
	Factory *Factory
	// Image is the open image (read-write unless reopened read-only).
	Image *block.Node
	// Model is the expected content.
	Model *Model
}

// newHarness creates and opens, read-write, a new image of the given size
// in a fresh environment of the store; the image is closed when the test
// ends.
func newHarness(t *testing.T, f *Factory, s store, size int64) *harness {
	t.Helper()
	env, dir := s.env(t)
	h := &harness{T: t, Env: env, Name: filepath.Join(dir, "image."+f.Driver.Name()), Factory: f}
	var err error
	if f.Create != nil {
		err = f.Create(env, h.Name, size)
	} else {
		err = env.Create(block.CreateParams{Filename: h.Name, Format: f.Driver.Name(), Size: size, Options: f.Options})
	}
	if err != nil {
		t.Fatalf("create %s image of %d bytes: %v", f.Driver.Name(), size, err)
	}
	h.Open(true)
	h.Model = NewModel(h.Image.Size())
	t.Cleanup(func() {
		if h.Image != nil {
			h.Image.Close()
		}
	})
	return h
}

// Open (re)opens the image, closing it first if it is open.
func (h *harness) Open(write bool) {
	h.T.Helper()
	if h.Image != nil {
		if err := h.Image.Close(); err != nil {
			h.T.Fatalf("close: %v", err)
		}
		h.Image = nil
	}
	n, err := h.Env.Open(h.Name, block.OpenOptions{Format: h.Factory.Driver.Name(), Write: write, DriverOptions: h.Factory.OpenOptions})
	if err != nil {
		h.T.Fatalf("open %s (write %v): %v", h.Name, write, err)
	}
	h.Image = n
}

// Write writes p at off and records it.
func (h *harness) Write(p []byte, off int64) {
	h.T.Helper()
	if n, err := h.Image.WriteAt(p, off); err != nil || n != len(p) {
		h.T.Fatalf("WriteAt(%d bytes at %d) = %d, %v", len(p), off, n, err)
	}
	h.Model.Write(p, off)
}

// Zero zeroes [off, off+n) and records it.
func (h *harness) Zero(off, n int64, flags block.ZeroFlags) {
	h.T.Helper()
	if err := h.Image.WriteZeroes(off, n, flags); err != nil {
		h.T.Fatalf("WriteZeroes(%d, %d, %d): %v", off, n, flags, err)
	}
	h.Model.Zero(off, n)
}

// Check reads [off, off+n) and compares it with the model.
func (h *harness) Check(off, n int64) {
	h.T.Helper()
	if err := compareRange(h.Image, h.Model, off, n); err != nil {
		h.T.Fatal(err)
	}
}

// Verify checks the whole image against the model (see Verify).
func (h *harness) Verify() {
	h.T.Helper()
	if err := Verify(h.Image, h.Model); err != nil {
		h.T.Fatal(err)
	}
}

// pattern returns n bytes that differ from offset to offset and from seed
// to seed.
func pattern(seed uint64, n int64) []byte {
	return Op{Kind: OpWrite, Length: n, Random: true, Seed: seed}.Data()
}

// defaultSize is the size of most of the suite's images: sector-aligned but
// not cluster-aligned, so that the last cluster is partial.
const defaultSize = 4<<20 + 3*512

// Run runs the conformance suite on the format f describes.
func Run(t *testing.T, f Factory) {
	if f.Driver == nil {
		t.Fatal("blocktest: Factory.Driver is nil")
	}
	if _, ok := f.Driver.(block.Creator); !ok && f.Create == nil {
		t.Fatalf("blocktest: %s cannot create images and Factory.Create is nil", f.Driver.Name())
	}
	tests := []struct {
		name string
		fn   func(t *testing.T, f *Factory, s store)
	}{
		{"Sizes", testSizes},
		{"ReadWrite", testReadWrite},
		{"Boundaries", testBoundaries},
		{"OutOfRange", testOutOfRange},
		{"BlockStatus", testBlockStatus},
		{"WriteZeroes", testWriteZeroes},
		{"Discard", testDiscard},
		{"FlushReopen", testFlushReopen},
		{"ReadOnly", testReadOnly},
		{"Concurrent", testConcurrent},
		{"RandomImage", testRandomImage},
		{"Terabyte", testTerabyte},
	}
	for _, s := range f.stores() {
		t.Run(s.name, func(t *testing.T) {
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					t.Parallel()
					tc.fn(t, &f, s)
				})
			}
		})
	}
}

func testSizes(t *testing.T, f *Factory, s store) {
	for _, size := range []int64{0, 512, 64 << 10, 1<<20 + 512, defaultSize} {
		h := newHarness(t, f, s, size)
		if got := h.Image.Size(); got != size {
			t.Errorf("image created with %d bytes has size %d", size, got)
		}
		if got := h.Image.Format(); got != f.Driver.Name() {
			t.Errorf("Format() = %q, want %q", got, f.Driver.Name())
		}
		if n, err := h.Image.ReadAt(nil, 0); n != 0 || err != nil {
			t.Errorf("empty read at 0 = %d, %v", n, err)
		}
		if n, err := h.Image.ReadAt(nil, size); n != 0 || err != nil {
			t.Errorf("empty read at the end = %d, %v", n, err)
		}
		// A new image reads as zeroes and has no data.
		h.Verify()
		h.Image.Close()
		h.Image = nil
	}
}

func testReadWrite(t *testing.T, f *Factory, s store) {
	h := newHarness(t, f, s, defaultSize)
	r := rand.New(rand.NewPCG(1, 2))
	size := h.Image.Size()
	for i := 0; i < 200; i++ {
		off := r.Int64N(size)
		n := 1 + r.Int64N(min(size-off, 3*f.granularity()))
		switch r.IntN(4) {
		case 0:
			n = min(n, 1+r.Int64N(16)) // tiny
		case 1:
			off = off &^ 511 // sector-aligned start, any length
			n = min(n, size-off)
		}
		h.Write(pattern(uint64(i), n), off)
		// Read back a random range overlapping the write.
		roff := max(0, off-r.Int64N(1000))
		rn := min(size-roff, n+r.Int64N(2000))
		h.Check(roff, rn)
	}
	// The first and the last byte.
	h.Write([]byte{0xa5}, 0)
	h.Write([]byte{0x5a}, size-1)
	h.Check(0, 1)
	h.Check(size-1, 1)
	h.Verify()
}

func testBoundaries(t *testing.T, f *Factory, s store) {
	h := newHarness(t, f, s, defaultSize)
	g := f.granularity()
	size := h.Image.Size()
	var seed uint64
	for _, b := range []int64{512, 4096, g, 2 * g, 3 * g, size - g} {
		for _, d := range []int64{-1, 0, 1} {
			for _, n := range []int64{1, 2, 511, 512, 513, g - 1, g, g + 1, 2*g + 3} {
				off := b + d
				if off < 0 || off+n > size {
					continue
				}
				seed++
				h.Write(pattern(seed, n), off)
				h.Check(max(0, off-1), min(size, off+n+1)-max(0, off-1))
			}
		}
	}
	// Writes ending exactly at the end of the image.
	for _, n := range []int64{1, 511, 512, 513, g + 7} {
		seed++
		h.Write(pattern(seed, n), size-n)
		h.Check(size-n, n)
	}
	// Zero-length requests anywhere inside, and at the end.
	for _, off := range []int64{0, 1, g, size} {
		if n, err := h.Image.WriteAt(nil, off); n != 0 || err != nil {
			t.Errorf("empty write at %d = %d, %v", off, n, err)
		}
		if n, err := h.Image.ReadAt([]byte{}, off); n != 0 || err != nil {
			t.Errorf("empty read at %d = %d, %v", off, n, err)
		}
	}
	h.Verify()
}

func testOutOfRange(t *testing.T, f *Factory, s store) {
	h := newHarness(t, f, s, defaultSize)
	h.Write(pattern(1, 4096), h.Image.Size()-4096)
	size := h.Image.Size()
	cases := []struct{ off, n int64 }{
		{size, 1}, {size - 1, 2}, {size + 512, 512}, {-1, 1}, {-512, 1024},
		{0, size + 1}, {1 << 62, 1}, {size - 1, 1 << 62}, {1<<63 - 1, 1},
	}
	for _, c := range cases {
		buf := make([]byte, min(c.n, 1<<20))
		if c.n <= 1<<20 {
			if _, err := h.Image.ReadAt(buf, c.off); !errors.Is(err, block.ErrRange) {
				t.Errorf("ReadAt(%d bytes at %d): %v, want ErrRange", len(buf), c.off, err)
			}
			if _, err := h.Image.WriteAt(buf, c.off); !errors.Is(err, block.ErrRange) {
				t.Errorf("WriteAt(%d bytes at %d): %v, want ErrRange", len(buf), c.off, err)
			}
		}
		if err := h.Image.WriteZeroes(c.off, c.n, 0); !errors.Is(err, block.ErrRange) {
			t.Errorf("WriteZeroes(%d, %d): %v, want ErrRange", c.off, c.n, err)
		}
		if err := h.Image.WriteZeroes(c.off, c.n, block.MayUnmap); !errors.Is(err, block.ErrRange) {
			t.Errorf("WriteZeroes(%d, %d, MayUnmap): %v, want ErrRange", c.off, c.n, err)
		}
		if err := h.Image.Discard(c.off, c.n); !errors.Is(err, block.ErrRange) {
			t.Errorf("Discard(%d, %d): %v, want ErrRange", c.off, c.n, err)
		}
		if _, err := h.Image.BlockStatus(c.off, c.n); !errors.Is(err, block.ErrRange) {
			t.Errorf("BlockStatus(%d, %d): %v, want ErrRange", c.off, c.n, err)
		}
	}
	// Nothing changed, and the size did not grow.
	if got := h.Image.Size(); got != size {
		t.Errorf("size %d after refused requests, want %d", got, size)
	}
	h.Verify()
}

func testBlockStatus(t *testing.T, f *Factory, s store) {
	h := newHarness(t, f, s, defaultSize)
	m, err := RandomImage(h.Image, 11, RandomOptions{MaxRun: 3 * f.granularity()})
	if err != nil {
		t.Fatal(err)
	}
	h.Model = m
	h.Verify()
	// Queries that start anywhere and ask for any length.
	size := h.Image.Size()
	r := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 300; i++ {
		off := r.Int64N(size)
		n := 1 + r.Int64N(size-off)
		if i%2 == 0 {
			n = 1 + r.Int64N(min(size-off, 2*f.granularity()))
		}
		ext, err := h.Image.BlockStatus(off, n)
		if err != nil {
			t.Fatalf("BlockStatus(%d, %d): %v", off, n, err)
		}
		if err := checkExtent(ext, off, n); err != nil {
			t.Fatal(err)
		}
		if readsZero(ext) {
			if pos := m.FirstNonZero(off, ext.Length); pos >= 0 {
				t.Fatalf("BlockStatus(%d, %d) says [%d, %d) reads as zeroes (%s), but %d holds data",
					off, n, off, off+ext.Length, statusString(ext.Status), pos)
			}
		}
	}
	// Written data is reported as data.
	for _, off := range []int64{0, 12345, size - 100} {
		h.Write(bytes.Repeat([]byte{0xee}, 100), off)
		ext, err := h.Image.BlockStatus(off, 100)
		if err != nil {
			t.Fatal(err)
		}
		if !ext.Has(block.Data) || ext.Has(block.Zero) {
			t.Errorf("BlockStatus after writing data at %d: %s", off, statusString(ext.Status))
		}
	}
	h.Verify()
}

func testWriteZeroes(t *testing.T, f *Factory, s store) {
	h := newHarness(t, f, s, defaultSize)
	size := h.Image.Size()
	g := f.granularity()
	h.Write(pattern(1, size), 0)
	r := rand.New(rand.NewPCG(5, 6))
	for i := 0; i < 40; i++ {
		var off, n int64
		switch i % 3 {
		case 0: // byte-granular
			off = r.Int64N(size)
			n = 1 + r.Int64N(min(size-off, 3*g))
		case 1: // whole clusters
			off = r.Int64N(size/g) * g
			n = min(size-off, (1+r.Int64N(3))*g)
		default: // spanning clusters, unaligned at both ends
			off = r.Int64N(size/g)*g + g/2
			n = min(size-off, 2*g)
		}
		if n <= 0 {
			continue
		}
		flags := block.ZeroFlags(0)
		if r.IntN(2) == 0 {
			flags = block.MayUnmap
		}
		h.Zero(off, n, flags)
		h.Check(max(0, off-10), min(size, off+n+10)-max(0, off-10))
		// Writing data again afterwards works.
		if i%4 == 0 {
			h.Write(pattern(uint64(100+i), min(n, 777)), off)
		}
	}
	// Zero ranges reported as data must still read as zeroes: Verify
	// reads everything back.
	h.Verify()

	// NoFallback either zeroes quickly or fails with ErrUnsupported
	// leaving the content as it was.
	for _, flags := range []block.ZeroFlags{block.NoFallback, block.NoFallback | block.MayUnmap} {
		off, n := g, 2*g
		err := h.Image.WriteZeroes(off, n, flags)
		switch {
		case err == nil:
			h.Model.Zero(off, n)
		case errors.Is(err, block.ErrUnsupported):
		default:
			t.Fatalf("WriteZeroes(NoFallback): %v", err)
		}
		h.Check(0, 4*g)
		h.Write(pattern(9, n), off)
	}
	// Zeroes over the whole image.
	h.Zero(0, size, block.MayUnmap)
	h.Verify()
}

func testDiscard(t *testing.T, f *Factory, s store) {
	h := newHarness(t, f, s, defaultSize)
	size := h.Image.Size()
	g := f.granularity()
	h.Write(pattern(2, size), 0)
	for _, c := range []struct{ off, n int64 }{
		{0, g}, {g + 100, 2 * g}, {5 * g, 1}, {size - g - 3, g + 3}, {7*g + 1, 3*g - 2},
	} {
		before := h.Model.Bytes(c.off, c.n)
		if err := h.Image.Discard(c.off, c.n); err != nil {
			t.Fatalf("Discard(%d, %d): %v", c.off, c.n, err)
		}
		// The content of a discarded range is unspecified, but each byte
		// must read as it was or as zero; the rest is untouched.
		got := make([]byte, c.n)
		if _, err := h.Image.ReadAt(got, c.off); err != nil {
			t.Fatal(err)
		}
		for i := range got {
			if got[i] != 0 && got[i] != before[i] {
				t.Fatalf("after Discard(%d, %d), offset %d reads %#x (was %#x)", c.off, c.n, c.off+int64(i), got[i], before[i])
			}
		}
		h.Model.Write(got, c.off)
		h.Check(max(0, c.off-g), min(size, c.off+c.n+g)-max(0, c.off-g))
	}
	if err := h.Image.Discard(0, 0); err != nil {
		t.Errorf("empty Discard: %v", err)
	}
	// Discarded ranges can be written again.
	h.Write(pattern(3, 2*g), g)
	h.Verify()
}

func testFlushReopen(t *testing.T, f *Factory, s store) {
	h := newHarness(t, f, s, defaultSize)
	m, err := RandomImage(h.Image, 21, RandomOptions{MaxRun: 2 * f.granularity()})
	if err != nil {
		t.Fatal(err)
	}
	h.Model = m
	if err := h.Image.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	h.Open(false)
	h.Verify()
	h.Open(true)
	h.Verify()
	// More writes, then close without an explicit flush: Close flushes.
	h.Write(pattern(22, 3*f.granularity()), f.granularity()/2)
	h.Zero(h.Image.Size()/2, f.granularity(), block.MayUnmap)
	if err := h.Image.Flush(); err != nil {
		t.Fatalf("second Flush: %v", err)
	}
	if err := h.Image.Flush(); err != nil {
		t.Fatalf("Flush with nothing to flush: %v", err)
	}
	h.Open(true)
	h.Verify()
}

func testReadOnly(t *testing.T, f *Factory, s store) {
	h := newHarness(t, f, s, defaultSize)
	h.Write(pattern(4, 10000), 100)
	h.Open(false)
	if _, err := h.Image.WriteAt([]byte{1}, 0); !errors.Is(err, block.ErrReadOnly) {
		t.Errorf("WriteAt on a read-only image: %v", err)
	}
	if err := h.Image.WriteZeroes(0, 512, 0); !errors.Is(err, block.ErrReadOnly) {
		t.Errorf("WriteZeroes on a read-only image: %v", err)
	}
	if err := h.Image.WriteZeroes(0, 512, block.MayUnmap); !errors.Is(err, block.ErrReadOnly) {
		t.Errorf("WriteZeroes(MayUnmap) on a read-only image: %v", err)
	}
	if err := h.Image.Discard(0, 512); !errors.Is(err, block.ErrReadOnly) {
		t.Errorf("Discard on a read-only image: %v", err)
	}
	if err := h.Image.Flush(); err != nil {
		t.Errorf("Flush on a read-only image: %v", err)
	}
	h.Verify()
}

func testConcurrent(t *testing.T, f *Factory, s store) {
	h := newHarness(t, f, s, defaultSize)
	size := h.Image.Size()
	// The first half is written first and then only read; the second
	// half is cut into unaligned slots, several to a cluster, each
	// written by its own goroutine while others read the first half.
	half := size / 2
	h.Write(pattern(30, half), 0)
	const workers = 8
	slot := (size - half) / 64
	var wg sync.WaitGroup
	errs := make(chan error, 2*workers)
	for w := 0; w < workers; w++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for i := w; i < 64; i += workers {
				off := half + int64(i)*slot
				p := pattern(uint64(1000+i), slot)
				if n, err := h.Image.WriteAt(p, off); err != nil || n != len(p) {
					errs <- fmt.Errorf("concurrent WriteAt(%d bytes at %d) = %d, %v", len(p), off, n, err)
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 9))
			want := make([]byte, 3*f.granularity())
			got := make([]byte, len(want))
			for i := 0; i < 20; i++ {
				n := 1 + r.Int64N(int64(len(got)))
				off := r.Int64N(half - n)
				h.Model.ReadAt(want[:n], off) // the first half's model is not written concurrently
				if _, err := h.Image.ReadAt(got[:n], off); err != nil {
					errs <- fmt.Errorf("concurrent ReadAt: %w", err)
					return
				}
				if !bytes.Equal(got[:n], want[:n]) {
					errs <- fmt.Errorf("concurrent ReadAt(%d bytes at %d) read wrong data", n, off)
					return
				}
				if _, err := h.Image.BlockStatus(off, n); err != nil {
					errs <- fmt.Errorf("concurrent BlockStatus: %w", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i := 0; i < 64; i++ {
		h.Model.Write(pattern(uint64(1000+i), slot), half+int64(i)*slot)
	}
	h.Verify()
}

func testRandomImage(t *testing.T, f *Factory, s store) {
	for seed := uint64(1); seed <= 3; seed++ {
		opts := RandomOptions{Runs: 48, MaxRun: 2 * f.granularity()}
		if seed == 2 {
			opts.Align = f.granularity()
		}
		if seed == 3 {
			opts.Align, opts.Patterned = 512, true
		}
		h := newHarness(t, f, s, defaultSize)
		m, err := RandomImage(h.Image, seed, opts)
		if err != nil {
			t.Fatal(err)
		}
		h.Model = m
		h.Verify()
		h.Open(false)
		h.Verify()
		// The same seed gives the same content.
		again := NewModel(m.Size())
		for _, op := range RandomOps(m.Size(), seed, opts) {
			again.Apply(op)
		}
		if !again.Equal(m) {
			t.Errorf("seed %d: RandomOps is not reproducible", seed)
		}
	}
}

func testTerabyte(t *testing.T, f *Factory, s store) {
	if testing.Short() {
		t.Skip("terabyte image skipped in -short mode")
	}
	const tib = int64(1) << 40
	h := newHarness(t, f, s, tib)
	if got := h.Image.Size(); got != tib {
		t.Fatalf("size %d, want %d", got, tib)
	}
	g := f.granularity()
	for i, off := range []int64{0, 1<<32 - 3, 1<<32 + g, tib/2 - 1, tib - g - 1, tib - 5} {
		h.Write(pattern(uint64(50+i), 5), off)
	}
	h.Zero(1<<32-2, 2, 0)
	if err := Apply(h.Image, RandomOps(tib, 77, RandomOptions{Runs: 16, MaxRun: 2 * g}), h.Model); err != nil {
		t.Fatal(err)
	}
	h.Verify()
	h.Open(false)
	h.Verify()
}
