package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"github.com/qimg/qimg/storage"
)

// This file manages host clusters: their refcounts (a two-level structure
// of a refcount table and refcount blocks) and their allocation. The
// algorithms follow QEMU's, so that qimg lays out new images and grows
// existing ones exactly as qemu-img does: clusters are taken first-fit from
// a moving free cluster index, refcount blocks describe themselves when they
// fall into their own range, and a refcount table that must grow is
// replaced by a new one placed, with self-describing refcount blocks, at
// the end of the image.

// errAgain tells an allocator that new refcount metadata was placed where it
// meant to allocate, so it must search again (QEMU's -EAGAIN).
var errAgain = errors.New("refcount structures changed; retry allocation")

// errTooBig reports an allocation beyond what the format can address
// (QEMU's -EFBIG).
var errTooBig = errors.New("File too large")

// refcountBlockOffset returns the offset of the refcount block covering a
// cluster index, 0 when none is allocated.
func (i *Image) refcountBlockOffset(clusterIndex int64) (int64, int64, error) {
	tableIndex := clusterIndex >> i.rbBits
	if tableIndex >= int64(len(i.reftable)) {
		return 0, tableIndex, nil
	}
	off := int64(i.reftable[tableIndex] & reftOffsetMask)
	if off != 0 && off&(i.clusterSize-1) != 0 {
		return 0, tableIndex, i.corruption(true, fmt.Sprintf("Refblock offset %#x unaligned (reftable index: %#x)", off, tableIndex))
	}
	return off, tableIndex, nil
}

// getRefcount returns the refcount of a host cluster.
func (i *Image) getRefcount(clusterIndex int64) (uint64, error) {
	off, _, err := i.refcountBlockOffset(clusterIndex)
	if err != nil || off == 0 {
		return 0, err
	}
	e, err := i.rcCache.get(off)
	if err != nil {
		return 0, err
	}
	v := i.refcount.get(e.data, uint64(clusterIndex&(i.rbSize-1)))
	i.rcCache.put(e)
	return v, nil
}

// sameRefcountBlock reports whether two host offsets are covered by the
// same refcount block.
func (i *Image) sameRefcountBlock(a, b int64) bool {
	shift := uint(i.clusterBits + i.rbBits)
	return a>>shift == b>>shift
}

// allocRefcountBlock returns the refcount block covering a cluster,
// allocating it (and growing the refcount table) if needed. When it had to
// allocate, it returns errAgain (with a nil entry) after installing the new
// block, as QEMU's alloc_refcount_block: the caller's choice of clusters
// may have been taken.
func (i *Image) allocRefcountBlock(clusterIndex int64) (*cacheEntry, error) {
	off, tableIndex, err := i.refcountBlockOffset(clusterIndex)
	if err != nil {
		return nil, err
	}
	if off != 0 {
		return i.rcCache.get(off)
	}
	// The refcount table will point to the new block; L2 tables written
	// so far must not depend on it.
	if err := i.l2Cache.flush(); err != nil {
		return nil, err
	}
	newBlock, err := i.allocClustersNoref(i.clusterSize, ^uint64(0))
	if err != nil {
		return nil, err
	}
	if newBlock == 0 {
		return nil, i.corruption(true, "Preventing invalid allocation of refcount block at offset 0")
	}
	var e *cacheEntry
	if i.sameRefcountBlock(newBlock, clusterIndex<<i.clusterBits) {
		e, err = i.rcCache.getEmpty(newBlock)
		if err != nil {
			return nil, err
		}
		clear(e.data)
		i.refcount.set(e.data, uint64((newBlock>>i.clusterBits)&(i.rbSize-1)), 1)
	} else {
		// Described by another block; this recurses at most twice
		// before reaching a block that describes itself.
		if err := i.updateRefcount(newBlock, i.clusterSize, 1, false, discardNever); err != nil {
			return nil, err
		}
		if err := i.rcCache.flush(); err != nil {
			return nil, err
		}
		e, err = i.rcCache.getEmpty(newBlock)
		if err != nil {
			return nil, err
		}
		clear(e.data)
	}
	i.rcCache.markDirty(e)
	if err := i.rcCache.flush(); err != nil {
		i.rcCache.put(e)
		return nil, err
	}
	if tableIndex < int64(len(i.reftable)) {
		var d [8]byte
		binary.BigEndian.PutUint64(d[:], uint64(newBlock))
		if err := i.writeSync(d[:], i.reftableOff+tableIndex*reftableEntrySize); err != nil {
			i.rcCache.put(e)
			return nil, err
		}
		i.reftable[tableIndex] = uint64(newBlock)
		i.reftableMaxIx = max(i.reftableMaxIx, int(tableIndex))
		i.rcCache.put(e)
		return nil, errAgain
	}
	i.rcCache.put(e)

	// The refcount table must grow. New refcount blocks for the new
	// table and themselves go after everything in use so far.
	blocksUsed := (max(clusterIndex+1, (newBlock>>i.clusterBits)+1) + i.rbSize - 1) / i.rbSize
	metaOffset := blocksUsed * i.rbSize * i.clusterSize
	if _, err := i.refcountArea(metaOffset, 0, false, int(tableIndex), newBlock); err != nil {
		return nil, err
	}
	return nil, errAgain
}

