package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/storage"
)

// This file holds internal snapshots: writing the snapshot table, raising
// and dropping the refcounts of the clusters a snapshot's L1 table
// references, and creating, applying, deleting, listing and temporarily
// loading snapshots. The steps and their order follow QEMU's
// qcow2-snapshot.c, so that a crash at any point leaves at worst leaked
// clusters, and the resulting files are those qemu-img writes:
//
//   - create: copy the active L1 table to new clusters, raise the
//     refcount of every cluster it references (clearing COPIED in the
//     active tables, so that later writes copy on write), flush, then
//     write a new snapshot table and point the header at it;
//   - apply: raise the refcounts the snapshot's L1 table references,
//     overwrite the active L1 table with it, then drop the references the
//     old active table held and recompute the COPIED flags;
//   - delete: first remove the entry from the snapshot table, then drop
//     the references its L1 table held, free that table and recompute the
//     COPIED flags of the active tables.

// snapshotIDSize and snapshotNameSize are the sizes of the buffers QEMU
// copies snapshot IDs and names into when it lists them (QEMUSnapshotInfo);
// longer ones are cut.
const (
	snapshotIDSize   = 128
	snapshotNameSize = 256
)

// errnoError is an error QEMU words as a message, ": " and strerror of an
// errno (error_setg_errno).
type errnoError struct {
	msg string
	err error
}

func (e *errnoError) Error() string { return e.msg + ": " + storage.Strerror(e.err) }

func (e *errnoError) Unwrap() error { return e.err }

// errnof words err as QEMU's error_setg_errno does: the message, then the
// system error text of the errno err stands for.
func errnof(err error, format string, args ...any) error {
	return &errnoError{msg: fmt.Sprintf(format, args...), err: toErrno(err)}
}

// toErrno returns the errno QEMU would report for err: the errno err wraps,
// or the one QEMU returns for the condition a sentinel names. Other errors
// are kept, so that their text is not lost.
func toErrno(err error) error {
	var errno syscall.Errno
	switch {
	case errors.As(err, &errno):
		return errno
	case errors.Is(err, errCorrupt):
		return syscall.EIO
	case errors.Is(err, errTooBig), errors.Is(err, block.ErrTooBig):
		return syscall.EFBIG
	case errors.Is(err, errNotSupported):
		return syscall.ENOTSUP
	case errors.Is(err, errReadOnly):
		return syscall.EACCES
	}
	return err
}

// truncateString cuts s to fit a C buffer of size bytes with its NUL, as
// QEMU's pstrcpy does.
func truncateString(s string, size int) string {
	if len(s) >= size {
		return s[:size-1]
	}
	return s
}

// Snapshots lists the internal snapshots in table order, with IDs and names
// cut as QEMU lists them. Images with an external data file cannot have
// snapshots; QEMU lists none for them.
func (i *Image) Snapshots() ([]block.SnapshotInfo, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.hasDataFile {
		return nil, errnof(syscall.ENOTSUP, "Failed to get a snapshot list")
	}
	return i.snapshotInfos(), nil
}

// snapshotInfos describes the snapshots as QEMU's bdrv_snapshot_list does.
func (i *Image) snapshotInfos() []block.SnapshotInfo {
	var out []block.SnapshotInfo
	for _, sn := range i.snapshots {
		icount := int64(-1)
		if sn.ICount != ^uint64(0) {
			icount = int64(sn.ICount)
		}
		out = append(out, block.SnapshotInfo{
			ID:          truncateString(sn.ID, snapshotIDSize),
			Name:        truncateString(sn.Name, snapshotNameSize),
			VMStateSize: sn.VMStateSize,
			DateSec:     int64(sn.DateSec),
			DateNsec:    int64(sn.DateNsec),
			VMClockNsec: sn.VMClockNsec,
			ICount:      icount,
		})
	}
	return out
}

// findSnapshot returns the index of the first snapshot with that ID and
// name; an empty string matches any (QEMU's
// find_snapshot_by_id_and_name). It returns -1 if there is none, or when
// both are empty.
func (i *Image) findSnapshot(id, name string) int {
	if id == "" && name == "" {
		return -1
	}
	for k, sn := range i.snapshots {
		if (id == "" || sn.ID == id) && (name == "" || sn.Name == name) {
			return k
		}
	}
	return -1
}

