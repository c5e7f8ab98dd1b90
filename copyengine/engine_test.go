package copyengine

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qimg/qimg/block"
)

const (
	kib = int64(1) << 10
	mib = int64(1) << 20
)

// random returns n reproducible bytes with no zero sector.
func random(seed uint64, n int64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n+7)
	for i := int64(0); i < n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64()|0x0101010101010101)
	}
	return b[:n]
}

// copyInto runs a copy and fails the test on error.
func copyInto(t *testing.T, dst block.Image, srcs []Source, o Options) Stats {
	t.Helper()
	st, err := Copy(context.Background(), dst, srcs, o)
	if err != nil {
		t.Fatalf("Copy: %v", err)
	}
	return st
}

func sameBytes(t *testing.T, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("content differs at byte %d (got %#x, want %#x)", i, got[i], want[i])
			}
		}
		t.Fatalf("content differs: %d bytes, want %d", len(got), len(want))
	}
}

// sumOps adds up the bytes of recorded requests of one kind.
func sumOps(ops []op, k opKind) int64 {
	var n int64
	for _, o := range ops {
		if o.kind == k {
			n += o.n
		}
	}
	return n
}

func TestCopyDense(t *testing.T) {
	for _, par := range []int{1, 3, 8} {
		for _, outOfOrder := range []bool{false, true} {
			t.Run(fmt.Sprintf("m%d W%v", par, outOfOrder), func(t *testing.T) {
				data := random(1, 5*mib+3*kib)
				src := newFake(int64(len(data))).fill(data, 0)
				dst := newFake(int64(len(data)))
				st := copyInto(t, dst, []Source{{Image: src}}, Options{Parallel: par, OutOfOrder: outOfOrder, TargetZeroed: true})
				sameBytes(t, dst.bytes(), data)
				if st.Written != int64(len(data)) || st.Read != int64(len(data)) {
					t.Errorf("stats %+v, want %d read and written", st, len(data))
				}
				ops := dst.recorded()
				for _, o := range ops {
					if o.n > DefaultBufferSize {
						t.Errorf("write of %d bytes, larger than a buffer", o.n)
					}
				}
				if !outOfOrder {
					for i := 1; i < len(ops); i++ {
						if ops[i].off != ops[i-1].off+ops[i-1].n {
							t.Fatalf("writes out of order: %v", ops)
						}
					}
				}
			})
		}
	}
}

func TestCopyInOrderOneWriteAtATime(t *testing.T) {
	data := random(2, 4*mib)
	src := newFake(int64(len(data))).fill(data, 0)
	dst := newFake(int64(len(data)))
	dst.writeDelay = time.Millisecond
	copyInto(t, dst, []Source{{Image: src}}, Options{BufferSize: 64 * kib})
	if m := dst.maxInFlight.Load(); m != 1 {
		t.Errorf("%d writes in flight at once, want 1 without OutOfOrder", m)
	}
	ops := dst.recorded()
	if !slices.IsSortedFunc(ops, func(a, b op) int { return int(a.off - b.off) }) {
		t.Errorf("writes out of order")
	}

	dst = newFake(int64(len(data)))
	dst.writeDelay = time.Millisecond
	copyInto(t, dst, []Source{{Image: src}}, Options{BufferSize: 64 * kib, OutOfOrder: true})
	if m := dst.maxInFlight.Load(); m < 2 {
		t.Errorf("%d writes in flight at once with OutOfOrder, want several", m)
	}
	sameBytes(t, dst.bytes(), data)
}

