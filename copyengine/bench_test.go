package copyengine

import (
	"bytes"
	"compress/flate"
	"context"
	"fmt"
	"testing"

	"github.com/qimg/qimg/block"
)

// deflateFake is a target that deflates every compressed cluster, as a
// qcow2 image does, and stores it uncompressed: a benchmark of how the
// engine spreads compression over the cores.
type deflateFake struct{ *fakeImage }

func (d deflateFake) WriteCompressed(p []byte, off int64) error {
	var b bytes.Buffer
	w, err := flate.NewWriter(&b, flate.DefaultCompression)
	if err != nil {
		return err
	}
	w.Write(p)
	w.Close()
	_, err = d.mem.WriteAt(p, off)
	return err
}

func benchCopy(b *testing.B, src block.Image, newDst func() block.Image, o Options) {
	b.SetBytes(src.Size())
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		dst := newDst()
		b.StartTimer()
		if _, err := Copy(context.Background(), dst, []Source{{Image: src}}, o); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCopy(b *testing.B) {
	size := 64 * mib
	dense := newFake(size).fill(random(1, size), 0)
	sparse := newFake(size)
	for off := int64(0); off < size; off += 4 * mib {
		sparse.fill(random(uint64(off), mib), off)
	}
	zeroes := newFake(size).fill(make([]byte, size), 0)
	plain := func() block.Image { return newFake(size) }
	for _, tc := range []struct {
		name string
		src  *fakeImage
		o    Options
	}{
		{"dense", dense, Options{TargetZeroed: true}},
		{"dense-W", dense, Options{TargetZeroed: true, OutOfOrder: true}},
		{"dense-S0", dense, Options{SparseSize: -1}},
		{"sparse", sparse, Options{TargetZeroed: true}},
		{"zeroes", zeroes, Options{TargetZeroed: true}},
	} {
		b.Run(tc.name, func(b *testing.B) { benchCopy(b, tc.src, plain, tc.o) })
	}
	for _, par := range []int{1, 2, 8} {
		b.Run(fmt.Sprintf("compressed-m%d", par), func(b *testing.B) {
			text := bytes.Repeat([]byte("a compressible cluster of text "), int(size/31+1))[:size]
			src := newFake(size).fill(text, 0)
			benchCopy(b, src, func() block.Image {
				f := newFake(size)
				f.cluster = 64 * kib
				return deflateFake{f}
			}, Options{Compress: true, TargetZeroed: true, Parallel: par})
		})
	}
}
