package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/storage"
)

// This file changes an existing image's creation options in place
// (`qemu-img amend`), as QEMU's qcow2_amend_options does: upgrading to
// version 3 (rewriting old snapshot tables) or downgrading to version 2
// (turning zero clusters into data or unallocated clusters), changing the
// refcount width (a whole new set of refcount structures, switched to in
// one header update), lazy refcounts on and off, dropping data-file-raw,
// renaming the data file, and the virtual size.

// amendSpecs are the options amend accepts, in the order QEMU's
// qcow2_amend_opts lists them (which is the order they are applied and
// checked in): the LUKS key slot options, then the options creation shares
// (QCOW_COMMON_OPTIONS).
var amendSpecs = append([]block.OptionSpec{
	{Name: "encrypt.state", Type: block.OptString, Help: "Select new state of affected keyslots (active/inactive)"},
	{Name: "encrypt.keyslot", Type: block.OptNumber, Help: "Select a single keyslot to modify explicitly"},
	{Name: "encrypt.old-secret", Type: block.OptString, Help: "Select all keyslots that match this password"},
	{Name: "encrypt.new-secret", Type: block.OptString, Help: "New secret to set in the matching keyslots. Empty string to erase"},
	{Name: "encrypt.iter-time", Type: block.OptNumber, Help: "Time to spend in PBKDF in milliseconds"},
}, commonSpecs()...)

// commonSpecs are the create options from size on, which amend takes too.
func commonSpecs() []block.OptionSpec {
	specs := (&Driver{}).CreateSpecs()
	for k, s := range specs {
		if s.Name == "size" {
			return specs[k:]
		}
	}
	return nil
}

// AmendSpecs lists the options `qemu-img amend` accepts for qcow2.
func (*Driver) AmendSpecs() []block.OptionSpec { return append([]block.OptionSpec(nil), amendSpecs...) }

// AmendSpecs lists the options Amend accepts.
func (*Image) AmendSpecs() []block.OptionSpec { return append([]block.OptionSpec(nil), amendSpecs...) }

// amendParams are the amend options that were set.
type amendParams struct {
	version      uint32
	size         uint64
	backingFile  *string
	backingFmt   *string
	dataFile     *string
	dataFileRaw  bool
	lazy         bool
	refcountBits uint64
	encryption   bool
}

// parseAmend reads the options that were set, in QEMU's order, with its
// checks and messages.
func (i *Image) parseAmend(opts *block.Options) (*amendParams, error) {
	p := &amendParams{
		version:      i.hdr.Version,
		dataFileRaw:  i.autoclear&autoclearDataRaw != 0,
		lazy:         i.lazyRefcounts,
		refcountBits: 1 << i.hdr.RefcountOrder,
	}
	for _, spec := range amendSpecs {
		// Only options that were set change anything (defaults do
		// not count).
		if !opts.Has(spec.Name) {
			continue
		}
		v := opts.String(spec.Name)
		switch spec.Name {
		case "compat":
			switch v {
			case "0.10", "v2":
				p.version = 2
			case "1.1", "v3":
				p.version = 3
			default:
				return nil, &reportedError{msg: "Unknown compatibility level " + v, errno: syscall.EINVAL}
			}
		case "size":
			p.size = opts.Uint("size", 0)
		case "backing_file":
			p.backingFile = &v
		case "backing_fmt":
			p.backingFmt = &v
		case "lazy_refcounts":
			p.lazy = opts.Bool(spec.Name, p.lazy)
		case "refcount_bits":
			p.refcountBits = opts.Uint(spec.Name, p.refcountBits)
			if b := p.refcountBits; b == 0 || b > 64 || b&(b-1) != 0 {
				return nil, &reportedError{msg: "Refcount width must be a power of two and may not exceed 64 bits", errno: syscall.EINVAL}
			}
		case "data_file":
			if !i.hasDataFile {
				return nil, &reportedError{msg: "data-file can only be set for images that use an external data file", errno: syscall.EINVAL}
			}
			p.dataFile = &v
		case "data_file_raw":
			p.dataFileRaw = opts.Bool(spec.Name, p.dataFileRaw)
			if p.dataFileRaw && i.autoclear&autoclearDataRaw == 0 {
				return nil, &reportedError{msg: "data-file-raw cannot be set on existing images", errno: syscall.EINVAL}
			}
		default: // encrypt.*
			switch {
			case i.hdr.CryptMethod == cryptNone:
				return nil, &reportedError{msg: "Can't amend encryption options - encryption not present", errno: syscall.EINVAL}
			case i.hdr.CryptMethod != cryptLUKS:
				return nil, &reportedError{msg: "Only LUKS encryption options can be amended", errno: syscall.ENOTSUP}
			}
			p.encryption = true
		}
	}
	return p, nil
}

