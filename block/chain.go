package block

import (
	"fmt"
	"path"
	"path/filepath"

	"github.com/qimg/qimg/storage"
)

// BlockStatusAbove describes the run of img that starts at off (at most n
// bytes long) as it reads through img's backing chain, looking no further
// than base: base and the images below it are not consulted. A nil base
// means the whole chain.
//
// The chain is followed through *Node values (Node.Backing); an image that
// is not a Node is a chain of one. The result is what QEMU's
// bdrv_block_status_above reports:
//
//   - a run some image above base allocates has Allocated set, and Data and
//     Zero as that image reports them; layer is that image;
//   - a run no image above base allocates and that reads as zeroes (the
//     chain ends without a backing image, or the backing image is shorter
//     than off) has Zero set, without Allocated when the top image is
//     the one that ends, as QEMU reports it; layer is nil unless a shorter
//     backing image supplied the zeroes;
//   - a run that reads from base, or from a backing image the chain does not
//     show (an image that names a backing file but is not a Node), has
//     neither Allocated, Data nor Zero: its content is not known here, and
//     reading it is the only way to learn it.
//
// The length of the result is the shortest run any consulted image
// reported, so the whole run has one status. base must be nil or a value
// that compares with == (a pointer, such as a *Node).
func BlockStatusAbove(img, base Image, off, n int64) (ext Extent, layer Image, err error) {
	if err := CheckRange(img.Size(), off, n); err != nil {
		return Extent{}, nil, err
	}
	length := n
	for cur, depth := img, 0; ; depth++ {
		if base != nil && cur == base {
			return Extent{Offset: off, Length: length}, nil, nil
		}
		size := cur.Size()
		if off >= size {
			// Only a backing image can be shorter than off: the zeroes
			// beyond its end count as allocated in it, as in QEMU.
			return Extent{Offset: off, Length: length, Status: Allocated | Zero}, cur, nil
		}
		e, err := cur.BlockStatus(off, min(length, size-off))
		if err != nil {
			return Extent{}, nil, err
		}
		if e.Length <= 0 || e.Length > length {
			return Extent{}, nil, fmt.Errorf("block status of %d bytes at offset %d returned a run of %d bytes: %w",
				min(length, size-off), off, e.Length, ErrCorrupt)
		}
		length = e.Length
		if e.Status&(Allocated|Data|Zero) != 0 {
			e.Offset = off
			e.Status |= Allocated
			return e, cur, nil
		}
		next, known := backingOf(cur)
		switch {
		case !known:
			return Extent{Offset: off, Length: length}, nil, nil
		case next == nil:
			return Extent{Offset: off, Length: length, Status: Zero}, nil, nil
		}
		cur = next
	}
}

// backingOf returns the opened backing image of img. known is false when
// img may read through to a backing image the caller cannot see.
func backingOf(img Image) (next Image, known bool) {
	if n, ok := img.(*Node); ok {
		if n.Backing != nil {
			return n.Backing, true
		}
		// A Node without an opened backing image reads its unallocated
		// runs as zeroes (Backed.SetBacking was never called).
		return nil, true
	}
	if b, ok := img.(Backed); ok {
		if name, _ := b.BackingFile(); name != "" {
			return nil, false
		}
	}
	return nil, true
}

// FindBackingImage returns the image below n in its backing chain that name
// designates, or nil, matching names as QEMU's bdrv_find_backing_image
// does (the base of `qemu-img commit -b`, the new backing file of `qemu-img
// rebase`): going down the chain, name is resolved against each image's
// directory in turn and compared, as a real path, with that image's
// resolved backing file name; when either name is a protocol name, the two
// are compared as written (and with the resolved backing file name). An
// empty name, or one that does not exist, matches nothing.
func (n *Node) FindBackingImage(name string) *Node {
	if name == "" {
		return nil
	}
	for cur := n; cur.Backing != nil; cur = cur.Backing {
		recorded := ""
		if b, ok := cur.Image.(Backed); ok {
			recorded, _ = b.BackingFile()
		}
		if HasProtocol(name) || HasProtocol(recorded) {
			if name == recorded || name == cur.FullBackingFilename() {
				return cur.Backing
			}
			continue
		}
		want, ok := cur.env.realPath(CombinePath(cur.Filename, name))
		if !ok {
			continue
		}
		if got, ok := cur.env.realPath(cur.FullBackingFilename()); ok && got == want {
			return cur.Backing
		}
	}
	return nil
}

// realPath resolves a file name to a canonical absolute path, as realpath(3)
// does for host files; it reports false when the file does not exist. Names
// in a file store other than the host's are cleaned, not resolved.
func (e *Env) realPath(name string) (string, bool) {
	if name == "" {
		return "", false
	}
	if e != nil && e.Files != nil {
		if _, local := e.Files.(storage.Local); !local {
			if !e.Files.Exists(name) {
				return "", false
			}
			return path.Clean(name), true
		}
	}
	abs, err := filepath.Abs(name)
	if err != nil {
		return "", false
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", false
	}
	return real, true
}

// AllocatedAbove reports whether some image of img's backing chain above
// base (img included, base excluded; a nil base means the whole chain)
// allocates the run that starts at off, and the length of the run (at most
// n) with the same answer, as QEMU's bdrv_is_allocated_above does. Only
// the images' own Allocated bits count: a run that reads as zeroes because
// the chain ends, or because it lies past the end of the backing image, is
// not allocated in an image that reports it so; but past the end of a
// backing image shorter than off, the zeroes count as allocated by that
// image, as in QEMU.
func AllocatedAbove(img, base Image, off, n int64) (bool, int64, error) {
	if err := CheckRange(img.Size(), off, n); err != nil {
		return false, 0, err
	}
	length := n
	for cur := img; cur != nil && (base == nil || cur != base); {
		size := cur.Size()
		if off >= size {
			return true, length, nil
		}
		e, err := cur.BlockStatus(off, min(length, size-off, StatusLimit(cur, off)))
		if err != nil {
			return false, 0, err
		}
		if e.Length <= 0 || e.Length > length {
			return false, 0, fmt.Errorf("block status of %d bytes at offset %d returned a run of %d bytes: %w",
				min(length, size-off), off, e.Length, ErrCorrupt)
		}
		length = e.Length
		if e.Has(Allocated) {
			return true, length, nil
		}
		next, known := backingOf(cur)
		if !known {
			break
		}
		cur = next
	}
	return false, length, nil
}

// StatusBounder is an image whose block status runs, in QEMU, end at
// boundaries of its own: a qcow2 image describes no more than one L2 table
// slice at a time. An image's BlockStatus may report longer runs; commands
// that reproduce QEMU's request boundaries (commit, rebase) cap their
// requests with StatusLimit.
type StatusBounder interface {
	// StatusBoundary returns where a run that QEMU reports at off ends
	// at the latest; it is beyond off.
	StatusBoundary(off int64) int64
}

// StatusLimit returns how many bytes from off QEMU's block status of img
// can describe at most (looking through a *Node to its image), or the
// largest int64 when img has no such bound.
func StatusLimit(img Image, off int64) int64 {
	b, ok := img.(StatusBounder)
	if n, isNode := img.(*Node); !ok && isNode {
		b, ok = n.Image.(StatusBounder)
	}
	if !ok {
		return 1<<63 - 1
	}
	return max(b.StatusBoundary(off)-off, 1)
}
