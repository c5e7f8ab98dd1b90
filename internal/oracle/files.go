package oracle

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// dataRanges lists a file's data extents (SEEK_DATA/SEEK_HOLE).
func dataRanges(f *os.File, size int64) ([][2]int64, error) {
	var out [][2]int64
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err == unix.ENXIO {
			break
		}
		if err != nil {
			return [][2]int64{{0, size}}, nil
		}
		end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		if err != nil {
			return nil, err
		}
		out = append(out, [2]int64{start, end})
		off = end
	}
	return out, nil
}

// SameFile reports whether two files have the same size and bytes, or whether
// exactly one of them is missing. Holes are skipped, so sparse terabyte files
// compare quickly; data in one file must read the same in the other.
func SameFile(a, b string) error {
	fa, errA := os.Open(a)
	fb, errB := os.Open(b)
	if errA != nil || errB != nil {
		if fa != nil {
			fa.Close()
		}
		if fb != nil {
			fb.Close()
		}
		if (errA == nil) != (errB == nil) {
			return fmt.Errorf("qimg's file: %v; qemu-img's file: %v", errA, errB)
		}
		return nil
	}
	defer fa.Close()
	defer fb.Close()
	sa, _ := fa.Seek(0, io.SeekEnd)
	sb, _ := fb.Seek(0, io.SeekEnd)
	if sa != sb {
		return fmt.Errorf("sizes differ: %d and %d", sa, sb)
	}
	for _, f := range []*os.File{fa, fb} {
		ranges, err := dataRanges(f, sa)
		if err != nil {
			return err
		}
		for _, r := range ranges {
			if err := sameRange(fa, fb, r[0], r[1]); err != nil {
				return err
			}
		}
	}
	return nil
}

func sameRange(fa, fb *os.File, start, end int64) error {
	const chunk = 1 << 20
	ba, bb := make([]byte, chunk), make([]byte, chunk)
	for off := start; off < end; off += chunk {
		n := min(chunk, end-off)
		if _, err := fa.ReadAt(ba[:n], off); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if _, err := fb.ReadAt(bb[:n], off); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if !bytes.Equal(ba[:n], bb[:n]) {
			for i := int64(0); i < n; i++ {
				if ba[i] != bb[i] {
					return fmt.Errorf("contents differ at offset %d", off+i)
				}
			}
		}
	}
	return nil
}
