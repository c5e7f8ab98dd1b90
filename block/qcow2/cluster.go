package qcow2

import (
	"encoding/binary"
	"fmt"
)

// This file maps guest offsets to host clusters through the L1 table and
// the L2 tables, and changes that mapping: it allocates L2 tables and data
// clusters, links new clusters into L2 tables, and discards or zeroes
// clusters. Like refcount.go it follows QEMU's algorithms, so that images
// grow as they do under qemu-img.

// maxRequestBytes is the largest request QEMU's block layer passes down
// (BDRV_REQUEST_MAX_BYTES); allocations are split at it.
const maxRequestBytes = (1<<31 - 1) &^ (sectorSize - 1)

// l2Entry returns entry idx of an L2 slice and its subcluster bitmap (0
// without extended L2 entries).
func (i *Image) l2Entry(slice []byte, idx int) (uint64, uint64) {
	off := idx * i.l2EntryBytes
	e := binary.BigEndian.Uint64(slice[off:])
	if i.l2EntryBytes == l2EntrySizeExt {
		return e, binary.BigEndian.Uint64(slice[off+8:])
	}
	return e, 0
}

// setL2Entry stores entry idx of an L2 slice.
func (i *Image) setL2Entry(slice []byte, idx int, entry uint64) {
	binary.BigEndian.PutUint64(slice[idx*i.l2EntryBytes:], entry)
}

// setL2Bitmap stores the subcluster bitmap of entry idx.
func (i *Image) setL2Bitmap(slice []byte, idx int, bitmap uint64) {
	binary.BigEndian.PutUint64(slice[idx*i.l2EntryBytes+8:], bitmap)
}

// Index helpers.
func (i *Image) l1Index(off int64) int64   { return off >> uint(i.l2Bits+i.clusterBits) }
func (i *Image) l2Index(off int64) int     { return int(off>>i.clusterBits) & (i.l2Size - 1) }
func (i *Image) sliceIndex(off int64) int  { return int(off>>i.clusterBits) & (i.l2SliceSize - 1) }
func (i *Image) scIndex(off int64) int     { return int(off>>i.subBits) & (i.subPerClus - 1) }
func (i *Image) inCluster(off int64) int64 { return off & (i.clusterSize - 1) }
func (i *Image) clusterStart(off int64) int64 {
	return off &^ (i.clusterSize - 1)
}
func (i *Image) sizeToClusters(n int64) int64 { return (n + i.clusterSize - 1) >> i.clusterBits }

// loadL2Slice returns the cached L2 slice that holds the entry for guest
// offset off of the L2 table at l2Offset.
func (i *Image) loadL2Slice(off, l2Offset int64) (*cacheEntry, error) {
	start := int64(i.l2Index(off)-i.sliceIndex(off)) * int64(i.l2EntryBytes)
	return i.l2Cache.get(l2Offset + start)
}

// mapping describes a run of guest bytes with one subcluster type.
type mapping struct {
	// bytes is the length of the run.
	bytes int64
	// host is the host offset of the first byte (normal, zero-alloc and
	// unallocated-alloc runs), or the L2 entry of a compressed cluster.
	host uint64
	typ  subclusterType
}

