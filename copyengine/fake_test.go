package copyengine

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/storage"
)

// opKind is what a recorded request did.
type opKind byte

const (
	opWrite      opKind = 'w'
	opZero       opKind = 'z'
	opCompressed opKind = 'c'
)

// op is one recorded request to a fake image.
type op struct {
	kind   opKind
	off, n int64
	flags  block.ZeroFlags
}

// fakeImage is an in-memory image for tests. Its content lives in a sparse
// MemFile; its block status comes from layout when set (so a test can give
// status and content independently, as a backing chain would), otherwise
// from the MemFile's data and holes. It records every write and can fail
// reads, writes and status calls, or slow writes down to expose ordering.
type fakeImage struct {
	mem     *storage.MemFile
	size    int64
	cluster int64
	layout  []block.Extent
	backing string

	// failRead, failWrite and failStatus, when set, return the error a
	// request at off of n bytes gets (nil: none).
	failRead   func(off, n int64) error
	failWrite  func(off, n int64) error
	failStatus func(off, n int64) error
	// emptyStatus makes BlockStatus return runs of no length.
	emptyStatus bool
	// writeDelay slows every write down.
	writeDelay time.Duration
	// onWrite is called before each write is done.
	onWrite func(o op)

	mu  sync.Mutex
	ops []op
	// inFlight and maxInFlight count concurrent writes.
	inFlight, maxInFlight atomic.Int64
}

func newFake(size int64) *fakeImage {
	m := storage.NewMemFile("fake")
	m.Truncate(size)
	return &fakeImage{mem: m, size: size}
}

// fill writes data into the fake without recording it.
func (f *fakeImage) fill(p []byte, off int64) *fakeImage {
	f.mem.WriteAt(p, off)
	return f
}

func (f *fakeImage) Format() string { return "fake" }
func (f *fakeImage) Size() int64    { return f.size }

func (f *fakeImage) ReadAt(p []byte, off int64) (int, error) {
	if err := block.CheckRange(f.size, off, int64(len(p))); err != nil {
		return 0, err
	}
	if f.failRead != nil {
		if err := f.failRead(off, int64(len(p))); err != nil {
			return 0, err
		}
	}
	if err := storage.ReadFull(f.mem, p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (f *fakeImage) begin(o op) error {
	if err := block.CheckRange(f.size, o.off, o.n); err != nil {
		return err
	}
	if f.failWrite != nil {
		if err := f.failWrite(o.off, o.n); err != nil {
			return err
		}
	}
	if f.onWrite != nil {
		f.onWrite(o)
	}
	cur := f.inFlight.Add(1)
	for {
		m := f.maxInFlight.Load()
		if cur <= m || f.maxInFlight.CompareAndSwap(m, cur) {
			break
		}
	}
	if f.writeDelay > 0 {
		time.Sleep(f.writeDelay)
	}
	f.mu.Lock()
	f.ops = append(f.ops, o)
	f.mu.Unlock()
	return nil
}

func (f *fakeImage) end() { f.inFlight.Add(-1) }

func (f *fakeImage) WriteAt(p []byte, off int64) (int, error) {
	if err := f.begin(op{kind: opWrite, off: off, n: int64(len(p))}); err != nil {
		return 0, err
	}
	defer f.end()
	return f.mem.WriteAt(p, off)
}

func (f *fakeImage) WriteZeroes(off, n int64, flags block.ZeroFlags) error {
	if err := f.begin(op{kind: opZero, off: off, n: n, flags: flags}); err != nil {
		return err
	}
	defer f.end()
	return f.mem.PunchHole(off, n)
}

func (f *fakeImage) BlockStatus(off, n int64) (block.Extent, error) {
	if err := block.CheckRange(f.size, off, n); err != nil {
		return block.Extent{}, err
	}
	if f.failStatus != nil {
		if err := f.failStatus(off, n); err != nil {
			return block.Extent{}, err
		}
	}
	if f.emptyStatus {
		return block.Extent{Offset: off, Status: block.Allocated | block.Data}, nil
	}
	if f.layout != nil {
		for _, e := range f.layout {
			if off >= e.Offset && off < e.Offset+e.Length {
				e.Length = min(e.Offset+e.Length-off, n)
				e.Offset = off
				return e, nil
			}
		}
		return block.Extent{Offset: off, Length: n}, nil
	}
	start, end, err := storage.NextData(f.mem, off, f.size)
	if err != nil {
		return block.Extent{}, err
	}
	if start > off {
		return block.Extent{Offset: off, Length: min(n, start-off), Status: block.Allocated | block.Zero}, nil
	}
	return block.Extent{Offset: off, Length: min(n, end-off), Status: block.Allocated | block.Data}, nil
}

func (f *fakeImage) Discard(off, n int64) error { return nil }
func (f *fakeImage) Flush() error               { return nil }
func (f *fakeImage) Close() error               { return nil }

func (f *fakeImage) Info() (block.Info, error) { return block.Info{ClusterSize: f.cluster}, nil }

// BackingFile makes the fake a Backed image when backing is set.
func (f *fakeImage) BackingFile() (string, string) { return f.backing, "" }
func (f *fakeImage) SetBacking(block.Image)        {}

func (f *fakeImage) recorded() []op {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]op(nil), f.ops...)
}

func (f *fakeImage) bytes() []byte { return f.mem.Bytes()[:f.size] }

// compFake is a fake image that can write compressed clusters; it stores
// them uncompressed and records them.
type compFake struct{ *fakeImage }

func (c compFake) WriteCompressed(p []byte, off int64) error {
	n := int64(len(p))
	if off%c.cluster != 0 || (n != c.cluster && off+n != c.size) {
		return block.ErrRange
	}
	if err := c.begin(op{kind: opCompressed, off: off, n: n}); err != nil {
		return err
	}
	defer c.end()
	_, err := c.mem.WriteAt(p, off)
	return err
}
