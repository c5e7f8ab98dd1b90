package qcow2

import (
	"math/rand/v2"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/internal/oracle"
)

// benchImage creates a qcow2 image of size bytes in a temporary directory
// and opens it for writing; with fill, it is fully written first.
func benchImage(b *testing.B, size int64, fill bool) *block.Node {
	b.Helper()
	p := filepath.Join(b.TempDir(), "bench.qcow2")
	env := hostEnv()
	if err := env.Create(block.CreateParams{Filename: p, Format: "qcow2", Size: size}); err != nil {
		b.Fatal(err)
	}
	n, err := env.Open(p, hostWrite())
	if err != nil {
		b.Fatal(err)
	}
	if fill {
		buf := oracle.RandomBytes(1, 1<<20)
		for off := int64(0); off < size; off += int64(len(buf)) {
			if _, err := n.WriteAt(buf, off); err != nil {
				b.Fatal(err)
			}
		}
		if err := n.Flush(); err != nil {
			b.Fatal(err)
		}
	}
	b.Cleanup(func() { n.Close() })
	return n
}

const benchSize = 256 << 20

// benchIO times bs-sized reads or writes, sequential or random, over a
// 256 MiB image (filled first for reads).
func benchIO(b *testing.B, bs int, random, write bool) {
	n := benchImage(b, benchSize, !write)
	buf := make([]byte, bs)
	if write {
		buf = oracle.RandomBytes(2, bs)
	}
	blocks := int64(benchSize / bs)
	rng := rand.New(rand.NewPCG(3, 4))
	b.SetBytes(int64(bs))
	b.ReportAllocs()
	b.ResetTimer()
	for k := 0; b.Loop(); k++ {
		idx := int64(k) % blocks
		if random {
			idx = rng.Int64N(blocks)
		}
		var err error
		if write {
			_, err = n.WriteAt(buf, idx*int64(bs))
		} else {
			_, err = n.ReadAt(buf, idx*int64(bs))
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if err := n.Flush(); err != nil {
		b.Fatal(err)
	}
}

func BenchmarkWriteSeq4K(b *testing.B)   { benchIO(b, 4<<10, false, true) }
func BenchmarkWriteSeq64K(b *testing.B)  { benchIO(b, 64<<10, false, true) }
func BenchmarkWriteRand4K(b *testing.B)  { benchIO(b, 4<<10, true, true) }
func BenchmarkWriteRand64K(b *testing.B) { benchIO(b, 64<<10, true, true) }
func BenchmarkReadSeq4K(b *testing.B)    { benchIO(b, 4<<10, false, false) }
func BenchmarkReadSeq64K(b *testing.B)   { benchIO(b, 64<<10, false, false) }
func BenchmarkReadRand4K(b *testing.B)   { benchIO(b, 4<<10, true, false) }
func BenchmarkReadRand64K(b *testing.B)  { benchIO(b, 64<<10, true, false) }

// BenchmarkWriteParallel2M has eight writers fill an image with 2 MiB
// writes to distinct ranges, as convert's workers do.
func BenchmarkWriteParallel2M(b *testing.B) {
	const bs = 2 << 20
	n := benchImage(b, 4<<30, false)
	buf := oracle.RandomBytes(7, bs)
	var next atomic.Int64
	b.SetBytes(bs)
	b.ReportAllocs()
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			off := (next.Add(1) - 1) * bs % (4 << 30)
			if _, err := n.WriteAt(buf, off); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkWriteCompressed64K compresses clusters into a fresh image.
func BenchmarkWriteCompressed64K(b *testing.B) {
	n := benchImage(b, 4<<30, false)
	c := n.Image.(block.Compressor)
	buf := make([]byte, 64<<10)
	copy(buf, oracle.RandomBytes(8, 16<<10))
	b.SetBytes(64 << 10)
	b.ReportAllocs()
	b.ResetTimer()
	for k := 0; b.Loop(); k++ {
		if err := c.WriteCompressed(buf, int64(k)*(64<<10)%(4<<30)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWriteAlloc4K writes 4 KiB into a fresh cluster each time, so
// every write allocates (and zero-initialises) a cluster.
func BenchmarkWriteAlloc4K(b *testing.B) {
	const stride = 64 << 10
	n := benchImage(b, 64<<30, false)
	buf := oracle.RandomBytes(9, 4096)
	b.SetBytes(4096)
	b.ReportAllocs()
	b.ResetTimer()
	for k := 0; b.Loop(); k++ {
		if _, err := n.WriteAt(buf, int64(k)*stride%(64<<30)); err != nil {
			b.Fatal(err)
		}
	}
}