// getHostOffset describes the run of at most n bytes that starts at guest
// offset off: its subcluster type and, where it has one, its host offset
// (QEMU's qcow2_get_host_offset). Runs never cross an L2 slice, and
// compressed clusters come one at a time.
func (i *Image) getHostOffset(off, n int64) (mapping, error) {
	inClus := i.inCluster(off)
	needed := n + inClus
	avail := int64(i.l2SliceSize-i.sliceIndex(off)) << i.clusterBits
	needed = min(needed, avail)
	m := mapping{typ: subUnallocatedPlain}
	l1Index := i.l1Index(off)
	if l1Index >= int64(len(i.l1)) || i.l1[l1Index]&l1OffsetMask == 0 {
		// Without an L2 table the run goes on to the next L1 entry
		// that has one (QEMU stops at the slice; the result is the
		// same, in fewer steps).
		span := int64(1) << uint(i.l2Bits+i.clusterBits)
		end := (l1Index + 1) * span
		for k := l1Index + 1; k < int64(len(i.l1)) && i.l1[k]&l1OffsetMask == 0 && end-off < n; k++ {
			end += span
		}
		if l1Index+1 >= int64(len(i.l1)) {
			end = off + n
		}
		m.bytes = min(n, end-off)
		return m, nil
	}
	l2Offset := int64(i.l1[l1Index] & l1OffsetMask)
	if l2Offset&(i.clusterSize-1) != 0 {
		return m, i.corruption(true, fmt.Sprintf("L2 table offset %#x unaligned (L1 index: %#x)", l2Offset, l1Index))
	}
	e, err := i.loadL2Slice(off, l2Offset)
	if err != nil {
		return m, err
	}
	defer i.l2Cache.put(e)
	l2Index := i.sliceIndex(off)
	sc := i.scIndex(off)
	entry, bitmap := i.l2Entry(e.data, l2Index)
	nbClusters := i.sizeToClusters(needed)
	typ := i.layout.subcluster(entry, bitmap, sc)
	if i.hdr.Version < 3 && (typ == subZeroPlain || typ == subZeroAlloc) {
		return m, i.corruption(true, fmt.Sprintf("Zero cluster entry found in pre-v3 image (L2 offset: %#x, L2 index: %#x)", l2Offset, l2Index))
	}
	switch typ {
	case subCompressed:
		if i.hasDataFile {
			return m, i.corruption(true, fmt.Sprintf("Compressed cluster entry found in image with external data file (L2 offset: %#x, L2 index: %#x)", l2Offset, l2Index))
		}
		m.host = entry
	case subZeroAlloc, subNormal, subUnallocatedAlloc:
		hostCluster := int64(entry & l2OffsetMask)
		m.host = uint64(hostCluster + inClus)
		if hostCluster&(i.clusterSize-1) != 0 {
			return m, i.corruption(true, fmt.Sprintf("Cluster allocation offset %#x unaligned (L2 offset: %#x, L2 index: %#x)", hostCluster, l2Offset, l2Index))
		}
		if i.hasDataFile && int64(m.host) != off {
			return m, i.corruption(true, fmt.Sprintf("External data file host cluster offset %#x does not match guest cluster offset: %#x, L2 index: %#x)", hostCluster, off-inClus, l2Index))
		}
	}
	count, bad := i.countContiguousSubclusters(int(nbClusters), sc, e.data, l2Index)
	if count < 0 {
		return m, i.corruption(true, fmt.Sprintf("Invalid cluster entry found  (L2 offset: %#x, L2 index: %#x)", l2Offset, bad))
	}
	avail = int64(count+sc) << i.subBits
	m.bytes = min(avail, needed) - inClus
	m.typ = typ
	return m, nil
}

// countContiguousSubclusters counts the subclusters of the same type, from
// subcluster sc of entry l2Index on, over at most nbClusters entries; data
// runs must also be contiguous on the host (QEMU's
// count_contiguous_subclusters). On an invalid entry it returns -1 and that
// entry's index.
func (i *Image) countContiguousSubclusters(nbClusters, sc int, slice []byte, l2Index int) (int, int) {
	count := 0
	var expectedType subclusterType
	var expectedOffset uint64
	checkOffset := false
	for k := 0; k < nbClusters; k++ {
		first := 0
		if k == 0 {
			first = sc
		}
		entry, bitmap := i.l2Entry(slice, l2Index+k)
		typ, n := i.layout.subclusterRun(entry, bitmap, first)
		if n < 0 {
			return -1, l2Index + k
		}
		if k == 0 {
			if typ == subCompressed {
				return n, 0
			}
			expectedType = typ
			expectedOffset = entry & l2OffsetMask
			checkOffset = typ == subNormal || typ == subZeroAlloc || typ == subUnallocatedAlloc
		} else if typ != expectedType {
			break
		} else if checkOffset {
			expectedOffset += uint64(i.clusterSize)
			if expectedOffset != entry&l2OffsetMask {
				break
			}
		}
		count += n
		if first+n < i.subPerClus {
			break
		}
	}
	return count, 0
}

// growL1Table makes the L1 table hold at least minSize entries, writing a
// new table and switching the header to it (QEMU's qcow2_grow_l1_table).
// Without exact, the size grows by half until it fits.
func (i *Image) growL1Table(minSize int64, exact bool) error {
	if minSize <= int64(len(i.l1)) {
		return nil
	}
	if minSize > (1<<31-1)/l1EntrySize {
		return errTooBig
	}
	newSize := minSize
	if !exact {
		newSize = max(int64(len(i.l1)), 1)
		for minSize > newSize {
			newSize = (newSize*3 + 1) / 2
		}
	}
	if newSize > maxL1Bytes/l1EntrySize {
		return errTooBig
	}
	newTable := make([]uint64, newSize)
	copy(newTable, i.l1)
	bytes := newSize * l1EntrySize
	off, err := i.allocClusters(bytes)
	if err != nil {
		return err
	}
	fail := func(err error) error {
		i.freeClusters(off, bytes, discardOther)
		return err
	}
	if err := i.rcCache.flush(); err != nil {
		return fail(err)
	}
	if err := i.overlapCheck(0, off, bytes); err != nil {
		return fail(err)
	}
	raw := make([]byte, bytes)
	for k, v := range newTable {
		binary.BigEndian.PutUint64(raw[8*k:], v)
	}
	if err := i.writeSync(raw, off); err != nil {
		return fail(err)
	}
	var d [12]byte
	binary.BigEndian.PutUint32(d[0:], uint32(newSize))
	binary.BigEndian.PutUint64(d[4:], uint64(off))
	if err := i.writeSync(d[:], 36); err != nil {
		return fail(err)
	}
	oldOffset, oldSize := i.l1Offset, int64(len(i.l1))
	i.l1, i.l1Offset = newTable, off
	i.hdr.L1Size, i.hdr.L1TableOffset = uint32(newSize), uint64(off)
	i.freeClusters(oldOffset, oldSize*l1EntrySize, discardOther)
	return nil
}