func TestCopySparse(t *testing.T) {
	size := 16 * mib
	src := newFake(size)
	// Data at 1 MiB (64 KiB) and at 8 MiB (3 MiB); holes elsewhere.
	a, b := random(3, 64*kib), random(4, 3*mib)
	src.fill(a, mib).fill(b, 8*mib)
	want := src.bytes()

	t.Run("zeroed target", func(t *testing.T) {
		dst := newFake(size)
		var last, total int64
		st := copyInto(t, dst, []Source{{Image: src}}, Options{TargetZeroed: true, Progress: func(d, tot int64) {
			if d < last {
				t.Errorf("progress went back from %d to %d", last, d)
			}
			last, total = d, tot
		}})
		sameBytes(t, dst.bytes(), want)
		if st.Written != int64(len(a)+len(b)) || st.Zeroed != 0 {
			t.Errorf("stats %+v, want only the data written", st)
		}
		if last != total || total != int64(len(a)+len(b)) {
			t.Errorf("progress ended at %d of %d, want %d of the same", last, total, len(a)+len(b))
		}
	})
	t.Run("target not zeroed", func(t *testing.T) {
		dst := newFake(size).fill(random(5, size), 0)
		st := copyInto(t, dst, []Source{{Image: src}}, Options{})
		sameBytes(t, dst.bytes(), want)
		if st.Written+st.Zeroed != size || st.Zeroed != size-int64(len(a)+len(b)) {
			t.Errorf("stats %+v, want holes zeroed", st)
		}
		for _, o := range dst.recorded() {
			if o.kind == opZero && o.flags != block.MayUnmap {
				t.Errorf("WriteZeroes flags %v, want MayUnmap", o.flags)
			}
		}
	})
	t.Run("fully allocated", func(t *testing.T) {
		dst := newFake(size).fill(random(6, size), 0)
		var total int64
		st := copyInto(t, dst, []Source{{Image: src}}, Options{SparseSize: -1, TargetZeroed: true, Progress: func(_, tot int64) { total = tot }})
		sameBytes(t, dst.bytes(), want)
		if st.Written != size || st.Zeroed != 0 {
			t.Errorf("stats %+v, want every byte written", st)
		}
		if total != size {
			t.Errorf("progress total %d, want %d", total, size)
		}
	})
}

func TestCopyZeroDetection(t *testing.T) {
	// One data run holding zero runs of several lengths.
	size := 2 * mib
	data := random(7, size)
	clear(data[64*kib : 64*kib+8*kib])           // 8 KiB aligned: a hole
	clear(data[200*kib : 200*kib+kib])           // 1 KiB: too short
	clear(data[300*kib+512 : 300*kib+512+9*kib]) // unaligned 9 KiB: keeps its aligned 4 KiB
	clear(data[mib : mib+256*kib])               // 256 KiB
	clear(data[size-16*kib:])                    // at the end
	src := newFake(size).fill(data, 0)

	cases := []struct {
		name    string
		o       Options
		cluster int64
		written int64
	}{
		{"default", Options{TargetZeroed: true}, 0, size - 8*kib - 4*kib - 256*kib - 16*kib},
		{"S 64k", Options{TargetZeroed: true, SparseSize: 64 * kib}, 0, size - 256*kib},
		{"S 0", Options{TargetZeroed: true, SparseSize: -1}, 0, size},
		{"64k clusters", Options{TargetZeroed: true}, 64 * kib, size - 8*kib - 4*kib - 256*kib - 16*kib},
		{"64k target alignment", Options{TargetZeroed: true, TargetAlignment: 64 * kib}, 0, size - 256*kib},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dst := newFake(size)
			dst.cluster = tc.cluster
			st := copyInto(t, dst, []Source{{Image: src}}, tc.o)
			sameBytes(t, dst.bytes(), data)
			if st.Written != tc.written {
				t.Errorf("wrote %d bytes, want %d", st.Written, tc.written)
			}
			if a := tc.o.TargetAlignment; a > 0 {
				for _, o := range dst.recorded() {
					if o.off%a != 0 || (o.off+o.n)%a != 0 && o.off+o.n != size {
						t.Errorf("write %+v not on the target's %d-byte alignment", o, a)
					}
				}
			}
		})
	}
}

func TestCopyConcatenatesAndPads(t *testing.T) {
	a := random(8, 1000)
	b := random(9, 3*mib)
	c := random(10, 512)
	srcs := []Source{
		{Image: newFake(int64(len(a))).fill(a, 0)},
		{Image: newFake(int64(len(b))).fill(b, 0)},
		{Image: newFake(int64(len(c))).fill(c, 0)},
	}
	total := Size(srcs)
	if total != 1024+3*mib+512 {
		t.Fatalf("Size = %d", total)
	}
	want := make([]byte, total)
	copy(want, a)
	copy(want[1024:], b)
	copy(want[1024+3*mib:], c)
	for _, compress := range []bool{false, true} {
		dst := newFake(total)
		dst.cluster = 64 * kib
		var img block.Image = dst
		if compress {
			img = compFake{dst}
		}
		copyInto(t, img, srcs, Options{TargetZeroed: true, Compress: compress})
		sameBytes(t, dst.bytes(), want)
	}
}

