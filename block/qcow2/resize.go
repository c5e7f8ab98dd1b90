package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/storage"
)

// Resize changes the virtual size, as QEMU's bdrv_co_truncate and
// qcow2_co_truncate do. Growing grows the L1 table to the exact size, and
// with preallocation the new clusters are allocated (metadata), reserved
// (falloc) or written (full); when a backing image would show through the
// new area, it is made to read as zeroes. Shrinking (only without
// preallocation) frees the clusters beyond the new end, the L2 tables and
// refcount blocks no longer needed, and the unused tail of the file; the
// L1 table keeps its size, as in QEMU. Whether shrinking is allowed is the
// caller's decision.
func (i *Image) Resize(size int64, prealloc string) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if !i.write {
		return errReadOnly
	}
	if len(i.bitmaps) > 0 {
		return errors.New("Cannot resize qcow2 with persistent bitmaps that were not loaded into memory")
	}
	if err := i.checkWritable(); err != nil {
		return err
	}
	return i.resize(size, prealloc)
}

func (i *Image) resize(size int64, prealloc string) error {
	mode, err := block.ParsePrealloc(prealloc)
	if err != nil {
		return fmt.Errorf("Unsupported preallocation mode '%s'", prealloc)
	}
	if size < 0 {
		return errors.New("Image size cannot be negative")
	}
	if err := block.CheckLength(size); err != nil {
		return err
	}
	oldLength := i.size
	// A backing image that reaches into the new area would show through
	// it: the area must read as zeroes instead (BDRV_REQ_ZERO_WRITE).
	zeroWrite := size > oldLength && i.backing != nil && i.backingSize > oldLength
	if size%sectorSize != 0 {
		return fmt.Errorf("The new size must be a multiple of %d", sectorSize)
	}
	if len(i.snapshots) > 0 && i.hdr.Version < 3 {
		return errors.New("Can't resize a v2 image which has snapshots")
	}
	if len(i.bitmaps) > 0 {
		return errors.New("Cannot resize qcow2 with persistent bitmaps that were not loaded into memory")
	}
	if err := i.checkEncryption(); err != nil && mode != block.PreallocOff {
		return err
	}
	newL1 := i.sizeToL1(size)
	if size < oldLength {
		if mode != block.PreallocOff {
			return errors.New("Preallocation can't be used for shrinking an image")
		}
		if err := i.shrink(size, newL1); err != nil {
			return err
		}
	} else {
		if err := i.growL1Table(newL1, true); err != nil {
			return fmt.Errorf("Failed to grow the L1 table: %w", err)
		}
		if i.autoclear&autoclearDataRaw != 0 && mode == block.PreallocOff {
			mode = block.PreallocMetadata
		}
	}
	switch mode {
	case block.PreallocOff:
		if i.hasDataFile {
			if err := storage.Truncate(i.data, size, block.PreallocOff); err != nil {
				return err
			}
		}
	case block.PreallocMetadata:
		if err := i.preallocate(oldLength, size, mode); err != nil {
			return err
		}
	default:
		if i.hasDataFile {
			if err := i.preallocate(oldLength, size, mode); err != nil {
				return err
			}
			break
		}
		// The file grows with zeroes, so the new clusters need not be
		// zeroed through the metadata, but must count as data.
		if err := i.preallocateData(oldLength, size, mode, !zeroWrite); err != nil {
			return err
		}
		zeroWrite = false
	}
	if zeroWrite {
		if err := i.zeroNewArea(oldLength, size); err != nil {
			return err
		}
	}
	if mode != block.PreallocOff {
		if err := i.writeCaches(); err != nil {
			return fmt.Errorf("Failed to flush the preallocated area to disk: %s", storage.Strerror(err))
		}
	}
	var d [8]byte
	binary.BigEndian.PutUint64(d[:], uint64(size))
	if err := i.writeSync(d[:], 24); err != nil {
		return fmt.Errorf("Failed to update the image size: %s", storage.Strerror(err))
	}
	i.size = size
	i.hdr.Size = uint64(size)
	i.l1VMStateIdx = newL1
	// The cache sizes depend on the virtual size.
	return i.applyOptions(i.opts)
}