// writeL1Entry writes one L1 entry to disk and flushes it.
func (i *Image) writeL1Entry(l1Index int64) error {
	off := i.l1Offset + l1Index*l1EntrySize
	if err := i.overlapCheck(olActiveL1, off, l1EntrySize); err != nil {
		return err
	}
	var d [8]byte
	binary.BigEndian.PutUint64(d[:], i.l1[l1Index])
	return i.writeSync(d[:], off)
}

// l2Allocate gives L1 entry l1Index a new L2 table, copying the old one if
// there was one (QEMU's l2_allocate).
func (i *Image) l2Allocate(l1Index int64) error {
	old := i.l1[l1Index]
	tableBytes := int64(i.l2Size * i.l2EntryBytes)
	l2Offset, err := i.allocClusters(tableBytes)
	if err != nil {
		return err
	}
	fail := func(err error) error {
		i.l1[l1Index] = old
		i.freeClusters(l2Offset, tableBytes, discardAlways)
		return err
	}
	if l2Offset == 0 {
		return fail(i.corruption(true, "Preventing invalid allocation of L2 table at offset 0"))
	}
	if err := i.rcCache.flush(); err != nil {
		return fail(err)
	}
	sliceBytes := int64(i.l2SliceSize * i.l2EntryBytes)
	for s := int64(0); s < i.clusterSize/sliceBytes; s++ {
		e, err := i.l2Cache.getEmpty(l2Offset + s*sliceBytes)
		if err != nil {
			return fail(err)
		}
		if old&l1OffsetMask == 0 {
			clear(e.data)
		} else {
			oe, err := i.l2Cache.get(int64(old&l1OffsetMask) + s*sliceBytes)
			if err != nil {
				i.l2Cache.put(e)
				return fail(err)
			}
			copy(e.data, oe.data)
			i.l2Cache.put(oe)
		}
		i.l2Cache.markDirty(e)
		i.l2Cache.put(e)
	}
	if err := i.l2Cache.flush(); err != nil {
		return fail(err)
	}
	i.l1[l1Index] = uint64(l2Offset) | oflagCopied
	if err := i.writeL1Entry(l1Index); err != nil {
		return fail(err)
	}
	return nil
}

// getClusterTable returns the L2 slice holding the entry for guest offset
// off, allocating the L2 table (or copying a shared one) if needed, and the
// entry's index in the slice (QEMU's get_cluster_table).
func (i *Image) getClusterTable(off int64) (*cacheEntry, int, error) {
	l1Index := i.l1Index(off)
	if l1Index >= int64(len(i.l1)) {
		if err := i.growL1Table(l1Index+1, false); err != nil {
			return nil, 0, err
		}
	}
	l2Offset := int64(i.l1[l1Index] & l1OffsetMask)
	if l2Offset&(i.clusterSize-1) != 0 {
		return nil, 0, i.corruption(true, fmt.Sprintf("L2 table offset %#x unaligned (L1 index: %#x)", l2Offset, l1Index))
	}
	if i.l1[l1Index]&oflagCopied == 0 {
		if err := i.l2Allocate(l1Index); err != nil {
			return nil, 0, err
		}
		if l2Offset != 0 {
			i.freeClusters(l2Offset, int64(i.l2Size*i.l2EntryBytes), discardOther)
		}
		l2Offset = int64(i.l1[l1Index] & l1OffsetMask)
	}
	e, err := i.loadL2Slice(off, l2Offset)
	if err != nil {
		return nil, 0, err
	}
	return e, i.sliceIndex(off), nil
}

// cowRegion is a part of a newly allocated cluster range that keeps old
// content: offset is relative to the first cluster.
type cowRegion struct {
	offset, bytes int64
}

// l2Meta describes one allocation of a write: guest clusters that get new
// (or preallocated) host clusters once the data is written, and the parts
// of them the write does not cover (QEMU's QCowL2Meta).
type l2Meta struct {
	offset      int64 // guest offset of the first cluster
	allocOffset int64 // host offset of the first cluster
	nbClusters  int
	keepOld     bool
	cowStart    cowRegion
	cowEnd      cowRegion
	skipCow     bool
	// prealloc marks a preallocation: with extended L2 entries, no
	// subcluster becomes allocated.
	prealloc bool
	// zeroStart and zeroEnd are set when the COW regions are known to
	// read as zeroes.
	zeroStart, zeroEnd bool
	next               *l2Meta
}