func TestCopyWindowAndTargetOffset(t *testing.T) {
	data := random(11, mib)
	src := newFake(mib).fill(data, 0)
	dst := newFake(2 * mib)
	copyInto(t, dst, []Source{{Image: src, Offset: 4 * kib, Length: 64 * kib}}, Options{TargetOffset: 512 * kib, TargetZeroed: true})
	got := dst.bytes()
	sameBytes(t, got[512*kib:512*kib+64*kib], data[4*kib:4*kib+64*kib])
	if !IsZero(got[:512*kib]) || !IsZero(got[512*kib+64*kib:]) {
		t.Error("bytes written outside the window")
	}
	if _, err := Copy(context.Background(), newFake(64*kib), []Source{{Image: src}}, Options{}); err == nil {
		t.Error("copy into a target that is too small succeeded")
	}
}

// chain builds a two-image chain: top allocates the ranges in topData,
// the backing image everything else; content is the merged view.
func chain(t *testing.T, size int64, topData [][2]int64) (top *block.Node, backing *fakeImage, content []byte) {
	t.Helper()
	content = random(12, size)
	backing = newFake(size).fill(content, 0)
	topImg := newFake(size).fill(content, 0)
	topImg.backing = "base"
	pos := int64(0)
	for _, r := range topData {
		if r[0] > pos {
			topImg.layout = append(topImg.layout, block.Extent{Offset: pos, Length: r[0] - pos})
		}
		clear(content[r[0]:r[1]])
		topImg.fill(content[r[0]:r[1]], r[0])
		topImg.layout = append(topImg.layout, block.Extent{Offset: r[0], Length: r[1] - r[0], Status: block.Allocated | block.Zero})
		pos = r[1]
	}
	if pos < size {
		topImg.layout = append(topImg.layout, block.Extent{Offset: pos, Length: size - pos})
	}
	return &block.Node{Image: topImg, Backing: &block.Node{Image: backing}}, backing, content
}

func TestCopyBackingChain(t *testing.T) {
	size := 4 * mib
	top, backing, content := chain(t, size, [][2]int64{{mib, 2 * mib}})

	t.Run("whole chain", func(t *testing.T) {
		dst := newFake(size)
		copyInto(t, dst, []Source{{Image: top}}, Options{TargetZeroed: true})
		sameBytes(t, dst.bytes(), content)
	})
	t.Run("above base", func(t *testing.T) {
		dst := newFake(size).fill(backing.bytes(), 0)
		st := copyInto(t, dst, []Source{{Image: top, Base: top.Backing}}, Options{TargetBacked: true})
		sameBytes(t, dst.bytes(), content)
		ops := dst.recorded()
		if len(ops) != 1 || ops[0] != (op{kind: opZero, off: mib, n: mib, flags: block.MayUnmap}) || st.Written != 0 {
			t.Errorf("requests %+v, want only the top's zero run zeroed", ops)
		}
	})
	t.Run("past the target's backing", func(t *testing.T) {
		dst := newFake(size).fill(backing.bytes(), 0)
		copyInto(t, dst, []Source{{Image: top, Base: top.Backing}}, Options{TargetBacked: true, TargetBackingSize: mib})
		if ops := dst.recorded(); len(ops) != 0 {
			t.Errorf("requests %+v, want none: the zero run lies past the target's backing", ops)
		}
	})
}