// refcountMetadataSize returns how many bytes of refcount blocks and table
// are needed to refcount clusters clusters including themselves, and the
// number of refcount blocks (QEMU's qcow2_refcount_metadata_size). With
// generous, the table may later grow by half.
func refcountMetadataSize(clusters, clusterSize int64, order int, generous bool) (int64, int64) {
	perTableCluster := clusterSize / reftableEntrySize
	perBlock := clusterSize * 8 >> order
	var table, blocks, last, n int64
	for {
		last = n
		blocks = ceilDiv(clusters+table+blocks, perBlock)
		table = ceilDiv(blocks, perTableCluster)
		n = clusters + blocks + table
		if n == last && generous {
			clusters += ceilDiv(table, 2)
			n = 0
			generous = false
		}
		if n == last {
			break
		}
	}
	return (blocks + table) * clusterSize, blocks
}

func ceilDiv(a, b int64) int64 { return (a + b - 1) / b }

// refcountArea creates, at startOffset (the end of the used part of the
// file), a new refcount table and refcount blocks that cover themselves
// and additionalClusters beyond them, and switches the image to the new
// table (QEMU's qcow2_refcount_area). It returns where the additional
// clusters may go.
func (i *Image) refcountArea(startOffset int64, additionalClusters int64, exactSize bool,
	newRefblockIndex int, newRefblockOffset int64) (int64, error) {
	_, total := refcountMetadataSize(startOffset/i.clusterSize+additionalClusters, i.clusterSize,
		int(i.hdr.RefcountOrder), !exactSize)
	if total > maxRefcountTableBytes {
		return 0, errTooBig
	}
	areaIndex := int((startOffset / i.clusterSize) / i.rbSize)
	tableSize := total
	if !exactSize {
		tableSize += ceilDiv(total, 2)
	}
	perCluster := i.clusterSize / reftableEntrySize
	tableSize = ceilDiv(tableSize, perCluster) * perCluster
	tableClusters := tableSize * reftableEntrySize / i.clusterSize
	if tableSize > maxRefcountTableBytes {
		return 0, errTooBig
	}
	newTable := make([]uint64, tableSize)
	if tableSize > int64(i.reftableMaxIx) {
		copy(newTable, i.reftable[:min(len(i.reftable), i.reftableMaxIx+1)])
	} else {
		copy(newTable, i.reftable[:min(len(i.reftable), int(tableSize))])
	}
	if newRefblockOffset != 0 {
		newTable[newRefblockIndex] = uint64(newRefblockOffset)
	}
	var additional int64
	for k := areaIndex; k < int(total); k++ {
		if newTable[k] == 0 {
			additional++
		}
	}
	tableOffset := startOffset + additional*i.clusterSize
	endOffset := tableOffset + tableClusters*i.clusterSize

	blockOffset := startOffset
	for k := areaIndex; k < int(total); k++ {
		var e *cacheEntry
		var err error
		if newTable[k] != 0 {
			e, err = i.rcCache.get(int64(newTable[k] & reftOffsetMask))
		} else {
			e, err = i.rcCache.getEmpty(blockOffset)
			if err == nil {
				clear(e.data)
				i.rcCache.markDirty(e)
				newTable[k] = uint64(blockOffset)
				blockOffset += i.clusterSize
			}
		}
		if err != nil {
			return 0, err
		}
		first := int64(k) * i.rbSize * i.clusterSize
		if first < endOffset {
			j := int64(0)
			if first < startOffset {
				j = (startOffset - first) / i.clusterSize
			}
			end := min((endOffset-first)/i.clusterSize, i.rbSize)
			for ; j < end; j++ {
				if i.refcount.get(e.data, uint64(j)) != 0 {
					i.rcCache.put(e)
					return 0, i.corruption(true, "Refcount area is not empty")
				}
				i.refcount.set(e.data, uint64(j), 1)
			}
			i.rcCache.markDirty(e)
		}
		i.rcCache.put(e)
	}
	if err := i.rcCache.flush(); err != nil {
		return 0, err
	}
	raw := make([]byte, tableSize*reftableEntrySize)
	for k := int64(0); k < total; k++ {
		binary.BigEndian.PutUint64(raw[8*k:], newTable[k])
	}
	if err := i.writeSync(raw, tableOffset); err != nil {
		return 0, err
	}
	var d [12]byte
	binary.BigEndian.PutUint64(d[0:], uint64(tableOffset))
	binary.BigEndian.PutUint32(d[8:], uint32(tableClusters))
	if err := i.writeSync(d[:], 48); err != nil {
		return 0, err
	}
	oldOffset, oldSize := i.reftableOff, int64(len(i.reftable))
	i.reftable = newTable
	i.reftableOff = tableOffset
	i.hdr.RefcountTableOffset = uint64(tableOffset)
	i.hdr.RefcountTableClusters = uint32(tableClusters)
	i.updateMaxReftableIndex()
	i.freeClusters(oldOffset, oldSize*reftableEntrySize, discardOther)
	return endOffset, nil
}