// amendProgress spreads the progress of amend's steps over one figure, as
// QEMU's qcow2_amend_helper_cb: each step reports its own work done and
// total, and the steps not yet begun are assumed as big as the average of
// those begun.
type amendProgress struct {
	report    func(done, total int64)
	total     int // steps
	current   int // the step now reporting
	last      int // the step that reported last, 0 for none
	completed int // steps finished
	offset    int64
	lastSize  int64
}

// Amend steps.
const (
	amendUpgrading = 1 + iota
	amendEncryption
	amendRefcountOrder
	amendDowngrading
)

func (a *amendProgress) step(done, size int64) {
	if a.report == nil {
		return
	}
	if a.current != a.last {
		if a.last != 0 {
			a.offset += a.lastSize
			a.completed++
		}
		a.last = a.current
	}
	a.lastSize = size
	current := a.offset + size
	projected := current * int64(a.total-a.completed-1) / int64(a.completed+1)
	a.report(a.offset+done, current+projected)
}

// Amend changes the options that were set (see AmendSpecs), in QEMU's
// order: upgrade, refcount width, data-file-raw and data file name (one
// header update), backing file (which must not change: that is rebase's
// job), lazy refcounts, size, downgrade. progress receives the work done
// and the total. Errors are worded as QEMU's; an error with a hint carries
// it (ErrorHint).
func (i *Image) Amend(opts *block.Options, force bool, progress func(done, total int64)) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if err := i.checkSnapshotWritable(); err != nil {
		return err
	}
	p, err := i.parseAmend(opts)
	if err != nil {
		return err
	}
	oldVersion := i.hdr.Version
	newBits := p.refcountBits
	pr := &amendProgress{report: progress}
	if p.version != oldVersion {
		pr.total++
	}
	if newBits != 1<<i.hdr.RefcountOrder {
		pr.total++
	}
	if p.encryption {
		pr.total++
	}
	if p.version > oldVersion {
		pr.current = amendUpgrading
		if err := i.upgrade(pr); err != nil {
			return err
		}
	}
	if p.encryption {
		return fmt.Errorf("amending the LUKS encryption options of qcow2 images is not supported yet: %w", block.ErrUnsupported)
	}
	if newBits != 1<<i.hdr.RefcountOrder {
		if p.version < 3 && newBits != 16 {
			return &reportedError{msg: "Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)", errno: syscall.EINVAL}
		}
		pr.current = amendRefcountOrder
		order := uint32(trailingZeros64(newBits))
		if err := i.changeRefcountOrder(order, pr); err != nil {
			return err
		}
	}
	// data-file-raw forbids backing files, so it goes first.
	if p.dataFileRaw {
		i.autoclear |= autoclearDataRaw
	} else {
		i.autoclear &^= autoclearDataRaw
	}
	if p.dataFile != nil {
		i.ext.DataFile, i.ext.HasDataFile = *p.dataFile, *p.dataFile != ""
	}
	if err := i.updateHeader(); err != nil {
		return errnof(err, "Failed to update the image header")
	}
	if p.backingFile != nil || p.backingFmt != nil {
		same := func(p *string, has bool, cur string) bool {
			return (p == nil && !has) || (p != nil && has && *p == cur)
		}
		if !same(p.backingFile, i.hasBackingFile, i.backingFile) ||
			!same(p.backingFmt, i.ext.HasBackingFormat, i.ext.BackingFormat) {
			return &hintError{msg: "Cannot amend the backing file", hint: "You can use 'qemu-img rebase' instead.\n"}
		}
	}
	if p.lazy != i.lazyRefcounts {
		if err := i.setLazyRefcounts(p.lazy, p.version); err != nil {
			return err
		}
	}
	if p.size != 0 {
		if p.size > 1<<63-1 {
			return fmt.Errorf("Image size cannot be negative")
		}
		if err := i.resize(int64(p.size), block.PreallocOff); err != nil {
			return err
		}
	}
	if p.version < oldVersion {
		pr.current = amendDowngrading
		if err := i.downgrade(pr); err != nil {
			return err
		}
	}
	return nil
}

