package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/storage"
)

var (
	errReadOnly     = block.ErrReadOnly
	errNotSupported = block.ErrUnsupported
	syscallEINVAL   = syscall.EINVAL
	syscallEIO      = syscall.EIO
)

// openForWriting prepares an image opened read-write: it repairs the
// refcounts of a dirty image (lazy refcounts), clears unknown autoclear
// bits, and marks persistent bitmaps in use (qimg does not track writes in
// them, so QEMU will treat them as inconsistent).
func (i *Image) openForWriting() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	// An image opened for a check may have a snapshot table that was
	// not read: its header must not be rewritten before the check.
	update := i.ext.BitmapsInconsistent && !i.snapshotsUnread
	if i.autoclear&^autoclearMask != 0 && !i.snapshotsUnread {
		i.autoclear &= autoclearMask
		update = true
	}
	if update {
		if err := i.updateHeader(); err != nil {
			return fmt.Errorf("Could not update qcow2 header: %s", storage.Strerror(err))
		}
	}
	if i.incompat&incompatDirty != 0 && !i.forCheck {
		if err := i.repairDirty(); err != nil {
			return fmt.Errorf("Could not repair dirty image: %s", storage.Strerror(err))
		}
	}
	return nil
}

// markBitmapsInUse sets the in-use flag of every persistent bitmap, in
// place, before the first change to the image: qimg does not record
// writes in bitmaps, so they become inconsistent, which QEMU then knows.
// (QEMU sets the flag when it opens an image for writing and clears it
// when it stores the bitmaps on close.)
func (i *Image) markBitmapsInUse() error {
	if i.bitmapsMarked || len(i.bitmaps) == 0 || i.autoclear&autoclearBitmaps == 0 {
		return nil
	}
	i.bitmapsMarked = true
	bm := i.ext.Bitmaps
	dir := make([]byte, bm.DirectorySize)
	if err := storage.ReadFull(i.f, dir, int64(bm.DirectoryOffset)); err != nil {
		return err
	}
	changed := false
	for k := range i.bitmaps {
		e := &i.bitmaps[k]
		if e.Flags&bmeFlagInUse == 0 {
			e.Flags |= bmeFlagInUse
			binary.BigEndian.PutUint32(dir[e.offset+12:], e.Flags)
			changed = true
		}
	}
	if !changed {
		return nil
	}
	return i.writeSync(dir, int64(bm.DirectoryOffset))
}

// writeData writes guest data (or COW data) to the data file.
func (i *Image) writeData(p []byte, host int64) error {
	_, err := i.data.WriteAt(p, host)
	return err
}

// checkWritable returns why the image cannot be written, if it cannot,
// and prepares it for its first change.
func (i *Image) checkWritable() error {
	if !i.write {
		return errReadOnly
	}
	if i.broken != nil {
		return i.broken
	}
	if err := i.markBitmapsInUse(); err != nil {
		return fmt.Errorf("Can't update bitmap directory: %s", storage.Strerror(err))
	}
	return nil
}

// WriteAt writes guest bytes. Clusters are allocated (contiguously for a
// large write) under the metadata lock; the data is written outside it, and
// the L2 entries pointing to new clusters are updated afterwards, so that
// concurrent writers to different clusters proceed in parallel.
func (i *Image) WriteAt(p []byte, off int64) (int, error) {
	i.mu.Lock()
	err := i.checkWritable()
	if err == nil {
		err = block.CheckRange(i.size, off, int64(len(p)))
	}
	i.mu.Unlock()
	if err != nil {
		return 0, err
	}
	if err := i.checkEncryption(); err != nil {
		return 0, err
	}
	done := 0
	for len(p) > 0 {
		n, err := i.writeChunk(p, off)
		if err != nil {
			return done, err
		}
		p = p[n:]
		off += n
		done += int(n)
	}
	return done, nil
}