// updateRefcount adds addend to (or with decrease, subtracts it from) the
// refcount of every cluster in [offset, offset+length) (QEMU's
// update_refcount). On failure the updates made are undone.
func (i *Image) updateRefcount(offset, length int64, addend uint64, decrease bool, kind discardKind) error {
	if length <= 0 {
		if length < 0 {
			return fmt.Errorf("negative refcount update length: %w", errCorrupt)
		}
		return nil
	}
	if decrease {
		// Refcounts must not drop before the L2 tables that stopped
		// referencing the clusters are on disk.
		if err := i.rcCache.setDependency(i.l2Cache); err != nil {
			return err
		}
	}
	start := offset &^ (i.clusterSize - 1)
	last := (offset + length - 1) &^ (i.clusterSize - 1)
	var e *cacheEntry
	oldTableIndex := int64(-1)
	var err error
	clusterOffset := start
	for ; clusterOffset <= last; clusterOffset += i.clusterSize {
		clusterIndex := clusterOffset >> i.clusterBits
		tableIndex := clusterIndex >> i.rbBits
		if tableIndex != oldTableIndex {
			if e != nil {
				i.rcCache.put(e)
				e = nil
			}
			e, err = i.allocRefcountBlock(clusterIndex)
			if err == errAgain && i.freeClusterIndex > start>>i.clusterBits {
				i.freeClusterIndex = start >> i.clusterBits
			}
			if err != nil {
				break
			}
		}
		oldTableIndex = tableIndex
		i.rcCache.markDirty(e)
		blockIndex := uint64(clusterIndex & (i.rbSize - 1))
		rc := i.refcount.get(e.data, blockIndex)
		if decrease {
			if rc < addend {
				err = fmt.Errorf("refcount of cluster %d would drop below zero: %w", clusterIndex, syscall.EINVAL)
				break
			}
			rc -= addend
		} else {
			if rc+addend < rc || rc+addend > i.refcountMax {
				err = fmt.Errorf("refcount of cluster %d would overflow: %w", clusterIndex, syscall.EINVAL)
				break
			}
			rc += addend
		}
		if rc == 0 && clusterIndex < i.freeClusterIndex {
			i.freeClusterIndex = clusterIndex
		}
		if rc == 0 && i.freeByteOffset != 0 && i.freeByteOffset>>i.clusterBits == clusterIndex {
			// Compressed data must not be packed into a cluster
			// that may be reallocated for something else.
			i.freeByteOffset = 0
		}
		i.refcount.set(e.data, blockIndex, rc)
		if rc == 0 {
			if c := i.rcCache.lookup(clusterOffset); c != nil {
				if c == e {
					i.rcCache.put(e)
					e = nil
					oldTableIndex = -1
				}
				i.rcCache.discard(clusterOffset)
			}
			i.discardL2CacheCluster(clusterOffset)
			if i.discardPassthrough[kind] {
				i.queueDiscard(clusterOffset, i.clusterSize)
			}
		}
	}
	if !i.cacheDiscards {
		i.processDiscards(err == nil)
	}
	if e != nil {
		i.rcCache.put(e)
	}
	if err != nil && clusterOffset > offset {
		_ = i.updateRefcount(offset, clusterOffset-offset, addend, !decrease, discardNever)
	}
	return err
}

