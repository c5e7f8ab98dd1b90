package block

import (
	"bytes"
	"fmt"

	"github.com/qimg/qimg/storage"
)

// RebaseChunk is how many bytes a safe rebase compares at a time (qemu-img's
// IO_BUF_SIZE).
const RebaseChunk = 2 << 20

// RebaseParams says what a safe rebase compares.
type RebaseParams struct {
	// Image is the overlay being rebased, opened for writing with its old
	// backing chain.
	Image *Node
	// OldBacking is what the overlay's unallocated ranges read from now
	// (Image.Backing), or nil when it has no backing file.
	OldBacking Image
	// NewBacking is what they will read from, or nil for none (the image
	// becomes standalone).
	NewBacking Image
	// Prefix, when not nil, is the image of the old backing chain that
	// NewBacking is: ranges that no image between the overlay and Prefix
	// allocates read the same before and after, and are not compared.
	Prefix Image
	// Step, if set, is called after each chunk that was compared.
	Step func()
}

// RebaseError is a failed step of a safe rebase, worded as qemu-img reports
// it.
type RebaseError struct {
	Msg string
	Err error
}

func (e *RebaseError) Error() string { return e.Msg }

// Unwrap returns the underlying error.
func (e *RebaseError) Unwrap() error { return e.Err }

// Rebase makes the overlay's content independent of the change of its
// backing file from OldBacking to NewBacking, as `qemu-img rebase` (safe
// mode) does before it rewrites the header: every range the overlay does
// not allocate is read from both, in chunks of at most RebaseChunk bytes,
// and the sectors where they differ are written into the overlay with what
// the old backing chain gave (zeroes, written as zeroes, beyond its end).
// The content of the overlay stays the same at every moment, so an
// interrupted rebase does no harm. Reads past the end of a backing image
// return zeroes.
func Rebase(p RebaseParams) error {
	img := p.Image
	size := img.Size()
	var oldSize, newSize int64
	if p.OldBacking != nil {
		oldSize = p.OldBacking.Size()
	}
	if p.NewBacking != nil {
		newSize = p.NewBacking.Size()
	}
	bufOld := make([]byte, min(size, RebaseChunk))
	bufNew := make([]byte, len(bufOld))
	for off, n := int64(0), int64(0); off < size; off += n {
		n = min(RebaseChunk, size-off, StatusLimit(img, off))
		e, err := img.Image.BlockStatus(off, n)
		if err == nil && (e.Length <= 0 || e.Length > n) {
			err = fmt.Errorf("block status returned a run of %d bytes: %w", e.Length, ErrCorrupt)
		}
		if err != nil {
			return &RebaseError{Msg: "error while reading image metadata: " + storage.Strerror(err), Err: err}
		}
		n = e.Length
		if e.Has(Allocated) {
			continue
		}
		if p.Prefix != nil && img.Backing != nil {
			allocated, m, err := AllocatedAbove(img.Backing, p.Prefix, off, n)
			if err != nil {
				return &RebaseError{Msg: "error while reading image metadata: " + storage.Strerror(err), Err: err}
			}
			n = m
			if !allocated {
				continue
			}
		}
		oldZero := off >= oldSize
		if oldZero {
			clear(bufOld[:n])
		} else {
			n = min(n, oldSize-off)
			if err := readFull(p.OldBacking, bufOld[:n], off); err != nil {
				return &RebaseError{Msg: "error while reading from old backing file", Err: err}
			}
		}
		if off >= newSize {
			clear(bufNew[:n])
		} else {
			n = min(n, newSize-off)
			if err := readFull(p.NewBacking, bufNew[:n], off); err != nil {
				return &RebaseError{Msg: "error while reading from new backing file", Err: err}
			}
		}
		for done := int64(0); done < n; {
			differ, run := sameRun(bufOld[done:n], bufNew[done:n])
			if differ {
				var err error
				if oldZero {
					err = img.WriteZeroes(off+done, run, 0)
				} else {
					_, err = img.WriteAt(bufOld[done:done+run], off+done)
				}
				if err != nil {
					return &RebaseError{Msg: "Error while writing to COW image: " + storage.Strerror(err), Err: err}
				}
			}
			done += run
		}
		if p.Step != nil {
			p.Step()
		}
	}
	return nil
}

// sameRun compares a and b sector by sector, as qemu-img's compare_buffers
// does: it reports whether their first sectors differ, and how many bytes
// from the start have sectors that all differ or all match in the same way.
func sameRun(a, b []byte) (differ bool, n int64) {
	const sector = 512
	i := min(len(a), sector)
	differ = !bytes.Equal(a[:i], b[:i])
	for i < len(a) {
		j := min(len(a), i+sector)
		if !bytes.Equal(a[i:j], b[i:j]) != differ {
			break
		}
		i = j
	}
	return differ, int64(i)
}

// readFull reads len(p) bytes of img at off.
func readFull(img Image, p []byte, off int64) error {
	c, err := img.ReadAt(p, off)
	if c == len(p) {
		return nil
	}
	if err == nil {
		err = fmt.Errorf("short read of %d bytes at offset %d: %w", len(p), off, ErrRange)
	}
	return err
}
