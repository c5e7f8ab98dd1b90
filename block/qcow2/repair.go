package qcow2

import (
	"encoding/binary"
	"fmt"

	"github.com/qimg/qimg/storage"
)

// maxRepairClusters bounds the in-memory refcount array a repair builds.
const maxRepairClusters = 1 << 27

// refcountCounter accumulates the references to each host cluster found
// by walking every structure of the image.
type refcountCounter struct {
	img    *Image
	counts []uint32
	// errs counts references that could not be counted (beyond the
	// limit or unaligned).
	errs int
}

// add counts one reference to every cluster of [offset, offset+size).
func (c *refcountCounter) add(offset, size int64) {
	if size <= 0 {
		return
	}
	i := c.img
	first := offset >> i.clusterBits
	last := (offset + size - 1) >> i.clusterBits
	if offset < 0 || last >= maxRepairClusters {
		c.errs++
		return
	}
	if int(last) >= len(c.counts) {
		n := max(int(last)+1, 2*len(c.counts))
		n = min(n, maxRepairClusters)
		c.counts = append(c.counts, make([]uint32, n-len(c.counts))...)
	}
	for k := first; k <= last; k++ {
		if c.counts[k] < ^uint32(0) {
			c.counts[k]++
		}
	}
}

// countL2 counts the references an L2 table holds.
func (c *refcountCounter) countL2(table []byte) {
	i := c.img
	for k := 0; k < i.l2Size; k++ {
		entry, _ := i.l2Entry(table, k)
		switch i.layout.classify(entry) {
		case clusterCompressed:
			off, size := i.compressed.parse(entry)
			c.add(int64(off), int64(size))
		case clusterNormal, clusterZeroAlloc:
			if i.hasDataFile {
				continue
			}
			off := int64(entry & l2OffsetMask)
			if off&(i.clusterSize-1) != 0 {
				c.errs++
				continue
			}
			c.add(off, i.clusterSize)
		}
	}
}

// countL1 counts an L1 table and everything it references; active tables
// are read through the cache.
func (c *refcountCounter) countL1(l1 []uint64) error {
	i := c.img
	table := make([]byte, i.clusterSize)
	for _, e := range l1 {
		off := int64(e & l1OffsetMask)
		if off == 0 {
			continue
		}
		if off&(i.clusterSize-1) != 0 {
			c.errs++
			continue
		}
		c.add(off, i.clusterSize)
		if err := i.readL2Table(off, table); err != nil {
			return err
		}
		c.countL2(table)
	}
	return nil
}

// readL2Table reads a whole L2 table, through the cache (so that entries
// not yet written back count).
func (i *Image) readL2Table(off int64, table []byte) error {
	sliceBytes := int64(i.l2SliceSize * i.l2EntryBytes)
	for s := int64(0); s < i.clusterSize/sliceBytes; s++ {
		e, err := i.l2Cache.get(off + s*sliceBytes)
		if err != nil {
			return err
		}
		copy(table[s*sliceBytes:], e.data)
		i.l2Cache.put(e)
	}
	return nil
}

// countAll walks every structure of the image and counts the references
// to each host cluster, as QEMU's check does.
func (i *Image) countAll() (*refcountCounter, error) {
	c := &refcountCounter{img: i}
	c.add(0, i.clusterSize)
	c.add(i.l1Offset, int64(len(i.l1))*l1EntrySize)
	if err := c.countL1(i.l1); err != nil {
		return nil, err
	}
	c.add(i.snapshotsOff, i.snapshotsSize)
	for _, sn := range i.snapshots {
		if uint64(sn.L1Size)*l1EntrySize > maxL1Bytes || sn.L1TableOffset&uint64(i.clusterSize-1) != 0 {
			c.errs++
			continue
		}
		raw := make([]byte, int(sn.L1Size)*l1EntrySize)
		if err := storage.ReadFull(i.f, raw, int64(sn.L1TableOffset)); err != nil {
			return nil, err
		}
		c.add(int64(sn.L1TableOffset), int64(len(raw)))
		l1 := make([]uint64, sn.L1Size)
		for k := range l1 {
			l1[k] = binary.BigEndian.Uint64(raw[8*k:])
		}
		if err := c.countL1(l1); err != nil {
			return nil, err
		}
	}
	c.add(i.reftableOff, int64(len(i.reftable))*reftableEntrySize)
	for _, e := range i.reftable {
		if off := int64(e & reftOffsetMask); off != 0 {
			c.add(off, i.clusterSize)
		}
	}
	if err := i.countBitmaps(c); err != nil {
		return nil, err
	}
	if x := i.ext.Crypto; x != nil {
		c.add(int64(x.Offset), int64(x.Length))
	}
	return c, nil
}