// setLazyRefcounts turns lazy refcounts on or off; turning them off first
// writes every postponed refcount update and clears the dirty bit.
func (i *Image) setLazyRefcounts(on bool, version uint32) error {
	if on {
		if version < 3 {
			return &reportedError{msg: "Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)", errno: syscall.EINVAL}
		}
		i.compat |= compatLazyRefcounts
		if err := i.updateHeader(); err != nil {
			i.compat &^= compatLazyRefcounts
			return errnof(err, "Failed to update the image header")
		}
		i.lazyRefcounts = true
		return nil
	}
	if err := i.markClean(); err != nil {
		return errnof(err, "Failed to make the image clean")
	}
	i.compat &^= compatLazyRefcounts
	if err := i.updateHeader(); err != nil {
		i.compat |= compatLazyRefcounts
		return errnof(err, "Failed to update the image header")
	}
	i.lazyRefcounts = false
	return nil
}

// upgrade makes a version 2 image a version 3 one; snapshot table entries
// without the disk size (which version 3 requires) are rewritten (QEMU's
// qcow2_upgrade).
func (i *Image) upgrade(pr *amendProgress) error {
	pr.step(0, 2)
	for _, sn := range i.snapshots {
		if sn.ExtraDataSize < 16 {
			if err := i.writeSnapshots(); err != nil {
				return errnof(err, "Failed to update the snapshot table")
			}
			break
		}
	}
	pr.step(1, 2)
	i.hdr.Version = 3
	if err := i.updateHeader(); err != nil {
		i.hdr.Version = 2
		return errnof(err, "Failed to update the image header")
	}
	pr.step(2, 2)
	return nil
}

// downgrade makes a version 3 image a version 2 one, refusing what version
// 2 cannot hold (QEMU's qcow2_downgrade): other refcount widths, data
// files, snapshots of another size, incompatible features; zero clusters
// become unallocated (or, over a backing file, zeroed data clusters).
func (i *Image) downgrade(pr *amendProgress) error {
	if i.hdr.RefcountOrder != 4 {
		return &reportedError{msg: "compat=0.10 requires refcount_bits=16", errno: syscall.ENOTSUP}
	}
	if i.hasDataFile {
		return &reportedError{msg: "Cannot downgrade an image with a data file", errno: syscall.ENOTSUP}
	}
	for _, sn := range i.snapshots {
		if sn.VMStateSize > 0xffffffff || sn.DiskSize != uint64(i.size) {
			return &reportedError{msg: "Internal snapshots prevent downgrade of image", errno: syscall.ENOTSUP}
		}
	}
	if i.incompat&incompatDirty != 0 {
		if err := i.markClean(); err != nil {
			return errnof(err, "Failed to make the image clean")
		}
	}
	if f := i.incompat &^ incompatCompression; f != 0 {
		return &reportedError{msg: fmt.Sprintf("Cannot downgrade an image with incompatible features 0x%x set", f), errno: syscall.ENOTSUP}
	}
	i.compat = 0
	i.autoclear = 0
	if err := i.expandZeroClusters(pr); err != nil {
		return errnof(err, "Failed to turn zero into data clusters")
	}
	if i.incompat&incompatCompression != 0 {
		has, err := i.hasCompressedClusters()
		if err != nil {
			return errors.New("Failed to check block status")
		}
		if has {
			return &reportedError{msg: "Cannot downgrade an image with zstd compression type and existing compressed clusters", errno: syscall.ENOTSUP}
		}
		i.incompat &^= incompatCompression
		i.hdr.CompressionType = compressionZlib
		i.cdc = newCodec(compressionZlib, int(i.clusterSize))
	}
	i.hdr.Version = 2
	// Persistent bitmaps stay recorded, as QEMU keeps them; a version 2
	// header has no autoclear bits, so programs will consider them
	// inconsistent. (The bit kept here only makes the header keep the
	// extension.)
	if i.ext.Bitmaps != nil {
		i.autoclear = autoclearBitmaps
	}
	err := i.updateHeader()
	i.autoclear = 0
	if err != nil {
		i.hdr.Version = 3
		return errnof(err, "Failed to update the image header")
	}
	return nil
}

