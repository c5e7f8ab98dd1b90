package blocktest

import (
	"bytes"
	"fmt"
	"maps"
	"slices"

	"github.com/qimg/qimg/block"
)

// modelChunk is the granularity at which a Model stores written bytes;
// ranges never written take no memory, so a Model of a terabyte image is
// cheap.
const modelChunk = 4096

// Model is the expected content of an image: what was written, zeroes
// everywhere else. It is sparse and not safe for concurrent use.
type Model struct {
	size   int64
	chunks map[int64]*[modelChunk]byte
}

// NewModel returns the model of a new, all-zero image of the given size.
func NewModel(size int64) *Model {
	return &Model{size: size, chunks: make(map[int64]*[modelChunk]byte)}
}

// Size is the image size the model describes.
func (m *Model) Size() int64 { return m.size }

// Write records that p was written at off.
func (m *Model) Write(p []byte, off int64) {
	for len(p) > 0 {
		ci, co := off/modelChunk, off%modelChunk
		c := m.chunks[ci]
		if c == nil {
			c = new([modelChunk]byte)
			m.chunks[ci] = c
		}
		n := copy(c[co:], p)
		p, off = p[n:], off+int64(n)
	}
}

// Zero records that [off, off+n) was zeroed.
func (m *Model) Zero(off, n int64) {
	end := off + n
	m.eachChunk(off, end, func(ci int64, c *[modelChunk]byte, lo, hi int64) {
		if lo == 0 && hi == modelChunk {
			delete(m.chunks, ci)
			return
		}
		clear(c[lo:hi])
	})
}

// eachChunk calls fn for every stored chunk overlapping [off, end) with the
// overlap as chunk-relative bounds, in no particular order.
func (m *Model) eachChunk(off, end int64, fn func(ci int64, c *[modelChunk]byte, lo, hi int64)) {
	if off >= end {
		return
	}
	first, last := off/modelChunk, (end-1)/modelChunk
	visit := func(ci int64) {
		c := m.chunks[ci]
		if c == nil {
			return
		}
		lo, hi := int64(0), int64(modelChunk)
		if ci == first {
			lo = off % modelChunk
		}
		if ci == last {
			hi = end - ci*modelChunk
		}
		fn(ci, c, lo, hi)
	}
	if last-first+1 > int64(len(m.chunks)) {
		for _, ci := range slices.Collect(maps.Keys(m.chunks)) {
			if ci >= first && ci <= last {
				visit(ci)
			}
		}
		return
	}
	for ci := first; ci <= last; ci++ {
		visit(ci)
	}
}

// ReadAt fills p with the expected content at off.
func (m *Model) ReadAt(p []byte, off int64) {
	for len(p) > 0 {
		ci, co := off/modelChunk, off%modelChunk
		n := min(len(p), int(modelChunk-co))
		if c := m.chunks[ci]; c != nil {
			copy(p[:n], c[co:])
		} else {
			clear(p[:n])
		}
		p, off = p[n:], off+int64(n)
	}
}

// Bytes returns the expected content of [off, off+n).
func (m *Model) Bytes(off, n int64) []byte {
	p := make([]byte, n)
	m.ReadAt(p, off)
	return p
}

// FirstNonZero returns the first offset in [off, off+n) whose expected byte
// is not zero, or -1.
func (m *Model) FirstNonZero(off, n int64) int64 {
	first := int64(-1)
	m.eachChunk(off, off+n, func(ci int64, c *[modelChunk]byte, lo, hi int64) {
		for i := lo; i < hi; i++ {
			if c[i] != 0 {
				if pos := ci*modelChunk + i; first < 0 || pos < first {
					first = pos
				}
				return
			}
		}
	})
	return first
}

// Clone returns an independent copy.
func (m *Model) Clone() *Model {
	c := NewModel(m.size)
	for k, v := range m.chunks {
		cp := *v
		c.chunks[k] = &cp
	}
	return c
}

// Equal reports whether two models expect the same content.
func (m *Model) Equal(o *Model) bool {
	if m.size != o.size {
		return false
	}
	var zero [modelChunk]byte
	for _, pair := range [][2]*Model{{m, o}, {o, m}} {
		for ci, c := range pair[0].chunks {
			d := pair[1].chunks[ci]
			if d == nil {
				d = &zero
			}
			if *c != *d {
				return false
			}
		}
	}
	return true
}

// ConstantRun is a run of identical expected bytes.
type ConstantRun struct {
	Offset, Length int64
	Value          byte
}

// ConstantRuns describes the expected content as maximal runs of one byte
// value, for checking an image with `qemu-io -c 'read -P value off len'`.
// It gives up (ok false) when there would be more than limit runs, as there
// are for random data.
func (m *Model) ConstantRuns(limit int) (runs []ConstantRun, ok bool) {
	add := func(off, n int64, v byte) bool {
		if k := len(runs) - 1; k >= 0 && runs[k].Value == v && runs[k].Offset+runs[k].Length == off {
			runs[k].Length += n
			return true
		}
		if len(runs) == limit {
			return false
		}
		runs = append(runs, ConstantRun{off, n, v})
		return true
	}
	pos := int64(0)
	for _, ci := range slices.Sorted(maps.Keys(m.chunks)) {
		start := ci * modelChunk
		if start >= m.size {
			break
		}
		if start > pos && !add(pos, start-pos, 0) {
			return nil, false
		}
		c := m.chunks[ci]
		end := min(int64(modelChunk), m.size-start)
		for i := int64(0); i < end; {
			j := i + 1
			for j < end && c[j] == c[i] {
				j++
			}
			if !add(start+i, j-i, c[i]) {
				return nil, false
			}
			i = j
		}
		pos = start + end
	}
	if pos < m.size && !add(pos, m.size-pos, 0) {
		return nil, false
	}
	return runs, true
}