// zeroNewArea makes the area a resize added, [oldLength, size), read as
// zeroes rather than as the backing image: zero clusters where whole
// subclusters are new, zero bytes written for the part of the old last
// subcluster (as qcow2_co_truncate with BDRV_REQ_ZERO_WRITE).
func (i *Image) zeroNewArea(oldLength, size int64) error {
	zeroStart := (oldLength + i.subSize - 1) &^ (i.subSize - 1)
	if size > zeroStart {
		if err := i.subclusterZeroize(zeroStart, size-zeroStart, false); err != nil {
			return errnof(err, "Failed to zero out new clusters")
		}
	}
	if zeroStart > oldLength {
		buf := make([]byte, min(zeroStart, size)-oldLength)
		i.mu.Unlock()
		err := i.writeGuest(buf, oldLength)
		i.mu.Lock()
		if err != nil {
			return errnof(err, "Failed to zero out the new area")
		}
	}
	return nil
}

// writeGuest writes guest bytes without checking them against the virtual
// size (a resize writes into the area it is adding). The metadata lock
// must not be held.
func (i *Image) writeGuest(p []byte, off int64) error {
	for len(p) > 0 {
		n, err := i.writeChunk(p, off)
		if err != nil {
			return err
		}
		p = p[n:]
		off += n
	}
	return nil
}

// shrink frees what lies beyond a new, smaller virtual size: the clusters
// past it (unallocated fully, their holes punched), the L2 tables past the
// new L1 size, the refcount blocks left describing nothing, and the tail of
// the file past the last used cluster (qcow2_co_truncate).
func (i *Image) shrink(size, newL1 int64) error {
	start := (size + i.clusterSize - 1) &^ (i.clusterSize - 1)
	if start < i.size {
		if err := i.clusterDiscard(start, i.size-start, discardAlways, true); err != nil {
			return errnof(err, "Failed to discard cropped clusters")
		}
	}
	if err := i.shrinkL1Table(newL1); err != nil {
		return errnof(err, "Failed to reduce the number of L2 tables")
	}
	if err := i.shrinkReftable(); err != nil {
		return errnof(err, "Failed to discard unused refblocks")
	}
	fileSize, err := i.f.Size()
	if err != nil {
		return errnof(err, "Failed to inquire current file length")
	}
	last, err := i.lastCluster(fileSize)
	if err != nil {
		return errnof(err, "Failed to find the last cluster")
	}
	if end := (last + 1) * i.clusterSize; end < fileSize {
		// The tables must stop referencing the clusters on disk before
		// the file loses them (QEMU truncates with the updates still
		// in its caches, so that a crash can leave references past the
		// end of the file).
		if err := i.flushCaches(); err != nil {
			return errnof(err, "Failed to flush the metadata caches")
		}
		if err := i.f.Truncate(end); err != nil && i.warn != nil {
			i.warn("Failed to truncate the tail of the image: " + storage.Strerror(err))
		}
	}
	return nil
}

// shrinkL1Table clears the L1 entries from newSize on, on disk first, and
// frees the L2 tables they pointed to (QEMU's qcow2_shrink_l1_table). The
// table keeps its size.
func (i *Image) shrinkL1Table(newSize int64) error {
	if newSize >= int64(len(i.l1)) {
		return nil
	}
	zero := make([]byte, (int64(len(i.l1))-newSize)*l1EntrySize)
	if err := i.writeSync(zero, i.l1Offset+newSize*l1EntrySize); err != nil {
		// The table on disk may be partly cleared: forget the
		// entries in memory too.
		clear(i.l1[newSize:])
		return err
	}
	for k := int64(len(i.l1)) - 1; k >= newSize; k-- {
		if off := int64(i.l1[k] & l1OffsetMask); off != 0 {
			i.freeClusters(off, i.clusterSize, discardAlways)
		}
		i.l1[k] = 0
	}
	return nil
}