// writeChunk writes the first contiguous run of p and returns its length.
func (i *Image) writeChunk(p []byte, off int64) (int64, error) {
	i.mu.Lock()
	host, n, metas, err := i.allocHostOffset(off, int64(len(p)))
	if err == nil {
		err = i.dataOverlapCheck(host, n)
	}
	if err != nil {
		_ = i.finishAllocs(metas, false)
		i.mu.Unlock()
		return 0, err
	}
	cows := i.planCow(metas)
	i.mu.Unlock()

	err = i.writeWithCow(p[:n], off, host, metas, cows)

	i.mu.Lock()
	defer i.mu.Unlock()
	if err != nil {
		_ = i.finishAllocs(metas, false)
		return 0, err
	}
	if metas != nil {
		// The data must reach the disk before the L2 entries that
		// point to it.
		i.l2Cache.dependOnFlush()
	}
	if err := i.finishAllocs(metas, true); err != nil {
		return 0, err
	}
	return n, nil
}

// cowPlan says how to fill the COW regions of one allocation.
type cowPlan struct {
	// zeroStart and zeroEnd are set when a region reads as zeroes, so
	// it needs no reading.
	zeroStart, zeroEnd bool
}

// planCow records, under the lock, which COW regions read as zeroes.
func (i *Image) planCow(metas *l2Meta) []cowPlan {
	var plans []cowPlan
	for m := metas; m != nil; m = m.next {
		plans = append(plans, cowPlan{zeroStart: m.zeroStart, zeroEnd: m.zeroEnd})
	}
	return plans
}

// zeroAllocations initialises allocations whose COW regions read as zeroes
// by zeroing their whole range in the data file (FALLOC_FL_ZERO_RANGE),
// which is cheaper than writing zeroes; their COW is then done (QEMU's
// handle_alloc_space). Files that cannot zero ranges get the zeroes
// written by the COW.
func (i *Image) zeroAllocations(metas *l2Meta, plans []cowPlan) error {
	z, ok := i.data.(storage.ZeroRanger)
	if !ok || i.hdr.CryptMethod != cryptNone {
		return nil
	}
	k := 0
	for m := metas; m != nil; m, k = m.next, k+1 {
		if (m.cowStart.bytes == 0 && m.cowEnd.bytes == 0) || !plans[k].zeroStart || !plans[k].zeroEnd {
			continue
		}
		start := m.allocOffset + m.cowStart.offset
		n := m.cowEnd.offset + m.cowEnd.bytes - m.cowStart.offset
		i.mu.Lock()
		err := i.dataOverlapCheck(start, n)
		i.mu.Unlock()
		if err != nil {
			return err
		}
		if err := z.ZeroRange(start, n); err != nil {
			if errors.Is(err, storage.ErrNotSupported) {
				continue
			}
			return err
		}
		m.skipCow = true
	}
	return nil
}

// writeWithCow writes guest data and fills the COW regions of the
// allocations around it: in one write when a single allocation surrounds
// the data, as QEMU merges them.
func (i *Image) writeWithCow(data []byte, off, host int64, metas *l2Meta, plans []cowPlan) error {
	if err := i.zeroAllocations(metas, plans); err != nil {
		return err
	}
	var single *l2Meta
	count := 0
	for m := metas; m != nil; m = m.next {
		if (m.cowStart.bytes > 0 || m.cowEnd.bytes > 0) && !m.skipCow {
			single = m
			count++
		}
	}
	if count == 1 && single.cowStartOffset()+single.cowStart.bytes == off &&
		single.offset+single.cowEnd.offset == off+int64(len(data)) {
		plan := plans[indexOf(metas, single)]
		return i.writeMerged(single, plan, data)
	}
	if err := i.writeData(data, host); err != nil {
		return err
	}
	return i.performCows(metas, plans)
}

// performCows performs the COW of every allocation of a list.
func (i *Image) performCows(metas *l2Meta, plans []cowPlan) error {
	k := 0
	for m := metas; m != nil; m = m.next {
		if err := i.performCow(m, plans[k]); err != nil {
			return err
		}
		k++
	}
	return nil
}

func indexOf(metas *l2Meta, x *l2Meta) int {
	k := 0
	for m := metas; m != x; m = m.next {
		k++
	}
	return k
}

