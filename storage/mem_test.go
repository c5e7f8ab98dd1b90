package storage

import (
	"bytes"
	"errors"
	"io"
	"sync"
	"testing"
)

func TestMemFileReadWrite(t *testing.T) {
	f := NewMemFile("m")
	if f.Name() != "m" {
		t.Fatalf("Name %q", f.Name())
	}
	data := randomBytes(5, 3*memChunk)
	// Crosses chunk boundaries on both sides.
	if n, err := f.WriteAt(data, memChunk/2); n != len(data) || err != nil {
		t.Fatalf("WriteAt = %d, %v", n, err)
	}
	if got := fileSize(t, f); got != memChunk/2+3*memChunk {
		t.Fatalf("size %d", got)
	}
	got := make([]byte, len(data)+100)
	n, err := f.ReadAt(got, memChunk/2-100)
	if n != len(data)+100 || err != nil {
		t.Fatalf("ReadAt = %d, %v", n, err)
	}
	if !bytes.Equal(got[:100], make([]byte, 100)) || !bytes.Equal(got[100:], data) {
		t.Fatal("content differs")
	}
	// Across the end: the bytes that exist and io.EOF.
	n, err = f.ReadAt(got[:10], memChunk/2+3*memChunk-4)
	if n != 4 || err != io.EOF || !bytes.Equal(got[:4], data[len(data)-4:]) {
		t.Fatalf("read across end = %d, %v", n, err)
	}
	if n, err := f.ReadAt(got[:10], 1<<40); n != 0 || err != io.EOF {
		t.Fatalf("read past end = %d, %v", n, err)
	}
	if _, err := f.ReadAt(got, -1); err == nil {
		t.Error("negative read offset accepted")
	}
	if _, err := f.WriteAt(got, -1); err == nil {
		t.Error("negative write offset accepted")
	}
	if !bytes.Equal(f.Bytes()[memChunk/2:], data) {
		t.Error("Bytes differs")
	}
}

func TestMemFileTruncate(t *testing.T) {
	f := NewMemFile("m")
	f.WriteAt(bytes.Repeat([]byte{1}, 3*memChunk), 0)
	// Shrinking forgets the bytes past the new end: growing again reads
	// zeroes there, in the partial chunk too.
	if err := f.Truncate(memChunk + 10); err != nil {
		t.Fatal(err)
	}
	if got, _ := f.AllocatedSize(); got != 2*memChunk {
		t.Errorf("allocated %d after shrinking", got)
	}
	if err := f.Truncate(3 * memChunk); err != nil {
		t.Fatal(err)
	}
	checkBytes(t, f, 0, memChunk+10, 1)
	checkBytes(t, f, memChunk+10, 2*memChunk-10, 0)
	if err := f.Truncate(-1); err == nil {
		t.Error("negative size accepted")
	}
}

