package qcow2

import (
	"encoding/binary"
	"fmt"
	"syscall"

	"github.com/qimg/qimg/block"
)

// This file holds what repairs build on: the in-memory refcount table a
// check counts references into, the rebuild of the whole refcount structure
// from it (QEMU's rebuild_refcount_structure), and the repair of an image
// left dirty by lazy refcounts, which is a check with every repair enabled.

// Limits of a check's in-memory refcount table.
const (
	// maxCheckClusters is the largest file, in clusters, a check accepts
	// (QEMU refuses more than INT_MAX with EFBIG).
	maxCheckClusters = 1<<31 - 1
	// maxCheckMemory bounds the memory the refcount table may take.
	maxCheckMemory = 1 << 30
	// minRefcountChunk is the smallest piece of the table allocated.
	minRefcountChunk = 64 << 10
	// sliceHeaderBytes is what the table spends on each chunk, allocated
	// or not.
	sliceHeaderBytes = 24
)

// refcountArray is the refcount table a check builds in memory: one
// refcount per host cluster at the image's refcount width, laid out so
// that each cluster-sized piece is exactly the refcount block covering
// those clusters (QEMU's in-memory refcount table). It is allocated in
// chunks on first use, so its memory follows the clusters referenced, not
// the length of a sparse file, and it refuses to grow beyond
// maxCheckMemory.
type refcountArray struct {
	acc refcountAccess
	max uint64
	// chunkShift is log2 of the refcounts in a chunk.
	chunkShift uint
	chunkBytes int
	chunks     [][]byte
	// size is the number of clusters covered (QEMU's nb_clusters).
	size int64
	// used is the memory the chunks take, limit the most they may.
	used, limit int64
}

// errCheckMemory reports a check that would need too much memory.
var errCheckMemory = fmt.Errorf("the refcount check needs more than %d MiB of memory: %w", maxCheckMemory>>20, syscall.ENOMEM)

func newRefcountArray(order uint, clusterSize int64) *refcountArray {
	chunkBytes := max(clusterSize, minRefcountChunk)
	entries := uint64(chunkBytes) * 8 >> order
	return &refcountArray{
		acc:        refcountAccess{order: order},
		max:        refcountAccess{order: order}.max(),
		chunkShift: uint(trailingZeros64(entries)),
		chunkBytes: int(chunkBytes),
		limit:      maxCheckMemory,
	}
}

// get returns the refcount of cluster k.
func (a *refcountArray) get(k int64) uint64 {
	c := k >> a.chunkShift
	if c >= int64(len(a.chunks)) || a.chunks[c] == nil {
		return 0
	}
	return a.acc.get(a.chunks[c], uint64(k&(1<<a.chunkShift-1)))
}

// set stores the refcount of cluster k, which must be below size.
func (a *refcountArray) set(k int64, v uint64) error {
	c := k >> a.chunkShift
	if a.chunks[c] == nil {
		if v == 0 {
			return nil
		}
		if a.used+int64(a.chunkBytes)+int64(len(a.chunks))*sliceHeaderBytes > a.limit {
			return errCheckMemory
		}
		a.chunks[c] = make([]byte, a.chunkBytes)
		a.used += int64(a.chunkBytes)
	}
	a.acc.set(a.chunks[c], uint64(k&(1<<a.chunkShift-1)), v)
	return nil
}

// resize makes the table cover n clusters (it never shrinks).
func (a *refcountArray) resize(n int64) error {
	if n <= a.size {
		a.size = n
		return nil
	}
	chunks := (n + 1<<a.chunkShift - 1) >> a.chunkShift
	if chunks*sliceHeaderBytes+a.used > a.limit {
		return errCheckMemory
	}
	for int64(len(a.chunks)) < chunks {
		a.chunks = append(a.chunks, nil)
	}
	a.size = n
	return nil
}

// nextUsed returns k, or the first cluster of the next allocated chunk
// when k's chunk holds no refcounts (all zero): loops over the table skip
// what was never referenced.
func (a *refcountArray) nextUsed(k int64) int64 {
	for c := k >> a.chunkShift; c < int64(len(a.chunks)); c++ {
		if a.chunks[c] != nil {
			return max(k, c<<a.chunkShift)
		}
	}
	return max(k, a.size)
}

// reset zeroes every refcount.
func (a *refcountArray) reset() {
	for _, c := range a.chunks {
		clear(c)
	}
}

// refcountBlock returns the piece of the table that is refcount block
// index (covering 1<<rbBits clusters of clusterSize bytes), or nil when
// that piece was never used.
func (a *refcountArray) refcountBlock(index int64, rbBits int, clusterSize int64) []byte {
	first := index << rbBits
	c := first >> a.chunkShift
	if c >= int64(len(a.chunks)) || a.chunks[c] == nil {
		return nil
	}
	off := (first & (1<<a.chunkShift - 1)) << a.acc.order >> 3
	return a.chunks[c][off : off+clusterSize]
}