// shrinkReftable drops the refcount blocks that count nothing but
// themselves from the refcount table, on disk first, and frees them (QEMU's
// qcow2_shrink_reftable).
func (i *Image) shrinkReftable() error {
	kept := make([]uint64, len(i.reftable))
	for k, e := range i.reftable {
		off := int64(e & reftOffsetMask)
		if off == 0 {
			continue
		}
		ce, err := i.rcCache.get(off)
		if err != nil {
			return err
		}
		var unused bool
		if int64(k) == off>>uint(i.clusterBits+i.rbBits) {
			// The block counts itself: that reference does not
			// make it used.
			idx := uint64((off >> i.clusterBits) & (i.rbSize - 1))
			rc := i.refcount.get(ce.data, idx)
			i.refcount.set(ce.data, idx, 0)
			unused = allZero(ce.data)
			i.refcount.set(ce.data, idx, rc)
		} else {
			unused = allZero(ce.data)
		}
		i.rcCache.put(ce)
		if !unused {
			kept[k] = e
		}
	}
	raw := make([]byte, len(kept)*reftableEntrySize)
	for k, v := range kept {
		binary.BigEndian.PutUint64(raw[8*k:], v)
	}
	err := i.writeSync(raw, i.reftableOff)
	// The table on disk may be partly rewritten: forget the dropped
	// blocks in memory whatever happened.
	for k, e := range i.reftable {
		if e != 0 && kept[k] == 0 {
			if err == nil {
				err = i.discardRefcountBlock(int64(e & reftOffsetMask))
			}
			i.reftable[k] = 0
		}
	}
	i.updateMaxReftableIndex()
	if !i.cacheDiscards {
		i.processDiscards(err == nil)
	}
	return err
}

// discardRefcountBlock frees a refcount block no longer in the refcount
// table: its own refcount, which must be 1, drops to 0 and its cluster is
// given back to the file system (QEMU's qcow2_discard_refcount_block).
func (i *Image) discardRefcountBlock(off int64) error {
	idx := off >> i.clusterBits
	covering, tableIndex, err := i.refcountBlockOffset(idx)
	if err != nil {
		return err
	}
	if covering == 0 {
		return i.corruption(true, fmt.Sprintf("Refblock at %#x is not covered by the refcount structures", off))
	}
	ce, err := i.rcCache.get(covering)
	if err != nil {
		return err
	}
	blockIndex := uint64(idx & (i.rbSize - 1))
	if rc := i.refcount.get(ce.data, blockIndex); rc != 1 {
		i.rcCache.put(ce)
		_ = i.corruption(true, fmt.Sprintf("Invalid refcount: refblock offset %#x, reftable index %d, block offset %#x, refcount %#x",
			covering, tableIndex, off, rc))
		return syscall.EINVAL
	}
	i.refcount.set(ce.data, blockIndex, 0)
	i.rcCache.markDirty(ce)
	i.rcCache.put(ce)
	if idx < i.freeClusterIndex {
		i.freeClusterIndex = idx
	}
	if i.rcCache.lookup(off) != nil {
		i.rcCache.discard(off)
	}
	i.queueDiscard(off, i.clusterSize)
	return nil
}

// allZero reports whether b holds only zero bytes.
func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// preallocate allocates clusters (and their L2 tables) for the guest range
// [offset, end) without writing data, and makes the data file cover them
// (QEMU's preallocate_co).
func (i *Image) preallocate(offset, end int64, mode string) error {
	bytes := end - offset
	var host, cur int64
	for bytes > 0 {
		cur = min(bytes, (1<<31-1)&^(i.clusterSize-1))
		var n int64
		var metas *l2Meta
		var err error
		host, n, metas, err = i.allocHostOffset(offset, cur)
		if err != nil {
			_ = i.finishAllocs(metas, false)
			return fmt.Errorf("Allocating clusters failed: %s", storage.Strerror(err))
		}
		cur = n
		for m := metas; m != nil; m = m.next {
			m.prealloc = true
		}
		if err := i.cowUnlocked(metas); err != nil {
			_ = i.finishAllocs(metas, false)
			return fmt.Errorf("Mapping clusters failed: %s", storage.Strerror(err))
		}
		if err := i.finishAllocs(metas, true); err != nil {
			return fmt.Errorf("Mapping clusters failed: %s", storage.Strerror(err))
		}
		bytes -= cur
		offset += cur
	}
	fileLength, err := i.data.Size()
	if err != nil {
		return fmt.Errorf("Could not get file size: %s", storage.Strerror(err))
	}
	if host+cur > fileLength {
		if mode == block.PreallocMetadata {
			mode = block.PreallocOff
		}
		if err := storage.Truncate(i.data, host+cur, mode); err != nil {
			return err
		}
	}
	return nil
}