func TestMemFileHoles(t *testing.T) {
	f := NewMemFile("m")
	f.Truncate(10 * memChunk)
	f.WriteAt(bytes.Repeat([]byte{1}, 2*memChunk), 2*memChunk)
	f.WriteAt([]byte{2}, 7*memChunk+5)
	if got, _ := f.AllocatedSize(); got != 3*memChunk {
		t.Fatalf("allocated %d", got)
	}
	want := [][2]int64{{2 * memChunk, 4 * memChunk}, {7 * memChunk, 8 * memChunk}}
	if got := allocated(t, f); !equalRanges(got, want) {
		t.Fatalf("data ranges %v, want %v", got, want)
	}
	if _, err := f.SeekData(8 * memChunk); !errors.Is(err, ErrNoData) {
		t.Errorf("SeekData after the last data: %v", err)
	}
	if _, err := f.SeekData(10 * memChunk); !errors.Is(err, ErrNoData) {
		t.Errorf("SeekData at the end: %v", err)
	}
	if off, err := f.SeekHole(10*memChunk + 5); off != 10*memChunk+5 || err != nil {
		t.Errorf("SeekHole past the end = %d, %v", off, err)
	}
	if off, err := f.SeekData(2*memChunk + 3); off != 2*memChunk+3 || err != nil {
		t.Errorf("SeekData inside data = %d, %v", off, err)
	}

	// A punched hole inside a chunk zeroes it; whole chunks are freed.
	if err := f.PunchHole(2*memChunk+100, memChunk); err != nil {
		t.Fatal(err)
	}
	checkBytes(t, f, 2*memChunk+100, memChunk, 0)
	checkBytes(t, f, 2*memChunk, 100, 1)
	if got, _ := f.AllocatedSize(); got != 3*memChunk {
		t.Errorf("allocated %d after a partial punch", got)
	}
	if err := f.PunchHole(2*memChunk, 2*memChunk); err != nil {
		t.Fatal(err)
	}
	if got, _ := f.AllocatedSize(); got != memChunk {
		t.Errorf("allocated %d after punching two chunks", got)
	}
	// Punching never grows the file.
	if err := f.PunchHole(9*memChunk, 5*memChunk); err != nil {
		t.Fatal(err)
	}
	if err := f.PunchHole(20*memChunk, 1); err != nil {
		t.Fatal(err)
	}
	if got := fileSize(t, f); got != 10*memChunk {
		t.Errorf("size %d after punching past the end", got)
	}

	// ZeroRange and Preallocate grow the file.
	if err := f.ZeroRange(10*memChunk, 10); err != nil {
		t.Fatal(err)
	}
	if got := fileSize(t, f); got != 10*memChunk+10 {
		t.Errorf("size %d after ZeroRange past the end", got)
	}
	if err := f.Preallocate(0, 11*memChunk); err != nil {
		t.Fatal(err)
	}
	if got := fileSize(t, f); got != 11*memChunk {
		t.Errorf("size %d after Preallocate", got)
	}
	if err := f.Preallocate(0, memChunk); err != nil {
		t.Fatal(err)
	}
	if got := fileSize(t, f); got != 11*memChunk {
		t.Errorf("Preallocate inside the file changed its size to %d", got)
	}
}

func TestMemFileTerabyte(t *testing.T) {
	const tib = int64(1) << 40
	f := NewMemFile("big")
	if err := f.Truncate(tib); err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("start"), 0)
	f.WriteAt([]byte("middle"), tib/2-3)
	f.WriteAt([]byte("end"), tib-3)
	if got := fileSize(t, f); got != tib {
		t.Fatalf("size %d", got)
	}
	if got, _ := f.AllocatedSize(); got != 4*memChunk {
		t.Fatalf("allocated %d", got)
	}
	buf := make([]byte, 6)
	if _, err := f.ReadAt(buf, tib/2-3); err != nil || string(buf) != "middle" {
		t.Fatalf("read across the middle chunk boundary = %q, %v", buf, err)
	}
	if n, err := f.ReadAt(buf, tib-3); n != 3 || err != io.EOF || string(buf[:3]) != "end" {
		t.Fatalf("read at the end = %q, %v", buf[:n], err)
	}
	want := [][2]int64{{0, memChunk}, {tib/2 - memChunk, tib/2 + memChunk}, {tib - memChunk, tib}}
	if got := allocated(t, f); !equalRanges(got, want) {
		t.Fatalf("data ranges %v, want %v", got, want)
	}
	// Writing past the end grows it.
	f.WriteAt([]byte("x"), 2*tib)
	if got := fileSize(t, f); got != 2*tib+1 {
		t.Fatalf("size %d", got)
	}
	if err := Truncate(f, 5*tib, "off"); err != nil {
		t.Fatal(err)
	}
	if err := Truncate(f, 6*tib, "falloc"); err != nil {
		t.Fatal(err)
	}
	if got, _ := f.AllocatedSize(); got != 5*memChunk {
		t.Fatalf("allocated %d after sparse growth", got)
	}
}