// allocClusters takes n contiguous free clusters of the table, from
// *firstFree on, growing the table past the end of the image if needed;
// *firstFree moves to the first free cluster seen (QEMU's
// alloc_clusters_imrt). It returns the offset of the first cluster.
func (c *checker) allocClusters(n int64, firstFree *int64) (int64, error) {
	a := c.imrt
	cluster := *firstFree
	firstGap := true
	var contiguous int64
	for ; cluster < a.size && contiguous < n; cluster++ {
		if next := a.nextUsed(cluster); next > cluster {
			// A whole unused chunk: every cluster in it is free.
			if firstGap {
				*firstFree, firstGap = cluster, false
			}
			contiguous += next - cluster
			if contiguous >= n {
				cluster = next - (contiguous - n)
				contiguous = n
				break
			}
			cluster = next - 1
			continue
		}
		if a.get(cluster) == 0 {
			contiguous++
			if firstGap {
				*firstFree, firstGap = cluster, false
			}
		} else {
			contiguous = 0
		}
	}
	if contiguous < n {
		if err := a.resize(cluster + n - contiguous); err != nil {
			return 0, err
		}
	}
	cluster -= contiguous
	for k := int64(0); k < n; k++ {
		if err := a.set(cluster+k, 1); err != nil {
			return 0, err
		}
	}
	return cluster << c.i.clusterBits, nil
}

// writeRefcountBlocks writes, for every cluster in [first, end) with a
// refcount, the refcount block covering it, allocating it in the table
// unless reftable already has one; reftable grows as needed (QEMU's
// rebuild_refcounts_write_refblocks). It reports whether reftable grew.
func (c *checker) writeRefcountBlocks(first, end int64, reftable *[]uint64) (bool, error) {
	i, a := c.i, c.imrt
	grown := false
	var firstFree int64
	for cluster := first; cluster < end; cluster++ {
		if next := a.nextUsed(cluster); next > cluster {
			cluster = next - 1
			continue
		}
		if a.get(cluster) == 0 {
			continue
		}
		index := cluster >> i.rbBits
		start := index << i.rbBits
		var off int64
		if index < int64(len(*reftable)) && (*reftable)[index] != 0 {
			off = int64((*reftable)[index])
		} else {
			firstFree = max(firstFree, start)
			var err error
			off, err = c.allocClusters(1, &firstFree)
			if err != nil {
				return false, c.errorReport("ERROR allocating refblock", err)
			}
			if off>>i.clusterBits >= end {
				// The block holding this block's refcount must be
				// written too.
				end = off>>i.clusterBits + 1
			}
			if index >= int64(len(*reftable)) {
				entries := ceilDiv((index+1)*reftableEntrySize, i.clusterSize) * i.clusterSize / reftableEntrySize
				*reftable = append(*reftable, make([]uint64, entries-int64(len(*reftable)))...)
				grown = true
			}
			(*reftable)[index] = uint64(off)
		}
		if err := i.overlapCheck(0, off, i.clusterSize); err != nil {
			return false, c.errorReport("ERROR writing refblock", err)
		}
		if _, err := i.f.WriteAt(a.refcountBlock(index, i.rbBits, i.clusterSize), off); err != nil {
			return false, c.errorReport("ERROR writing refblock", err)
		}
		cluster = start + i.rbSize - 1
	}
	return grown, nil
}

// rebuildRefcounts writes a whole new refcount structure (refcount blocks
// and table) from the in-memory table, in free clusters or past the end
// of the file, and switches the image to it; the old structure is leaked
// (QEMU's rebuild_refcount_structure).
func (c *checker) rebuildRefcounts(res *block.CheckResult) error {
	i := c.i
	_ = i.rcCache.empty()
	var reftable []uint64
	if _, err := c.writeRefcountBlocks(0, c.imrt.size, &reftable); err != nil {
		res.CheckErrors++
		return err
	}
	var tableOffset, tableClusters int64
	for {
		var firstFree int64
		tableClusters = i.sizeToClusters(int64(len(reftable)) * reftableEntrySize)
		off, err := c.allocClusters(tableClusters, &firstFree)
		if err != nil {
			res.CheckErrors++
			return c.errorReport("ERROR allocating reftable", err)
		}
		tableOffset = off
		first := off >> i.clusterBits
		grown, err := c.writeRefcountBlocks(first, first+tableClusters, &reftable)
		if err != nil {
			res.CheckErrors++
			return err
		}
		if !grown {
			break
		}
	}
	raw := make([]byte, len(reftable)*reftableEntrySize)
	for k, e := range reftable {
		binary.BigEndian.PutUint64(raw[8*k:], e)
	}
	if err := i.overlapCheck(0, tableOffset, int64(len(raw))); err != nil {
		return c.errorReport("ERROR writing reftable", err)
	}
	if _, err := i.f.WriteAt(raw, tableOffset); err != nil {
		return c.errorReport("ERROR writing reftable", err)
	}
	var d [12]byte
	binary.BigEndian.PutUint64(d[0:], uint64(tableOffset))
	binary.BigEndian.PutUint32(d[8:], uint32(tableClusters))
	if err := i.writeSync(d[:], 48); err != nil {
		return c.errorReport("ERROR setting reftable", err)
	}
	i.reftable = reftable
	i.reftableOff = tableOffset
	i.hdr.RefcountTableOffset = uint64(tableOffset)
	i.hdr.RefcountTableClusters = uint32(tableClusters)
	i.updateMaxReftableIndex()
	return nil
}

// repairDirty repairs the refcounts of an image left dirty by lazy
// refcounts when it is opened for writing, as QEMU does: a check that
// repairs everything, printing what it finds. The error is an errno.
func (i *Image) repairDirty() error {
	report := func(msg string) {
		if i.notice != nil {
			i.notice(msg + "\n")
		}
	}
	res, err := i.check(fixLeaks|fixErrors, report)
	if err == nil && res.CheckErrors != 0 {
		err = syscall.EIO
	}
	return toErrno(err)
}
