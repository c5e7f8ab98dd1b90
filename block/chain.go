package block

import "fmt"

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