// hasCompressedClusters reports whether the active layer has a compressed
// cluster (QEMU's qcow2_has_compressed_clusters).
func (i *Image) hasCompressedClusters() (bool, error) {
	for off := int64(0); off < i.size; {
		m, err := i.getHostOffset(off, min(i.size-off, 1<<31-1))
		if err != nil {
			return false, err
		}
		if m.typ == subCompressed {
			return true, nil
		}
		off += m.bytes
	}
	return false, nil
}

// expandZeroClusters turns the zero clusters of the active and the
// snapshot L1 tables into what version 2 can hold (QEMU's
// qcow2_expand_zero_clusters).
func (i *Image) expandZeroClusters(pr *amendProgress) error {
	total := int64(len(i.l1))
	for _, sn := range i.snapshots {
		total += int64(sn.L1Size)
	}
	var visited int64
	if err := i.expandZeroClustersInL1(i.l1, true, &visited, total, pr); err != nil {
		return err
	}
	// Snapshot tables may share the active L2 tables, which are now
	// changed on disk, directly.
	if err := i.l2Cache.empty(); err != nil {
		return err
	}
	for k := range i.snapshots {
		sn := &i.snapshots[k]
		if err := i.validateSnapshotL1(sn); err != nil {
			i.reportSnapshotError(err)
			return err
		}
		l1, err := i.readL1Table(int64(sn.L1TableOffset), sn.L1Size, "Snapshot L1 table")
		if err != nil {
			return err
		}
		if err := i.expandZeroClustersInL1(l1, false, &visited, total, pr); err != nil {
			return err
		}
	}
	return nil
}

// reportSnapshotError prints the message of a bad snapshot table as QEMU's
// error_report does, if the image has somewhere to print.
func (i *Image) reportSnapshotError(err error) {
	var re *reportedError
	if errors.As(err, &re) && i.warn != nil {
		i.warn(re.msg)
	}
}

// expandZeroClustersInL1 expands the zero clusters of the L2 tables one L1
// table references. Active L2 tables go through the cache; inactive ones
// are read and written directly.
func (i *Image) expandZeroClustersInL1(l1 []uint64, active bool, visited *int64, total int64, pr *amendProgress) error {
	sliceBytes := i.l2SliceSize * i.l2EntryBytes
	var buf []byte
	if !active {
		buf = make([]byte, sliceBytes)
	}
	for k, e := range l1 {
		l2Offset := int64(e & l1OffsetMask)
		if l2Offset != 0 {
			if l2Offset&(i.clusterSize-1) != 0 {
				return i.corruption(true, fmt.Sprintf("L2 table offset %#x unaligned (L1 index: %#x)", l2Offset, k))
			}
			l2Refcount, err := i.getRefcount(l2Offset >> i.clusterBits)
			if err != nil {
				return err
			}
			for s := int64(0); s < i.clusterSize/int64(sliceBytes); s++ {
				sliceOff := l2Offset + s*int64(sliceBytes)
				var slice []byte
				var ce *cacheEntry
				if active {
					if ce, err = i.l2Cache.get(sliceOff); err != nil {
						return err
					}
					slice = ce.data
				} else {
					if err := storage.ReadFull(i.f, buf, sliceOff); err != nil {
						return err
					}
					slice = buf
				}
				dirty, drop, err := i.expandZeroSlice(slice, l2Offset, int(s), l2Refcount)
				if active {
					if dirty {
						i.l2Cache.markDirty(ce)
						i.l2Cache.dependOnFlush()
					}
					i.l2Cache.put(ce)
				}
				if err != nil {
					return err
				}
				if dirty && !active {
					if err := i.overlapCheck(olInactiveL2|olActiveL2, sliceOff, int64(sliceBytes)); err != nil {
						return err
					}
					if _, err := i.f.WriteAt(slice, sliceOff); err != nil {
						return err
					}
				}
				if len(drop) > 0 && !active {
					// The references go once the table no longer
					// holds them.
					if err := i.f.Sync(); err != nil {
						return err
					}
				}
				for _, off := range drop {
					if err := i.updateRefcount(off, 1, l2Refcount, true, discardOther); err != nil {
						return err
					}
				}
			}
		}
		*visited++
		pr.step(*visited, total)
	}
	return nil
}