// cowUnlocked performs the COW of allocations that write no data (a
// preallocation), with the metadata lock held around, but not during, the
// data I/O. Zero regions are written too, as QEMU writes them, so that the
// file is laid out as QEMU lays it out.
func (i *Image) cowUnlocked(metas *l2Meta) error {
	var plans []cowPlan
	for m := metas; m != nil; m = m.next {
		plans = append(plans, cowPlan{zeroStart: m.zeroStart && !m.keepOld, zeroEnd: m.zeroEnd && !m.keepOld})
	}
	need := false
	for m := metas; m != nil; m = m.next {
		if m.cowStart.bytes > 0 || m.cowEnd.bytes > 0 {
			need = true
		}
	}
	if !need {
		return nil
	}
	i.mu.Unlock()
	defer i.mu.Lock()
	return i.performCows(metas, plans)
}

// lastCluster returns the index of the last cluster with a non-zero
// refcount within a file of the given size (QEMU's qcow2_get_last_cluster).
func (i *Image) lastCluster(size int64) (int64, error) {
	for k := i.sizeToClusters(size) - 1; k >= 0; k-- {
		rc, err := i.getRefcount(k)
		if err != nil {
			return 0, err
		}
		if rc > 0 {
			return k, nil
		}
	}
	return 0, i.corruption(true, "There are no references in the refcount table.")
}

// preallocateData allocates and reserves (falloc) or writes (full) data
// clusters for the guest range [oldLength, size) at the end of the file,
// with new refcount structures covering them (QEMU's qcow2_co_truncate).
// Without prealloc, the new subclusters count as allocated (the file grew
// with zeroes that must hide a backing image).
func (i *Image) preallocateData(oldLength, size int64, mode string, prealloc bool) error {
	oldFileSize, err := i.f.Size()
	if err != nil {
		return fmt.Errorf("Failed to inquire current file length: %s", storage.Strerror(err))
	}
	last, err := i.lastCluster(oldFileSize)
	if err == nil {
		oldFileSize = (last + 1) * i.clusterSize
	} else {
		oldFileSize = (oldFileSize + i.clusterSize - 1) &^ (i.clusterSize - 1)
	}
	nbData := (((size + i.clusterSize - 1) &^ (i.clusterSize - 1)) - i.clusterStart(oldLength)) >> i.clusterBits
	perL2 := i.clusterSize / int64(i.l2EntryBytes)
	nbL2 := (nbData+perL2-1)/perL2 + 1
	allocStart, err := i.refcountArea(oldFileSize, nbData+nbL2, true, 0, 0)
	if err != nil {
		return fmt.Errorf("Failed to resize refcount structures: %s", storage.Strerror(err))
	}
	got, err := i.allocClustersAt(allocStart, nbData)
	if err != nil {
		return fmt.Errorf("Failed to allocate data clusters: %s", storage.Strerror(err))
	}
	if got != nbData {
		return i.corruption(true, "Preallocated data clusters are in use")
	}
	newFileSize := allocStart + nbData*i.clusterSize
	if err := storage.Truncate(i.f, newFileSize, mode); err != nil {
		i.freeClusters(allocStart, nbData*i.clusterSize, discardOther)
		return fmt.Errorf("Failed to resize underlying file: %w", err)
	}
	host, guest := allocStart, oldLength
	for nbData > 0 {
		nb := min(nbData, int64(i.l2SliceSize-i.sliceIndex(guest)))
		cowStart := i.inCluster(guest)
		guest = i.clusterStart(guest)
		m := &l2Meta{
			offset:      guest,
			allocOffset: host,
			nbClusters:  int(nb),
			cowStart:    cowRegion{0, cowStart},
			cowEnd:      cowRegion{nb << i.clusterBits, 0},
			prealloc:    prealloc,
		}
		if cowStart > 0 {
			i.inflight = append(i.inflight, m)
			err = i.cowUnlocked(m)
			i.removeInflight(m)
		}
		if err == nil {
			err = i.linkL2(m)
		}
		if err != nil {
			i.freeClusters(host, nbData*i.clusterSize, discardOther)
			return fmt.Errorf("Failed to update L2 tables: %s", storage.Strerror(err))
		}
		guest += nb * i.clusterSize
		host += nb * i.clusterSize
		nbData -= nb
	}
	return nil
}
