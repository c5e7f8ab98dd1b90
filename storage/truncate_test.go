package storage

import (
	"errors"
	"syscall"
	"testing"
)

// faultFile wraps a File and fails chosen operations with an errno.
type faultFile struct {
	File
	truncateErr error // every Truncate
	growErr     error // Truncate to a larger size only
	writeErr    error
	syncErr     error
	noPrealloc  bool
}

func (f *faultFile) Truncate(size int64) error {
	if f.truncateErr != nil {
		return f.truncateErr
	}
	if cur, _ := f.File.Size(); size > cur && f.growErr != nil {
		return f.growErr
	}
	return f.File.Truncate(size)
}

func (f *faultFile) WriteAt(p []byte, off int64) (int, error) {
	if f.writeErr != nil {
		return 0, f.writeErr
	}
	return f.File.WriteAt(p, off)
}

func (f *faultFile) Sync() error {
	if f.syncErr != nil {
		return f.syncErr
	}
	return f.File.Sync()
}

func (f *faultFile) Preallocate(off, n int64) error {
	if f.noPrealloc {
		return ErrNotSupported
	}
	return f.File.(Preallocator).Preallocate(off, n)
}

func TestTruncateModes(t *testing.T) {
	tests := []struct {
		prealloc  string
		from, to  int64
		allocated int64 // MemFile bytes allocated afterwards
		syncs     int
	}{
		{"", 0, 1 << 20, memChunk, 0},                   // off: the first block is written
		{"off", 0, 1 << 20, memChunk, 0},                //
		{"off", 0, 512, memChunk, 0},                    // a small file gets a 512-byte first block
		{"off", 0, 0, 0, 0},                             // nothing to allocate
		{"off", 1 << 20, 4 << 20, memChunk, 0},          // growing a non-empty file writes nothing
		{"off", 4 << 20, 1 << 20, memChunk, 0},          // shrinking
		{"falloc", 0, 1 << 20, memChunk, 0},             // MemFile's Preallocate only grows; first block written
		{"falloc", 1 << 20, 1 << 20, memChunk, 0},       // same size: nothing
		{"full", 0, 1 << 20, 1 << 20, 1},                // zeroes written over all of it, then synced
		{"full", 1 << 20, 2 << 20, 1<<20 + memChunk, 1}, // the old first chunk and the new megabyte
	}
	for _, tc := range tests {
		f := NewMemFile("m")
		if tc.from > 0 {
			f.WriteAt([]byte{1}, 0)
			f.Truncate(tc.from)
		}
		if err := Truncate(f, tc.to, tc.prealloc); err != nil {
			t.Errorf("%q %d -> %d: %v", tc.prealloc, tc.from, tc.to, err)
			continue
		}
		if got := fileSize(t, f); got != tc.to {
			t.Errorf("%q %d -> %d: size %d", tc.prealloc, tc.from, tc.to, got)
		}
		if got, _ := f.AllocatedSize(); got != tc.allocated {
			t.Errorf("%q %d -> %d: allocated %d, want %d", tc.prealloc, tc.from, tc.to, got, tc.allocated)
		}
		if f.Syncs() != tc.syncs {
			t.Errorf("%q %d -> %d: %d syncs, want %d", tc.prealloc, tc.from, tc.to, f.Syncs(), tc.syncs)
		}
	}
}