func TestCopyCompressed(t *testing.T) {
	cluster := 64 * kib
	size := 8*mib + 8*kib // a short last cluster
	data := make([]byte, size)
	copy(data, random(13, 3*mib))
	copy(data[4*mib+4*kib:], random(14, 4*kib)) // a cluster with a little data
	copy(data[size-kib:], random(15, kib))
	src := newFake(size).fill(data, 0)

	for _, zeroed := range []bool{true, false} {
		t.Run(fmt.Sprintf("zeroed %v", zeroed), func(t *testing.T) {
			f := newFake(size)
			f.cluster = cluster
			f.writeDelay = 200 * time.Microsecond
			st := copyInto(t, compFake{f}, []Source{{Image: src}}, Options{Compress: true, TargetZeroed: zeroed})
			sameBytes(t, f.bytes(), data)
			for _, o := range f.recorded() {
				if o.kind == opWrite {
					t.Errorf("uncompressed write %+v", o)
				}
				if o.off%cluster != 0 {
					t.Errorf("request %+v not on a cluster", o)
				}
			}
			wantComp := 3*mib + cluster + (size - (size-kib)/cluster*cluster)
			if st.Compressed != wantComp {
				t.Errorf("compressed %d bytes, want %d", st.Compressed, wantComp)
			}
			if zeroed && st.Zeroed != 0 || !zeroed && st.Zeroed != size-wantComp {
				t.Errorf("zeroed %d bytes (target zeroed %v)", st.Zeroed, zeroed)
			}
			if m := f.maxInFlight.Load(); m < 2 {
				t.Errorf("%d compressed writes at once, want several", m)
			}
		})
	}
	t.Run("S 0", func(t *testing.T) {
		f := newFake(size)
		f.cluster = cluster
		st := copyInto(t, compFake{f}, []Source{{Image: src}}, Options{Compress: true, SparseSize: -1})
		if st.Compressed != size {
			t.Errorf("compressed %d bytes, want all %d", st.Compressed, size)
		}
	})
	t.Run("not a compressor", func(t *testing.T) {
		f := newFake(size)
		f.cluster = cluster
		if _, err := Copy(context.Background(), f, []Source{{Image: src}}, Options{Compress: true}); !errors.Is(err, block.ErrUnsupported) {
			t.Errorf("err = %v, want ErrUnsupported", err)
		}
	})
	t.Run("no cluster size", func(t *testing.T) {
		f := newFake(size)
		if _, err := Copy(context.Background(), compFake{f}, []Source{{Image: src}}, Options{Compress: true}); err == nil || err.Error() != "invalid cluster size" {
			t.Errorf("err = %v, want invalid cluster size", err)
		}
	})
}