// cowStartOffset and cowEndOffset are the guest range the allocation
// covers, COW included.
func (m *l2Meta) cowStartOffset() int64 { return m.offset + m.cowStart.offset }
func (m *l2Meta) cowEndOffset() int64   { return m.offset + m.cowEnd.offset + m.cowEnd.bytes }

// calculateL2Meta records an allocation for a write of bytes at guestOffset
// into host clusters starting at hostCluster, unless nothing needs
// changing (QEMU's calculate_l2_meta).
func (i *Image) calculateL2Meta(hostCluster, guestOffset, bytes int64, slice []byte, metas **l2Meta, keepOld bool) error {
	l2Index := i.sliceIndex(guestOffset)
	cowStartTo := i.inCluster(guestOffset)
	cowEndFrom := cowStartTo + bytes
	nbClusters := int(i.sizeToClusters(cowEndFrom))
	skipCow := keepOld
	for k := 0; k < nbClusters; k++ {
		entry, bitmap := i.l2Entry(slice, l2Index+k)
		var typ subclusterType
		if skipCow {
			writeFrom := max(cowStartTo, int64(k)<<i.clusterBits)
			writeTo := min(cowEndFrom, int64(k+1)<<i.clusterBits)
			firstSC := i.scIndex(writeFrom)
			lastSC := i.scIndex(writeTo - 1)
			var n int
			typ, n = i.layout.subclusterRun(entry, bitmap, firstSC)
			if typ != subNormal || firstSC+n <= lastSC {
				skipCow = false
			}
		} else {
			typ = i.layout.subcluster(entry, bitmap, 0)
		}
		if typ == subInvalid {
			l2Offset := int64(i.l1[i.l1Index(guestOffset)] & l1OffsetMask)
			return i.corruption(true, fmt.Sprintf("Invalid cluster entry found (L2 offset: %#x, L2 index: %#x)", l2Offset, l2Index+k))
		}
	}
	if skipCow {
		return nil
	}
	entry, bitmap := i.l2Entry(slice, l2Index)
	sc := i.scIndex(guestOffset)
	typ := i.layout.subcluster(entry, bitmap, sc)
	var cowStartFrom int64
	if !keepOld {
		switch typ {
		case subCompressed:
		case subNormal, subZeroAlloc, subUnallocatedAlloc:
			if i.subPerClus > 1 {
				allocBits := uint32(bitmap & l2BitmapAllAlloc)
				cowStartFrom = int64(min(sc, trailingZeros32(allocBits))) << i.subBits
			}
		default:
			cowStartFrom = int64(sc) << i.subBits
		}
	} else if typ == subNormal {
		cowStartFrom = cowStartTo
	} else {
		cowStartFrom = int64(sc) << i.subBits
	}
	lastIndex := l2Index + nbClusters - 1
	entry, bitmap = i.l2Entry(slice, lastIndex)
	sc = i.scIndex(guestOffset + bytes - 1)
	typ = i.layout.subcluster(entry, bitmap, sc)
	var cowEndTo int64
	roundUp := func(v, a int64) int64 { return (v + a - 1) &^ (a - 1) }
	if !keepOld {
		switch typ {
		case subCompressed:
			cowEndTo = roundUp(cowEndFrom, i.clusterSize)
		case subNormal, subZeroAlloc, subUnallocatedAlloc:
			cowEndTo = roundUp(cowEndFrom, i.clusterSize)
			if i.subPerClus > 1 {
				allocBits := uint32(bitmap & l2BitmapAllAlloc)
				cowEndTo -= int64(min(i.subPerClus-sc-1, leadingZeros32(allocBits))) << i.subBits
			}
		default:
			cowEndTo = roundUp(cowEndFrom, i.subSize)
		}
	} else if typ == subNormal {
		cowEndTo = cowEndFrom
	} else {
		cowEndTo = roundUp(cowEndFrom, i.subSize)
	}
	m := &l2Meta{
		next:        *metas,
		allocOffset: hostCluster,
		offset:      i.clusterStart(guestOffset),
		nbClusters:  nbClusters,
		keepOld:     keepOld,
		cowStart:    cowRegion{offset: cowStartFrom, bytes: cowStartTo - cowStartFrom},
		cowEnd:      cowRegion{offset: cowEndFrom, bytes: cowEndTo - cowEndFrom},
	}
	m.zeroStart = i.regionReadsZero(slice, l2Index, m.offset, m.cowStart)
	m.zeroEnd = i.regionReadsZero(slice, l2Index, m.offset, m.cowEnd)
	*metas = m
	i.inflight = append(i.inflight, m)
	return nil
}

