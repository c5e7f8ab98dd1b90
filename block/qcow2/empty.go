package qcow2

import (
	"encoding/binary"
	"fmt"

	"github.com/qimg/qimg/storage"
)

// This file empties an image after `qemu-img commit` (QEMU's
// qcow2_make_empty): every cluster becomes unallocated, so the whole image
// reads through to its backing file, and every cluster is freed.
//
// QEMU resets an image that has nothing but data clusters and their tables
// (version 3, no snapshots, bitmaps, LUKS header or data file) to the
// layout of a new image: header, refcount table, one refcount block and
// the L1 table in clusters 0 to 3+L-1, and truncates the file there. It
// does so in place, under the dirty bit, relying on a refcount repair at
// the next open if it crashes half-way. qimg reaches the same bytes without
// ever leaving the image inconsistent, by switching the header (one write
// inside its first sector) twice:
//
//  1. a complete set of empty metadata (a zeroed L1 table, a refcount table
//     and the refcount blocks counting the header and themselves) is
//     written past the end of the file and flushed, then the header is
//     pointed at it and flushed: the image is now empty, and every other
//     cluster is free;
//  2. the final metadata is written into clusters 1 to 3+L-1, which are
//     free now, and flushed; the header is rewritten to point at it and
//     flushed; the file is truncated after it.
//
// A crash at any point leaves either the old image or an empty one, both
// consistent; at worst the file keeps clusters that nothing uses (free,
// not leaked). Other images are emptied by discarding every cluster, as
// QEMU does, which frees them through the usual ordered metadata updates.

// headerSwitchOffset is where the fields the header switch rewrites start:
// l1_table_offset, refcount_table_offset and refcount_table_clusters.
const headerSwitchOffset = 40

// MakeEmpty makes every cluster of the image unallocated and frees it, so
// that the image reads as its backing file does (block.Emptier).
func (i *Image) MakeEmpty() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if err := i.checkWritable(); err != nil {
		return err
	}
	if err := i.waitForOverlappingAllocs(0, maxHostOffset); err != nil {
		return err
	}
	l1Clusters := i.sizeToClusters(int64(len(i.l1)) * l1EntrySize)
	if i.hdr.Version >= 3 && len(i.snapshots) == 0 && !i.hasBitmaps() &&
		3+l1Clusters <= i.rbSize && i.hdr.CryptMethod != cryptLUKS && !i.hasDataFile {
		if err := i.emptyCompletely(l1Clusters); err != errTooBig {
			return err
		}
	}
	step := int64(1<<31-1) &^ (i.clusterSize - 1)
	for off := int64(0); off < i.size; off += step {
		if err := i.clusterDiscard(off, min(step, i.size-off), discardSnapshot, true); err != nil {
			return err
		}
	}
	return i.flushLocked()
}

// hasBitmaps reports whether the image holds persistent bitmaps that QEMU
// would load.
func (i *Image) hasBitmaps() bool {
	return i.autoclear&autoclearBitmaps != 0 && len(i.bitmaps) > 0
}

// emptyMeta is a set of empty metadata: a zeroed L1 table, a refcount
// table and refcount blocks that count the header cluster and the set's own
// clusters, placed from cluster index start on.
type emptyMeta struct {
	start      int64 // first cluster index
	l1Clusters int64
	// reftable is the refcount table, a whole number of clusters.
	reftable []uint64
	// blocks are the refcount blocks' reftable indexes, in the order
	// they are placed after the reftable.
	blocks []int64
}

// end is the cluster index after the set.
func (m *emptyMeta) end(clusterBits int) int64 {
	return m.start + m.l1Clusters + int64(len(m.reftable))*reftableEntrySize>>clusterBits + int64(len(m.blocks))
}

func (m *emptyMeta) l1Offset(clusterBits int) int64 { return m.start << clusterBits }
func (m *emptyMeta) reftableOffset(clusterBits int) int64 {
	return (m.start + m.l1Clusters) << clusterBits
}

// planEmptyMeta places a set of empty metadata at cluster index start: the
// L1 table first, then the refcount table, then one refcount block for the
// header's range and one for each range the set itself touches. It returns
// errTooBig when the refcount table would exceed the format's limit.
func (i *Image) planEmptyMeta(start, l1Clusters int64) (*emptyMeta, error) {
	entriesPerCluster := i.clusterSize / reftableEntrySize
	rtClusters, nBlocks := int64(1), int64(1)
	for {
		end := start + l1Clusters + rtClusters + nBlocks
		first, last := start>>i.rbBits, (end-1)>>i.rbBits
		blocks := last - first + 1
		if first > 0 {
			blocks++ // the header's range
		}
		rt := (last + entriesPerCluster) / entriesPerCluster
		if blocks == nBlocks && rt == rtClusters {
			break
		}
		nBlocks, rtClusters = blocks, rt
	}
	if rtClusters*i.clusterSize > maxRefcountTableBytes {
		return nil, errTooBig
	}
	m := &emptyMeta{start: start, l1Clusters: l1Clusters, reftable: make([]uint64, rtClusters*entriesPerCluster)}
	end := start + l1Clusters + rtClusters + nBlocks
	if start>>i.rbBits > 0 {
		m.blocks = append(m.blocks, 0)
	}
	for r := start >> i.rbBits; r <= (end-1)>>i.rbBits; r++ {
		m.blocks = append(m.blocks, r)
	}
	blockAt := start + l1Clusters + rtClusters
	for k, r := range m.blocks {
		m.reftable[r] = uint64(blockAt+int64(k)) << i.clusterBits
	}
	return m, nil
}