// writeMerged writes [COW start][data][COW end] of one allocation in one
// write.
func (i *Image) writeMerged(m *l2Meta, plan cowPlan, data []byte) error {
	startLen, endLen := m.cowStart.bytes, m.cowEnd.bytes
	buf := make([]byte, startLen+int64(len(data))+endLen)
	if startLen > 0 && !plan.zeroStart {
		if err := i.readGuest(buf[:startLen], m.offset+m.cowStart.offset); err != nil {
			return err
		}
	}
	copy(buf[startLen:], data)
	if endLen > 0 && !plan.zeroEnd {
		if err := i.readGuest(buf[startLen+int64(len(data)):], m.offset+m.cowEnd.offset); err != nil {
			return err
		}
	}
	return i.writeData(buf, m.allocOffset+m.cowStart.offset)
}

// performCow copies the old content of an allocation's COW regions into
// its new clusters.
func (i *Image) performCow(m *l2Meta, plan cowPlan) error {
	if m.skipCow {
		return nil
	}
	for _, r := range []struct {
		reg  cowRegion
		zero bool
	}{{m.cowStart, plan.zeroStart}, {m.cowEnd, plan.zeroEnd}} {
		if r.reg.bytes == 0 {
			continue
		}
		buf := make([]byte, r.reg.bytes)
		if !r.zero {
			if err := i.readGuest(buf, m.offset+r.reg.offset); err != nil {
				return err
			}
		}
		if err := i.writeData(buf, m.allocOffset+r.reg.offset); err != nil {
			return err
		}
	}
	return nil
}

// WriteZeroes makes [off, off+n) read as zeroes. Whole subclusters become
// zero clusters (freed with MayUnmap); a partial one at an edge does too
// when the rest of it already reads as zeroes, and otherwise gets zero
// bytes written, unless NoFallback forbids it (as QEMU's block layer and
// qcow2_co_pwrite_zeroes share the work).
func (i *Image) WriteZeroes(off, n int64, flags block.ZeroFlags) error {
	i.mu.Lock()
	err := i.checkWritable()
	if err == nil {
		err = block.CheckRange(i.size, off, n)
	}
	size := i.size
	i.mu.Unlock()
	if err != nil || n == 0 {
		return err
	}
	end := off + n
	start := min((off+i.subSize-1)&^(i.subSize-1), end)
	alignedEnd := max(end&^(i.subSize-1), start)
	if end == size {
		alignedEnd = end
	}
	if start > off {
		if err := i.zeroPartial(off, start-off, size, flags); err != nil {
			return err
		}
	}
	if alignedEnd > start {
		i.mu.Lock()
		err = i.zeroize(start, alignedEnd-start, flags&block.MayUnmap != 0)
		i.mu.Unlock()
		if errors.Is(err, errNotSupported) {
			err = i.zeroFallback(start, alignedEnd-start, flags)
		}
		if err != nil {
			return err
		}
	}
	if alignedEnd < end {
		return i.zeroPartial(alignedEnd, end-alignedEnd, size, flags)
	}
	return nil
}

// zeroPartial zeroes part of one subcluster: the whole subcluster becomes
// a zero one when the rest of it reads as zeroes and it holds no data;
// otherwise zero bytes are written.
func (i *Image) zeroPartial(off, n, size int64, flags block.ZeroFlags) error {
	scStart := off &^ (i.subSize - 1)
	scEnd := min(scStart+i.subSize, size)
	if i.readsZero(scStart, off-scStart) && i.readsZero(off+n, scEnd-off-n) {
		i.mu.Lock()
		m, err := i.getHostOffset(scStart, scEnd-scStart)
		if err == nil && m.bytes >= scEnd-scStart && m.typ != subNormal && m.typ != subCompressed {
			err = i.zeroize(scStart, scEnd-scStart, flags&block.MayUnmap != 0)
			i.mu.Unlock()
			if err == nil || !errors.Is(err, errNotSupported) {
				return err
			}
		} else {
			i.mu.Unlock()
			if err != nil {
				return err
			}
		}
	}
	return i.zeroFallback(off, n, flags)
}