// expandZeroSlice expands the zero clusters of one L2 slice and reports
// whether it changed: without a backing file they become unallocated;
// otherwise each gets a zeroed data cluster, refcounted once for every
// owner of its L2 table. It also returns the clusters that lose one
// reference per owner of the table once the slice is on disk.
//
// A preallocated zero cluster that other tables still use as data (a
// snapshot's, which the zero write did not copy) gets a new cluster:
// QEMU 7.2 zeroes the shared cluster in place, which changes the
// snapshot's data and can leave COPIED on a cluster with refcount 2.
func (i *Image) expandZeroSlice(slice []byte, l2Offset int64, s int, l2Refcount uint64) (bool, []int64, error) {
	dirty := false
	var drop []int64
	for j := 0; j < i.l2SliceSize; j++ {
		entry, _ := i.l2Entry(slice, j)
		typ := i.layout.classify(entry)
		if typ != clusterZeroPlain && typ != clusterZeroAlloc {
			continue
		}
		off := int64(entry & l2OffsetMask)
		if typ == clusterZeroPlain && i.backing == nil {
			i.setL2Entry(slice, j, 0)
			dirty = true
			continue
		}
		fresh := typ == clusterZeroPlain
		if typ == clusterZeroAlloc && !i.hasDataFile && off&(i.clusterSize-1) == 0 {
			rc, err := i.getRefcount(off >> i.clusterBits)
			if err != nil {
				return dirty, drop, err
			}
			if rc > l2Refcount {
				drop = append(drop, off)
				fresh = true
			}
		}
		if fresh {
			var err error
			if off, err = i.allocZeroCluster(l2Refcount); err != nil {
				return dirty, drop, err
			}
		}
		fail := func(err error) (bool, []int64, error) {
			if fresh {
				i.freeClusters(off, i.clusterSize, discardAlways)
			}
			return dirty, drop, err
		}
		if off&(i.clusterSize-1) != 0 {
			return fail(i.corruption(true, fmt.Sprintf("Cluster allocation offset %#x unaligned (L2 offset: %#x, L2 index: %#x)", off, l2Offset, s*i.l2SliceSize+j)))
		}
		if err := i.dataOverlapCheck(off, i.clusterSize); err != nil {
			return fail(err)
		}
		if err := storage.WriteZeroes(i.data, off, i.clusterSize, false); err != nil {
			return fail(err)
		}
		if l2Refcount == 1 {
			i.setL2Entry(slice, j, uint64(off)|oflagCopied)
		} else {
			i.setL2Entry(slice, j, uint64(off))
		}
		dirty = true
	}
	return dirty, drop, nil
}

// allocZeroCluster allocates a cluster for an expanded zero cluster, with
// one reference for each owner of its L2 table.
func (i *Image) allocZeroCluster(l2Refcount uint64) (int64, error) {
	off, err := i.allocClusters(i.clusterSize)
	if err != nil {
		return 0, err
	}
	if l2Refcount > 1 {
		if err := i.updateRefcount(off, 1, l2Refcount-1, false, discardOther); err != nil {
			i.freeClusters(off, i.clusterSize, discardOther)
			return 0, err
		}
	}
	return off, nil
}

// refcountChange is the state of a refcount width change: the new refcount
// table being built and where the walk over the old one stands.
type refcountChange struct {
	newAccess   refcountAccess
	newBits     uint64
	blockSize   int // refcounts in a new refcount block
	table       []uint64
	tableIndex  int
	allocated   bool
	pr          *amendProgress
	walk, walks int
}