// findSnapshotByIDOrName looks a snapshot up by ID first, then by name.
func (i *Image) findSnapshotByIDOrName(idOrName string) int {
	if k := i.findSnapshot(idOrName, ""); k >= 0 {
		return k
	}
	return i.findSnapshot("", idOrName)
}

// parseSnapshotID reads the number an ID starts with, as C's strtoul does
// (leading spaces, an optional sign, decimal digits; 0 without digits,
// saturating on overflow, a minus sign negating modulo 2^64).
func parseSnapshotID(s string) uint64 {
	k := 0
	for k < len(s) && (s[k] == ' ' || (s[k] >= '\t' && s[k] <= '\r')) {
		k++
	}
	neg := false
	if k < len(s) && (s[k] == '+' || s[k] == '-') {
		neg = s[k] == '-'
		k++
	}
	var v uint64
	overflow := false
	for ; k < len(s) && s[k] >= '0' && s[k] <= '9'; k++ {
		d := uint64(s[k] - '0')
		if v > (^uint64(0)-d)/10 {
			overflow = true
		}
		v = v*10 + d
	}
	switch {
	case overflow:
		return ^uint64(0)
	case neg:
		return -v
	}
	return v
}

// newSnapshotID returns one more than the largest numeric ID in use (QEMU's
// find_new_snapshot_id).
func (i *Image) newSnapshotID() string {
	var maxID uint64
	for _, sn := range i.snapshots {
		maxID = max(maxID, parseSnapshotID(sn.ID))
	}
	return fmt.Sprint(maxID + 1)
}

// snapshotTableSize returns the size of the table that holds sns as QEMU
// writes it: every entry with at least the extra data QEMU knows.
func snapshotTableSize(sns []snapshot) (int64, error) {
	var size int64
	for _, sn := range sns {
		size = (size + 7) &^ 7
		size += snapshotHeaderSize + int64(max(snapshotExtraSize, sn.ExtraDataSize))
		size += int64(len(sn.ID) + len(sn.Name))
		if size > maxSnapshotsBytes {
			return 0, syscall.EFBIG
		}
	}
	return size, nil
}

// encodeSnapshots lays out a snapshot table as QEMU's qcow2_write_snapshots
// does: entries 8-byte aligned, each with the 24 bytes of extra data QEMU
// knows (VM state size, disk size, icount) and any unknown extra data it
// was read with.
func encodeSnapshots(sns []snapshot, size int64) []byte {
	b := make([]byte, size)
	be := binary.BigEndian
	off := 0
	for _, sn := range sns {
		off = (off + 7) &^ 7
		h := b[off:]
		be.PutUint64(h[0:], sn.L1TableOffset)
		be.PutUint32(h[8:], sn.L1Size)
		be.PutUint16(h[12:], uint16(len(sn.ID)))
		be.PutUint16(h[14:], uint16(len(sn.Name)))
		be.PutUint32(h[16:], sn.DateSec)
		be.PutUint32(h[20:], sn.DateNsec)
		be.PutUint64(h[24:], sn.VMClockNsec)
		// A VM state that does not fit makes older programs see a
		// disk-only snapshot rather than a truncated state.
		if sn.VMStateSize <= 0xffffffff {
			be.PutUint32(h[32:], uint32(sn.VMStateSize))
		}
		extra := max(snapshotExtraSize, sn.ExtraDataSize)
		be.PutUint32(h[36:], extra)
		off += snapshotHeaderSize
		e := b[off:]
		be.PutUint64(e[0:], sn.VMStateSize)
		be.PutUint64(e[8:], sn.DiskSize)
		be.PutUint64(e[16:], sn.ICount)
		off += snapshotExtraSize
		off += copy(b[off:], sn.UnknownExtraData)
		off += copy(b[off:], sn.ID)
		off += copy(b[off:], sn.Name)
	}
	return b
}

