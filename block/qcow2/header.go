package qcow2

import (
	"encoding/binary"
	"syscall"
)

// headerImage returns what the first cluster must hold for the image's
// current state.
func (i *Image) headerState() *headerImage {
	h := i.hdr
	h.Size = uint64(i.size)
	h.L1Size = uint32(len(i.l1))
	h.L1TableOffset = uint64(i.l1Offset)
	h.RefcountTableOffset = uint64(i.reftableOff)
	h.RefcountTableClusters = uint32(int64(len(i.reftable)) >> (i.clusterBits - 3))
	h.NbSnapshots = uint32(len(i.snapshots))
	h.SnapshotsOffset = uint64(i.snapshotsOff)
	h.IncompatibleFeatures = i.incompat
	h.CompatibleFeatures = i.compat
	h.AutoclearFeatures = i.autoclear
	ext := i.ext
	if i.autoclear&autoclearBitmaps == 0 {
		ext.Bitmaps = nil
	}
	return &headerImage{
		Header:           h,
		BackingFile:      i.backingFile,
		HasBackingFile:   i.hasBackingFile,
		Ext:              ext,
		WriteDataFileExt: i.hasDataFile,
	}
}

// updateHeader rewrites the whole first cluster from the image's state
// (QEMU's qcow2_update_header).
func (i *Image) updateHeader() error {
	hi := i.headerState()
	b, err := encodeHeaderCluster(hi)
	if err != nil {
		if err == errNoSpace {
			return syscall.ENOSPC
		}
		return err
	}
	if _, err := i.f.WriteAt(b, 0); err != nil {
		return err
	}
	// Unknown extensions are kept in a list QEMU prepends to: each
	// rewrite reverses their order.
	for l, r := 0, len(i.ext.Unknown)-1; l < r; l, r = l+1, r-1 {
		i.ext.Unknown[l], i.ext.Unknown[r] = i.ext.Unknown[r], i.ext.Unknown[l]
	}
	i.hdr.HeaderLength = hi.HeaderLength
	if i.hdr.Version >= 3 {
		i.hdr.HeaderLength = uint32(headerV3Length + len(i.hdr.UnknownFields))
	}
	return nil
}

// markDirty sets the dirty bit on disk (lazy refcounts), flushing it before
// any refcount update is postponed.
func (i *Image) markDirty() error {
	if i.incompat&incompatDirty != 0 {
		return nil
	}
	var d [8]byte
	binary.BigEndian.PutUint64(d[:], i.incompat|incompatDirty)
	if err := i.writeSync(d[:], 72); err != nil {
		return err
	}
	i.incompat |= incompatDirty
	return nil
}

// markClean clears the dirty bit after writing every postponed refcount
// update.
func (i *Image) markClean() error {
	if i.incompat&incompatDirty == 0 {
		return nil
	}
	i.incompat &^= incompatDirty
	if err := i.flushCaches(); err != nil {
		return err
	}
	return i.updateHeader()
}

// ChangeBackingFile records a new backing file name and format; an empty
// name removes the backing file. It fails with EINVAL for a name longer than
// 1023 bytes or a backing file on an image whose data file must stay raw,
// and with ENOSPC when the header does not fit in the first cluster.
func (i *Image) ChangeBackingFile(name, format string) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if !i.write {
		return errReadOnly
	}
	if i.broken != nil {
		return i.broken
	}
	if name != "" && i.autoclear&autoclearDataRaw != 0 {
		return syscall.EINVAL
	}
	if len(name) > maxBackingFileName {
		return syscall.EINVAL
	}
	oldFile, oldHas := i.backingFile, i.hasBackingFile
	oldFmt, oldHasFmt := i.ext.BackingFormat, i.ext.HasBackingFormat
	i.backingFile, i.hasBackingFile = name, name != ""
	i.ext.BackingFormat, i.ext.HasBackingFormat = format, format != ""
	if err := i.updateHeader(); err != nil {
		i.backingFile, i.hasBackingFile = oldFile, oldHas
		i.ext.BackingFormat, i.ext.HasBackingFormat = oldFmt, oldHasFmt
		return err
	}
	return nil
}
