package storage

import (
	"errors"
	"fmt"
)

// Preallocation modes understood by Truncate.
const (
	preallocOff    = "off"
	preallocFalloc = "falloc"
	preallocFull   = "full"
)

// firstBlock is how much of a new file Truncate writes so that its first
// block is allocated, as QEMU does to speed up alignment probing (and which
// shows in a new raw image's disk size).
const firstBlock = 4096

// Truncate resizes a host file the way QEMU's file protocol does: "off"
// sets the length (and allocates the first block of a file that was empty),
// "falloc" reserves the new space, "full" writes zeroes over it. Shrinking
// with preallocation is refused.
func Truncate(f File, size int64, prealloc string) error {
	cur, err := f.Size()
	if err != nil {
		return &SysError{Op: "Could not stat file", Err: err}
	}
	if prealloc == "" {
		prealloc = preallocOff
	}
	if cur > size && prealloc != preallocOff {
		return errors.New("Cannot use preallocation for shrinking files")
	}
	switch prealloc {
	case preallocOff:
		if err := f.Truncate(size); err != nil {
			return &SysError{Op: "Could not resize file", Err: err}
		}
		if cur == 0 && size > 0 {
			allocateFirstBlock(f, size)
		}
		return nil
	case preallocFalloc:
		if size == cur {
			return nil
		}
		err := ErrNotSupported
		if p, ok := f.(Preallocator); ok {
			err = p.Preallocate(cur, size-cur)
		}
		if errors.Is(err, ErrNotSupported) {
			// posix_fallocate's fallback: write zeroes.
			err = WriteZeroBytes(f, cur, size-cur)
		}
		if err != nil {
			_ = f.Truncate(cur)
			return &SysError{Op: "Could not preallocate new data", Err: err}
		}
		if cur == 0 {
			allocateFirstBlock(f, size)
		}
		return nil
	case preallocFull:
		if err := f.Truncate(size); err != nil {
			return &SysError{Op: "Could not resize file", Err: err}
		}
		if err := WriteZeroBytes(f, cur, size-cur); err != nil {
			_ = f.Truncate(cur)
			return &SysError{Op: "Could not write zeros for preallocation", Err: err}
		}
		if err := f.Sync(); err != nil {
			_ = f.Truncate(cur)
			return &SysError{Op: "Could not flush file to disk", Err: err}
		}
		return nil
	}
	return fmt.Errorf("Unsupported preallocation mode: %s", prealloc)
}

// allocateFirstBlock writes zeroes over the first block of a new file, best
// effort, as QEMU does.
func allocateFirstBlock(f File, size int64) {
	n := int64(512)
	if size >= firstBlock {
		n = firstBlock
	}
	_, _ = f.WriteAt(make([]byte, n), 0)
}
