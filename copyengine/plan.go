package copyengine

import (
	"fmt"

	"github.com/qimg/qimg/block"
)

// kind is what a planned run of the copy needs.
type kind uint8

const (
	// kindData runs are read, searched for zeroes and written.
	kindData kind = iota
	// kindZero runs read as zeroes in the sources.
	kindZero
	// kindBacking runs are left to the target's backing file.
	kindBacking
)

func (k kind) String() string {
	return [...]string{"data", "zero", "backing"}[k]
}

// unit is one planned run: the piece of work qemu-img's convert hands to a
// coroutine in one go. Positions are in copy coordinates: 0 is the start of
// the first source and of Options.TargetOffset in the target.
type unit struct {
	off, n int64
	kind   kind
}

// part is a source placed in the copy.
type part struct {
	Source
	// start and length place the source in the copy.
	start, length int64
	// size is the image's size.
	size int64
	// align is the source's status alignment, at least a sector.
	align int64
}

// planner walks the sources' allocation and cuts it into units, as
// qemu-img's convert_iteration_sectors does: a block-status run is asked
// for once and then handed out in pieces of at most one buffer (data) or
// as a whole (zeroes and backing runs); for compressed copies every unit is
// a whole number of clusters.
type planner struct {
	c *copier
	// pos is where the next unit starts.
	pos int64
	// statusEnd is the end of the run the last block-status call
	// described, with kind its kind.
	statusEnd int64
	kind      kind
}

// done reports whether the whole copy has been planned.
func (p *planner) done() bool { return p.pos >= p.c.total }

// next returns the next unit.
func (p *planner) next() (unit, error) {
	c := p.c
	pos := p.pos
	n := min(c.total-pos, maxStatusRequest)
	postBackingZero := false
	if c.o.TargetBacked && c.o.TargetBackingSize > 0 {
		// Past the end of the target's backing image zeroes need not be
		// written: the target reads them there anyway.
		backingEnd := c.o.TargetBackingSize - c.o.TargetOffset
		if pos >= backingEnd {
			postBackingZero = true
		} else if pos+n > backingEnd {
			n = backingEnd - pos
		}
	}
	if p.statusEnd <= pos {
		count, k, err := c.status(pos, n)
		if err != nil {
			return unit{}, err
		}
		if k == kindZero && postBackingZero {
			k = kindBacking
		}
		p.kind, p.statusEnd = k, pos+count
	}
	n = min(n, p.statusEnd-pos)
	k := p.kind
	limit := c.bufSize
	if c.compress {
		limit = c.cluster
	}
	if k == kindData {
		n = min(n, limit)
	}
	if c.compress {
		// Compressed clusters are written whole: a cluster that is not
		// wholly zero or wholly backing is copied as data.
		if n < c.cluster {
			n = min(c.cluster, c.total-pos)
			k = kindData
		} else {
			n -= n % c.cluster
		}
	}
	if k == kindZero && c.sparse == 0 {
		// Zeroes are written as data from a buffer.
		n = min(n, limit)
	}
	p.pos += n
	return unit{off: pos, n: n, kind: k}, nil
}

// partAt returns the index of the source that holds copy position pos.
func (c *copier) partAt(pos int64) int {
	lo, hi := 0, len(c.parts)-1
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if c.parts[mid].start <= pos {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo
}

// status asks the source at pos about at most n bytes, and returns the
// length of the run (whole sectors, on the source's alignment where
// possible) and its kind.
func (c *copier) status(pos, n int64) (int64, kind, error) {
	pt := &c.parts[c.partAt(pos)]
	rel := pos - pt.start
	n = min(n, pt.length-rel)
	imgOff := pt.Offset + rel
	if imgOff >= pt.size {
		// The sector padding past the end of the image reads as zeroes.
		return n, kindZero, nil
	}
	q := min(n, pt.size-imgOff)
	var ext block.Extent
	for {
		var err error
		ext, _, err = block.BlockStatusAbove(pt.Image, pt.Base, imgOff, q)
		if err == nil {
			break
		}
		if !c.o.Salvage {
			return 0, 0, &Error{Op: OpStatus, Offset: imgOff, Err: err}
		}
		if q <= sectorSize {
			c.warn(fmt.Sprintf("error while reading block status at offset %d: %s", imgOff, strerror(err)))
			ext = block.Extent{Offset: imgOff, Length: q, Status: block.Allocated | block.Data}
			break
		}
		// Retry on a shorter range, down to one sector.
		q = roundUp((q+3)/4, sectorSize)
	}
	count := ext.Length
	if imgOff+count >= pt.size {
		// A run that reaches the end of the image covers the padding of
		// its last sector too.
		count = n
	}
	count = min(roundUp(count, sectorSize), n)
	if pt.align > sectorSize {
		if tail := (imgOff + count) % pt.align; count > tail {
			count -= tail
		}
	}
	switch {
	case ext.Has(block.Zero):
		return count, kindZero, nil
	case ext.Has(block.Data):
		return count, kindData, nil
	case c.o.TargetBacked:
		return count, kindBacking, nil
	}
	return count, kindData, nil
}

// counted reports whether a unit counts towards progress: the units that
// are read, or written from a zero buffer (as qemu-img counts them).
func (c *copier) counted(u unit) bool {
	return u.kind == kindData || (u.kind == kindZero && c.sparse == 0)
}

// roundUp rounds n up to a multiple of m.
func roundUp(n, m int64) int64 { return (n + m - 1) / m * m }
