package blocktest

import (
	"fmt"
	"math/rand/v2"

	"github.com/qimg/qimg/block"
)

// OpKind is what an Op does.
type OpKind int

// Operation kinds.
const (
	// OpWrite writes data: one byte value (Pattern) or, when Random is
	// set, bytes generated from Seed.
	OpWrite OpKind = iota
	// OpZero makes the range read as zeroes (WriteZeroes; MayUnmap when
	// Unmap is set).
	OpZero
)

// Op is one write of a random image layout.
type Op struct {
	Kind           OpKind
	Offset, Length int64
	// Pattern is the byte an OpWrite writes when Random is false.
	Pattern byte
	// Random makes an OpWrite write bytes generated from Seed.
	Random bool
	Seed   uint64
	// Unmap lets an OpZero deallocate.
	Unmap bool
}

// Data returns the bytes an OpWrite writes.
func (o Op) Data() []byte {
	p := make([]byte, o.Length)
	if !o.Random {
		for i := range p {
			p[i] = o.Pattern
		}
		return p
	}
	r := rand.New(rand.NewPCG(o.Seed, o.Seed^0x5851f42d4c957f2d))
	for i := 0; i < len(p); i += 8 {
		v := r.Uint64()
		for j := i; j < len(p) && j < i+8; j++ {
			p[j] = byte(v >> (8 * (j - i)))
		}
	}
	return p
}

// QemuIO returns the qemu-io command that performs the operation, or "" for
// a write of random bytes, which qemu-io cannot express.
func (o Op) QemuIO() string {
	switch {
	case o.Kind == OpZero && o.Unmap:
		return fmt.Sprintf("write -z -u %d %d", o.Offset, o.Length)
	case o.Kind == OpZero:
		return fmt.Sprintf("write -z %d %d", o.Offset, o.Length)
	case o.Random:
		return ""
	}
	return fmt.Sprintf("write -P %d %d %d", o.Pattern, o.Offset, o.Length)
}

func (o Op) String() string {
	switch {
	case o.Kind == OpZero:
		return fmt.Sprintf("zero(unmap=%v) [%d, %d)", o.Unmap, o.Offset, o.Offset+o.Length)
	case o.Random:
		return fmt.Sprintf("write random(%d) [%d, %d)", o.Seed, o.Offset, o.Offset+o.Length)
	}
	return fmt.Sprintf("write %#x [%d, %d)", o.Pattern, o.Offset, o.Offset+o.Length)
}

// RandomOptions shape a random image layout. The zero value gives 32 runs
// of up to 256 KiB, byte-granular, of random bytes, over the whole image.
type RandomOptions struct {
	// Runs is the number of data, zero and untouched runs laid out one
	// after another; 0 means 32. A quarter as many overwrites follow.
	Runs int
	// MaxRun bounds the length of a data or zero run; 0 means 256 KiB.
	MaxRun int64
	// Align aligns every offset and length (to a cluster, a sector); 0
	// means byte granularity.
	Align int64
	// Patterned fills each data run with one random byte value instead
	// of random bytes, so that qemu-io can write and verify the layout.
	Patterned bool
}

// RandomOps returns a reproducible random layout for an image of the given
// size: runs of data, of zeroes and untouched gaps laid out from the start
// (gaps grow with the image, so that runs spread over big images while the
// data stays bounded), then overwrites of parts of what was written, with
// data or zeroes.
func RandomOps(size int64, seed uint64, o RandomOptions) []Op {
	if o.Runs <= 0 {
		o.Runs = 32
	}
	if o.MaxRun <= 0 {
		o.MaxRun = 256 << 10
	}
	align := max(o.Align, 1)
	r := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	down := func(v int64) int64 { return v / align * align }
	length := func(limit int64) int64 {
		return max(align, down(1+r.Int64N(max(limit, 1))))
	}
	newWrite := func(off, n int64) Op {
		op := Op{Kind: OpWrite, Offset: off, Length: n, Random: !o.Patterned, Seed: r.Uint64()}
		op.Pattern = byte(1 + r.IntN(255))
		return op
	}
	newZero := func(off, n int64) Op {
		return Op{Kind: OpZero, Offset: off, Length: n, Unmap: r.IntN(2) == 0}
	}
	var ops []Op
	var written []Op
	gap := max(o.MaxRun, size/int64(o.Runs))
	pos := int64(0)
	if size >= align {
		pos = down(r.Int64N(min(size, o.MaxRun)))
	}
	for i := 0; i < o.Runs && pos < size; i++ {
		switch r.IntN(3) {
		case 0:
			n := min(length(o.MaxRun), size-pos)
			op := newWrite(pos, n)
			ops = append(ops, op)
			written = append(written, op)
			pos += n
		case 1:
			n := min(length(o.MaxRun), size-pos)
			ops = append(ops, newZero(pos, n))
			pos += n
		default:
			pos += length(gap)
		}
	}
	for i := 0; i < o.Runs/4 && len(written) > 0; i++ {
		w := written[r.IntN(len(written))]
		off := w.Offset + down(r.Int64N(w.Length))
		n := min(length(w.Length), w.Offset+w.Length-off)
		if n <= 0 {
			continue
		}
		if r.IntN(2) == 0 {
			ops = append(ops, newZero(off, n))
		} else {
			ops = append(ops, newWrite(off, n))
		}
	}
	return ops
}

// Apply performs ops on img and records them in m (which may be nil).
func Apply(img block.Image, ops []Op, m *Model) error {
	for _, op := range ops {
		switch op.Kind {
		case OpWrite:
			p := op.Data()
			if n, err := img.WriteAt(p, op.Offset); err != nil || n != len(p) {
				return fmt.Errorf("%s: wrote %d bytes: %w", op, n, err)
			}
		case OpZero:
			var flags block.ZeroFlags
			if op.Unmap {
				flags = block.MayUnmap
			}
			if err := img.WriteZeroes(op.Offset, op.Length, flags); err != nil {
				return fmt.Errorf("%s: %w", op, err)
			}
		}
		if m != nil {
			m.Apply(op)
		}
	}
	return nil
}

// Apply records op in the model without touching any image, for replaying
// a layout that another tool (such as qemu-io) wrote.
func (m *Model) Apply(op Op) {
	switch op.Kind {
	case OpWrite:
		m.Write(op.Data(), op.Offset)
	case OpZero:
		m.Zero(op.Offset, op.Length)
	}
}

// RandomImage writes a reproducible random layout (RandomOps) into img,
// which must read as zeroes (a new image), and returns the model of its
// expected content.
func RandomImage(img block.Image, seed uint64, o RandomOptions) (*Model, error) {
	m := NewModel(img.Size())
	if err := Apply(img, RandomOps(img.Size(), seed, o), m); err != nil {
		return nil, err
	}
	return m, nil
}
