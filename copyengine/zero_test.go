package copyengine

import (
	"bytes"
	"fmt"
	"testing"
)

func TestIsZero(t *testing.T) {
	for _, n := range []int{0, 1, 7, 8, 9, 63, 64, 65, 511, 512, 4096, 70000} {
		b := make([]byte, n)
		if !IsZero(b) {
			t.Errorf("IsZero(%d zero bytes) = false", n)
		}
		for _, i := range []int{0, n / 2, n - 1} {
			if n == 0 {
				continue
			}
			b[i] = 0x80
			if IsZero(b) {
				t.Errorf("IsZero(%d bytes with byte %d set) = true", n, i)
			}
			b[i] = 0
		}
	}
}

// sectors builds a buffer from a pattern: 'd' is a sector of data, '0' a
// zero sector.
func sectors(pattern string) []byte {
	b := make([]byte, len(pattern)*sectorSize)
	for i, c := range pattern {
		if c == 'd' {
			b[i*sectorSize+sectorSize-1] = 1
		}
	}
	return b
}

func TestAllocatedRun(t *testing.T) {
	cases := []struct {
		pattern string
		pos     int64 // in sectors
		align   int64 // in sectors
		data    bool
		n       int // in sectors
	}{
		{"dddd", 0, 1, true, 4},
		{"0000", 0, 1, false, 4},
		{"dd00", 0, 1, true, 2},
		{"00dd", 0, 1, false, 2},
		// A data run is extended to the aligned boundary.
		{"d0000000d", 0, 8, true, 8},
		{"ddd00000000000000d", 0, 8, true, 8},
		// A zero run is shortened to the aligned boundary.
		{"000000000000d", 0, 8, false, 8},
		{"0000000000d", 4, 8, false, 4},
		// A short zero run before data in the same block is data.
		{"00d", 0, 8, true, 3},
		{"0000000d", 1, 8, false, 7},
	}
	for _, tc := range cases {
		data, n := allocatedRun(sectors(tc.pattern), tc.pos*sectorSize, tc.align*sectorSize)
		if data != tc.data || n != tc.n*sectorSize {
			t.Errorf("allocatedRun(%s at %d, align %d) = %v, %d sectors; want %v, %d",
				tc.pattern, tc.pos, tc.align, data, n/sectorSize, tc.data, tc.n)
		}
	}
}

func TestAllocatedRunMin(t *testing.T) {
	cases := []struct {
		pattern string
		min     int64 // in sectors
		data    bool
		n       int
	}{
		{"dd0dd000000000dd", 8, true, 5},
		{"dd0dd0000000dd", 8, true, 14},
		{"0dd", 8, false, 1},
		{"dd0000", 8, true, 2},
		{"dd0000dd", 2, true, 2},
	}
	for _, tc := range cases {
		data, n := allocatedRunMin(sectors(tc.pattern), 0, tc.min*sectorSize, sectorSize)
		if data != tc.data || n != tc.n*sectorSize {
			t.Errorf("allocatedRunMin(%s, min %d) = %v, %d sectors; want %v, %d", tc.pattern, tc.min, data, n/sectorSize, tc.data, tc.n)
		}
	}
}

// FuzzAllocatedRunMin checks that zero detection never reports data as
// zeroes and always makes progress.
func FuzzAllocatedRunMin(f *testing.F) {
	f.Add([]byte("dd0dd000000000dd"), uint16(0), uint8(3), uint8(3))
	f.Add([]byte("0000000000d"), uint16(4), uint8(0), uint8(3))
	f.Add([]byte("d"), uint16(1), uint8(6), uint8(0))
	f.Fuzz(func(t *testing.T, pattern []byte, pos uint16, minShift, alignShift uint8) {
		if len(pattern) > 256 {
			return
		}
		p := make([]byte, 0, len(pattern))
		for _, c := range pattern {
			if c == 'd' {
				p = append(p, 'd')
			} else {
				p = append(p, '0')
			}
		}
		buf := sectors(string(p))
		minZero := int64(sectorSize) << (minShift % 8)
		align := int64(sectorSize) << (alignShift % 8)
		at := int64(pos) * sectorSize
		for len(buf) > 0 {
			data, n := allocatedRunMin(buf, at, minZero, align)
			if n <= 0 || n > len(buf) || n%sectorSize != 0 {
				t.Fatalf("run of %d bytes in a buffer of %d", n, len(buf))
			}
			if !data && !IsZero(buf[:n]) {
				t.Fatalf("data reported as zeroes")
			}
			buf = buf[n:]
			at += int64(n)
		}
	})
}

func BenchmarkIsZero(b *testing.B) {
	for _, size := range []int{512, 64 << 10, 2 << 20} {
		buf := make([]byte, size)
		b.Run(fmt.Sprintf("zero-%d", size), func(b *testing.B) {
			b.SetBytes(int64(size))
			for b.Loop() {
				if !IsZero(buf) {
					b.Fatal("not zero")
				}
			}
		})
	}
	zero := make([]byte, 2<<20)
	b.Run("bytes.Equal-2097152", func(b *testing.B) {
		other := make([]byte, 2<<20)
		b.SetBytes(2 << 20)
		for b.Loop() {
			if !bytes.Equal(zero, other) {
				b.Fatal("not zero")
			}
		}
	})
}

func BenchmarkAllocatedRunMin(b *testing.B) {
	dense := random(1, 2<<20)
	zero := make([]byte, 2<<20)
	for _, tc := range []struct {
		name string
		buf  []byte
	}{{"data", dense}, {"zero", zero}} {
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(int64(len(tc.buf)))
			for b.Loop() {
				for buf := tc.buf; len(buf) > 0; {
					_, n := allocatedRunMin(buf, 0, DefaultSparseSize, DefaultSparseSize)
					buf = buf[n:]
				}
			}
		})
	}
}