func TestTruncateErrors(t *testing.T) {
	efbig := syscall.EFBIG
	tests := []struct {
		name     string
		f        func(base *MemFile) File
		size     int64
		prealloc string
		want     string
		errno    error
		keptSize int64 // the size the file is left with
	}{
		{"shrink with falloc", func(b *MemFile) File { return b }, 1, "falloc", "Cannot use preallocation for shrinking files", nil, 4096},
		{"shrink with full", func(b *MemFile) File { return b }, 1, "full", "Cannot use preallocation for shrinking files", nil, 4096},
		{"metadata", func(b *MemFile) File { return b }, 8192, "metadata", "Unsupported preallocation mode: metadata", nil, 4096},
		{"bogus mode", func(b *MemFile) File { return b }, 8192, "bogus", "Unsupported preallocation mode: bogus", nil, 4096},
		{"off resize fails", func(b *MemFile) File { return &faultFile{File: b, truncateErr: efbig} }, 1 << 40, "off",
			"Could not resize file: File too large", efbig, 4096},
		{"full resize fails", func(b *MemFile) File { return &faultFile{File: b, growErr: efbig} }, 1 << 40, "full",
			"Could not resize file: File too large", efbig, 4096},
		{"full write fails", func(b *MemFile) File { return &faultFile{File: b, writeErr: syscall.ENOSPC} }, 1 << 20, "full",
			"Could not write zeros for preallocation: No space left on device", syscall.ENOSPC, 4096},
		{"full sync fails", func(b *MemFile) File { return &faultFile{File: b, syncErr: syscall.EIO} }, 1 << 20, "full",
			"Could not flush file to disk: Input/output error", syscall.EIO, 4096},
		{"falloc fallback write fails", func(b *MemFile) File {
			return &faultFile{File: b, noPrealloc: true, writeErr: syscall.ENOSPC}
		}, 1 << 20, "falloc", "Could not preallocate new data: No space left on device", syscall.ENOSPC, 4096},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base := NewMemFile("m")
			base.WriteAt(make([]byte, 4096), 0)
			err := Truncate(tc.f(base), tc.size, tc.prealloc)
			if err == nil || err.Error() != tc.want {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
			if tc.errno != nil && !errors.Is(err, tc.errno) {
				t.Errorf("%v does not wrap %v", err, tc.errno)
			}
			if got := fileSize(t, base); got != tc.keptSize {
				t.Errorf("file left with size %d, want %d", got, tc.keptSize)
			}
		})
	}
}

func TestTruncateFallocFallback(t *testing.T) {
	// Without fallocate, falloc writes zeroes as posix_fallocate does.
	base := NewMemFile("m")
	f := &faultFile{File: base, noPrealloc: true}
	if err := Truncate(f, 3*memChunk, "falloc"); err != nil {
		t.Fatal(err)
	}
	if got, _ := base.AllocatedSize(); got != 3*memChunk {
		t.Errorf("allocated %d after falloc fallback", got)
	}
}

func TestTruncateLocal(t *testing.T) {
	const size = 1 << 20
	for _, prealloc := range []string{"off", "falloc", "full"} {
		t.Run(prealloc, func(t *testing.T) {
			f := sparseLocal(t)
			if err := Truncate(f, size, prealloc); err != nil {
				t.Fatal(err)
			}
			if got := fileSize(t, f); got != size {
				t.Fatalf("size %d", got)
			}
			alloc, _ := f.AllocatedSize()
			switch prealloc {
			case "off":
				// Only the first block is allocated, as QEMU does.
				if alloc < 4096 || alloc >= size {
					t.Errorf("allocated %d", alloc)
				}
				if got := allocated(t, f); len(got) != 1 || got[0][0] != 0 || got[0][1] >= size {
					t.Errorf("data ranges %v", got)
				}
			default:
				if alloc < size {
					t.Errorf("allocated %d, want at least %d", alloc, size)
				}
			}
			checkBytes(t, f, 0, size, 0)
		})
	}
}

func TestTruncateLocalTooLarge(t *testing.T) {
	f := sparseLocal(t)
	// ext4 stops at 16 TiB, xfs and tmpfs at 8 EiB: 2^63-512 is past
	// every file system's limit but still a valid off_t.
	err := Truncate(f, 1<<63-512, "off")
	if err == nil {
		t.Skip("file system accepts 8 EiB files")
	}
	if !errors.Is(err, syscall.EFBIG) && !errors.Is(err, syscall.EINVAL) {
		t.Errorf("error %v is neither EFBIG nor EINVAL", err)
	}
	if got := fileSize(t, f); got != 0 {
		t.Errorf("size %d after failed resize", got)
	}
}
