package oracle

import (
	"encoding/binary"
	"os"
	"testing"
)

// ZeroSnapshotDates zeroes the date fields of a qcow2 image's snapshot
// table entries, so that images whose snapshots were taken at different
// times compare equal.
func ZeroSnapshotDates(t testing.TB, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var h [72]byte
	if _, err := f.ReadAt(h[:], 0); err != nil {
		t.Fatal(err)
	}
	nb := binary.BigEndian.Uint32(h[60:])
	off := int64(binary.BigEndian.Uint64(h[64:]))
	for k := uint32(0); k < nb; k++ {
		off = (off + 7) &^ 7
		var e [40]byte
		if _, err := f.ReadAt(e[:], off); err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(make([]byte, 8), off+16); err != nil {
			t.Fatal(err)
		}
		off += 40 + int64(binary.BigEndian.Uint32(e[36:])) + int64(binary.BigEndian.Uint16(e[12:])) + int64(binary.BigEndian.Uint16(e[14:]))
	}
}