// discardL2CacheCluster drops cached L2 slices of a freed cluster.
func (i *Image) discardL2CacheCluster(clusterOffset int64) {
	for off := clusterOffset; off < clusterOffset+i.clusterSize; off += int64(i.l2Cache.entrySize) {
		if i.l2Cache.lookup(off) != nil {
			i.l2Cache.discard(off)
		}
	}
}

// queueDiscard records a freed host range whose space is given back to the
// file system, merging it with adjacent ones.
func (i *Image) queueDiscard(offset, length int64) {
	for k := range i.discards {
		d := &i.discards[k]
		if d.offset+d.length == offset {
			d.length += length
			return
		}
		if offset+length == d.offset {
			d.offset = offset
			d.length += length
			return
		}
	}
	i.discards = append(i.discards, hostRange{offset, length})
}

// processDiscards punches holes for the queued freed ranges (when ok).
func (i *Image) processDiscards(ok bool) {
	if ok {
		for _, d := range i.discards {
			_ = storage.PunchHole(i.f, d.offset, d.length)
		}
	}
	i.discards = i.discards[:0]
}

// allocClustersNoref finds size bytes of free contiguous clusters from the
// free cluster index on, without taking them (QEMU's alloc_clusters_noref).
func (i *Image) allocClustersNoref(size int64, maxOffset uint64) (int64, error) {
	if i.cacheDiscards {
		i.processDiscards(true)
	}
	n := (size + i.clusterSize - 1) >> i.clusterBits
retry:
	for k := int64(0); k < n; k++ {
		idx := i.freeClusterIndex
		i.freeClusterIndex++
		rc, err := i.getRefcount(idx)
		if err != nil {
			return 0, err
		}
		if rc != 0 {
			goto retry
		}
	}
	if i.freeClusterIndex > 0 && uint64(i.freeClusterIndex-1) > maxOffset>>i.clusterBits {
		return 0, errTooBig
	}
	return (i.freeClusterIndex - n) << i.clusterBits, nil
}

// allocClusters allocates size bytes of contiguous clusters and returns
// their offset.
func (i *Image) allocClusters(size int64) (int64, error) {
	for {
		off, err := i.allocClustersNoref(size, maxHostOffset)
		if err != nil {
			return 0, err
		}
		err = i.updateRefcount(off, size, 1, false, discardNever)
		if err == errAgain {
			continue
		}
		if err != nil {
			return 0, err
		}
		return off, nil
	}
}

// allocClustersAt allocates up to n clusters at offset, stopping at the
// first one in use, and returns how many it took.
func (i *Image) allocClustersAt(offset int64, n int64) (int64, error) {
	if n == 0 {
		return 0, nil
	}
	for {
		var k int64
		for k = 0; k < n; k++ {
			rc, err := i.getRefcount((offset >> i.clusterBits) + k)
			if err != nil {
				return 0, err
			}
			if rc != 0 {
				break
			}
		}
		err := i.updateRefcount(offset, k<<i.clusterBits, 1, false, discardNever)
		if err == errAgain {
			continue
		}
		if err != nil {
			return 0, err
		}
		return k, nil
	}
}

