package copyengine

import (
	"context"
	"fmt"
	"sync"

	"github.com/qimg/qimg/block"
)

// Commit constants, from QEMU's mirror job (which runs `qemu-img commit`).
const (
	// commitBufferSize bounds a run of dirty chunks copied in one
	// iteration (DEFAULT_MIRROR_BUF_SIZE).
	commitBufferSize = 16 << 20
	// commitMaxIO bounds one data request (MAX_IO_BYTES).
	commitMaxIO = 1 << 20
	// Bounds of the default chunk size (bdrv_get_default_bitmap_granularity).
	commitMinChunk     = 4096
	commitDefaultChunk = 65536
)

// CommitOptions tune Commit.
type CommitOptions struct {
	// RateLimit bounds the bytes of data written per second (zeroed runs
	// do not count, as in QEMU's mirror job); 0 means no limit (qemu-img
	// commit -r).
	RateLimit int64
	// Progress, if set, receives the bytes copied so far and the total.
	Progress func(done, total int64)
}

// Commit copies into base what the images above it in top's backing chain
// hold, so that base alone reads as top did, as `qemu-img commit` does with
// QEMU's mirror job ("active commit"):
//
//   - base grows to top's size first when it is smaller;
//   - the image is cut into chunks of base's cluster size (within 4 KiB to
//     64 KiB; 64 KiB without clusters), and every chunk that some image
//     above base allocates, even in part, is copied whole, as read
//     through the whole chain (data is written as read, zeroes included);
//   - runs of such chunks that read as zeroes through the whole chain, and
//     are whole clusters of base, are zeroed instead (may unmap).
//
// Commit flushes base. It neither empties top nor changes any image's
// backing file: the caller does what remains (block.Emptier).
func Commit(ctx context.Context, top, base *block.Node, o CommitOptions) error {
	size := top.Size()
	if base.Size() < size {
		r, ok := block.As[block.Resizer](base)
		if !ok {
			return fmt.Errorf("cannot grow the base image: %w", block.ErrUnsupported)
		}
		if err := r.Resize(size, block.PreallocOff); err != nil {
			return err
		}
	}
	chunk, targetCluster := int64(commitDefaultChunk), int64(0)
	if info, ok := imageInfo(base); ok && info.ClusterSize > 0 {
		targetCluster = info.ClusterSize
		chunk = min(max(info.ClusterSize, commitMinChunk), commitDefaultChunk)
	}
	v := &commitView{top: top, base: base, size: size, chunk: chunk, targetCluster: targetCluster}
	if size > 0 {
		_, err := Copy(ctx, base, []Source{{Image: v}}, Options{
			KeepZeroData: true,
			TargetBacked: true,
			RateLimit:    o.RateLimit,
			ZeroesFree:   true,
			Progress:     o.Progress,
		})
		if err != nil {
			return err
		}
	}
	return base.Flush()
}

// commitView presents top as QEMU's mirror job copies it into base: its
// BlockStatus reports the runs the job copies as data, the runs it zeroes
// as zeroes, and the chunks it leaves alone (nothing above base allocates
// them) as unallocated. It names a backing file, so that
// block.BlockStatusAbove counts those runs as read from a backing image it
// cannot see, which the copy then leaves to the target: base, the image
// they read from. Reads go through top's whole chain.
type commitView struct {
	top           *block.Node
	base          block.Image
	size          int64
	chunk         int64
	targetCluster int64

	mu sync.Mutex
	// iterStart and iterEnd delimit the run of dirty chunks being copied
	// (one mirror iteration); requests inside it continue it.
	iterStart, iterEnd int64
}

func (v *commitView) Format() string { return "commit" }
func (v *commitView) Size() int64    { return v.size }

func (v *commitView) ReadAt(p []byte, off int64) (int, error) { return v.top.ReadAt(p, off) }

func (v *commitView) WriteAt([]byte, int64) (int, error) { return 0, block.ErrReadOnly }

func (v *commitView) WriteZeroes(int64, int64, block.ZeroFlags) error { return block.ErrReadOnly }

