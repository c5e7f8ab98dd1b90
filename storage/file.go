// Package storage is where the bytes of a disk image live: local files and
// block devices, an in-memory sparse file for tests, and wrappers that inject
// faults and simulate crashes.
//
// Every image format reads and writes its container through the File
// interface, so the same driver code runs on a host file, a block device, a
// network export or a test double. Optional capabilities (hole punching,
// SEEK_DATA/SEEK_HOLE, allocated size, copy offload) are small interfaces
// found by type assertion; the helper functions in this package fall back to
// plain reads and writes when a File lacks one.
package storage

import (
	"errors"
	"fmt"
	"io"
)

// File is a random-access byte store holding an image or a part of one.
//
// ReadAt and WriteAt follow io.ReaderAt and io.WriterAt and are safe for
// concurrent use on non-overlapping ranges. A read past the end of the file
// returns the bytes that exist and io.EOF.
type File interface {
	io.ReaderAt
	io.WriterAt
	// Name is the name the file was opened under, for messages.
	Name() string
	// Size is the current length of the file in bytes.
	Size() (int64, error)
	// Truncate sets the length of the file; growing leaves a hole.
	Truncate(size int64) error
	// Sync makes all data written so far durable.
	Sync() error
	// Close releases the file. Close does not imply Sync.
	Close() error
}

// HolePuncher deallocates a range, which afterwards reads as zeroes. The file
// size does not change.
type HolePuncher interface {
	PunchHole(off, n int64) error
}

// ZeroRanger makes a range read as zeroes efficiently, keeping it allocated
// (FALLOC_FL_ZERO_RANGE). The file grows if the range extends past its end.
type ZeroRanger interface {
	ZeroRange(off, n int64) error
}

// Preallocator reserves space for a range without writing it (fallocate
// mode 0). The file grows if the range extends past its end.
type Preallocator interface {
	Preallocate(off, n int64) error
}

// DataSeeker finds data and holes (SEEK_DATA / SEEK_HOLE).
//
// SeekData returns the offset of the first byte of data at or after off, or
// ErrNoData if there is none before the end of the file. SeekHole returns the
// first hole at or after off; the end of the file counts as a hole.
type DataSeeker interface {
	SeekData(off int64) (int64, error)
	SeekHole(off int64) (int64, error)
}

// AllocatedSizer reports how many bytes of storage the file occupies, as
// stat's st_blocks*512 does for a host file.
type AllocatedSizer interface {
	AllocatedSize() (int64, error)
}

// RangeCopier copies a range into another file without passing the bytes
// through user space where the system can (copy_file_range). It returns
// ErrNotSupported when dst is not a file it can copy into.
type RangeCopier interface {
	CopyRange(dst File, srcOff, dstOff, n int64) (int64, error)
}

// Fder exposes the operating system file descriptor, for locking.
type Fder interface {
	Fd() uintptr
}

// Errors that callers decide on.
var (
	// ErrNotSupported means the file or its file system lacks an operation.
	ErrNotSupported = errors.New("operation not supported")
	// ErrNoData is returned by SeekData when no data follows the offset.
	ErrNoData = errors.New("no data after offset")
	// ErrReadOnly is returned by writes to a file opened read-only.
	ErrReadOnly = errors.New("file is read-only")
)

// PunchHole deallocates [off, off+n) if f can, and reports ErrNotSupported if
// it cannot.
func PunchHole(f File, off, n int64) error {
	if n <= 0 {
		return nil
	}
	if p, ok := f.(HolePuncher); ok {
		return p.PunchHole(off, n)
	}
	return ErrNotSupported
}

// zeroChunk is the size of the zero buffer used when zeroes must be written.
const zeroChunk = 1 << 20

// WriteZeroes makes [off, off+n) read as zeroes. With mayUnmap it first tries
// to punch a hole (inside the file) and then FALLOC_FL_ZERO_RANGE; without it,
// only ZERO_RANGE, which keeps the range allocated. When neither works it
// writes zero bytes.
func WriteZeroes(f File, off, n int64, mayUnmap bool) error {
	if n <= 0 {
		return nil
	}
	if mayUnmap {
		if size, err := f.Size(); err == nil && off+n <= size {
			if err := PunchHole(f, off, n); err == nil {
				return nil
			}
		}
	}
	if z, ok := f.(ZeroRanger); ok {
		if err := z.ZeroRange(off, n); err == nil {
			return nil
		}
	}
	return WriteZeroBytes(f, off, n)
}

// WriteZeroBytes writes n zero bytes at off, in chunks.
func WriteZeroBytes(f File, off, n int64) error {
	buf := make([]byte, min(n, zeroChunk))
	for n > 0 {
		c := min(n, int64(len(buf)))
		if _, err := f.WriteAt(buf[:c], off); err != nil {
			return err
		}
		off += c
		n -= c
	}
	return nil
}

// ReadFull reads len(p) bytes at off. Bytes past the end of the file read as
// zeroes, as they do in a sparse image container; other errors are returned.
func ReadFull(f io.ReaderAt, p []byte, off int64) error {
	n, err := f.ReadAt(p, off)
	if err == io.EOF || (err == nil && n < len(p)) {
		clear(p[n:])
		return nil
	}
	return err
}

// ReadExact reads exactly len(p) bytes at off; a short read is an error
// wrapping io.ErrUnexpectedEOF.
func ReadExact(f io.ReaderAt, p []byte, off int64) error {
	n, err := f.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		return fmt.Errorf("short read of %d bytes at offset %d (got %d): %w", len(p), off, n, io.ErrUnexpectedEOF)
	}
	return err
}

// AllocatedSize returns the storage f occupies, or -1 when f cannot say.
func AllocatedSize(f File) int64 {
	if a, ok := f.(AllocatedSizer); ok {
		if n, err := a.AllocatedSize(); err == nil {
			return n
		}
	}
	return -1
}

// NextData returns the start and end of the first run of data at or after
// off, using SEEK_DATA/SEEK_HOLE when f supports them. Without that support
// the whole remainder of the file counts as data. At the end of the data it
// returns start == end == size.
func NextData(f File, off, size int64) (start, end int64, err error) {
	if off >= size {
		return size, size, nil
	}
	ds, ok := f.(DataSeeker)
	if !ok {
		return off, size, nil
	}
	start, err = ds.SeekData(off)
	if errors.Is(err, ErrNoData) {
		return size, size, nil
	}
	if errors.Is(err, ErrNotSupported) {
		return off, size, nil
	}
	if err != nil {
		return 0, 0, err
	}
	if start >= size {
		return size, size, nil
	}
	end, err = ds.SeekHole(start)
	if err != nil {
		return 0, 0, err
	}
	return start, min(end, size), nil
}

// Identifier is a file that can say which underlying object it is, so that
// two handles on the same file can be recognised (backing chain loops).
type Identifier interface {
	FileID() (dev, ino uint64, ok bool)
}

// SameFile reports whether a and b are handles on the same file.
func SameFile(a, b File) bool {
	ia, ok1 := a.(Identifier)
	ib, ok2 := b.(Identifier)
	if !ok1 || !ok2 {
		return false
	}
	da, na, oka := ia.FileID()
	db, nb, okb := ib.FileID()
	return oka && okb && da == db && na == nb
}