// writeSnapshots writes the in-memory snapshot list as a new table at the
// end of the used clusters, points the header at it and frees the old one
// (QEMU's qcow2_write_snapshots). On failure the header still points to the
// old table.
func (i *Image) writeSnapshots() error {
	size, err := snapshotTableSize(i.snapshots)
	if err != nil {
		return err
	}
	off, err := i.allocClusters(size)
	if err != nil {
		return err
	}
	fail := func(err error) error {
		i.freeClusters(off, size, discardAlways)
		return err
	}
	if err := i.flushCaches(); err != nil {
		return fail(err)
	}
	// The header does not point here yet, so the clusters must be free
	// of any metadata.
	if err := i.overlapCheck(0, off, size); err != nil {
		return fail(err)
	}
	if size > 0 {
		if _, err := i.f.WriteAt(encodeSnapshots(i.snapshots, size), off); err != nil {
			return fail(err)
		}
	}
	// The new table and its refcounts must be stable before the header
	// points to it.
	if err := i.flushCaches(); err != nil {
		return fail(err)
	}
	var d [12]byte
	binary.BigEndian.PutUint32(d[0:], uint32(len(i.snapshots)))
	binary.BigEndian.PutUint64(d[4:], uint64(off))
	if err := i.writeSync(d[:], 60); err != nil {
		return fail(err)
	}
	oldOff, oldSize := i.snapshotsOff, i.snapshotsSize
	i.snapshotsOff, i.snapshotsSize = off, size
	i.hdr.NbSnapshots, i.hdr.SnapshotsOffset = uint32(len(i.snapshots)), uint64(off)
	i.freeClusters(oldOff, oldSize, discardSnapshot)
	return nil
}

// readL1Table reads an L1 table of n entries at off, after checking it as
// QEMU's qcow2_validate_table does (what names the table in messages).
func (i *Image) readL1Table(off int64, n uint32, what string) ([]uint64, error) {
	if err := i.validateTable(uint64(off), uint64(n), l1EntrySize, maxL1Bytes, what, -1); err != nil {
		return nil, err
	}
	raw := make([]byte, int(n)*l1EntrySize)
	if err := storage.ReadFull(i.f, raw, off); err != nil {
		return nil, err
	}
	l1 := make([]uint64, n)
	for k := range l1 {
		l1[k] = binary.BigEndian.Uint64(raw[8*k:])
	}
	return l1, nil
}

// writeL1Table writes a whole L1 table and flushes it.
func (i *Image) writeL1Table(off int64, l1 []uint64) error {
	raw := make([]byte, len(l1)*l1EntrySize)
	for k, v := range l1 {
		binary.BigEndian.PutUint64(raw[8*k:], v)
	}
	return i.writeSync(raw, off)
}

// validateSnapshotL1 checks a snapshot's L1 table pointer, returning the
// message QEMU reports and the errno it fails with.
func (i *Image) validateSnapshotL1(sn *snapshot) error {
	err := i.validateTable(sn.L1TableOffset, uint64(sn.L1Size), l1EntrySize, maxL1Bytes, "Snapshot L1 table", -1)
	if err == nil {
		return nil
	}
	if uint64(sn.L1Size) > maxL1Bytes/l1EntrySize {
		return &reportedError{msg: err.Error(), errno: syscall.EFBIG}
	}
	return &reportedError{msg: err.Error(), errno: syscall.EINVAL}
}

// reportedError is an error QEMU words with a message alone, while the
// operation fails with an errno. Some callers (snapshot apply) report the
// message on its own line and word the errno in their own message.
type reportedError struct {
	msg   string
	errno error
}

func (e *reportedError) Error() string { return e.msg }

func (e *reportedError) Unwrap() error { return e.errno }

// updateSnapshotRefcount adds addend (1, 0 or -1) to the refcount of every
// cluster the L1 table at l1Offset references, the L2 tables included, and
// sets the COPIED flag in the L1 and L2 entries of exactly the clusters
// left with refcount 1 (QEMU's qcow2_update_snapshot_refcount). The active
// L1 table is taken from memory, so that it can be updated after the one
// on disk was overwritten; another L1 table is read from disk, and written
// back when its flags changed (unless addend is -1: it is being freed).
func (i *Image) updateSnapshotRefcount(l1Offset int64, l1Size uint32, addend int) error {
	var l1 []uint64
	if l1Offset == i.l1Offset {
		l1 = i.l1
	} else {
		var err error
		if l1, err = i.readL1Table(l1Offset, l1Size, "Snapshot L1 table"); err != nil {
			return err
		}
	}
	i.cacheDiscards = true
	modified, err := i.updateL1Refcounts(l1, addend)
	if err == nil {
		err = i.flushCaches()
	}
	i.cacheDiscards = false
	i.processDiscards(err == nil)
	if err == nil && addend >= 0 && modified {
		err = i.writeL1Table(l1Offset, l1)
	}
	return err
}

