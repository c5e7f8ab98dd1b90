package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/storage"
)

// maxLength is the largest image size QEMU's block layer accepts
// (BDRV_MAX_LENGTH).
const maxLength = 1<<63 - 1<<30

// Resize changes the virtual size, as QEMU's qcow2_co_truncate does for
// growing: the L1 table grows to the exact size, and with preallocation
// the new clusters are allocated (metadata), reserved (falloc) or written
// (full). Shrinking is not supported yet.
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
	if size > maxLength {
		return fmt.Errorf("offset(%d) exceeds maximum(%d)", size, int64(maxLength))
	}
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
	oldLength := i.size
	newL1 := i.sizeToL1(size)
	if size < oldLength {
		if mode != block.PreallocOff {
			return errors.New("Preallocation can't be used for shrinking an image")
		}
		return fmt.Errorf("qcow2: shrinking images is not supported yet: %w", block.ErrUnsupported)
	}
	if err := i.growL1Table(newL1, true); err != nil {
		return fmt.Errorf("Failed to grow the L1 table: %w", err)
	}
	if i.autoclear&autoclearDataRaw != 0 && mode == block.PreallocOff {
		mode = block.PreallocMetadata
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
		if err := i.preallocateData(oldLength, size, mode); err != nil {
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
func (i *Image) preallocateData(oldLength, size int64, mode string) error {
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
			prealloc:    true,
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