// changeRefcountOrder rewrites the refcount structures with refcounts of
// 1<<order bits, as QEMU's qcow2_change_refcount_order: walks over the old
// refcounts allocate the new refcount blocks and table (which changes the
// old refcounts, so the walks repeat until nothing new is allocated), a
// last walk writes the new blocks, then the new table, and one header
// update switches to them; the old structures are freed last.
func (i *Image) changeRefcountOrder(order uint32, pr *amendProgress) error {
	st := &refcountChange{
		newAccess: refcountAccess{order: uint(order)},
		newBits:   1 << order,
		blockSize: 1 << (i.clusterBits - (int(order) - 3)),
		pr:        pr,
	}
	var tableOff, allocatedSize int64
	// On failure, what was allocated for the new structures is freed.
	cleanup := func(err error) error {
		for _, e := range st.table {
			if off := int64(e & reftOffsetMask); off != 0 {
				i.freeClusters(off, i.clusterSize, discardOther)
			}
		}
		if tableOff > 0 {
			i.freeClusters(tableOff, allocatedSize*reftableEntrySize, discardOther)
		}
		return err
	}
	for {
		st.allocated = false
		st.walks = max(st.walk+2, 3)
		st.tableIndex = 0
		if err := i.walkOverReftable(st, nil, i.allocNewRefblock); err != nil {
			return cleanup(err)
		}
		st.walk++
		st.tableIndex = 0
		if !st.allocated {
			break
		}
		if tableOff != 0 {
			i.freeClusters(tableOff, allocatedSize*reftableEntrySize, discardNever)
		}
		var err error
		if tableOff, err = i.allocClusters(int64(len(st.table)) * reftableEntrySize); err != nil {
			tableOff = 0
			return cleanup(errnof(err, "Failed to allocate the new reftable"))
		}
		allocatedSize = int64(len(st.table))
	}
	st.walks = st.walk + 1
	block := make([]byte, i.clusterSize)
	if err := i.walkOverReftable(st, block, i.writeNewRefblock); err != nil {
		return cleanup(err)
	}
	if err := i.overlapCheck(0, tableOff, int64(len(st.table))*reftableEntrySize); err != nil {
		return cleanup(errnof(err, "Overlap check failed"))
	}
	raw := make([]byte, len(st.table)*reftableEntrySize)
	for k, v := range st.table {
		binary.BigEndian.PutUint64(raw[8*k:], v)
	}
	if _, err := i.f.WriteAt(raw, tableOff); err != nil {
		return cleanup(errnof(err, "Failed to write the new reftable"))
	}
	if err := i.rcCache.flush(); err != nil {
		return cleanup(errnof(err, "Failed to flush the refblock cache"))
	}
	oldOrder, oldTable, oldOff := i.hdr.RefcountOrder, i.reftable, i.reftableOff
	i.hdr.RefcountOrder, i.reftable, i.reftableOff = order, st.table, tableOff
	if err := i.updateHeader(); err != nil {
		i.hdr.RefcountOrder, i.reftable, i.reftableOff = oldOrder, oldTable, oldOff
		return cleanup(errnof(err, "Failed to update the qcow2 header"))
	}
	i.hdr.RefcountTableOffset = uint64(tableOff)
	i.hdr.RefcountTableClusters = uint32(int64(len(st.table)) >> (i.clusterBits - 3))
	i.updateMaxReftableIndex()
	// The cache holds blocks of the old width.
	if err := i.rcCache.empty(); err != nil {
		return err
	}
	i.refcount = st.newAccess
	i.refcountMax = st.newAccess.max()
	i.rbBits = i.clusterBits - (int(order) - 3)
	i.rbSize = 1 << i.rbBits
	// Free the old structures, now counted by the new ones.
	for _, e := range oldTable {
		if off := int64(e & reftOffsetMask); off != 0 {
			i.freeClusters(off, i.clusterSize, discardOther)
		}
	}
	i.freeClusters(oldOff, int64(len(oldTable))*reftableEntrySize, discardOther)
	return nil
}

// refblockOp is what a walk over the refcount table does with each new
// refcount block once complete: its index in the new table, its content
// (nil on walks that only count) and whether all its refcounts are 0.
type refblockOp func(st *refcountChange, index int, block []byte, empty bool) error

