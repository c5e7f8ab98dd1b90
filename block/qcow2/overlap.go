package qcow2

import (
	"encoding/binary"
	"fmt"

	"github.com/qimg/qimg/storage"
)

// overlapCheck refuses a write to [offset, offset+size) of the image file
// that would hit metadata of a kind not in ign, as QEMU's
// qcow2_pre_write_overlap_check does: the image is marked corrupt and made
// unusable rather than destroying its metadata.
func (i *Image) overlapCheck(ign int, offset, size int64) error {
	hit := i.metadataOverlap(ign, offset, size)
	if hit == 0 {
		return nil
	}
	bit := trailingZeros64(uint64(hit))
	return i.corruption(true, fmt.Sprintf("Preventing invalid write on metadata (overlaps with %s)", overlapNames[bit]))
}

// dataOverlapCheck checks a guest data write, which cannot hit metadata
// when the data lives in an external file.
func (i *Image) dataOverlapCheck(offset, size int64) error {
	if i.hasDataFile {
		return nil
	}
	return i.overlapCheck(0, offset, size)
}

// metadataOverlap returns the overlap bit of the first metadata structure
// the range hits, or 0 (QEMU's qcow2_check_metadata_overlap).
func (i *Image) metadataOverlap(ign int, offset, size int64) int {
	chk := i.overlapChecks &^ ign
	if size == 0 || chk == 0 {
		return 0
	}
	if chk&olMainHeader != 0 && offset < i.clusterSize {
		return olMainHeader
	}
	size = (offset&(i.clusterSize-1) + size + i.clusterSize - 1) &^ (i.clusterSize - 1)
	offset &^= i.clusterSize - 1
	overlaps := func(o, s int64) bool {
		return s > 0 && offset < o+s && o < offset+size
	}
	if chk&olActiveL1 != 0 && len(i.l1) > 0 && overlaps(i.l1Offset, int64(len(i.l1))*l1EntrySize) {
		return olActiveL1
	}
	if chk&olRefcountTable != 0 && len(i.reftable) > 0 && overlaps(i.reftableOff, int64(len(i.reftable))*reftableEntrySize) {
		return olRefcountTable
	}
	if chk&olSnapshotTable != 0 && i.snapshotsSize > 0 && overlaps(i.snapshotsOff, i.snapshotsSize) {
		return olSnapshotTable
	}
	if chk&olInactiveL1 != 0 {
		for _, sn := range i.snapshots {
			if sn.L1Size > 0 && overlaps(int64(sn.L1TableOffset), int64(sn.L1Size)*l1EntrySize) {
				return olInactiveL1
			}
		}
	}
	if chk&olActiveL2 != 0 {
		for _, e := range i.l1 {
			if off := int64(e & l1OffsetMask); off != 0 && overlaps(off, i.clusterSize) {
				return olActiveL2
			}
		}
	}
	if chk&olRefcountBlock != 0 {
		for k := 0; k <= i.reftableMaxIx && k < len(i.reftable); k++ {
			if off := int64(i.reftable[k] & reftOffsetMask); off != 0 && overlaps(off, i.clusterSize) {
				return olRefcountBlock
			}
		}
	}
	if chk&olInactiveL2 != 0 {
		for _, sn := range i.snapshots {
			if uint64(sn.L1Size)*l1EntrySize > maxL1Bytes {
				continue
			}
			raw := make([]byte, int(sn.L1Size)*l1EntrySize)
			if storage.ReadExact(i.f, raw, int64(sn.L1TableOffset)) != nil {
				continue
			}
			for k := 0; k < len(raw); k += 8 {
				if off := int64(binary.BigEndian.Uint64(raw[k:]) & l1OffsetMask); off != 0 && overlaps(off, i.clusterSize) {
					return olInactiveL2
				}
			}
		}
	}
	if chk&olBitmapDirectory != 0 && i.autoclear&autoclearBitmaps != 0 && i.ext.Bitmaps != nil &&
		overlaps(int64(i.ext.Bitmaps.DirectoryOffset), int64(i.ext.Bitmaps.DirectorySize)) {
		return olBitmapDirectory
	}
	return 0
}

// corruption reports inconsistent metadata, as QEMU's
// qcow2_signal_corruption: a fatal corruption in an image open for writing
// marks it corrupt on disk and makes it unusable. It returns the error the
// failing operation should return.
func (i *Image) corruption(fatal bool, msg string) error {
	fatal = fatal && i.write
	err := fmt.Errorf("%s: %s: %w", i.name, msg, errCorrupt)
	if i.signalled && (!fatal || i.incompat&incompatCorrupt != 0) {
		if fatal {
			i.broken = err
		}
		return err
	}
	if i.notice != nil {
		if fatal {
			i.notice(fmt.Sprintf("qcow2: Marking image as corrupt: %s; further corruption events will be suppressed\n", msg))
		} else {
			i.notice(fmt.Sprintf("qcow2: Image is corrupt: %s; further non-fatal corruption events will be suppressed\n", msg))
		}
	}
	i.signalled = true
	if fatal {
		i.incompat |= incompatCorrupt
		_ = i.updateHeader()
		i.broken = err
	}
	return err
}