// QemuIOReads returns `qemu-io` commands ("read -P value off len") that
// check an image against the model, one per constant run (see
// ConstantRuns, whose limit applies). Zero runs longer than 1 GiB, which
// qemu-io would read into one buffer, are checked at both ends only.
func (m *Model) QemuIOReads(limit int) ([]string, bool) {
	runs, ok := m.ConstantRuns(limit)
	if !ok {
		return nil, false
	}
	var cmds []string
	for _, r := range runs {
		if r.Value == 0 && r.Length > 1<<30 {
			cmds = append(cmds, fmt.Sprintf("read -P 0 %d %d", r.Offset, 1<<20),
				fmt.Sprintf("read -P 0 %d %d", r.Offset+r.Length-1<<20, 1<<20))
			continue
		}
		cmds = append(cmds, fmt.Sprintf("read -P %d %d %d", r.Value, r.Offset, r.Length))
	}
	return cmds, true
}

// sampleSize bounds how much of a large extent Verify reads.
const sampleSize = 64 << 10

// fullReadLimit is the extent length up to which Verify reads everything.
const fullReadLimit = 4 << 20

// Verify checks img against the model: it walks the image with BlockStatus
// (the extents must tile the image, each starting where asked and no longer
// than asked, with a positive length), requires that an extent reported as
// reading zeroes holds no written data, and reads the image back. Extents
// up to 4 MiB are read whole; of larger ones it reads the head, the tail and
// every range the model holds data in.
func Verify(img block.Image, m *Model) error {
	size := img.Size()
	if size != m.size {
		return fmt.Errorf("image size %d, model size %d", size, m.size)
	}
	for off := int64(0); off < size; {
		ext, err := img.BlockStatus(off, size-off)
		if err != nil {
			return fmt.Errorf("BlockStatus(%d, %d): %w", off, size-off, err)
		}
		if err := checkExtent(ext, off, size-off); err != nil {
			return err
		}
		if readsZero(ext) {
			if pos := m.FirstNonZero(off, ext.Length); pos >= 0 {
				return fmt.Errorf("BlockStatus says [%d, %d) reads as zeroes (status %s), but offset %d holds %#x",
					off, off+ext.Length, statusString(ext.Status), pos, m.Bytes(pos, 1)[0])
			}
		}
		if err := compareExtent(img, m, off, ext.Length); err != nil {
			return fmt.Errorf("%w (in extent [%d, %d) with status %s)", err, off, off+ext.Length, statusString(ext.Status))
		}
		off += ext.Length
	}
	return nil
}

// readsZero reports whether an extent of an image without a backing file
// says it reads as zeroes.
func readsZero(e block.Extent) bool {
	return e.Has(block.Zero) || !e.Has(block.Allocated) && !e.Has(block.Data)
}

func checkExtent(ext block.Extent, off, n int64) error {
	if ext.Offset != off {
		return fmt.Errorf("BlockStatus(%d, %d) returned an extent at %d", off, n, ext.Offset)
	}
	if ext.Length <= 0 || ext.Length > n {
		return fmt.Errorf("BlockStatus(%d, %d) returned length %d", off, n, ext.Length)
	}
	return nil
}

// compareExtent reads [off, off+n) of img, or samples of it, and compares
// with the model.
func compareExtent(img block.Image, m *Model, off, n int64) error {
	if n <= fullReadLimit {
		return compareRange(img, m, off, n)
	}
	if err := compareRange(img, m, off, sampleSize); err != nil {
		return err
	}
	if err := compareRange(img, m, off+n-sampleSize, sampleSize); err != nil {
		return err
	}
	var err error
	m.eachChunk(off, off+n, func(ci int64, _ *[modelChunk]byte, lo, hi int64) {
		if err == nil {
			err = compareRange(img, m, ci*modelChunk+lo, hi-lo)
		}
	})
	return err
}

// compareRange reads [off, off+n) and compares it with the model.
func compareRange(img block.Image, m *Model, off, n int64) error {
	const chunk = 1 << 20
	got := make([]byte, min(n, chunk))
	want := make([]byte, len(got))
	for n > 0 {
		c := min(n, chunk)
		if _, err := img.ReadAt(got[:c], off); err != nil {
			return fmt.Errorf("ReadAt(%d bytes at %d): %w", c, off, err)
		}
		m.ReadAt(want[:c], off)
		if !bytes.Equal(got[:c], want[:c]) {
			i := firstDiff(got[:c], want[:c])
			return fmt.Errorf("offset %d reads %#x, want %#x", off+int64(i), got[i], want[i])
		}
		off += c
		n -= c
	}
	return nil
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

func statusString(s block.Status) string {
	var out []byte
	for _, f := range []struct {
		bit  block.Status
		name string
	}{{block.Allocated, "allocated"}, {block.Data, "data"}, {block.Zero, "zero"}, {block.OffsetValid, "offset"}, {block.Compressed, "compressed"}} {
		if s&f.bit != 0 {
			if len(out) > 0 {
				out = append(out, '|')
			}
			out = append(out, f.name...)
		}
	}
	if len(out) == 0 {
		return "unallocated"
	}
	return string(out)
}