// updateL1Refcounts does the work of updateSnapshotRefcount on a table in
// memory, changing its entries' flags in place; it reports whether any
// changed.
func (i *Image) updateL1Refcounts(l1 []uint64, addend int) (bool, error) {
	modified := false
	for k, old := range l1 {
		l2Offset := int64(old & l1OffsetMask)
		if l2Offset == 0 {
			continue
		}
		if l2Offset&(i.clusterSize-1) != 0 {
			return modified, i.corruption(true, fmt.Sprintf("L2 table offset %#x unaligned (L1 index: %#x)", l2Offset, k))
		}
		if err := i.updateL2Refcounts(l2Offset, addend); err != nil {
			return modified, err
		}
		rc, err := i.addClusterRef(l2Offset, addend)
		if err != nil {
			return modified, err
		}
		entry := uint64(l2Offset)
		if rc == 1 {
			entry |= oflagCopied
		}
		if entry != old {
			l1[k] = entry
			modified = true
		}
	}
	return modified, nil
}

// addClusterRef adds addend to the refcount of the cluster at off and
// returns the new refcount.
func (i *Image) addClusterRef(off int64, addend int) (uint64, error) {
	if addend != 0 {
		if err := i.updateRefcount(off, 1, 1, addend < 0, discardSnapshot); err != nil {
			return 0, err
		}
	}
	return i.getRefcount(off >> i.clusterBits)
}

// updateL2Refcounts adjusts the refcounts of the clusters one L2 table
// references and their COPIED flags.
func (i *Image) updateL2Refcounts(l2Offset int64, addend int) error {
	return i.forEachL2Entry(l2Offset, func(index int, old, _ uint64, slice []byte) (bool, error) {
		entry := old &^ oflagCopied
		var rc uint64
		switch i.layout.classify(entry) {
		case clusterCompressed:
			if addend != 0 {
				off, size := i.compressed.parse(entry)
				if err := i.updateRefcount(int64(off), int64(size), 1, addend < 0, discardSnapshot); err != nil {
					return false, err
				}
			}
			// Compressed clusters are never written in place.
			rc = 2
		case clusterNormal, clusterZeroAlloc:
			off := int64(entry & l2OffsetMask)
			if off&(i.clusterSize-1) != 0 {
				return false, i.corruption(true, fmt.Sprintf("Cluster allocation offset %#x unaligned (L2 offset: %#x, L2 index: %#x)", off, l2Offset, index))
			}
			var err error
			if rc, err = i.addClusterRef(off, addend); err != nil {
				return false, err
			}
		}
		if rc == 1 {
			entry |= oflagCopied
		}
		if entry == old {
			return false, nil
		}
		if addend > 0 {
			if err := i.l2Cache.setDependency(i.rcCache); err != nil {
				return false, err
			}
		}
		i.setL2Entry(slice, index%i.l2SliceSize, entry)
		return true, nil
	})
}

// checkSnapshotWritable refuses metadata changes (snapshots, amend) to an
// image that cannot be written. They do not change what the persistent
// bitmaps describe, so unlike guest writes they leave them consistent.
func (i *Image) checkSnapshotWritable() error {
	if !i.write {
		return errReadOnly
	}
	return i.broken
}