func (v *commitView) Discard(int64, int64) error { return block.ErrReadOnly }
func (v *commitView) Flush() error               { return nil }
func (v *commitView) Close() error               { return nil }

// BackingFile names the base, which the view's unallocated runs read from.
func (v *commitView) BackingFile() (string, string) { return v.base.Format() + " base", "" }

// SetBacking does nothing: the view reads through top's own chain.
func (v *commitView) SetBacking(block.Image) {}

// BlockStatus describes the run at off as the mirror job treats it.
func (v *commitView) BlockStatus(off, n int64) (block.Extent, error) {
	if err := block.CheckRange(v.size, off, n); err != nil {
		return block.Extent{}, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if off < v.iterStart || off >= v.iterEnd {
		// A clean run the request cuts short still ends on a chunk
		// boundary, so that the next one starts on one.
		limit := min(off+n, v.size)
		if a := limit - limit%v.chunk; limit < v.size && a > off {
			limit = a
		}
		first, err := v.nextDirty(off, limit)
		if err != nil {
			return block.Extent{}, err
		}
		if first > off {
			return block.Extent{Offset: off, Length: first - off}, nil
		}
		end, err := v.dirtyRunEnd(off)
		if err != nil {
			return block.Extent{}, err
		}
		v.iterStart, v.iterEnd = off, end
	}
	e, err := v.statusThroughChain(off, v.iterEnd-off)
	if err != nil {
		return block.Extent{}, err
	}
	io, data := e.Length, e.Has(block.Data)
	if data {
		io = min(io, commitMaxIO)
	}
	io -= io % v.chunk
	status := block.Allocated | block.Data
	switch {
	case io < v.chunk:
		io = v.chunk
	case !data && e.Has(block.Zero) && v.clusterAligned(off, io):
		status = block.Allocated | block.Zero
	}
	io = min(io, v.size-off, n)
	return block.Extent{Offset: off, Length: io, Status: status}, nil
}

// statusThroughChain is block.BlockStatusAbove of top through its whole
// chain, with the run cut where QEMU's would end: at the status boundary
// (block.StatusLimit) of any image consulted.
func (v *commitView) statusThroughChain(off, n int64) (block.Extent, error) {
	e, layer, err := block.BlockStatusAbove(v.top, nil, off, n)
	if err != nil {
		return block.Extent{}, err
	}
	limit := e.Length
	for cur := v.top; cur != nil; cur = cur.Backing {
		if off < cur.Size() {
			limit = min(limit, block.StatusLimit(cur, off))
		}
		if block.Image(cur) == layer {
			break
		}
	}
	if limit < e.Length {
		e, _, err = block.BlockStatusAbove(v.top, nil, off, limit)
	}
	return e, err
}

// clusterAligned reports whether [off, off+n) is made of whole clusters of
// the target.
func (v *commitView) clusterAligned(off, n int64) bool {
	c := v.targetCluster
	return c <= 0 || (off%c == 0 && n%c == 0)
}

// nextDirty returns the start of the first chunk at or after off's chunk
// that some image above base allocates, or limit when there is none before
// it. The result is never below off.
func (v *commitView) nextDirty(off, limit int64) (int64, error) {
	for pos := off; pos < limit; {
		allocated, n, err := block.AllocatedAbove(v.top, v.base, pos, min(limit-pos, maxStatusRequest))
		if err != nil {
			return 0, err
		}
		if allocated {
			return max(pos-pos%v.chunk, off), nil
		}
		pos += n
	}
	return limit, nil
}

// dirtyRunEnd returns the end of the run of dirty chunks that starts at off
// (itself dirty), bounded as one mirror iteration is.
func (v *commitView) dirtyRunEnd(off int64) (int64, error) {
	end := off - off%v.chunk + v.chunk
	for end < v.size && end-off < commitBufferSize {
		next := min(end+v.chunk, v.size)
		first, err := v.nextDirty(end, next)
		if err != nil {
			return 0, err
		}
		if first != end {
			break
		}
		end = next
	}
	return min(end, v.size), nil
}
