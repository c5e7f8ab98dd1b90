package storage

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"unsafe"
)

// newLocal creates a file of the given content in a temporary directory and
// opens it with o.
func newLocal(t *testing.T, content []byte, o LocalOptions) (*LocalFile, string) {
	t.Helper()
	name := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(name, content, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := OpenLocal(name, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, name
}

// openDirect opens name with O_DIRECT, skipping the test when the file
// system refuses it.
func openDirect(t *testing.T, name string, write bool) *LocalFile {
	t.Helper()
	f, err := OpenLocal(name, LocalOptions{Write: write, Direct: true})
	if err != nil {
		if strings.Contains(err.Error(), "does not support O_DIRECT") {
			t.Skipf("temporary directory's file system refuses O_DIRECT: %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func fileSize(t *testing.T, f File) int64 {
	t.Helper()
	n, err := f.Size()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestLocalOpenErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		path string
		o    LocalOptions
		want string
	}{
		{"missing file", missing, LocalOptions{}, "Could not open '" + missing + "': No such file or directory"},
		{"missing file for writing", missing, LocalOptions{Write: true}, "Could not open '" + missing + "': No such file or directory"},
		{"directory read-only", sub, LocalOptions{}, "'file' driver requires '" + sub + "' to be a regular file"},
		{"directory for writing", sub, LocalOptions{Write: true}, "Could not open '" + sub + "': Is a directory"},
		{"create in missing directory", filepath.Join(missing, "x"), LocalOptions{Create: true}, "Could not create '" + filepath.Join(missing, "x") + "': No such file or directory"},
		{"create over a directory", sub, LocalOptions{Create: true}, "Could not create '" + sub + "': Is a directory"},
		{"empty name", "", LocalOptions{}, "The 'file' block driver requires a file name"},
		{"empty name for writing", "", LocalOptions{Write: true}, "The 'file' block driver requires a file name"},
		{"create empty name", "", LocalOptions{Create: true}, "Could not create '': No such file or directory"},
		{"path through a file", filepath.Join(dir, "sub", "..", "missing", "x"), LocalOptions{}, "No such file or directory"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := OpenLocal(tc.path, tc.o)
			if err == nil {
				f.Close()
				t.Fatalf("OpenLocal(%q) succeeded", tc.path)
			}
			if !strings.HasSuffix(err.Error(), tc.want) {
				t.Errorf("OpenLocal(%q) = %q, want %q", tc.path, err, tc.want)
			}
		})
	}
	// The errors keep their errno for callers that decide on it.
	_, err := OpenLocal(missing, LocalOptions{})
	if !errors.Is(err, syscall.ENOENT) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file error %v does not wrap ENOENT", err)
	}
	var oe *OpenError
	if !errors.As(err, &oe) || oe.Name != missing || oe.Create {
		t.Errorf("missing file error %#v is not an OpenError for open", err)
	}
}

func TestLocalOpenPermissionDenied(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root bypasses file permissions")
	}
	name := filepath.Join(t.TempDir(), "ro")
	if err := os.WriteFile(name, nil, 0o400); err != nil {
		t.Fatal(err)
	}
	_, err := OpenLocal(name, LocalOptions{Write: true})
	if want := "Could not open '" + name + "': Permission denied"; err == nil || err.Error() != want {
		t.Errorf("got %v, want %q", err, want)
	}
}

func TestLocalReadWrite(t *testing.T) {
	f, name := newLocal(t, nil, LocalOptions{Write: true})
	if f.Name() != name || f.IsDevice() {
		t.Fatalf("Name %q IsDevice %v", f.Name(), f.IsDevice())
	}
	data := randomBytes(1, 10000)
	if n, err := f.WriteAt(data, 3); n != len(data) || err != nil {
		t.Fatalf("WriteAt = %d, %v", n, err)
	}
	if got := fileSize(t, f); got != 10003 {
		t.Fatalf("size %d, want 10003", got)
	}
	got := make([]byte, 10000)
	if n, err := f.ReadAt(got, 3); n != len(got) || err != nil {
		t.Fatalf("ReadAt = %d, %v", n, err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("read back different bytes")
	}
	// A read across the end returns what exists and io.EOF.
	tail := make([]byte, 100)
	n, err := f.ReadAt(tail, 9950)
	if n != 53 || err != io.EOF || !bytes.Equal(tail[:53], data[9947:]) {
		t.Fatalf("read across end = %d, %v", n, err)
	}
	if n, err := f.ReadAt(tail, 20000); n != 0 || err != io.EOF {
		t.Fatalf("read past end = %d, %v", n, err)
	}
	if _, err := f.ReadAt(tail, -1); err == nil {
		t.Error("negative read offset accepted")
	}
	if _, err := f.WriteAt(tail, -1); err == nil {
		t.Error("negative write offset accepted")
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	// The bytes reached the file.
	onDisk, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(onDisk[3:], data) || onDisk[0] != 0 {
		t.Fatal("file content differs from what was written")
	}
}

func TestLocalReadOnly(t *testing.T) {
	f, _ := newLocal(t, []byte("hello"), LocalOptions{})
	if _, err := f.WriteAt([]byte("x"), 0); !errors.Is(err, ErrReadOnly) {
		t.Errorf("WriteAt on read-only file: %v", err)
	}
	if err := f.Truncate(0); !errors.Is(err, ErrReadOnly) {
		t.Errorf("Truncate on read-only file: %v", err)
	}
	if err := f.PunchHole(0, 1); !errors.Is(err, ErrReadOnly) {
		t.Errorf("PunchHole on read-only file: %v", err)
	}
	if err := f.ZeroRange(0, 1); !errors.Is(err, ErrReadOnly) {
		t.Errorf("ZeroRange on read-only file: %v", err)
	}
	if err := f.Preallocate(0, 1); !errors.Is(err, ErrReadOnly) {
		t.Errorf("Preallocate on read-only file: %v", err)
	}
	if err := f.Sync(); err != nil {
		t.Errorf("Sync on read-only file: %v", err)
	}
}

func TestLocalCreateTruncates(t *testing.T) {
	_, name := newLocal(t, []byte("old content"), LocalOptions{})
	f, err := OpenLocal(name, LocalOptions{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got := fileSize(t, f); got != 0 {
		t.Fatalf("created file has size %d", got)
	}
	if _, err := f.WriteAt([]byte("x"), 0); err != nil {
		t.Fatalf("created file not writable: %v", err)
	}
	var o Local
	if !o.Exists(name) || o.Exists(name+".no") {
		t.Error("Exists is wrong")
	}
	g, err := o.Create(name, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	g.Close()
	if err := o.Remove(name); err != nil || o.Exists(name) {
		t.Errorf("Remove: %v", err)
	}
}

func TestLocalNoSync(t *testing.T) {
	f, _ := newLocal(t, nil, LocalOptions{Write: true, NoSync: true})
	if _, err := f.WriteAt([]byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

func TestLocalDirectUnaligned(t *testing.T) {
	_, name := newLocal(t, nil, LocalOptions{})
	f := openDirect(t, name, true)
	r := rand.New(rand.NewPCG(7, 7))
	var shadow []byte
	for i := 0; i < 60; i++ {
		off := r.Int64N(3 * directAlign * 4)
		n := 1 + r.IntN(3*directAlign)
		if i%10 == 0 {
			off, n = off&^(directAlign-1), directAlign // aligned offset, but the buffer may not be
		}
		p := randomBytes(uint64(i), n)
		if c, err := f.WriteAt(p, off); c != n || err != nil {
			t.Fatalf("WriteAt(%d, %d) = %d, %v", off, n, c, err)
		}
		if end := int(off) + n; end > len(shadow) {
			shadow = append(shadow, make([]byte, end-len(shadow))...)
		}
		copy(shadow[off:], p)
		// The file never grows past the last byte written, even
		// though O_DIRECT writes whole blocks.
		if got := fileSize(t, f); got != int64(len(shadow)) {
			t.Fatalf("after write %d at %d: size %d, want %d", n, off, got, len(shadow))
		}
		roff := r.Int64N(int64(len(shadow)))
		rn := 1 + r.IntN(2*directAlign)
		buf := make([]byte, rn)
		c, err := f.ReadAt(buf, roff)
		want := shadow[roff:min(int(roff)+rn, len(shadow))]
		if c != len(want) || !bytes.Equal(buf[:c], want) {
			t.Fatalf("ReadAt(%d, %d) = %d, %v: content differs", roff, rn, c, err)
		}
		if c < rn && err != io.EOF {
			t.Fatalf("short read at the end without io.EOF: %v", err)
		}
	}
	if c, err := f.ReadAt(make([]byte, 10), int64(len(shadow))+directAlign); c != 0 || err != io.EOF {
		t.Fatalf("read far past end = %d, %v", c, err)
	}
	// Aligned buffers go straight through.
	buf := AlignedBuffer(directAlign)
	if c, err := f.ReadAt(buf, 0); c != directAlign || err != nil || !bytes.Equal(buf, shadow[:directAlign]) {
		t.Fatalf("aligned read = %d, %v", c, err)
	}
	onDisk, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(onDisk, shadow) {
		t.Fatal("file content differs from the writes")
	}
}

func TestLocalDirectConcurrentSharedBlocks(t *testing.T) {
	_, name := newLocal(t, make([]byte, 8*directAlign), LocalOptions{})
	f := openDirect(t, name, true)
	// Each writer owns an unaligned 1000-byte slot; slots share blocks,
	// so unserialised read-modify-write cycles would lose writes.
	const slots = 32
	var wg sync.WaitGroup
	for i := 0; i < slots; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := bytes.Repeat([]byte{byte(i + 1)}, 1000)
			if _, err := f.WriteAt(p, int64(i)*1000+7); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	got := make([]byte, slots*1000)
	if _, err := f.ReadAt(got, 7); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < slots; i++ {
		for j := 0; j < 1000; j++ {
			if got[i*1000+j] != byte(i+1) {
				t.Fatalf("slot %d byte %d = %d", i, j, got[i*1000+j])
			}
		}
	}
}

func TestAlignedBuffer(t *testing.T) {
	for _, n := range []int{0, 1, 512, directAlign, 3*directAlign + 5} {
		b := AlignedBuffer(n)
		if len(b) != n || cap(b) != n {
			t.Fatalf("AlignedBuffer(%d): len %d cap %d", n, len(b), cap(b))
		}
		if n > 0 && uintptr(unsafe.Pointer(&b[0]))%directAlign != 0 {
			t.Fatalf("AlignedBuffer(%d) is not aligned", n)
		}
	}
	if aligned(make([]byte, 100), 0) {
		t.Error("100-byte buffer counted as aligned")
	}
	if aligned(AlignedBuffer(directAlign), 512) {
		t.Error("offset 512 counted as aligned")
	}
}

// allocated returns the file's data ranges via SeekData/SeekHole.
func allocated(t *testing.T, f File) [][2]int64 {
	t.Helper()
	size := fileSize(t, f)
	var out [][2]int64
	for off := int64(0); off < size; {
		start, end, err := NextData(f, off, size)
		if err != nil {
			t.Fatal(err)
		}
		if start == end {
			break
		}
		out = append(out, [2]int64{start, end})
		off = end
	}
	return out
}

// sparseLocal returns a writable local file, skipping when the file system
// has no holes.
func sparseLocal(t *testing.T) *LocalFile {
	t.Helper()
	f, _ := newLocal(t, nil, LocalOptions{Write: true})
	if err := f.Truncate(1 << 20); err != nil {
		t.Fatal(err)
	}
	if _, err := f.SeekData(0); errors.Is(err, ErrNotSupported) {
		t.Skip("file system without SEEK_DATA")
	} else if !errors.Is(err, ErrNoData) {
		t.Skipf("file system does not report holes (SeekData = %v)", err)
	}
	if err := f.Truncate(0); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestLocalSeekDataHole(t *testing.T) {
	f := sparseLocal(t)
	const mib = 1 << 20
	if err := f.Truncate(4 * mib); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{1}, 64<<10), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{2}, 4096), 2*mib); err != nil {
		t.Fatal(err)
	}
	want := [][2]int64{{0, 64 << 10}, {2 * mib, 2*mib + 4096}}
	if got := allocated(t, f); !equalRanges(got, want) {
		t.Fatalf("data ranges %v, want %v", got, want)
	}
	if off, err := f.SeekData(100); off != 100 || err != nil {
		t.Errorf("SeekData inside data = %d, %v", off, err)
	}
	if off, err := f.SeekHole(100); off != 64<<10 || err != nil {
		t.Errorf("SeekHole inside data = %d, %v", off, err)
	}
	if off, err := f.SeekData(64 << 10); off != 2*mib || err != nil {
		t.Errorf("SeekData in hole = %d, %v", off, err)
	}
	if _, err := f.SeekData(2*mib + 4096); !errors.Is(err, ErrNoData) {
		t.Errorf("SeekData after the last data: %v", err)
	}
	if off, err := f.SeekHole(2 * mib); off != 2*mib+4096 || err != nil {
		t.Errorf("SeekHole in last data = %d, %v", off, err)
	}
	if off, err := f.SeekHole(4 * mib); off != 4*mib || err != nil {
		t.Errorf("SeekHole at end = %d, %v", off, err)
	}
	// NextData clips to the size it is given and ends with start == end.
	if s, e, err := NextData(f, 1000, 2000); s != 1000 || e != 2000 || err != nil {
		t.Errorf("NextData clipped = %d, %d, %v", s, e, err)
	}
	if s, e, err := NextData(f, 3*mib, 4*mib); s != 4*mib || e != 4*mib || err != nil {
		t.Errorf("NextData in trailing hole = %d, %d, %v", s, e, err)
	}
}

func equalRanges(a, b [][2]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestLocalFallocate(t *testing.T) {
	f := sparseLocal(t)
	const mib = 1 << 20
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xaa}, mib), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	before, _ := f.AllocatedSize()

	// PunchHole: reads as zeroes, size unchanged, storage freed.
	if err := f.PunchHole(64<<10, 128<<10); err != nil {
		if errors.Is(err, ErrNotSupported) {
			t.Skip("no hole punching")
		}
		t.Fatal(err)
	}
	if got := fileSize(t, f); got != mib {
		t.Fatalf("size after punch %d", got)
	}
	checkBytes(t, f, 64<<10, 128<<10, 0)
	checkBytes(t, f, 0, 64<<10, 0xaa)
	checkBytes(t, f, 192<<10, mib-192<<10, 0xaa)
	if after, _ := f.AllocatedSize(); after > before-128<<10 {
		t.Errorf("allocated %d after punching 128 KiB out of %d", after, before)
	}
	// PunchHole past the end does not grow the file.
	if err := f.PunchHole(mib-4096, 8192); err != nil {
		t.Fatal(err)
	}
	if got := fileSize(t, f); got != mib {
		t.Fatalf("size after punch past end %d", got)
	}
	// The package helper ignores empty ranges.
	if err := PunchHole(f, 0, 0); err != nil {
		t.Fatal(err)
	}

	// ZeroRange: reads as zeroes, stays allocated, grows the file.
	if err := f.ZeroRange(300<<10, 4096); err != nil && !errors.Is(err, ErrNotSupported) {
		t.Fatal(err)
	} else if err == nil {
		checkBytes(t, f, 300<<10, 4096, 0)
		if err := f.ZeroRange(mib, 8192); err != nil {
			t.Fatal(err)
		}
		if got := fileSize(t, f); got != mib+8192 {
			t.Fatalf("size after zero range past end %d", got)
		}
	}

	// Preallocate: grows the file, allocates, reads zeroes.
	size := fileSize(t, f)
	allocBefore, _ := f.AllocatedSize()
	if err := f.Preallocate(size, mib); err != nil {
		if errors.Is(err, ErrNotSupported) {
			t.Skip("no fallocate")
		}
		t.Fatal(err)
	}
	if got := fileSize(t, f); got != size+mib {
		t.Fatalf("size after preallocate %d, want %d", got, size+mib)
	}
	if allocAfter, _ := f.AllocatedSize(); allocAfter < allocBefore+mib {
		t.Errorf("allocated %d after preallocating 1 MiB on top of %d", allocAfter, allocBefore)
	}
	checkBytes(t, f, size, mib, 0)
}

// checkBytes asserts that [off, off+n) of f holds only b.
func checkBytes(t *testing.T, f File, off, n int64, b byte) {
	t.Helper()
	buf := make([]byte, n)
	if err := ReadFull(f, buf, off); err != nil {
		t.Fatal(err)
	}
	for i, c := range buf {
		if c != b {
			t.Fatalf("byte %d = %#x, want %#x", off+int64(i), c, b)
		}
	}
}

func TestWriteZeroesHelper(t *testing.T) {
	for _, mayUnmap := range []bool{false, true} {
		f := NewMemFile("m")
		if _, err := f.WriteAt(bytes.Repeat([]byte{7}, 3*memChunk), 0); err != nil {
			t.Fatal(err)
		}
		if err := WriteZeroes(f, 10, 2*memChunk, mayUnmap); err != nil {
			t.Fatal(err)
		}
		checkBytes(t, f, 10, 2*memChunk, 0)
		checkBytes(t, f, 0, 10, 7)
		checkBytes(t, f, 2*memChunk+10, memChunk-10, 7)
		// Past the end: the file grows, the range reads as zeroes.
		if err := WriteZeroes(f, 3*memChunk, 100, mayUnmap); err != nil {
			t.Fatal(err)
		}
		if got := fileSize(t, f); got != 3*memChunk+100 {
			t.Fatalf("size %d", got)
		}
		if err := WriteZeroes(f, 0, 0, mayUnmap); err != nil {
			t.Fatal(err)
		}
	}
	// Without any fallocate capability the helper writes zero bytes.
	var p plainFile
	p.b = bytes.Repeat([]byte{9}, 5000)
	if err := WriteZeroes(&p, 100, 4000, true); err != nil {
		t.Fatal(err)
	}
	for i, c := range p.b {
		want := byte(9)
		if i >= 100 && i < 4100 {
			want = 0
		}
		if c != want {
			t.Fatalf("byte %d = %d, want %d", i, c, want)
		}
	}
	if err := PunchHole(&p, 0, 1); !errors.Is(err, ErrNotSupported) {
		t.Errorf("PunchHole on a plain file: %v", err)
	}
	if n := AllocatedSize(&p); n != -1 {
		t.Errorf("AllocatedSize of a plain file = %d", n)
	}
	if s, e, err := NextData(&p, 10, 5000); s != 10 || e != 5000 || err != nil {
		t.Errorf("NextData of a plain file = %d, %d, %v", s, e, err)
	}
	if SameFile(&p, &p) {
		t.Error("SameFile true for files that cannot identify themselves")
	}
}

// plainFile is a File with no optional capabilities, backed by a slice.
type plainFile struct {
	mu sync.Mutex
	b  []byte
}

func (p *plainFile) ReadAt(b []byte, off int64) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if off >= int64(len(p.b)) {
		return 0, io.EOF
	}
	n := copy(b, p.b[off:])
	if n < len(b) {
		return n, io.EOF
	}
	return n, nil
}

func (p *plainFile) WriteAt(b []byte, off int64) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if end := int(off) + len(b); end > len(p.b) {
		p.b = append(p.b, make([]byte, end-len(p.b))...)
	}
	return copy(p.b[off:], b), nil
}

func (p *plainFile) Name() string         { return "plain" }
func (p *plainFile) Size() (int64, error) { return int64(len(p.b)), nil }
func (p *plainFile) Sync() error          { return nil }
func (p *plainFile) Close() error         { return nil }

func (p *plainFile) Truncate(size int64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if int(size) < len(p.b) {
		p.b = p.b[:size]
	} else {
		p.b = append(p.b, make([]byte, int(size)-len(p.b))...)
	}
	return nil
}

func TestReadFullAndExact(t *testing.T) {
	f := NewMemFile("m")
	f.WriteAt([]byte("abcdef"), 0)
	buf := []byte("XXXXXXXXXX")
	if err := ReadFull(f, buf, 2); err != nil || string(buf) != "cdef\x00\x00\x00\x00\x00\x00" {
		t.Errorf("ReadFull across end = %q, %v", buf, err)
	}
	if err := ReadFull(f, buf, 100); err != nil || string(buf) != string(make([]byte, 10)) {
		t.Errorf("ReadFull past end = %q, %v", buf, err)
	}
	if err := ReadExact(f, buf[:4], 2); err != nil || string(buf[:4]) != "cdef" {
		t.Errorf("ReadExact = %q, %v", buf[:4], err)
	}
	err := ReadExact(f, buf[:5], 2)
	if !errors.Is(err, io.ErrUnexpectedEOF) || !strings.Contains(err.Error(), "short read of 5 bytes at offset 2 (got 4)") {
		t.Errorf("ReadExact across end: %v", err)
	}
}

func TestLocalCopyRange(t *testing.T) {
	src, _ := newLocal(t, randomBytes(3, 300000), LocalOptions{})
	dst, dstName := newLocal(t, nil, LocalOptions{Write: true})
	n, err := src.CopyRange(dst, 1000, 5, 200000)
	if errors.Is(err, ErrNotSupported) {
		t.Skip("copy_file_range not supported here")
	}
	if err != nil || n != 200000 {
		t.Fatalf("CopyRange = %d, %v", n, err)
	}
	got, err := os.ReadFile(dstName)
	if err != nil {
		t.Fatal(err)
	}
	if want := randomBytes(3, 300000)[1000:201000]; !bytes.Equal(got[5:], want) || len(got) != 200005 {
		t.Fatal("copied bytes differ")
	}
	// Past the end of the source the copy stops short.
	if n, err := src.CopyRange(dst, 299000, 0, 5000); n != 1000 || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("CopyRange past end = %d, %v", n, err)
	}
	// Only between local files with the same caching.
	if _, err := src.CopyRange(NewMemFile("m"), 0, 0, 10); !errors.Is(err, ErrNotSupported) {
		t.Errorf("CopyRange to a MemFile: %v", err)
	}
	// Into a read-only file the kernel refuses.
	ro, _ := newLocal(t, nil, LocalOptions{})
	if _, err := src.CopyRange(ro, 0, 0, 10); err == nil {
		t.Error("CopyRange into a read-only file succeeded")
	}
}

func TestLocalIdentity(t *testing.T) {
	a, name := newLocal(t, []byte("x"), LocalOptions{})
	b, err := OpenLocal(name, LocalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	c, _ := newLocal(t, []byte("x"), LocalOptions{})
	if !SameFile(a, b) {
		t.Error("two handles on one file are not the same file")
	}
	if SameFile(a, c) {
		t.Error("different files are the same file")
	}
	if SameFile(a, NewMemFile("x")) {
		t.Error("a local file and a MemFile are the same file")
	}
	if a.Fd() == 0 {
		t.Error("Fd is 0")
	}
	if err := a.SetNoCOW(); err != nil {
		t.Errorf("SetNoCOW: %v", err)
	}
}

func TestLocalDevice(t *testing.T) {
	f, err := OpenLocal("/dev/null", LocalOptions{Write: true})
	if err != nil {
		t.Skipf("cannot open /dev/null for writing: %v", err)
	}
	defer f.Close()
	if !f.IsDevice() {
		t.Fatal("/dev/null is not a device")
	}
	if got := fileSize(t, f); got != 0 {
		t.Errorf("size of /dev/null = %d", got)
	}
	if err := f.Truncate(0); err != nil {
		t.Errorf("Truncate to the current size: %v", err)
	}
	if err := f.Truncate(512); err == nil || err.Error() != "Cannot grow device files" {
		t.Errorf("Truncate growing a device: %v", err)
	}
	if off, err := f.SeekData(100); off != 100 || err != nil {
		t.Errorf("SeekData on a device = %d, %v", off, err)
	}
	if off, err := f.SeekHole(0); off != 0 || err != nil {
		t.Errorf("SeekHole on a device = %d, %v", off, err)
	}
	if err := f.ZeroRange(0, 512); !errors.Is(err, ErrNotSupported) {
		t.Errorf("ZeroRange on a device: %v", err)
	}
	if _, err := f.WriteAt([]byte("discarded"), 0); err != nil {
		t.Errorf("WriteAt to /dev/null: %v", err)
	}
	// Opening a device through the generic opener works too.
	g, err := Local{}.Open("/dev/zero", OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	buf := []byte{1, 2, 3}
	if n, err := g.ReadAt(buf, 0); n != 3 || err != nil || buf[0]|buf[1]|buf[2] != 0 {
		t.Errorf("read from /dev/zero = %d, %v, %v", n, err, buf)
	}
}

func TestStrerror(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{syscall.ENOENT, "No such file or directory"},
		{syscall.EISDIR, "Is a directory"},
		{syscall.EFBIG, "File too large"},
		{syscall.EPERM, "Operation not permitted"},
		{&os.PathError{Op: "open", Path: "x", Err: syscall.EACCES}, "Permission denied"},
		{errors.New("own words"), "own words"},
		{io.EOF, "EOF"},
	}
	for _, tc := range tests {
		if got := Strerror(tc.err); got != tc.want {
			t.Errorf("Strerror(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
	e := &SysError{Op: "Could not resize file", Err: syscall.EFBIG}
	if e.Error() != "Could not resize file: File too large" || !errors.Is(e, syscall.EFBIG) {
		t.Errorf("SysError = %q", e)
	}
	if e := (&NotRegularError{Name: "d"}); e.Error() != "'file' driver requires 'd' to be a regular file" {
		t.Errorf("NotRegularError = %q", e)
	}
}