// CreateSnapshot records the current disk state as a new snapshot, with the
// name, date, VM clock, icount and VM state size of info, the current
// virtual size as its disk size, and info's ID or (if empty) the next free
// numeric one (QEMU's qcow2_snapshot_create; QEMU always picks the ID).
// Errors wrap the errno QEMU returns: EFBIG with 65536 snapshots, ENOTSUP
// with an external data file. Duplicate names are allowed, as in QEMU.
func (i *Image) CreateSnapshot(info block.SnapshotInfo) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if err := i.checkSnapshotWritable(); err != nil {
		return err
	}
	if len(i.snapshots) >= maxSnapshots {
		return syscall.EFBIG
	}
	if i.hasDataFile {
		return syscall.ENOTSUP
	}
	id := info.ID
	if id == "" {
		id = i.newSnapshotID()
	}
	if len(id) > 0xffff || len(info.Name) > 0xffff {
		return fmt.Errorf("snapshot ID or name longer than 65535 bytes: %w", syscall.EINVAL)
	}
	sn := snapshot{
		ID:            id,
		Name:          info.Name,
		DiskSize:      uint64(i.size),
		VMStateSize:   info.VMStateSize,
		DateSec:       uint32(info.DateSec),
		DateNsec:      uint32(info.DateNsec),
		VMClockNsec:   info.VMClockNsec,
		ICount:        uint64(info.ICount),
		ExtraDataSize: snapshotExtraSize,
	}
	// Copy the active L1 table, flags and all, to new clusters.
	l1Bytes := int64(len(i.l1)) * l1EntrySize
	off, err := i.allocClusters(l1Bytes)
	if err != nil {
		return err
	}
	sn.L1TableOffset, sn.L1Size = uint64(off), uint32(len(i.l1))
	if err := i.overlapCheck(0, off, l1Bytes); err != nil {
		return err
	}
	raw := make([]byte, l1Bytes)
	for k, v := range i.l1 {
		binary.BigEndian.PutUint64(raw[8*k:], v)
	}
	if _, err := i.f.WriteAt(raw, off); err != nil {
		return err
	}
	// Every cluster gains a reference, and everything is stable on
	// disk before the snapshot table points to the new L1 table.
	if err := i.updateSnapshotRefcount(i.l1Offset, uint32(len(i.l1)), 1); err != nil {
		return err
	}
	i.snapshots = append(i.snapshots, sn)
	if err := i.writeSnapshots(); err != nil {
		i.snapshots = i.snapshots[:len(i.snapshots)-1]
		return err
	}
	// The VM state is not needed in the active L1 table any more; it
	// would only cost copies on the next snapshot.
	vmStateBytes := (int64(sn.VMStateSize) + i.clusterSize - 1) &^ (i.clusterSize - 1)
	if vmStateBytes > 0 {
		_ = i.clusterDiscard(i.l1VMStateIdx<<uint(i.l2Bits+i.clusterBits), vmStateBytes, discardNever, false)
	}
	return nil
}

// ApplySnapshot reverts the disk to a snapshot, found by ID or else by name
// (QEMU's bdrv_snapshot_goto and qcow2_snapshot_goto). A snapshot of
// another disk size first resizes the image to it. Errors are worded as
// QEMU reports them after "Could not apply snapshot 'x': ".
func (i *Image) ApplySnapshot(idOrName string) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if err := i.checkSnapshotWritable(); err != nil {
		return err
	}
	if len(i.bitmaps) > 0 {
		return &reportedError{msg: "Device has active dirty bitmaps", errno: syscall.EBUSY}
	}
	if err := i.applySnapshot(idOrName); err != nil {
		var re *reportedError
		if errors.As(err, &re) {
			return &precededError{report: re.msg, err: errnof(re.errno, "Failed to load snapshot")}
		}
		return errnof(err, "Failed to load snapshot")
	}
	return nil
}

// precededError is an error QEMU words after reporting another message
// (error_report) on a line of its own.
type precededError struct {
	report string
	err    error
}

func (e *precededError) Error() string { return e.err.Error() }

func (e *precededError) Unwrap() error { return e.err }

// ErrorReports returns the messages QEMU prints (each as "prog: msg") before
// the error itself.
func (e *precededError) ErrorReports() []string { return []string{e.report} }

func (i *Image) applySnapshot(idOrName string) error {
	if i.hasDataFile {
		return syscall.ENOTSUP
	}
	k := i.findSnapshotByIDOrName(idOrName)
	if k < 0 {
		return syscall.ENOENT
	}
	sn := i.snapshots[k]
	if err := i.validateSnapshotL1(&sn); err != nil {
		return err
	}
	if sn.DiskSize != uint64(i.size) {
		if err := i.resize(int64(sn.DiskSize), block.PreallocOff); err != nil {
			return &reportedError{msg: err.Error(), errno: toErrno(err)}
		}
	}
	// The active table must hold all of the snapshot's; a shorter
	// snapshot table is padded with zeroes.
	if err := i.growL1Table(int64(sn.L1Size), true); err != nil {
		return err
	}
	snL1, err := i.readL1Table(int64(sn.L1TableOffset), sn.L1Size, "Snapshot L1 table")
	if err != nil {
		return err
	}
	newL1 := make([]uint64, len(i.l1))
	copy(newL1, snL1)
	// The snapshot's table keeps the COPIED flags the active table had
	// when the snapshot was taken; every L2 table it references is
	// shared once its refcounts are raised, so none may be written in
	// place. (QEMU writes the stale flags and fixes them afterwards: a
	// crash in between would let writes change the snapshot's tables.)
	for k := range newL1 {
		newL1[k] &^= oflagCopied
	}
	// Raise the refcounts the snapshot's tables hold before the active
	// table points to them; drop the old active table's only once it is
	// overwritten.
	if err := i.updateSnapshotRefcount(int64(sn.L1TableOffset), sn.L1Size, 1); err != nil {
		return err
	}
	if err := i.overlapCheck(olActiveL1, i.l1Offset, int64(len(i.l1))*l1EntrySize); err != nil {
		return err
	}
	if err := i.writeL1Table(i.l1Offset, newL1); err != nil {
		return err
	}
	// The in-memory table still holds the old references.
	err = i.updateSnapshotRefcount(i.l1Offset, uint32(len(i.l1)), -1)
	copy(i.l1, newL1)
	if err != nil {
		return err
	}
	// Dropping the old references may have left clusters with a single
	// owner: set their COPIED flags.
	return i.updateSnapshotRefcount(i.l1Offset, uint32(len(i.l1)), 0)
}