// allocNewRefblock gives a new refcount block that counts something a
// cluster, growing the new table as needed (QEMU's alloc_refblock).
func (i *Image) allocNewRefblock(st *refcountChange, index int, _ []byte, empty bool) error {
	if empty {
		return nil
	}
	if index >= len(st.table) {
		per := int(i.clusterSize / reftableEntrySize)
		size := (index + 1 + per - 1) / per * per
		if size > maxRefcountTableBytes/reftableEntrySize {
			return &reportedError{msg: "This operation would make the refcount table grow beyond the maximum size supported by QEMU, aborting", errno: syscall.ENOTSUP}
		}
		st.table = append(st.table, make([]uint64, size-len(st.table))...)
	}
	if st.table[index] == 0 {
		off, err := i.allocClusters(i.clusterSize)
		if err != nil {
			return errnof(err, "Failed to allocate refblock")
		}
		st.table[index] = uint64(off)
		st.allocated = true
	}
	return nil
}

// writeNewRefblock writes a complete new refcount block where the new table
// says (QEMU's flush_refblock).
func (i *Image) writeNewRefblock(st *refcountChange, index int, block []byte, empty bool) error {
	if index >= len(st.table) || st.table[index] == 0 {
		if !empty {
			return fmt.Errorf("new refcount block %d was not allocated: %w", index, errCorrupt)
		}
		return nil
	}
	off := int64(st.table[index])
	if err := i.overlapCheck(0, off, i.clusterSize); err != nil {
		return errnof(err, "Overlap check failed")
	}
	if _, err := i.f.WriteAt(block, off); err != nil {
		return errnof(err, "Failed to write refblock")
	}
	return nil
}

// walkOverReftable goes over every refcount of the old structures (0 where
// a block is missing), filling new refcount blocks (when block is not nil)
// and handing each to op once complete (QEMU's walk_over_reftable). The
// old table may grow during the walk (op allocates).
func (i *Image) walkOverReftable(st *refcountChange, block []byte, op refblockOp) error {
	newIndex := int64(0)
	empty := true
	if block != nil {
		clear(block)
	}
	// next hands a complete new block to op and starts the next one.
	next := func() error {
		if newIndex < int64(st.blockSize) {
			return nil
		}
		if err := op(st, st.tableIndex, block, empty); err != nil {
			return err
		}
		st.tableIndex++
		newIndex = 0
		empty = true
		if block != nil {
			clear(block)
		}
		return nil
	}
	for ti := 0; ti < len(i.reftable); ti++ {
		st.pr.step(int64(st.walk)*int64(len(i.reftable))+int64(ti), int64(st.walks)*int64(len(i.reftable)))
		off := int64(i.reftable[ti] & reftOffsetMask)
		if off == 0 {
			// A missing block counts zeroes, which the new blocks
			// hold already.
			for left := i.rbSize; left > 0; {
				if err := next(); err != nil {
					return err
				}
				n := min(left, int64(st.blockSize)-newIndex)
				newIndex += n
				left -= n
			}
			continue
		}
		if off&(i.clusterSize-1) != 0 {
			_ = i.corruption(true, fmt.Sprintf("Refblock offset %#x unaligned (reftable index: %#x)", off, ti))
			return &reportedError{msg: "Image is corrupt (unaligned refblock offset)", errno: syscall.EIO}
		}
		e, err := i.rcCache.get(off)
		if err != nil {
			return errnof(err, "Failed to retrieve refblock")
		}
		for bi := int64(0); bi < i.rbSize; bi++ {
			// The refcount is read once op has handled a complete
			// block: op may have allocated this very cluster.
			if err := next(); err != nil {
				i.rcCache.put(e)
				return err
			}
			rc := i.refcount.get(e.data, uint64(bi))
			if st.newBits < 64 && rc>>st.newBits != 0 {
				i.rcCache.put(e)
				cluster := (int64(ti)<<i.rbBits + bi) << i.clusterBits
				return &reportedError{
					msg:   fmt.Sprintf("Cannot decrease refcount entry width to %d bits: Cluster at offset %#x has a refcount of %d", st.newBits, cluster, rc),
					errno: syscall.EINVAL,
				}
			}
			if rc != 0 {
				if block != nil {
					st.newAccess.set(block, uint64(newIndex), rc)
				}
				empty = false
			}
			newIndex++
		}
		i.rcCache.put(e)
	}
	if newIndex > 0 {
		if err := op(st, st.tableIndex, block, empty); err != nil {
			return err
		}
		st.tableIndex++
	}
	st.pr.step(int64(st.walk+1)*int64(len(i.reftable)), int64(st.walks)*int64(len(i.reftable)))
	return nil
}
