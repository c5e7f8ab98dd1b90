// Package copyengine copies the content of disk images into another image:
// the engine under `qemu-img convert`, and the base for commit, rebase, dd
// and NBD copies.
//
// A copy takes one or more sources, each a window of a block.Image, lays
// them end to end, and writes the result into a target block.Image at a
// given offset. It walks the sources' allocation (block status through
// their backing chains, down to an optional base), so that
//
//   - runs the sources leave unallocated above their base are left
//     unallocated in a target whose own backing file supplies them,
//   - runs known to read as zeroes are not read at all: they are skipped on
//     a target that already reads as zeroes, and zeroed with
//     block.WriteZeroes (MayUnmap) otherwise,
//   - data runs are read in large requests (DefaultBufferSize), searched for
//     zero runs of at least the sparse size, which are treated like known
//     zeroes, and the rest is written.
//
// The work is spread over a fixed number of workers (Options.Parallel),
// each owning one buffer, so memory stays bounded whatever the image size.
// Reads run in parallel; writes land in order, one at a time, unless
// Options.OutOfOrder allows them to run in parallel too (qemu-img's -W).
// Compressed copies compress in every worker at once, whole clusters at a
// time, through the target's block.Compressor.
//
// The planning follows qemu-img convert's (the same request boundaries and
// the same progress figures), so that a copy allocates what QEMU's would.
//
// # Optional interfaces
//
// The engine looks for block capabilities on the target and on the images
// of the sources' chains with block.As (a *block.Node is looked through to
// its Image), among them block.ZeroIniter (whether a newly created image
// reads as zeroes; see HasZeroInit) and block.DataFiler (the file that an
// Extent's HostOffset refers to, for copy offloading; a raw image's data
// file is its container).
package copyengine

import (
	"fmt"
	"time"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/storage"
)

// Defaults for Options.
const (
	// DefaultSparseSize is the shortest zero run in read data that is
	// treated as a hole (qemu-img's -S default).
	DefaultSparseSize = 4096
	// DefaultParallel is how many requests are in flight at once
	// (qemu-img's -m default).
	DefaultParallel = 8
	// DefaultBufferSize is the largest read request, and the size of each
	// worker's buffer.
	DefaultBufferSize = 2 << 20
	// MaxBufferSize bounds Options.BufferSize.
	MaxBufferSize = 64 << 20
)

// maxStatusRequest is the longest run block status is asked about at once
// (QEMU's BDRV_REQUEST_MAX_SECTORS).
const maxStatusRequest = (1<<31 - 1) &^ (sectorSize - 1)

// Source is one input of a copy: a window of an image.
type Source struct {
	// Image is read from. Unallocated runs are looked up through its
	// backing chain when it is a *block.Node.
	Image block.Image
	// Base, when set, is where the walk of Image's backing chain stops:
	// runs that no image above Base allocates are reported as backing
	// runs and are left to the target's own backing file (see
	// Options.TargetBacked). Base is usually the Node's Backing.
	Base block.Image
	// Offset is where the window starts in Image.
	Offset int64
	// Length is how many bytes of the target the source fills; 0 means to
	// the end of Image, rounded up to a whole sector as QEMU counts image
	// sizes. Bytes past the end of Image read as zeroes.
	Length int64
	// Alignment keeps the boundaries of block-status runs on multiples of
	// this many bytes of the source (its cluster size), so that a cluster
	// is not read in two requests; 0 means a sector.
	Alignment int64
}