// readsZero reports whether [off, off+n) reads as zeroes as far as the
// metadata of the image and its backing chain tell.
func (i *Image) readsZero(off, n int64) bool {
	for n > 0 {
		i.mu.Lock()
		m, err := i.getHostOffset(off, n)
		backing := i.backing
		i.mu.Unlock()
		if err != nil {
			return false
		}
		switch m.typ {
		case subZeroPlain, subZeroAlloc:
		case subUnallocatedPlain, subUnallocatedAlloc:
			if backing != nil && !backingReadsZero(backing, off, m.bytes) {
				return false
			}
		default:
			return false
		}
		off += m.bytes
		n -= m.bytes
	}
	return true
}

// backingReadsZero reports whether a backing image reads as zeroes over a
// range (past its end it does).
func backingReadsZero(b block.Image, off, n int64) bool {
	size := b.Size()
	for n > 0 && off < size {
		e, err := b.BlockStatus(off, min(n, size-off))
		if err != nil || !e.Has(block.Zero) || e.Length <= 0 {
			return false
		}
		off += e.Length
		n -= e.Length
	}
	return true
}

// zeroize makes an aligned range read as zeroes through the metadata,
// zeroing a raw data file first.
func (i *Image) zeroize(off, n int64, unmap bool) error {
	if i.autoclear&autoclearDataRaw != 0 {
		if err := storage.WriteZeroes(i.data, off, n, unmap); err != nil {
			return err
		}
	}
	if err := i.waitForOverlappingAllocs(off, n); err != nil {
		return err
	}
	return i.subclusterZeroize(off, n, unmap)
}

// waitForOverlappingAllocs waits until no write in flight allocates
// clusters of [off, off+n).
func (i *Image) waitForOverlappingAllocs(off, n int64) error {
	for {
		busy := false
		for _, m := range i.inflight {
			if off < m.offset+int64(m.nbClusters)<<i.clusterBits && m.offset < off+n {
				busy = true
				break
			}
		}
		if !busy {
			return nil
		}
		i.allocDone.Wait()
		if i.broken != nil {
			return i.broken
		}
	}
}

// zeroFallback writes zero bytes.
func (i *Image) zeroFallback(off, n int64, flags block.ZeroFlags) error {
	if flags&block.NoFallback != 0 {
		return errNotSupported
	}
	const chunk = 1 << 20
	buf := make([]byte, min(n, chunk))
	for n > 0 {
		c := min(n, chunk)
		if _, err := i.WriteAt(buf[:c], off); err != nil {
			return err
		}
		off += c
		n -= c
	}
	return nil
}

// Discard frees the whole clusters in [off, off+n) (and the last partial
// cluster of the image); they read as zeroes afterwards (from the backing
// file in version 2 images without zero clusters, where discarding with a
// backing file is refused and ignored).
func (i *Image) Discard(off, n int64) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if err := i.checkWritable(); err != nil {
		return err
	}
	if err := block.CheckRange(i.size, off, n); err != nil {
		return err
	}
	if i.hdr.Version < 3 && i.backing != nil {
		return nil
	}
	start := (off + i.clusterSize - 1) &^ (i.clusterSize - 1)
	end := (off + n) &^ (i.clusterSize - 1)
	if off+n == i.size {
		end = i.size
	}
	if start >= end {
		return nil
	}
	if err := i.waitForOverlappingAllocs(start, end-start); err != nil {
		return err
	}
	return i.clusterDiscard(start, end-start, discardRequest, false)
}

// Flush writes the metadata caches back and makes everything durable.
func (i *Image) Flush() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if !i.write {
		return nil
	}
	if i.broken != nil {
		return i.broken
	}
	return i.flushLocked()
}

func (i *Image) flushLocked() error {
	if err := i.writeCaches(); err != nil {
		return err
	}
	return i.syncFile()
}

// Close writes everything back, clears the dirty bit of a lazy-refcounts
// image and closes the external data file. The image file itself belongs
// to the caller.
func (i *Image) Close() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	var err error
	if i.write && i.broken == nil {
		err = i.l2Cache.flush()
		if e := i.rcCache.flush(); err == nil {
			err = e
		}
		if err == nil {
			err = i.markClean()
		}
		if e := i.syncFile(); err == nil {
			err = e
		}
	}
	if i.dataFileOwned {
		if e := i.data.Close(); err == nil {
			err = e
		}
		i.dataFileOwned = false
	}
	return err
}