// countBitmaps counts the bitmap directory, bitmap tables and bitmap data.
func (i *Image) countBitmaps(c *refcountCounter) error {
	if len(i.bitmaps) == 0 || i.autoclear&autoclearBitmaps == 0 {
		return nil
	}
	bm := i.ext.Bitmaps
	c.add(int64(bm.DirectoryOffset), int64(bm.DirectorySize))
	for _, b := range i.bitmaps {
		raw := make([]byte, int(b.TableSize)*8)
		if err := storage.ReadFull(i.f, raw, int64(b.TableOffset)); err != nil {
			return err
		}
		c.add(int64(b.TableOffset), int64(len(raw)))
		for k := 0; k < len(raw); k += 8 {
			if off := int64(binary.BigEndian.Uint64(raw[k:]) & l2OffsetMask); off != 0 {
				c.add(off, i.clusterSize)
			}
		}
	}
	return nil
}

// repairRefcounts recounts the references of a dirty (lazy refcounts) image
// and corrects the stored refcounts and COPIED flags, then clears the dirty
// bit, as QEMU does when it opens a dirty image for writing.
func (i *Image) repairRefcounts() error {
	c, err := i.countAll()
	if err != nil {
		return err
	}
	if c.errs > 0 {
		return fmt.Errorf("%d references could not be counted: %w", c.errs, errCorrupt)
	}
	fileSize, err := i.f.Size()
	if err != nil {
		return err
	}
	n := max(int64(len(c.counts)), i.sizeToClusters(fileSize))
	for k := int64(0); k < n; k++ {
		var want uint64
		if k < int64(len(c.counts)) {
			want = uint64(c.counts[k])
		}
		have, err := i.getRefcount(k)
		if err != nil {
			return err
		}
		if have == want {
			continue
		}
		if want > i.refcountMax {
			return fmt.Errorf("cluster %d has %d references, more than the refcount width holds: %w", k, want, errCorrupt)
		}
		off, _, err := i.refcountBlockOffset(k)
		if err != nil {
			return err
		}
		if off == 0 {
			return fmt.Errorf("cluster %d is referenced but has no refcount block: %w", k, errCorrupt)
		}
		e, err := i.rcCache.get(off)
		if err != nil {
			return err
		}
		i.refcount.set(e.data, uint64(k&(i.rbSize-1)), want)
		i.rcCache.markDirty(e)
		i.rcCache.put(e)
		if want == 0 && k < i.freeClusterIndex {
			i.freeClusterIndex = k
		}
	}
	if err := i.fixCopiedFlags(c); err != nil {
		return err
	}
	i.incompat &^= incompatDirty
	if err := i.flushCaches(); err != nil {
		return err
	}
	return i.updateHeader()
}

// fixCopiedFlags sets the COPIED flag of active L1 and L2 entries exactly
// where the referenced cluster's refcount is one.
func (i *Image) fixCopiedFlags(c *refcountCounter) error {
	count := func(off int64) uint32 {
		k := off >> i.clusterBits
		if k < int64(len(c.counts)) {
			return c.counts[k]
		}
		return 0
	}
	for k, e := range i.l1 {
		off := int64(e & l1OffsetMask)
		if off == 0 {
			continue
		}
		want := e &^ oflagCopied
		if count(off) == 1 {
			want |= oflagCopied
		}
		if want != e {
			i.l1[k] = want
			if err := i.writeL1Entry(int64(k)); err != nil {
				return err
			}
		}
		err := i.forEachL2Entry(off, func(idx int, entry, _ uint64, slice []byte) (bool, error) {
			t := i.layout.classify(entry)
			if t != clusterNormal && t != clusterZeroAlloc {
				return false, nil
			}
			want := entry &^ oflagCopied
			if i.hasDataFile || count(int64(entry&l2OffsetMask)) == 1 {
				want |= oflagCopied
			}
			if want == entry {
				return false, nil
			}
			i.setL2Entry(slice, idx%i.l2SliceSize, want)
			return true, nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}