// allocBytes allocates size bytes (at most a cluster) for compressed data,
// packing them after the previous compressed cluster where they fit (QEMU's
// qcow2_alloc_bytes).
func (i *Image) allocBytes(size int) (int64, error) {
	offset := i.freeByteOffset
	if offset != 0 {
		rc, err := i.getRefcount(offset >> i.clusterBits)
		if err != nil {
			return 0, err
		}
		if rc == i.refcountMax {
			offset = 0
		}
	}
	freeInCluster := i.clusterSize - offset&(i.clusterSize-1)
	for {
		if offset == 0 || freeInCluster < int64(size) {
			maxOff := min(i.compressed.clusterOffsetMask, maxHostOffset)
			newCluster, err := i.allocClustersNoref(i.clusterSize, maxOff)
			if err != nil {
				return 0, err
			}
			if newCluster == 0 {
				return 0, i.corruption(true, "Preventing invalid allocation of compressed cluster at offset 0")
			}
			if offset == 0 || (offset+i.clusterSize-1)&^(i.clusterSize-1) != newCluster {
				offset = newCluster
				freeInCluster = i.clusterSize
			} else {
				freeInCluster += i.clusterSize
			}
		}
		err := i.updateRefcount(offset, int64(size), 1, false, discardNever)
		if err == errAgain {
			offset = 0
			continue
		}
		if err != nil {
			return 0, err
		}
		break
	}
	// The L2 entry pointing to the data must not reach the disk before
	// the refcount increase.
	if err := i.l2Cache.setDependency(i.rcCache); err != nil {
		return 0, err
	}
	i.freeByteOffset = offset + int64(size)
	if i.freeByteOffset&(i.clusterSize-1) == 0 {
		i.freeByteOffset = 0
	}
	return offset, nil
}

// freeClusters drops one reference to every cluster of a host range.
// Failures leak the clusters, which is safe.
func (i *Image) freeClusters(offset, size int64, kind discardKind) {
	_ = i.updateRefcount(offset, size, 1, true, kind)
}

// freeAnyCluster drops the reference an L2 entry holds, whatever its type.
func (i *Image) freeAnyCluster(entry uint64, kind discardKind) {
	t := i.layout.classify(entry)
	if i.hasDataFile {
		if i.discardPassthrough[kind] && (t == clusterNormal || t == clusterZeroAlloc) {
			_ = storage.PunchHole(i.data, int64(entry&l2OffsetMask), i.clusterSize)
		}
		return
	}
	switch t {
	case clusterCompressed:
		off, size := i.compressed.parse(entry)
		i.freeClusters(int64(off), int64(size), kind)
	case clusterNormal, clusterZeroAlloc:
		off := int64(entry & l2OffsetMask)
		if off&(i.clusterSize-1) != 0 {
			_ = i.corruption(false, fmt.Sprintf("Cannot free unaligned cluster %#x", off))
			return
		}
		i.freeClusters(off, i.clusterSize, kind)
	}
}

// needAccurateRefcounts reports whether refcounts on disk must be kept
// exact: always, unless lazy refcounts have marked the image dirty.
func (i *Image) needAccurateRefcounts() bool {
	return i.incompat&incompatDirty == 0
}

// writeCaches writes the L2 cache and (unless lazy refcounts postpone
// them) the refcount cache back.
func (i *Image) writeCaches() error {
	if err := i.l2Cache.write(); err != nil {
		return err
	}
	if i.needAccurateRefcounts() {
		return i.rcCache.write()
	}
	return nil
}

// flushCaches writes the caches back and flushes the file.
func (i *Image) flushCaches() error {
	if err := i.writeCaches(); err != nil {
		return err
	}
	return i.syncFile()
}

// writeSync writes p at off in the image file and flushes it, for metadata
// updates that must be durable before the next step.
func (i *Image) writeSync(p []byte, off int64) error {
	if _, err := i.f.WriteAt(p, off); err != nil {
		return err
	}
	return i.f.Sync()
}
