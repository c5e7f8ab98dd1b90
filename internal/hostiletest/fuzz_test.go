package hostiletest

import (
	"testing"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/internal/drivers"
	"github.com/qimg/qimg/internal/mutate"
	"github.com/qimg/qimg/storage"
)

// maxFuzzImage bounds the images the fuzz target opens (seeds larger than
// this are left out).
const maxFuzzImage = 1 << 20

// FuzzOpenImage opens an arbitrary image in memory, in untrusted mode, as
// every command does: for its metadata only (info), then with its chain to
// read it (convert, compare, map): info, allocation, block status, reads at
// the start, middle and end. Nothing may panic, hang or allocate without
// bound; files the image names do not exist (the in-memory file system
// holds only the image), and the policy refuses those outside its
// directory anyway. The seeds are the hostile images of internal/mutate.
// (Checks are fuzzed by the formats' own targets, such as qcow2's
// FuzzCheck; the binary runs check on every hostile image.)
func FuzzOpenImage(f *testing.F) {
	cases, err := mutate.NewRegistry().Generate(mutate.Target{Secret: "/nonexistent/secret", NetAddr: "127.0.0.1:9", Seed: 13, Sample: 3})
	if err != nil {
		f.Fatal(err)
	}
	for i := range cases {
		if knownBugs[cases[i].Name+" check"] != "" {
			continue // until fixed; see knownBugs
		}
		if b, ok := cases[i].MainBytes(); ok && len(b) <= maxFuzzImage {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > maxFuzzImage {
			return
		}
		openImage(t, data)
	})
}

// openImage exercises an image held in memory; it fails the test only on
// what must never happen (a panic fails it by itself).
func openImage(t *testing.T, data []byte) {
	fs := storage.NewMemFS()
	w, err := fs.Create("img", storage.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	w.Close()
	env := &block.Env{Registry: drivers.Registry(), Files: fs, Policy: block.Policy{Untrusted: true}, MaxChainDepth: 4}
	if n, err := env.Open("img", block.OpenOptions{NoIO: true, NoBacking: true, ForceShare: true}); err == nil {
		_, _ = n.Info()
		_ = n.AllocatedSize()
		_ = n.FullBackingFilename()
		n.Close()
	}
	n, err := env.Open("img", block.OpenOptions{ForceShare: true})
	if err != nil {
		return
	}
	defer n.Close()
	size := n.Size()
	if size < 0 {
		t.Fatalf("negative size %d", size)
	}
	// Walk the first extents (bounded: a hostile image may describe
	// exabytes).
	for off, k := int64(0), 0; off < size && k < 64; k++ {
		e, err := n.BlockStatus(off, size-off)
		if err != nil {
			break
		}
		if e.Offset != off || e.Length <= 0 || e.Length > size-off {
			t.Fatalf("block status at %d of %d: %+v", off, size, e)
		}
		off += e.Length
	}
	buf := make([]byte, 64<<10)
	for _, off := range []int64{0, size / 2 &^ 511, size - int64(len(buf))} {
		if off < 0 {
			continue
		}
		_, _ = n.ReadAt(buf[:min(int64(len(buf)), size-off)], off)
	}
}