func TestCopyErrors(t *testing.T) {
	size := 8 * mib
	data := random(16, size)
	eio := syscall.EIO
	t.Run("read", func(t *testing.T) {
		src := newFake(size).fill(data, 0)
		src.failRead = func(off, n int64) error {
			if off <= 5*mib && 5*mib < off+n {
				return eio
			}
			return nil
		}
		_, err := Copy(context.Background(), newFake(size), []Source{{Image: src}}, Options{})
		var e *Error
		if !errors.As(err, &e) || e.Op != OpRead || err.Error() != "error while reading at byte 4194304: Input/output error" {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("salvage", func(t *testing.T) {
		src := newFake(size).fill(data, 0)
		bad := map[int64]bool{5 * mib: true, 5*mib + 1024: true}
		src.failRead = func(off, n int64) error {
			for b := range bad {
				if off <= b && b < off+n {
					return eio
				}
			}
			return nil
		}
		var warnings []string
		dst := newFake(size)
		copyInto(t, dst, []Source{{Image: src}}, Options{Salvage: true, TargetZeroed: true, Warn: func(m string) { warnings = append(warnings, m) }})
		want := slices.Clone(data)
		for b := range bad {
			clear(want[b : b+512])
		}
		sameBytes(t, dst.bytes(), want)
		wantWarn := []string{"error while reading offset 5242880: Input/output error", "error while reading offset 5243904: Input/output error"}
		if !slices.Equal(warnings, wantWarn) {
			t.Errorf("warnings %q, want %q", warnings, wantWarn)
		}
	})
	t.Run("status", func(t *testing.T) {
		src := newFake(size).fill(data, 0)
		src.failStatus = func(off, n int64) error {
			if off <= 3*mib && 3*mib < off+n {
				return eio
			}
			return nil
		}
		_, err := Copy(context.Background(), newFake(size), []Source{{Image: src}}, Options{})
		if err == nil || err.Error() != "error while reading block status at offset 0: Input/output error" {
			t.Errorf("err = %v", err)
		}
		var warnings []string
		dst := newFake(size)
		copyInto(t, dst, []Source{{Image: src}}, Options{Salvage: true, Warn: func(m string) { warnings = append(warnings, m) }})
		sameBytes(t, dst.bytes(), data)
		if len(warnings) != 1 || warnings[0] != "error while reading block status at offset 3145728: Input/output error" {
			t.Errorf("warnings %q", warnings)
		}
	})
	t.Run("write", func(t *testing.T) {
		src := newFake(size).fill(data, 0)
		dst := newFake(size)
		dst.failWrite = func(off, n int64) error {
			if off >= 6*mib {
				return syscall.ENOSPC
			}
			return nil
		}
		_, err := Copy(context.Background(), dst, []Source{{Image: src}}, Options{})
		if err == nil || err.Error() != "error while writing at byte 6291456: No space left on device" {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("bad extent", func(t *testing.T) {
		src := newFake(size)
		src.emptyStatus = true
		_, err := Copy(context.Background(), newFake(size), []Source{{Image: src}}, Options{})
		if err == nil || !strings.Contains(err.Error(), "block status") {
			t.Errorf("err = %v, want a block status error", err)
		}
	})
}

func TestCopyCancel(t *testing.T) {
	size := 32 * mib
	src := newFake(size).fill(random(17, size), 0)
	dst := newFake(size)
	ctx, cancel := context.WithCancel(context.Background())
	var once sync.Once
	dst.onWrite = func(o op) {
		if o.off >= 4*mib {
			once.Do(cancel)
		}
	}
	_, err := Copy(ctx, dst, []Source{{Image: src}}, Options{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if w := sumOps(dst.recorded(), opWrite); w >= size/2 {
		t.Errorf("%d bytes written after cancelling early", w)
	}
}

func TestCopyHugeSparse(t *testing.T) {
	// A terabyte with three small data runs: planning must not read the
	// holes, and memory must not grow with the size.
	size := int64(1) << 40
	src := newFake(size)
	for i, off := range []int64{0, size / 3 &^ (64*kib - 1), size - 64*kib} {
		src.fill(random(uint64(20+i), 64*kib), off)
	}
	dst := newFake(size)
	st := copyInto(t, dst, []Source{{Image: src}}, Options{TargetZeroed: true})
	if st.Read != 3*64*kib || st.Written != 3*64*kib {
		t.Errorf("stats %+v, want only the data read and written", st)
	}
}

func TestRateLimiter(t *testing.T) {
	r := &rateLimiter{rate: mib}
	t0 := time.Unix(1000, 0)
	if d := r.reserve(mib, t0); d != 0 {
		t.Errorf("first request waits %v", d)
	}
	if d := r.reserve(mib/2, t0); d != time.Second {
		t.Errorf("second request waits %v, want 1s", d)
	}
	if d := r.reserve(mib, t0.Add(time.Second)); d != time.Second/2 {
		t.Errorf("third request waits %v, want 0.5s", d)
	}
	if d := r.reserve(mib, t0.Add(10*time.Second)); d != 0 {
		t.Errorf("request after a pause waits %v", d)
	}
}

func TestCopyRateLimited(t *testing.T) {
	// 64 KiB at 256 KiB/s: the second half waits at least 1/8 s.
	src := newFake(128*kib).fill(random(30, 128*kib), 0)
	dst := newFake(128 * kib)
	start := time.Now()
	copyInto(t, dst, []Source{{Image: src}}, Options{BufferSize: 64 * kib, RateLimit: 256 * kib})
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Errorf("rate-limited copy took %v, want at least 1/8 s", d)
	}
}

func TestCopyRateLimitZeroesFree(t *testing.T) {
	// 4 MiB of zeroes at 64 KiB/s would take a minute if zeroing counted.
	src := newFake(4 * mib)
	dst := newFake(4*mib).fill(random(31, 4*mib), 0)
	start := time.Now()
	copyInto(t, dst, []Source{{Image: src}}, Options{RateLimit: 64 * kib, ZeroesFree: true})
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("zeroing was rate limited: the copy took %v", d)
	}
	if !IsZero(dst.bytes()) {
		t.Error("the target was not zeroed")
	}
}