func TestMemFileCloneAndSyncs(t *testing.T) {
	f := NewMemFile("m")
	f.WriteAt([]byte("abc"), 0)
	c := f.Clone()
	f.WriteAt([]byte("X"), 0)
	if string(c.Bytes()) != "abc" || string(f.Bytes()) != "Xbc" {
		t.Errorf("clone shares content: %q %q", c.Bytes(), f.Bytes())
	}
	f.Sync()
	f.Sync()
	if f.Syncs() != 2 || c.Syncs() != 0 {
		t.Errorf("syncs %d and %d", f.Syncs(), c.Syncs())
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	// Content survives Close.
	if string(f.Bytes()) != "Xbc" {
		t.Error("content lost on Close")
	}
	id1, ino1, ok1 := f.FileID()
	id2, ino2, ok2 := c.FileID()
	if !ok1 || !ok2 || id1 == id2 && ino1 == ino2 {
		t.Error("a MemFile and its clone have the same identity")
	}
}

func TestMemFileConcurrent(t *testing.T) {
	f := NewMemFile("m")
	const writers, size = 8, 100000
	var wg sync.WaitGroup
	for i := 0; i < writers; i++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			f.WriteAt(bytes.Repeat([]byte{byte(i + 1)}, size), int64(i)*size)
		}()
		go func() {
			defer wg.Done()
			buf := make([]byte, size)
			f.ReadAt(buf, int64(i)*size)
			f.SeekData(0)
			f.SeekHole(0)
		}()
	}
	wg.Wait()
	for i := 0; i < writers; i++ {
		checkBytes(t, f, int64(i)*size, size, byte(i+1))
	}
}

func TestMemFS(t *testing.T) {
	fs := NewMemFS()
	if _, err := fs.Open("x", OpenOptions{}); err == nil || err.Error() != "Could not open 'x': No such file or directory" {
		t.Fatalf("Open of a missing file: %v", err)
	}
	if err := fs.Remove("x"); err == nil {
		t.Fatal("Remove of a missing file succeeded")
	}
	w, err := fs.Create("x", OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w.WriteAt([]byte("hello"), 0)
	w.Close()
	if !fs.Exists("x") || fs.Exists("y") {
		t.Fatal("Exists is wrong")
	}
	r, err := fs.Open("x", OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	buf := make([]byte, 5)
	if _, err := r.ReadAt(buf, 0); err != nil || string(buf) != "hello" {
		t.Fatalf("read back %q, %v", buf, err)
	}
	// A read-only handle refuses every change.
	if _, err := r.WriteAt(buf, 0); !errors.Is(err, ErrReadOnly) {
		t.Errorf("WriteAt: %v", err)
	}
	if err := r.Truncate(0); !errors.Is(err, ErrReadOnly) {
		t.Errorf("Truncate: %v", err)
	}
	if err := PunchHole(r, 0, 1); !errors.Is(err, ErrReadOnly) {
		t.Errorf("PunchHole: %v", err)
	}
	if err := r.(ZeroRanger).ZeroRange(0, 1); !errors.Is(err, ErrReadOnly) {
		t.Errorf("ZeroRange: %v", err)
	}
	if err := r.(Preallocator).Preallocate(0, 100); !errors.Is(err, ErrReadOnly) {
		t.Errorf("Preallocate: %v", err)
	}
	if got := fileSize(t, r); got != 5 {
		t.Errorf("size %d after refused changes", got)
	}
	// Two handles are the same file.
	r2, _ := fs.Open("x", OpenOptions{Write: true})
	defer r2.Close()
	if !SameFile(r, r2) {
		t.Error("two handles on one MemFS file differ")
	}
	// Create truncates an existing file.
	w, _ = fs.Create("x", OpenOptions{})
	if got := fileSize(t, w); got != 0 {
		t.Errorf("Create left size %d", got)
	}
	w.Close()
	fs.Put("b", NewMemFile("b"))
	fs.Put("a", NewMemFile("a"))
	if got := fs.Names(); len(got) != 3 || got[0] != "a" || got[1] != "b" || got[2] != "x" {
		t.Errorf("Names = %v", got)
	}
	if fs.File("a") == nil || fs.File("nope") != nil {
		t.Error("File is wrong")
	}
	if err := fs.Remove("a"); err != nil || fs.Exists("a") {
		t.Errorf("Remove: %v", err)
	}
}