// leadingZeros32 counts the leading zero bits of v; 32 for zero.
func leadingZeros32(v uint32) int {
	n := 0
	for n < 32 && v&(1<<(31-n)) == 0 {
		n++
	}
	return n
}

// regionReadsZero reports whether a COW region (relative to the cluster at
// base, whose entry is at l2Index of slice) is known to read as zeroes: its
// subclusters are zero, or unallocated with no backing data there.
func (i *Image) regionReadsZero(slice []byte, l2Index int, base int64, r cowRegion) bool {
	if r.bytes == 0 {
		return true
	}
	for off := r.offset; off < r.offset+r.bytes; off += i.subSize {
		k := int(off >> i.clusterBits)
		entry, bitmap := i.l2Entry(slice, l2Index+k)
		switch i.layout.subcluster(entry, bitmap, i.scIndex(off)) {
		case subZeroPlain, subZeroAlloc:
		case subUnallocatedPlain, subUnallocatedAlloc:
			if i.backing != nil && base+off < i.backingSize {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// needsNewAlloc reports whether writing to a cluster needs a new host
// cluster (QEMU's cluster_needs_new_alloc).
func (i *Image) needsNewAlloc(entry uint64) bool {
	switch i.layout.classify(entry) {
	case clusterNormal, clusterZeroAlloc:
		return entry&oflagCopied == 0
	}
	return true
}

// countSingleWriteClusters counts the clusters from l2Index on (at most n)
// that one write can handle: all needing allocation (newAlloc), or all
// writable in place and contiguous on the host.
func (i *Image) countSingleWriteClusters(n int, slice []byte, l2Index int, newAlloc bool) int {
	entry, _ := i.l2Entry(slice, l2Index)
	expected := entry & l2OffsetMask
	k := 0
	for ; k < n; k++ {
		entry, _ = i.l2Entry(slice, l2Index+k)
		if i.needsNewAlloc(entry) != newAlloc {
			break
		}
		if !newAlloc {
			if expected != entry&l2OffsetMask {
				break
			}
			expected += uint64(i.clusterSize)
		}
	}
	return k
}

// handleDependencies shortens a request so that it stops before clusters
// another write is allocating; it returns false when the caller must wait
// for that write and start over (QEMU's handle_dependencies).
func (i *Image) handleDependencies(guestOffset int64, curBytes *int64, haveMeta bool) bool {
	bytes := *curBytes
	for _, old := range i.inflight {
		start, end := guestOffset, guestOffset+bytes
		oldStart := i.clusterStart(old.cowStartOffset())
		oldEnd := (old.cowEndOffset() + i.clusterSize - 1) &^ (i.clusterSize - 1)
		if end <= oldStart || start >= oldEnd {
			continue
		}
		if old.keepOld && (end <= old.cowStartOffset() || start >= old.cowEndOffset()) {
			continue
		}
		if start < oldStart {
			bytes = oldStart - start
		} else {
			bytes = 0
		}
		if bytes == 0 && haveMeta {
			*curBytes = 0
			return true
		}
		if bytes == 0 {
			return false
		}
	}
	*curBytes = bytes
	return true
}

// clustersAt returns the L2 slice for guestOffset (allocating the table if
// needed), the entry's index in it, and how many clusters of a request of
// bytes there one step may handle: up to the end of the slice and QEMU's
// request limit.
func (i *Image) clustersAt(guestOffset, bytes int64) (*cacheEntry, int, int64, error) {
	nb := i.sizeToClusters(i.inCluster(guestOffset) + bytes)
	nb = min(nb, int64(i.l2SliceSize-i.sliceIndex(guestOffset)), maxRequestBytes>>i.clusterBits)
	e, l2Index, err := i.getClusterTable(guestOffset)
	return e, l2Index, nb, err
}

// handleCopied takes the clusters at guestOffset that can be written in
// place (QEMU's handle_copied). It returns whether it made progress; with a
// required hostOffset (not -1) only clusters there count.
func (i *Image) handleCopied(guestOffset int64, hostOffset *int64, bytes *int64, metas **l2Meta) (bool, error) {
	e, l2Index, nb, err := i.clustersAt(guestOffset, *bytes)
	if err != nil {
		return false, err
	}
	defer i.l2Cache.put(e)
	entry, _ := i.l2Entry(e.data, l2Index)
	clusterOffset := int64(entry & l2OffsetMask)
	if i.needsNewAlloc(entry) {
		return false, nil
	}
	if clusterOffset&(i.clusterSize-1) != 0 {
		what := "Data"
		if entry&oflagZero != 0 {
			what = "Preallocated zero"
		}
		return false, i.corruption(true, fmt.Sprintf("%s cluster offset %#x unaligned (guest offset: %#x)", what, clusterOffset, guestOffset))
	}
	if *hostOffset != -1 && clusterOffset != *hostOffset {
		*bytes = 0
		return false, nil
	}
	keep := i.countSingleWriteClusters(int(nb), e.data, l2Index, false)
	*bytes = min(*bytes, int64(keep)*i.clusterSize-i.inCluster(guestOffset))
	if err := i.calculateL2Meta(clusterOffset, guestOffset, *bytes, e.data, metas, true); err != nil {
		return false, err
	}
	*hostOffset = clusterOffset + i.inCluster(guestOffset)
	return true, nil
}

// handleAlloc allocates new clusters for guestOffset (QEMU's handle_alloc).
// With a required hostOffset (not -1) they must start there; it returns
// false when nothing could be allocated.
func (i *Image) handleAlloc(guestOffset int64, hostOffset *int64, bytes *int64, metas **l2Meta) (bool, error) {
	e, l2Index, nb, err := i.clustersAt(guestOffset, *bytes)
	if err != nil {
		return false, err
	}
	defer i.l2Cache.put(e)
	nb = int64(i.countSingleWriteClusters(int(nb), e.data, l2Index, true))
	allocOffset := int64(-1)
	if *hostOffset != -1 {
		allocOffset = i.clusterStart(*hostOffset)
	}
	if err := i.doAllocClusterOffset(guestOffset, &allocOffset, &nb); err != nil {
		return false, err
	}
	if nb == 0 {
		*bytes = 0
		return false, nil
	}
	requested := *bytes + i.inCluster(guestOffset)
	avail := nb << i.clusterBits
	nbBytes := min(requested, avail)
	*hostOffset = allocOffset + i.inCluster(guestOffset)
	*bytes = min(*bytes, nbBytes-i.inCluster(guestOffset))
	if err := i.calculateL2Meta(allocOffset, guestOffset, *bytes, e.data, metas, false); err != nil {
		return false, err
	}
	return true, nil
}

// doAllocClusterOffset allocates *nb host clusters, anywhere or (with
// *hostOffset not -1) at *hostOffset, where fewer may be available.
func (i *Image) doAllocClusterOffset(guestOffset int64, hostOffset *int64, nb *int64) error {
	if i.hasDataFile {
		*hostOffset = i.clusterStart(guestOffset)
		return nil
	}
	if *hostOffset == -1 {
		off, err := i.allocClusters(*nb * i.clusterSize)
		if err != nil {
			return err
		}
		*hostOffset = off
		return nil
	}
	n, err := i.allocClustersAt(*hostOffset, *nb)
	if err != nil {
		return err
	}
	*nb = n
	return nil
}

// allocHostOffset finds or allocates host space for a write of n bytes at
// guest offset off (QEMU's qcow2_alloc_host_offset). It returns the host
// offset of the first byte, how many bytes are contiguous there, and the
// allocations to link once the data is written. When it must wait for
// another write it does so (releasing the lock) and starts over.
func (i *Image) allocHostOffset(off, n int64) (host int64, bytes int64, metas *l2Meta, err error) {
again:
	start, remaining := off, n
	clusterOffset := int64(-1)
	host = -1
	var cur int64
	metas = nil
	for {
		if host == -1 && clusterOffset != -1 {
			host = clusterOffset
		}
		start += cur
		remaining -= cur
		if clusterOffset != -1 {
			clusterOffset += cur
		}
		if remaining == 0 {
			break
		}
		cur = remaining
		if !i.handleDependencies(start, &cur, metas != nil) {
			i.allocDone.Wait()
			if i.broken != nil {
				return 0, 0, nil, i.broken
			}
			goto again
		}
		if cur == 0 {
			break
		}
		ok, err := i.handleCopied(start, &clusterOffset, &cur, &metas)
		if err != nil {
			return 0, 0, metas, err
		}
		if ok {
			continue
		}
		if cur == 0 {
			break
		}
		ok, err = i.handleAlloc(start, &clusterOffset, &cur, &metas)
		if err != nil {
			return 0, 0, metas, err
		}
		if ok {
			continue
		}
		break
	}
	return host, n - remaining, metas, nil
}

// linkL2 points the L2 entries of an allocation at its new clusters once
// its data is written, and frees the clusters they replace (QEMU's
// qcow2_alloc_cluster_link_l2, without the COW, which the caller did).
func (i *Image) linkL2(m *l2Meta) error {
	if i.lazyRefcounts {
		_ = i.markDirty()
	}
	if i.needAccurateRefcounts() {
		if err := i.l2Cache.setDependency(i.rcCache); err != nil {
			return err
		}
	}
	e, l2Index, err := i.getClusterTable(m.offset)
	if err != nil {
		return err
	}
	i.l2Cache.markDirty(e)
	var old []uint64
	for k := 0; k < m.nbClusters; k++ {
		off := uint64(m.allocOffset + int64(k)<<i.clusterBits)
		entry, bitmap := i.l2Entry(e.data, l2Index+k)
		if entry != 0 {
			old = append(old, entry)
		}
		i.setL2Entry(e.data, l2Index+k, off|oflagCopied)
		if i.subPerClus > 1 && !m.prealloc {
			from := max(m.cowStart.offset, int64(k)<<i.clusterBits)
			to := min(m.cowEnd.offset+m.cowEnd.bytes, int64(k+1)<<i.clusterBits)
			first, last := i.scIndex(from), i.scIndex(to-1)
			rng := uint64(1)<<(last+1) - uint64(1)<<first
			bitmap |= rng
			bitmap &^= rng << 32
			i.setL2Bitmap(e.data, l2Index+k, bitmap)
		}
	}
	i.l2Cache.put(e)
	if !m.keepOld {
		for _, entry := range old {
			i.freeAnyCluster(entry, discardNever)
		}
	}
	return nil
}

// abortAlloc frees the clusters of an allocation that will not be linked.
func (i *Image) abortAlloc(m *l2Meta) {
	if !i.hasDataFile && !m.keepOld {
		i.freeClusters(m.allocOffset, int64(m.nbClusters)<<i.clusterBits, discardNever)
	}
}

// finishAllocs links (or with link false, aborts) a list of allocations
// and releases the writes waiting for them.
func (i *Image) finishAllocs(metas *l2Meta, link bool) error {
	var err error
	for m := metas; m != nil; m = m.next {
		if link && err == nil {
			err = i.linkL2(m)
		}
		if !link || err != nil {
			i.abortAlloc(m)
		}
		i.removeInflight(m)
	}
	i.allocDone.Broadcast()
	return err
}

// removeInflight takes an allocation off the in-flight list.
func (i *Image) removeInflight(m *l2Meta) {
	for k, x := range i.inflight {
		if x == m {
			i.inflight = append(i.inflight[:k], i.inflight[k+1:]...)
			return
		}
	}
}

// rewriteL2Slice changes the entries of as many of nb clusters at off as
// one L2 slice holds, and returns how many that is. change gives each
// entry's new value and bitmap, and whether the cluster it referenced is
// freed (for reason kind).
func (i *Image) rewriteL2Slice(off, nb int64, kind discardKind, change func(entry, bitmap uint64) (uint64, uint64, bool)) (int64, error) {
	e, l2Index, err := i.getClusterTable(off)
	if err != nil {
		return 0, err
	}
	defer i.l2Cache.put(e)
	nb = min(nb, int64(i.l2SliceSize-l2Index))
	for k := 0; k < int(nb); k++ {
		oldEntry, oldBitmap := i.l2Entry(e.data, l2Index+k)
		newEntry, newBitmap, free := change(oldEntry, oldBitmap)
		if oldEntry == newEntry && oldBitmap == newBitmap {
			continue
		}
		i.l2Cache.markDirty(e)
		i.setL2Entry(e.data, l2Index+k, newEntry)
		if i.subPerClus > 1 {
			i.setL2Bitmap(e.data, l2Index+k, newBitmap)
		}
		if free {
			i.freeAnyCluster(oldEntry, kind)
		}
	}
	return nb, nil
}

// allocatedType reports whether a cluster type has a host cluster.
func allocatedType(t clusterType) bool {
	return t == clusterNormal || t == clusterCompressed || t == clusterZeroAlloc
}

// discardInL2Slice discards as many of nb clusters at off as one L2 slice
// holds and returns how many (QEMU's discard_in_l2_slice). With full, the
// clusters become unallocated (reading from the backing file); otherwise
// they read as zeroes where the format can say so.
func (i *Image) discardInL2Slice(off, nb int64, kind discardKind, full bool) (int64, error) {
	return i.rewriteL2Slice(off, nb, kind, func(entry, bitmap uint64) (uint64, uint64, bool) {
		switch {
		case full:
			return 0, 0, true
		case i.backing != nil || allocatedType(i.layout.classify(entry)):
			if i.subPerClus > 1 {
				return 0, l2BitmapAllZero, true
			}
			if i.hdr.Version >= 3 {
				return oflagZero, bitmap, true
			}
			return 0, bitmap, true
		}
		return entry, bitmap, true
	})
}

// clusterDiscard discards whole clusters in [off, off+bytes); the end may
// be the unaligned end of the image (QEMU's qcow2_cluster_discard).
func (i *Image) clusterDiscard(off, bytes int64, kind discardKind, full bool) error {
	nb := i.sizeToClusters(bytes)
	i.cacheDiscards = true
	var err error
	for nb > 0 {
		var n int64
		n, err = i.discardInL2Slice(off, nb, kind, full)
		if err != nil {
			break
		}
		nb -= n
		off += n * i.clusterSize
	}
	i.cacheDiscards = false
	i.processDiscards(err == nil)
	return err
}

// zeroInL2Slice makes as many of nb clusters at off read as zeroes as one
// L2 slice holds (QEMU's zero_in_l2_slice). With unmap, allocated clusters
// are freed.
func (i *Image) zeroInL2Slice(off, nb int64, unmap bool) (int64, error) {
	return i.rewriteL2Slice(off, nb, discardRequest, func(entry, bitmap uint64) (uint64, uint64, bool) {
		t := i.layout.classify(entry)
		free := t == clusterCompressed || (unmap && allocatedType(t))
		if free {
			entry = 0
		}
		if i.subPerClus > 1 {
			return entry, l2BitmapAllZero, free
		}
		return entry | oflagZero, bitmap, free
	})
}

// zeroL2Subclusters marks n subclusters of one cluster, from the one at off
// on, as reading zeroes (QEMU's zero_l2_subclusters).
func (i *Image) zeroL2Subclusters(off int64, n int) error {
	sc := i.scIndex(off)
	e, l2Index, err := i.getClusterTable(off)
	if err != nil {
		return err
	}
	defer i.l2Cache.put(e)
	entry, bitmap := i.l2Entry(e.data, l2Index)
	switch i.layout.classify(entry) {
	case clusterCompressed:
		return errNotSupported
	case clusterNormal, clusterUnallocated:
	default:
		return i.corruption(true, fmt.Sprintf("Unexpected cluster entry %#x with extended L2 entries", entry))
	}
	rng := uint64(1)<<(sc+n) - uint64(1)<<sc
	newBitmap := (bitmap | rng<<32) &^ rng
	if newBitmap != bitmap {
		i.setL2Bitmap(e.data, l2Index, newBitmap)
		i.l2Cache.markDirty(e)
	}
	return nil
}

// subclusterZeroize makes [off, off+bytes) read as zeroes through the L2
// tables; off must be subcluster aligned, and so must the end unless it is
// the end of the image (QEMU's qcow2_subcluster_zeroize).
func (i *Image) subclusterZeroize(off, bytes int64, unmap bool) error {
	end := off + bytes
	if i.hdr.Version < 3 {
		if i.backing == nil {
			return i.clusterDiscard(off, bytes, discardRequest, false)
		}
		return errNotSupported
	}
	head := min(end, (off+i.clusterSize-1)&^(i.clusterSize-1)) - off
	off += head
	var tail int64
	if end < i.size {
		tail = end - max(off, i.clusterStart(end))
	}
	end -= tail
	i.cacheDiscards = true
	err := func() error {
		if head > 0 {
			if err := i.zeroL2Subclusters(off-head, int((head+i.subSize-1)>>i.subBits)); err != nil {
				return err
			}
		}
		nb := i.sizeToClusters(end - off)
		for nb > 0 {
			n, err := i.zeroInL2Slice(off, nb, unmap)
			if err != nil {
				return err
			}
			nb -= n
			off += n * i.clusterSize
		}
		if tail > 0 {
			return i.zeroL2Subclusters(end, int((tail+i.subSize-1)>>i.subBits))
		}
		return nil
	}()
	i.cacheDiscards = false
	i.processDiscards(err == nil)
	return err
}

// forEachL2 calls fn for every L2 table the active L1 table references,
// with its L1 index and offset; a future check or snapshot walk builds on
// it.
func (i *Image) forEachL2(fn func(l1Index int, l2Offset int64) error) error {
	for k, e := range i.l1 {
		if off := int64(e & l1OffsetMask); off != 0 {
			if err := fn(k, off); err != nil {
				return err
			}
		}
	}
	return nil
}

// forEachL2Entry calls fn for every entry of the L2 table at l2Offset, slice
// by slice through the cache; fn may change the slice and report that it
// did.
func (i *Image) forEachL2Entry(l2Offset int64, fn func(index int, entry, bitmap uint64, slice []byte) (changed bool, err error)) error {
	sliceBytes := int64(i.l2SliceSize * i.l2EntryBytes)
	for s := int64(0); s < i.clusterSize/sliceBytes; s++ {
		e, err := i.l2Cache.get(l2Offset + s*sliceBytes)
		if err != nil {
			return err
		}
		for k := 0; k < i.l2SliceSize; k++ {
			entry, bitmap := i.l2Entry(e.data, k)
			changed, err := fn(int(s)*i.l2SliceSize+k, entry, bitmap, e.data)
			if changed {
				i.l2Cache.markDirty(e)
			}
			if err != nil {
				i.l2Cache.put(e)
				return err
			}
		}
		i.l2Cache.put(e)
	}
	return nil
}
