package copyengine

import (
	"bytes"
	"encoding/binary"
	"runtime"
)

// sectorSize is the unit of zero detection and of positions inside a copy,
// as in QEMU (BDRV_SECTOR_SIZE).
const sectorSize = 512

// countScan says whether bytes.Count is a vector loop on this
// architecture; elsewhere it counts byte by byte and the word loop is
// faster.
const countScan = runtime.GOARCH == "amd64" || runtime.GOARCH == "arm64"

// IsZero reports whether b holds only zero bytes. It checks the first eight
// 64-bit words, so data is rejected after a few loads; the rest is scanned
// in blocks by counting its zero bytes with bytes.Count, a single pass of
// vector instructions on amd64 and arm64 (about three times faster than
// comparing with a zero buffer when b has just been read into), or by
// 64-bit words elsewhere.
func IsZero(b []byte) bool {
	if len(b) < 64 || !countScan {
		return wordsZero(b)
	}
	if !wordsZero(b[:64]) {
		return false
	}
	zero := []byte{0}
	for len(b) > 0 {
		n := min(len(b), zeroScanBlock)
		if bytes.Count(b[:n], zero) != n {
			return false
		}
		b = b[n:]
	}
	return true
}

// wordsZero is IsZero for short buffers: eight 64-bit words at a time.
func wordsZero(b []byte) bool {
	for len(b) >= 64 {
		w := b[:64]
		if binary.LittleEndian.Uint64(w[0:])|binary.LittleEndian.Uint64(w[8:])|
			binary.LittleEndian.Uint64(w[16:])|binary.LittleEndian.Uint64(w[24:])|
			binary.LittleEndian.Uint64(w[32:])|binary.LittleEndian.Uint64(w[40:])|
			binary.LittleEndian.Uint64(w[48:])|binary.LittleEndian.Uint64(w[56:]) != 0 {
			return false
		}
		b = b[64:]
	}
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// sectorIsZero is IsZero for one sector (or the shorter tail of a buffer),
// checking the first word before the rest: sectors of data almost always
// differ from zero there.
func sectorIsZero(s []byte) bool {
	if len(s) >= 8 && binary.LittleEndian.Uint64(s) != 0 {
		return false
	}
	return wordsZero(s)
}

// zeroScanBlock is how much of a run of zero sectors is checked in one call
// before falling back to sector steps.
const zeroScanBlock = 64 << 10

// sameSectors returns the length in bytes of the leading run of buf whose
// sectors are all zero (zero true) or all non-zero (zero false). The last
// sector may be short.
func sameSectors(buf []byte, zero bool) int {
	i := 0
	if zero {
		for i+zeroScanBlock <= len(buf) && IsZero(buf[i:i+zeroScanBlock]) {
			i += zeroScanBlock
		}
	}
	for i < len(buf) {
		end := min(i+sectorSize, len(buf))
		if sectorIsZero(buf[i:end]) != zero {
			return i
		}
		i = end
	}
	return i
}

// allocatedRun classifies the leading run of buf, which starts at position
// pos of the target: it reports whether the run holds data (false: it is
// all zeroes) and its length. align is a power of two, at least a sector:
// the run's end is moved to a multiple of align where it can be, as QEMU's
// is_allocated_sectors does, so that writes do not split the target's
// blocks; a short zero run that a following data run would rewrite anyway
// is reported as data.
func allocatedRun(buf []byte, pos int64, align int64) (data bool, n int) {
	if len(buf) == 0 {
		return false, 0
	}
	zero := sectorIsZero(buf[:min(sectorSize, len(buf))])
	n = sameSectors(buf, zero)
	if n == len(buf) {
		return !zero, n
	}
	tail := int((pos + int64(n)) & (align - 1))
	if tail == 0 {
		return !zero, n
	}
	if zero && n <= tail {
		// The data after this short zero run shares its aligned block.
		zero = false
	}
	if zero {
		n -= tail
	} else {
		n = min(n+int(align)-tail, len(buf))
	}
	return !zero, n
}

// allocatedRunMin is allocatedRun, except that a data run absorbs the zero
// runs inside it that are shorter than minZero bytes, so that small zero
// areas do not split a write (QEMU's is_allocated_sectors_min). A leading
// zero run is reported as it is.
func allocatedRunMin(buf []byte, pos int64, minZero, align int64) (data bool, n int) {
	minZero = min(minZero, int64(len(buf)))
	data, n = allocatedRun(buf, pos, align)
	if !data {
		return false, n
	}
	used, checked := n, n
	for checked < len(buf) {
		d, m := allocatedRun(buf[checked:], pos+int64(checked), align)
		checked += m
		if d {
			used = checked
		} else if int64(m) >= minZero {
			break
		}
	}
	return true, used
}
