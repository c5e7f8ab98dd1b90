package copyengine

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/block/raw"
)

// rawNodes creates a raw source holding data with holes and an empty raw
// target of the same size in a temporary directory, and opens both.
func rawNodes(t *testing.T) (src, dst *block.Node, data []byte) {
	t.Helper()
	dir := t.TempDir()
	size := 8 * mib
	data = make([]byte, size)
	copy(data[mib:], random(40, 2*mib))
	copy(data[6*mib:], random(41, 64*kib))
	f, err := os.Create(filepath.Join(dir, "src"))
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(size)
	f.WriteAt(data[mib:3*mib], mib)
	f.WriteAt(data[6*mib:6*mib+64*kib], 6*mib)
	f.Close()
	if err := os.WriteFile(filepath.Join(dir, "dst"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Truncate(filepath.Join(dir, "dst"), size)
	env := &block.Env{Registry: block.NewRegistry(raw.New())}
	src, err = env.Open(filepath.Join(dir, "src"), block.OpenOptions{Format: "raw"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	dst, err = env.Open(filepath.Join(dir, "dst"), block.OpenOptions{Format: "raw", Write: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dst.Close() })
	return src, dst, data
}

func readAll(t *testing.T, img block.Image) []byte {
	t.Helper()
	b := make([]byte, img.Size())
	if _, err := img.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCopyOffload(t *testing.T) {
	src, dst, data := rawNodes(t)
	st, err := Copy(context.Background(), dst, []Source{{Image: src}}, Options{CopyOffload: true, TargetZeroed: true})
	if err != nil {
		t.Fatal(err)
	}
	sameBytes(t, readAll(t, dst), data)
	if st.Offloaded == 0 || st.Read != 0 {
		t.Errorf("stats %+v: want the data copied by offloading, nothing read", st)
	}

	// A target that is not a plain file: the copy falls back to reading
	// and writing.
	fake := newFake(src.Size())
	st, err = Copy(context.Background(), fake, []Source{{Image: src}}, Options{CopyOffload: true, TargetZeroed: true})
	if err != nil {
		t.Fatal(err)
	}
	sameBytes(t, fake.bytes(), data)
	if st.Offloaded != 0 || st.Written == 0 {
		t.Errorf("stats %+v: want a plain copy", st)
	}
}

func TestHasZeroInit(t *testing.T) {
	src, dst, _ := rawNodes(t)
	if !HasZeroInit(dst) || !HasZeroInit(newFake(1)) {
		t.Error("a new raw file or a format image without a say should read as zeroes")
	}
	backed := &block.Node{Image: newFake(1), Backing: src}
	if HasZeroInit(backed) {
		t.Error("an image with a backing image does not read as zeroes")
	}
	if HasZeroInit(noZeroInit{newFake(1)}) {
		t.Error("HasZeroInit() false ignored")
	}
}

type noZeroInit struct{ *fakeImage }

func (noZeroInit) HasZeroInit() bool { return false }