// DeleteSnapshot removes the first snapshot with that ID and name (an empty
// string matches any) and frees what only it referenced (QEMU's
// qcow2_snapshot_delete). Errors are worded as QEMU reports them after
// "Could not delete snapshot 'x': ".
func (i *Image) DeleteSnapshot(id, name string) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if err := i.checkSnapshotWritable(); err != nil {
		return err
	}
	if id == "" && name == "" {
		return &reportedError{msg: "snapshot_id and name are both NULL", errno: syscall.EINVAL}
	}
	if i.hasDataFile {
		return syscall.ENOTSUP
	}
	k := i.findSnapshot(id, name)
	if k < 0 {
		return &reportedError{msg: "Can't find the snapshot", errno: syscall.ENOENT}
	}
	sn := i.snapshots[k]
	if err := i.validateSnapshotL1(&sn); err != nil {
		return err
	}
	old := i.snapshots
	i.snapshots = append(append([]snapshot(nil), old[:k]...), old[k+1:]...)
	if err := i.writeSnapshots(); err != nil {
		i.snapshots = old
		return errnof(err, "Failed to remove snapshot from snapshot list")
	}
	// The snapshot is gone; failures from here on only leak clusters.
	if err := i.updateSnapshotRefcount(int64(sn.L1TableOffset), sn.L1Size, -1); err != nil {
		return errnof(err, "Failed to free the cluster and L1 table")
	}
	i.freeClusters(int64(sn.L1TableOffset), int64(sn.L1Size)*l1EntrySize, discardSnapshot)
	if err := i.updateSnapshotRefcount(i.l1Offset, uint32(len(i.l1)), 0); err != nil {
		return errnof(err, "Failed to update snapshot status in disk")
	}
	return nil
}

// OpenSnapshot returns a read-only view of a snapshot's disk state: the
// image with the snapshot's L1 table in place of the active one (QEMU's
// qcow2_snapshot_load_tmp). The first snapshot with that ID and name (an
// empty string matches any) is taken. As in QEMU, the view keeps the
// image's current virtual size and backing image. Closing the view leaves
// the image open.
func (i *Image) OpenSnapshot(id, name string) (block.Image, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if id == "" && name == "" {
		return nil, &reportedError{msg: "snapshot_id and name are both NULL", errno: syscall.EINVAL}
	}
	k := i.findSnapshot(id, name)
	if k < 0 {
		return nil, &reportedError{msg: "Can't find snapshot", errno: syscall.ENOENT}
	}
	sn := i.snapshots[k]
	if err := i.validateSnapshotL1(&sn); err != nil {
		return nil, err
	}
	l1, err := i.readL1Table(int64(sn.L1TableOffset), sn.L1Size, "Snapshot L1 table")
	if err != nil {
		return nil, errnof(err, "Failed to read l1 table for snapshot")
	}
	if i.write {
		// The view reads metadata from the file.
		if err := i.flushLocked(); err != nil {
			return nil, err
		}
	}
	o := &block.DriverOptions{Filename: i.name, Options: i.opts, NoIO: true}
	if i.hasDataFile {
		o.OpenRelated = func(string, bool) (storage.File, error) { return nopCloser{i.data}, nil }
	}
	v, err := open(i.f, o)
	if err != nil {
		return nil, err
	}
	v.l1, v.l1Offset = l1, int64(sn.L1TableOffset)
	v.size = i.size
	v.aes = i.aes
	v.backing, v.backingSize = i.backing, i.backingSize
	v.notice = i.notice
	return v, nil
}