// WriteCompressed writes one whole cluster compressed (the last cluster of
// an image whose size is not a multiple of the cluster size may be short);
// an empty write ends a run of compressed writes by aligning the end of the
// file to a sector, as qemu-img convert -c asks QEMU to.
// When compression does not make it smaller than a cluster, the cluster is
// written uncompressed, as QEMU does. As in QEMU, the cluster must not be
// allocated yet, and images with an external data file cannot hold
// compressed clusters.
func (i *Image) WriteCompressed(p []byte, off int64) error {
	i.mu.Lock()
	err := i.checkWritable()
	if err == nil {
		err = block.CheckRange(i.size, off, int64(len(p)))
	}
	size := i.size
	i.mu.Unlock()
	if err != nil {
		return err
	}
	if err := i.checkEncryption(); err != nil {
		return err
	}
	if i.hasDataFile {
		return errNotSupported
	}
	if len(p) == 0 {
		// The end of a run of compressed writes: align the end of the
		// file to a sector, as QEMU does.
		size, err := i.f.Size()
		if err != nil || size%sectorSize == 0 {
			return err
		}
		return i.f.Truncate((size + sectorSize - 1) &^ (sectorSize - 1))
	}
	if i.inCluster(off) != 0 || int64(len(p)) > i.clusterSize ||
		(int64(len(p)) < i.clusterSize && off+int64(len(p)) != size) {
		return fmt.Errorf("%s: compressed write of %d bytes at %d is not one cluster: %w", i.name, len(p), off, syscallEINVAL)
	}
	src := p
	if int64(len(p)) < i.clusterSize {
		bp := i.getClusterBuf()
		defer i.putClusterBuf(bp)
		src = (*bp)[:i.clusterSize]
		copy(src, p)
		clear(src[len(p):])
	}
	outp := i.getClusterBuf()
	defer i.putClusterBuf(outp)
	out, err := i.codec().compress((*outp)[:0], src)
	if err != nil {
		return err
	}
	if out == nil {
		_, err := i.WriteAt(p, off)
		return err
	}

	i.mu.Lock()
	host, err := i.allocCompressed(off, len(out))
	i.mu.Unlock()
	if err != nil {
		return err
	}
	if err := i.writeData(out, host); err != nil {
		i.mu.Lock()
		i.freeClusters(host, int64(len(out)), discardNever)
		i.mu.Unlock()
		return err
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.linkCompressed(off, host, len(out))
}

// allocCompressed allocates bytes for a compressed cluster at guest offset
// off, which must not be allocated (QEMU's
// qcow2_alloc_compressed_cluster_offset, without the L2 update, which
// waits for the data).
func (i *Image) allocCompressed(off int64, n int) (int64, error) {
	if err := i.waitForOverlappingAllocs(off, i.clusterSize); err != nil {
		return 0, err
	}
	e, l2Index, err := i.getClusterTable(off)
	if err != nil {
		return 0, err
	}
	entry, _ := i.l2Entry(e.data, l2Index)
	i.l2Cache.put(e)
	if entry&l2OffsetMask != 0 {
		return 0, fmt.Errorf("%s: compressed write to an allocated cluster at %d: %w", i.name, off, syscallEIO)
	}
	host, err := i.allocBytes(n)
	if err != nil {
		return 0, err
	}
	if err := i.dataOverlapCheck(host, int64(n)); err != nil {
		return 0, err
	}
	return host, nil
}

// linkCompressed points the L2 entry of guest offset off at compressed
// data already written.
func (i *Image) linkCompressed(off, host int64, n int) error {
	e, l2Index, err := i.getClusterTable(off)
	if err != nil {
		return err
	}
	defer i.l2Cache.put(e)
	old, _ := i.l2Entry(e.data, l2Index)
	i.l2Cache.dependOnFlush()
	if err := i.l2Cache.setDependency(i.rcCache); err != nil {
		return err
	}
	i.l2Cache.markDirty(e)
	i.setL2Entry(e.data, l2Index, i.compressed.encode(uint64(host), n))
	if i.subPerClus > 1 {
		i.setL2Bitmap(e.data, l2Index, 0)
	}
	if old != 0 {
		i.freeAnyCluster(old, discardNever)
	}
	return nil
}