// Options tune a copy. The zero value copies as `qemu-img convert` does by
// default.
type Options struct {
	// SparseSize is the shortest run of zero bytes in read data that is
	// not written (rounded down to sectors); 0 means DefaultSparseSize,
	// and a negative value writes every byte, zeroes included, leaving
	// the target fully allocated (qemu-img -S 0).
	SparseSize int64
	// Parallel is how many requests are in flight; 0 means
	// DefaultParallel.
	Parallel int
	// OutOfOrder lets writes run in parallel and land in any order
	// (qemu-img -W). Otherwise one write runs at a time, in target order.
	OutOfOrder bool
	// BufferSize is the largest read request; 0 means DefaultBufferSize.
	BufferSize int64
	// Compress writes data through the target's block.Compressor, one
	// whole cluster per call, from every worker at once (qemu-img -c),
	// with at least one worker per processor (runtime.GOMAXPROCS), so
	// that compression uses every core. Whole clusters are then also the
	// unit of zero detection. Clusters are handed out in order but,
	// because each call both compresses and writes, the workers' calls
	// complete in any order, even without OutOfOrder.
	Compress bool
	// ClusterSize is the target's cluster size; 0 means the one its
	// block.Infoer reports. It is the unit of compressed writes, and of
	// zero detection in compressed copies: a cluster that holds any data
	// is compressed whole. Uncompressed copies detect zeroes at the
	// sparse size, as qemu-img does, whatever the cluster size: a zero
	// run inside a cluster is left to the target (a hole in a
	// preallocated qcow2 image, for one).
	ClusterSize int64
	// KeepZeroData writes data runs as they were read, without searching
	// them for zeroes, while runs the sources report as zeroes are still
	// zeroed (QEMU's mirror job, which runs `qemu-img commit`, copies
	// this way). Ignored for compressed copies and when SparseSize is
	// negative.
	KeepZeroData bool
	// TargetZeroed says that the target reads as zeroes where the copy
	// goes (a new image, or qemu-img's --target-is-zero): zero runs are
	// then skipped rather than zeroed. Ignored when SparseSize is
	// negative.
	TargetZeroed bool
	// TargetBacked says that the target has a backing file whose content
	// is the sources' Base: runs the sources do not allocate above Base
	// are left unallocated in the target.
	TargetBacked bool
	// TargetBackingSize is the size of the target's backing image when
	// TargetBacked; beyond it zero runs are left unallocated too, because
	// they read as zeroes there anyway. 0 means unknown.
	TargetBackingSize int64
	// TargetOffset is where the first source lands in the target.
	TargetOffset int64
	// TargetAlignment is the target's request alignment (4096 for a
	// target opened with O_DIRECT); write boundaries found by zero
	// detection are kept on it. 0 means a sector.
	TargetAlignment int64
	// CopyOffload copies data runs with storage.RangeCopier
	// (copy_file_range) where both sides map to plain files, and falls
	// back to reading and writing for good at the first failure
	// (qemu-img -C).
	CopyOffload bool
	// Salvage keeps going past read errors: unreadable sectors are
	// written as zeroes and each is reported through Warn (qemu-img
	// --salvage).
	Salvage bool
	// RateLimit bounds the bytes written (and zeroed) per second; 0 means
	// no limit (qemu-img -r).
	RateLimit int64
	// ZeroesFree leaves zeroed runs out of RateLimit's count, as QEMU's
	// mirror job (which commit runs) leaves out the zeroes it writes.
	ZeroesFree bool
	// Warn receives warnings worded as qemu-img words them, without the
	// program name. Nil discards them.
	Warn func(msg string)
	// Progress, if set, is called from one goroutine as work is handed
	// out, with the bytes done and the total, counted as qemu-img counts
	// them: the runs that must be read (and, with a negative SparseSize,
	// zeroed). total may be 0 when nothing needs copying.
	Progress func(done, total int64)
}

// Stats counts what a copy did.
type Stats struct {
	// Read is how many bytes were read from the sources.
	Read int64
	// Written is how many bytes were written with WriteAt.
	Written int64
	// Compressed is how many bytes were passed to WriteCompressed.
	Compressed int64
	// Zeroed is how many bytes were zeroed with WriteZeroes.
	Zeroed int64
	// Offloaded is how many bytes were copied with copy offloading.
	Offloaded int64
}

// Error is a failed step of a copy, worded as qemu-img reports it.
type Error struct {
	// Op is what failed: OpRead, OpWrite or OpStatus.
	Op string
	// Offset is the start of the failed request: a target offset (less
	// Options.TargetOffset) for reads and writes, as qemu-img reports
	// them, and an offset in the source image for block status.
	Offset int64
	// Err is the underlying error.
	Err error
}

// Operations named by Error.
const (
	OpRead   = "reading"
	OpWrite  = "writing"
	OpStatus = "reading block status"
)

func (e *Error) Error() string {
	if e.Op == OpStatus {
		return fmt.Sprintf("error while reading block status at offset %d: %s", e.Offset, storage.Strerror(e.Err))
	}
	return fmt.Sprintf("error while %s at byte %d: %s", e.Op, e.Offset, storage.Strerror(e.Err))
}

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

// HasZeroInit reports whether an image that has just been created reads as
// zeroes everywhere, so that a copy into it can skip zeroes (QEMU's
// bdrv_has_zero_init). An image says so with block.ZeroIniter; without
// it, a format image is assumed to, and a raw image on a block
// device is not.
func HasZeroInit(img block.Image) bool {
	if z, ok := block.As[block.ZeroIniter](img); ok {
		return z.HasZeroInit()
	}
	if n, ok := img.(*block.Node); ok {
		if d, ok := n.File.(interface{ IsDevice() bool }); ok && d.IsDevice() {
			return false
		}
		if n.Backing != nil {
			return false
		}
	}
	return true
}

// imageInfo returns what an image says about itself, if anything.
func imageInfo(img block.Image) (block.Info, bool) {
	if i, ok := block.As[block.Infoer](img); ok {
		if info, err := i.Info(); err == nil {
			return info, true
		}
	}
	return block.Info{}, false
}

// rateLimiter spaces writes so that they average at most rate bytes per
// second. The first request passes at once.
type rateLimiter struct {
	rate  int64
	start time.Time
	// next is when the next request may start, as the time since start.
	next time.Duration
}

// reserve books n bytes and returns how long the caller must wait before
// issuing them. The caller serialises calls.
func (r *rateLimiter) reserve(n int64, now time.Time) time.Duration {
	if r.start.IsZero() {
		r.start = now
	}
	elapsed := now.Sub(r.start)
	at := max(r.next, elapsed)
	r.next = at + time.Duration(float64(n)/float64(r.rate)*float64(time.Second))
	return at - elapsed
}