// refcountBlock builds the refcount block of reftable index r of a set:
// refcount 1 for the header cluster and the set's clusters.
func (i *Image) refcountBlock(m *emptyMeta, r int64, buf []byte) {
	clear(buf)
	first := r << i.rbBits
	end := m.end(i.clusterBits)
	for k := int64(0); k < i.rbSize; k++ {
		c := first + k
		if c == 0 || (c >= m.start && c < end) {
			i.refcount.set(buf, uint64(k), 1)
		}
	}
}

// writeEmptyMeta writes a set of empty metadata (not the header) and
// flushes it. The L1 table is zeroed as QEMU zeroes it, keeping it
// allocated.
func (i *Image) writeEmptyMeta(m *emptyMeta) error {
	cb := i.clusterBits
	if err := storage.WriteZeroes(i.f, m.l1Offset(cb), m.l1Clusters<<cb, false); err != nil {
		return err
	}
	rt := make([]byte, len(m.reftable)*reftableEntrySize)
	for k, e := range m.reftable {
		binary.BigEndian.PutUint64(rt[k*reftableEntrySize:], e)
	}
	if _, err := i.f.WriteAt(rt, m.reftableOffset(cb)); err != nil {
		return err
	}
	buf := make([]byte, i.clusterSize)
	for _, r := range m.blocks {
		i.refcountBlock(m, r, buf)
		if _, err := i.f.WriteAt(buf, int64(m.reftable[r])); err != nil {
			return err
		}
	}
	return i.f.Sync()
}

// useEmptyMeta makes the in-memory state that of an image whose metadata
// is the set m.
func (i *Image) useEmptyMeta(m *emptyMeta) {
	clear(i.l1)
	i.l1Offset = m.l1Offset(i.clusterBits)
	i.reftable = m.reftable
	i.reftableOff = m.reftableOffset(i.clusterBits)
	i.updateMaxReftableIndex()
	i.freeClusterIndex = m.end(i.clusterBits)
	i.freeByteOffset = 0
}

// emptyCompletely empties the image into the layout of a new image (see
// the top of this file). It returns errTooBig, having changed nothing on
// disk, when the temporary metadata would not fit the format's limits.
func (i *Image) emptyCompletely(l1Clusters int64) error {
	// Everything cached must be on disk before the old metadata is left
	// behind, and nothing cached may refer to it afterwards.
	if err := i.l2Cache.empty(); err != nil {
		return err
	}
	if err := i.rcCache.empty(); err != nil {
		return err
	}
	fileSize, err := i.f.Size()
	if err != nil {
		return err
	}
	tmp, err := i.planEmptyMeta(max(i.sizeToClusters(fileSize), 3+l1Clusters), l1Clusters)
	if err != nil {
		return err
	}
	if err := i.writeEmptyMeta(tmp); err != nil {
		return err
	}
	if err := i.switchHeader(tmp); err != nil {
		return i.breakImage(err)
	}
	i.useEmptyMeta(tmp)
	if err := i.writeFinalMeta(l1Clusters); err != nil {
		return i.breakImage(err)
	}
	return nil
}

// writeFinalMeta writes the metadata of a new image into clusters 1 to
// 3+l1Clusters-1 (free once the temporary set is in use), points the
// header at it and truncates the file after it, as QEMU's
// make_completely_empty leaves the image.
func (i *Image) writeFinalMeta(l1Clusters int64) error {
	cs := i.clusterSize
	if err := storage.WriteZeroes(i.f, cs, (2+l1Clusters)*cs, false); err != nil {
		return err
	}
	var rt [reftableEntrySize]byte
	binary.BigEndian.PutUint64(rt[:], uint64(2*cs))
	if _, err := i.f.WriteAt(rt[:], cs); err != nil {
		return err
	}
	rb := make([]byte, cs)
	for k := int64(0); k < 3+l1Clusters; k++ {
		i.refcount.set(rb, uint64(k), 1)
	}
	if _, err := i.f.WriteAt(rb, 2*cs); err != nil {
		return err
	}
	if err := i.f.Sync(); err != nil {
		return err
	}
	clear(i.l1)
	i.l1Offset = 3 * cs
	i.reftable = make([]uint64, cs/reftableEntrySize)
	i.reftable[0] = uint64(2 * cs)
	i.reftableOff = cs
	i.updateMaxReftableIndex()
	i.freeClusterIndex = 3 + l1Clusters
	i.freeByteOffset = 0
	i.incompat &^= incompatDirty
	if err := i.updateHeader(); err != nil {
		return err
	}
	if err := i.f.Sync(); err != nil {
		return err
	}
	if err := i.f.Truncate((3 + l1Clusters) * cs); err != nil {
		return err
	}
	return i.f.Sync()
}

// switchHeader points the header at a set of metadata with one write
// inside its first sector, and flushes it.
func (i *Image) switchHeader(m *emptyMeta) error {
	var b [20]byte
	binary.BigEndian.PutUint64(b[0:], uint64(m.l1Offset(i.clusterBits)))
	binary.BigEndian.PutUint64(b[8:], uint64(m.reftableOffset(i.clusterBits)))
	binary.BigEndian.PutUint32(b[16:], uint32(int64(len(m.reftable))*reftableEntrySize>>i.clusterBits))
	return i.writeSync(b[:], headerSwitchOffset)
}

// breakImage stops all I/O on an image whose metadata on disk no longer
// matches what is in memory, and returns err.
func (i *Image) breakImage(err error) error {
	i.broken = fmt.Errorf("image could not be emptied: %w", err)
	return err
}
