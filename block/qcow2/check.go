package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/storage"
)

// This file is `qemu-img check` for qcow2: it walks every structure of the
// image, counts the references to each host cluster in an in-memory
// refcount table (repair.go), compares them with the refcounts on disk and
// checks the COPIED flags, and with -r repairs what it may. The order of
// the walk, the lines printed for each problem and the counts follow QEMU
// 7.2's qcow2_co_check_locked, qcow2_check_refcounts and the functions they
// call, so that qimg and qemu-img report the same on the same image.

// fixFlags are the repairs a check may make (QEMU's BdrvCheckMode).
type fixFlags uint8

const (
	// fixLeaks frees leaked clusters.
	fixLeaks fixFlags = 1 << iota
	// fixErrors repairs corruptions.
	fixErrors
)

// fixFlagsOf converts a block layer repair mode.
func fixFlagsOf(m block.FixMode) fixFlags {
	switch m {
	case block.FixLeaks:
		return fixLeaks
	case block.FixAll:
		return fixLeaks | fixErrors
	}
	return 0
}

// checkFragInfo asks a walk of an L1 table to count allocated, fragmented
// and compressed clusters (only the active table's are).
const checkFragInfo = 1

// errNoMedium is QEMU's ENOMEDIUM: the check of an image that a fatal
// corruption made unusable.
var errNoMedium = syscall.ENOMEDIUM

// checker is one run of a check.
type checker struct {
	i *Image
	// report receives the lines QEMU prints to stderr.
	report func(string)
	// prog prefixes lines QEMU prints with error_report.
	prog string
	// imrt holds the references counted.
	imrt *refcountArray
	// buf holds one L2 table.
	buf []byte
	// length caches the file length; -1 when unknown.
	length int64
	// memLimit, when set, replaces maxCheckMemory (for tests).
	memLimit int64
}

// Check examines the image as `qemu-img check` does and, with fix,
// repairs it as `qemu-img check -r leaks|all` does. report receives the
// lines QEMU prints to stderr for each problem.
func (i *Image) Check(fix block.FixMode, report func(msg string)) (block.CheckResult, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if report == nil {
		report = func(string) {}
	}
	if i.broken != nil {
		return block.CheckResult{}, errNoMedium
	}
	if fix != block.FixNone && !i.write {
		return block.CheckResult{}, errReadOnly
	}
	return i.check(fixFlagsOf(fix), report)
}

// check is Check with the lock held (QEMU's qcow2_co_check_locked).
func (i *Image) check(fix fixFlags, report func(string)) (block.CheckResult, error) {
	var result, snapRes, rcRes block.CheckResult
	// The walk reads L2 tables from the file: write changes back first,
	// and forget the tables afterwards, since repairs write them
	// directly.
	if i.write {
		if err := i.l2Cache.write(); err != nil {
			return result, err
		}
	}
	i.l2Cache.dropAll()
	defer i.l2Cache.dropAll()
	c := &checker{i: i, report: report, prog: i.prog, buf: make([]byte, i.clusterSize), length: -1}
	if err := c.readSnapshotTable(&snapRes, fix); err != nil {
		addCheckResult(&result, &snapRes, false)
		return result, err
	}
	err := c.checkRefcounts(&rcRes, fix)
	addCheckResult(&result, &rcRes, true)
	if err != nil {
		addCheckResult(&result, &snapRes, false)
		return result, err
	}
	err = c.fixSnapshotTable(&snapRes, fix)
	addCheckResult(&result, &snapRes, false)
	if err != nil {
		return result, err
	}
	if fix != 0 && result.CheckErrors == 0 && result.Corruptions == 0 {
		if err := i.markClean(); err != nil {
			return result, err
		}
		return result, i.markConsistent()
	}
	return result, nil
}

// addCheckResult adds the counts of src to out, and with alloc also takes
// its allocation figures (QEMU's qcow2_add_check_result).
func addCheckResult(out, src *block.CheckResult, alloc bool) {
	out.Corruptions += src.Corruptions
	out.Leaks += src.Leaks
	out.CheckErrors += src.CheckErrors
	out.CorruptionsFixed += src.CorruptionsFixed
	out.LeaksFixed += src.LeaksFixed
	if alloc {
		out.ImageEndOffset = src.ImageEndOffset
		out.TotalClusters = src.TotalClusters
		out.AllocatedClusters = src.AllocatedClusters
		out.FragmentedClusters = src.FragmentedClusters
		out.CompressedClusters = src.CompressedClusters
	}
}

// markConsistent clears the corrupt bit after a successful repair.
func (i *Image) markConsistent() error {
	if i.incompat&incompatCorrupt == 0 {
		return nil
	}
	if err := i.flushCaches(); err != nil {
		return err
	}
	i.incompat &^= incompatCorrupt
	return i.updateHeader()
}

// reportf prints one line.
func (c *checker) reportf(format string, args ...any) {
	c.report(fmt.Sprintf(format, args...))
}

// errorReport prints "prog: msg: reason" as QEMU's error_report_err does
// for an error built with error_setg_errno, and returns the error as an
// errno where it has one (metadata corruption is EIO).
func (c *checker) errorReport(msg string, err error) error {
	err = toErrno(err)
	c.reportf("%s: %s: %s", c.prog, msg, storage.Strerror(err))
	return err
}

// fileLength is the length of the image file, rounded up to a sector as
// QEMU's bdrv_getlength gives it. It is kept until forgetLength.
func (c *checker) fileLength() (int64, error) {
	if c.length >= 0 {
		return c.length, nil
	}
	n, err := c.i.f.Size()
	if err != nil {
		return 0, err
	}
	c.length = (n + sectorSize - 1) &^ (sectorSize - 1)
	return c.length, nil
}

// forgetLength makes the next fileLength ask the file again, after writes
// that may have extended it.
func (c *checker) forgetLength() { c.length = -1 }

// inc counts one reference to every cluster of [offset, offset+size)
// (QEMU's qcow2_inc_refcounts_imrt).
func (c *checker) inc(res *block.CheckResult, offset, size int64) error {
	if size <= 0 {
		return nil
	}
	i := c.i
	fileLen, err := c.fileLength()
	if err != nil {
		return err
	}
	// The last cluster may be partly past the end of the file, not more.
	// An offset of 2^63 or more is negative here: past any file.
	end := offset + size
	if offset < 0 || end < offset || end-fileLen >= i.clusterSize {
		c.reportf("ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x%x size 0x%x", offset, size)
		res.Corruptions++
		return nil
	}
	first := offset &^ (i.clusterSize - 1)
	last := (end - 1) &^ (i.clusterSize - 1)
	for off := first; off <= last; off += i.clusterSize {
		k := off >> i.clusterBits
		if k >= c.imrt.size {
			if err := c.imrt.resize(k + 1); err != nil {
				res.CheckErrors++
				return c.memoryError(err)
			}
		}
		rc := c.imrt.get(k)
		if rc == c.imrt.max {
			c.reportf("ERROR: overflow cluster offset=0x%x", off)
			c.report("Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing")
			res.Corruptions++
			continue
		}
		if err := c.imrt.set(k, rc+1); err != nil {
			res.CheckErrors++
			return c.memoryError(err)
		}
	}
	return nil
}

// memoryError explains a check refused for the memory it would take.
func (c *checker) memoryError(err error) error {
	if errors.Is(err, errCheckMemory) {
		c.reportf("ERROR %s", errCheckMemory.Error())
	}
	return toErrno(err)
}

// checkL2 counts the references of the L2 table at l2Offset and checks
// its entries (QEMU's check_refcounts_l2).
func (c *checker) checkL2(res *block.CheckResult, l2Offset int64, flags int, fix fixFlags, active bool) error {
	i := c.i
	table := c.buf
	if err := storage.ReadFull(i.f, table, l2Offset); err != nil {
		c.report("ERROR: I/O error in check_refcounts_l2")
		res.CheckErrors++
		return err
	}
	var nextContiguous int64
	for k := 0; k < i.l2Size; k++ {
		entry, bitmap := i.l2Entry(table, k)
		typ := i.layout.classify(entry)
		if typ != clusterCompressed && entry&l2StdReservedMask != 0 {
			c.reportf("ERROR found l2 entry with reserved bits set: %x", entry)
			res.Corruptions++
		}
		switch typ {
		case clusterCompressed:
			if entry&oflagCopied != 0 {
				c.reportf("ERROR: coffset=0x%x: copied flag must never be set for compressed clusters", entry&i.compressed.clusterOffsetMask)
				entry &^= oflagCopied
				res.Corruptions++
			}
			if i.hasDataFile {
				c.reportf("ERROR compressed cluster %d with data file, entry=0x%x", k, entry)
				res.Corruptions++
				break
			}
			if bitmap != 0 {
				c.reportf("ERROR compressed cluster %d with non-zero subcluster allocation bitmap, entry=0x%x", k, entry)
				res.Corruptions++
				break
			}
			off, size := i.compressed.parse(entry)
			if err := c.inc(res, int64(off), int64(size)); err != nil {
				return err
			}
			if flags&checkFragInfo != 0 {
				// Compressed clusters are fragmented by nature.
				res.AllocatedClusters++
				res.CompressedClusters++
				res.FragmentedClusters++
			}
		case clusterZeroAlloc, clusterNormal:
			off := int64(entry & l2OffsetMask)
			if (bitmap>>32)&bitmap != 0 {
				res.Corruptions++
				c.reportf("ERROR offset=%x: Allocated cluster has corrupted subcluster allocation bitmap", off)
			}
			if off&(i.clusterSize-1) != 0 {
				res.Corruptions++
				containsData := entry&oflagZero == 0
				if i.subPerClus > 1 {
					containsData = bitmap&l2BitmapAllAlloc != 0
				}
				if containsData {
					c.reportf("ERROR offset=%x: Data cluster is not properly aligned; L2 entry corrupted.", off)
				} else {
					c.reportf("%s offset=%x: Preallocated cluster is not properly aligned; L2 entry corrupted.", repairingOr(fix&fixErrors != 0), off)
					if fix&fixErrors != 0 {
						overlap, err := c.zeroL2Entry(res, l2Offset, table, k, active)
						if overlap {
							return err
						}
						if err == nil {
							// The cluster is no longer used.
							continue
						}
					}
				}
			}
			if flags&checkFragInfo != 0 {
				res.AllocatedClusters++
				if nextContiguous != 0 && off != nextContiguous {
					res.FragmentedClusters++
				}
				nextContiguous = off + i.clusterSize
			}
			if !i.hasDataFile {
				if err := c.inc(res, off, i.clusterSize); err != nil {
					return err
				}
			}
		case clusterUnallocated:
			if bitmap&l2BitmapAllAlloc != 0 {
				res.Corruptions++
				c.report("ERROR: Unallocated cluster has non-zero subcluster allocation map")
			}
		}
	}
	return nil
}

// repairingOr is how QEMU starts a line about a problem it may repair.
func repairingOr(repair bool) string {
	if repair {
		return "Repairing"
	}
	return "ERROR"
}

// zeroL2Entry turns entry k of an L2 table into a zero cluster (with
// extended L2 entries, its allocated subclusters into zero ones) and
// writes it (QEMU's fix_l2_entry_by_zero). It reports whether the write
// would have hit other metadata.
func (c *checker) zeroL2Entry(res *block.CheckResult, l2Offset int64, table []byte, k int, active bool) (bool, error) {
	i := c.i
	if i.subPerClus > 1 {
		_, bitmap := i.l2Entry(table, k)
		bitmap |= bitmap << 32
		bitmap &= l2BitmapAllZero
		i.setL2Bitmap(table, k, bitmap)
		i.setL2Entry(table, k, 0)
	} else {
		i.setL2Entry(table, k, oflagZero)
	}
	entryOffset := l2Offset + int64(k*i.l2EntryBytes)
	ign := olInactiveL2
	if active {
		ign = olActiveL2
	}
	if err := i.overlapCheck(ign, entryOffset, int64(i.l2EntryBytes)); err != nil {
		c.report("ERROR: Overlap check failed")
		res.CheckErrors++
		return true, toErrno(err)
	}
	b := table[k*i.l2EntryBytes : (k+1)*i.l2EntryBytes]
	if err := i.writeSync(b, entryOffset); err != nil {
		c.reportf("ERROR: Failed to overwrite L2 table entry: %s", storage.Strerror(err))
		res.CheckErrors++
		return false, err
	}
	res.Corruptions--
	res.CorruptionsFixed++
	return false, nil
}

// l1ReadChunk is how many L1 entries a check reads at a time.
const l1ReadChunk = 8192

// checkL1 counts the references of an L1 table, its L2 tables and the
// clusters they reference, and checks their entries (QEMU's
// check_refcounts_l1).
func (c *checker) checkL1(res *block.CheckResult, l1Offset int64, l1Size int, flags int, fix fixFlags, active bool) error {
	i := c.i
	if l1Size == 0 {
		return nil
	}
	if err := c.inc(res, l1Offset, int64(l1Size)*l1EntrySize); err != nil {
		return err
	}
	// Entries past the end of the file read as zeroes: no need to read
	// them.
	fileLen, err := c.fileLength()
	if err != nil {
		return err
	}
	stored := int(min(int64(l1Size), max(0, ceilDiv(fileLen-l1Offset, l1EntrySize))))
	raw := make([]byte, min(stored, l1ReadChunk)*l1EntrySize)
	for start := 0; start < stored; start += l1ReadChunk {
		n := min(stored-start, l1ReadChunk)
		if err := storage.ReadFull(i.f, raw[:n*l1EntrySize], l1Offset+int64(start)*l1EntrySize); err != nil {
			c.report("ERROR: I/O error in check_refcounts_l1")
			res.CheckErrors++
			return err
		}
		for k := 0; k < n; k++ {
			entry := binary.BigEndian.Uint64(raw[k*l1EntrySize:])
			if entry == 0 {
				continue
			}
			if entry&l1ReservedMask != 0 {
				c.reportf("ERROR found L1 entry with reserved bits set: %x", entry)
				res.Corruptions++
			}
			l2Offset := int64(entry & l1OffsetMask)
			if err := c.inc(res, l2Offset, i.clusterSize); err != nil {
				return err
			}
			if l2Offset&(i.clusterSize-1) != 0 {
				c.reportf("ERROR l2_offset=%x: Table is not cluster aligned; L1 entry corrupted", l2Offset)
				res.Corruptions++
			}
			if err := c.checkL2(res, l2Offset, flags, fix, active); err != nil {
				return err
			}
		}
	}
	return nil
}

// calculateRefcounts counts every reference of the image into the
// in-memory refcount table (QEMU's calculate_refcounts).
func (c *checker) calculateRefcounts(res *block.CheckResult, fix fixFlags, rebuild *bool) error {
	i := c.i
	if err := c.inc(res, 0, i.clusterSize); err != nil {
		return err
	}
	if err := c.checkL1(res, i.l1Offset, len(i.l1), checkFragInfo, fix, true); err != nil {
		return err
	}
	if i.hasDataFile && len(i.snapshots) > 0 {
		c.reportf("ERROR %d snapshots in image with data file", len(i.snapshots))
		res.Corruptions++
	}
	for _, sn := range i.snapshots {
		if int64(sn.L1TableOffset)&(i.clusterSize-1) != 0 {
			c.reportf("ERROR snapshot %s (%s) l1_offset=%#x: L1 table is not cluster aligned; snapshot table entry corrupted", sn.ID, sn.Name, sn.L1TableOffset)
			res.Corruptions++
			continue
		}
		if sn.L1Size > maxL1Bytes/l1EntrySize {
			c.reportf("ERROR snapshot %s (%s) l1_size=%#x: L1 table is too large; snapshot table entry corrupted", sn.ID, sn.Name, sn.L1Size)
			res.Corruptions++
			continue
		}
		if err := c.checkL1(res, int64(sn.L1TableOffset), int(sn.L1Size), 0, fix, false); err != nil {
			return err
		}
	}
	if err := c.inc(res, i.snapshotsOff, i.snapshotsSize); err != nil {
		return err
	}
	if err := c.inc(res, i.reftableOff, int64(len(i.reftable))*reftableEntrySize); err != nil {
		return err
	}
	if x := i.ext.Crypto; x != nil && x.Length != 0 {
		if err := c.inc(res, int64(x.Offset), int64(x.Length)); err != nil {
			return err
		}
	}
	if err := c.checkBitmaps(res); err != nil {
		return err
	}
	return c.checkRefcountBlocks(res, fix, rebuild)
}

// checkBitmaps counts the bitmap directory, the bitmap tables and the
// bitmap data (QEMU's qcow2_check_bitmaps_refcounts).
func (c *checker) checkBitmaps(res *block.CheckResult) error {
	i := c.i
	bm := i.ext.Bitmaps
	if bm == nil || i.autoclear&autoclearBitmaps == 0 {
		return nil
	}
	if err := c.inc(res, int64(bm.DirectoryOffset), int64(bm.DirectorySize)); err != nil {
		return err
	}
	for _, b := range i.bitmaps {
		if err := c.inc(res, int64(b.TableOffset), int64(b.TableSize)*8); err != nil {
			return err
		}
		raw := make([]byte, int(b.TableSize)*8)
		if err := storage.ReadFull(i.f, raw, int64(b.TableOffset)); err != nil {
			res.Corruptions++
			return err
		}
		for k := 0; k < len(raw); k += 8 {
			if !validBitmapTableEntry(binary.BigEndian.Uint64(raw[k:]), i.clusterSize) {
				res.Corruptions++
				return syscall.EINVAL
			}
		}
		for k := 0; k < len(raw); k += 8 {
			if off := int64(binary.BigEndian.Uint64(raw[k:]) & bmeTableOffsetMask); off != 0 {
				if err := c.inc(res, off, i.clusterSize); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// Bitmap table entry bits.
const (
	bmeTableReservedMask = 0xff000000000001fe
	bmeTableOffsetMask   = 0x00fffffffffffe00
	bmeTableAllOnes      = 1
)

// validBitmapTableEntry applies QEMU's check_table_entry.
func validBitmapTableEntry(entry uint64, clusterSize int64) bool {
	if entry&bmeTableReservedMask != 0 {
		return false
	}
	off := entry & bmeTableOffsetMask
	return off == 0 || (entry&bmeTableAllOnes == 0 && off%uint64(clusterSize) == 0)
}

// checkRefcountBlocks checks the refcount table's entries and counts the
// refcount blocks (QEMU's check_refblocks).
func (c *checker) checkRefcountBlocks(res *block.CheckResult, fix fixFlags, rebuild *bool) error {
	i := c.i
	for k, e := range i.reftable {
		off := int64(e & reftOffsetMask)
		cluster := off >> i.clusterBits
		if e&^reftOffsetMask != 0 {
			c.reportf("ERROR refcount table entry %d has reserved bits set", k)
			res.Corruptions++
			*rebuild = true
			continue
		}
		if off&(i.clusterSize-1) != 0 {
			c.reportf("ERROR refcount block %d is not cluster aligned; refcount table entry corrupted", k)
			res.Corruptions++
			*rebuild = true
			continue
		}
		if cluster < 0 || cluster >= c.imrt.size {
			res.Corruptions++
			c.reportf("%s refcount block %d is outside image", repairingOr(fix&fixErrors != 0), k)
			if fix&fixErrors == 0 {
				continue
			}
			grown, err := c.growFileFor(res, off)
			if err != nil {
				return err
			}
			if !grown {
				*rebuild = true
			}
			continue
		}
		if off == 0 {
			continue
		}
		if err := c.inc(res, off, i.clusterSize); err != nil {
			return err
		}
		if rc := c.imrt.get(cluster); rc != 1 {
			c.reportf("ERROR refcount block %d refcount=%d", k, rc)
			res.Corruptions++
			*rebuild = true
		}
	}
	return nil
}

// growFileFor extends the file to hold a refcount block that lies past its
// end and counts the block. It reports whether it could; an error means
// the check cannot go on.
func (c *checker) growFileFor(res *block.CheckResult, off int64) (bool, error) {
	i := c.i
	resizeFailed := func(err error) (bool, error) {
		c.reportf("ERROR could not resize image: %s", storage.Strerror(toErrno(err)))
		return false, nil
	}
	if off < 0 || off > 1<<63-1-i.clusterSize {
		// The new length does not fit in an int64 (QEMU's truncate
		// fails the same way, printing only this).
		return resizeFailed(syscall.EINVAL)
	}
	c.forgetLength()
	if err := i.f.Truncate(off + i.clusterSize); err != nil {
		c.reportf("%s: %s", c.prog, storage.Strerror(toErrno(err)))
		return resizeFailed(err)
	}
	size, err := c.fileLength()
	if err != nil {
		return resizeFailed(err)
	}
	if err := c.imrt.resize(max(c.imrt.size, i.sizeToClusters(size))); err != nil {
		res.CheckErrors++
		return false, c.memoryError(err)
	}
	if off>>i.clusterBits >= c.imrt.size {
		return resizeFailed(syscall.EINVAL)
	}
	res.Corruptions--
	res.CorruptionsFixed++
	return true, c.inc(res, off, i.clusterSize)
}

// refcountReader reads the refcounts of clusters in order, holding the
// refcount block it read last, so that a walk over every cluster does not
// go through the cache for each one.
type refcountReader struct {
	i *Image
	// index is the refcount table index held, -1 for none.
	index int64
	// e is the block held; nil with index set means no block (all
	// refcounts zero).
	e *cacheEntry
}

func newRefcountReader(i *Image) *refcountReader { return &refcountReader{i: i, index: -1} }

// get returns the refcount of cluster k.
func (r *refcountReader) get(k int64) (uint64, error) {
	i := r.i
	if index := k >> i.rbBits; index != r.index {
		r.release()
		off, _, err := i.refcountBlockOffset(k)
		if err != nil {
			return 0, err
		}
		if off != 0 {
			if r.e, err = i.rcCache.get(off); err != nil {
				return 0, err
			}
		}
		r.index = index
	}
	if r.e == nil {
		return 0, nil
	}
	return i.refcount.get(r.e.data, uint64(k&(i.rbSize-1))), nil
}

// release lets the cache have the block back; call it before refcounts
// change.
func (r *refcountReader) release() {
	if r.e != nil {
		r.i.rcCache.put(r.e)
	}
	r.e, r.index = nil, -1
}

// compareRefcounts compares the refcounts on disk with the references
// counted, and repairs differences as fix allows (QEMU's
// compare_refcounts). A cluster referenced but with refcount 0 asks for a
// rebuild of the refcount structure.
func (c *checker) compareRefcounts(res *block.CheckResult, fix fixFlags, rebuild *bool, highest *int64) {
	i := c.i
	*highest = 0
	rr := newRefcountReader(i)
	defer rr.release()
	for k := int64(0); k < c.imrt.size; k++ {
		if k&(i.rbSize-1) == 0 {
			// Skip refcount blocks that do not exist and whose
			// clusters were never referenced: both sides are zero.
			if off, _, err := i.refcountBlockOffset(k); err == nil && off == 0 {
				if next := c.imrt.nextUsed(k); next >= k+i.rbSize {
					k = min(next&^(i.rbSize-1), c.imrt.size) - 1
					continue
				}
			}
		}
		onDisk, err := rr.get(k)
		if err != nil {
			c.reportf("Can't get refcount for cluster %d: %s", k, storage.Strerror(toErrno(err)))
			res.CheckErrors++
			continue
		}
		counted := c.imrt.get(k)
		if onDisk > 0 || counted > 0 {
			*highest = k
		}
		if onDisk == counted {
			continue
		}
		var fixed *int64
		switch {
		case onDisk == 0:
			*rebuild = true
		case onDisk > counted && fix&fixLeaks != 0:
			fixed = &res.LeaksFixed
		case onDisk < counted && fix&fixErrors != 0:
			fixed = &res.CorruptionsFixed
		}
		what := "Leaked"
		switch {
		case fixed != nil:
			what = "Repairing"
		case onDisk < counted:
			what = "ERROR"
		}
		c.reportf("%s cluster %d refcount=%d reference=%d", what, k, onDisk, counted)
		if fixed != nil {
			diff, decrease := counted-onDisk, false
			if onDisk > counted {
				diff, decrease = onDisk-counted, true
			}
			rr.release()
			if i.updateRefcount(k<<i.clusterBits, 1, diff, decrease, discardAlways) == nil {
				*fixed++
				continue
			}
		}
		if onDisk < counted {
			res.Corruptions++
		} else {
			res.Leaks++
		}
	}
}

// checkRefcounts counts all references, compares them with the refcounts
// on disk and repairs as fix allows, rebuilding the refcount structure
// when it is broken and -r all was given (QEMU's qcow2_check_refcounts).
func (c *checker) checkRefcounts(res *block.CheckResult, fix fixFlags) error {
	i := c.i
	size, err := c.fileLength()
	if err != nil {
		res.CheckErrors++
		return err
	}
	nbClusters := i.sizeToClusters(size)
	if nbClusters > maxCheckClusters {
		res.CheckErrors++
		return syscall.EFBIG
	}
	res.TotalClusters = i.sizeToClusters(i.size)
	c.imrt = newRefcountArray(uint(i.hdr.RefcountOrder), i.clusterSize)
	if c.memLimit != 0 {
		c.imrt.limit = c.memLimit
	}
	if err := c.imrt.resize(nbClusters); err != nil {
		res.CheckErrors++
		return c.memoryError(err)
	}
	rebuild := false
	if err := c.calculateRefcounts(res, fix, &rebuild); err != nil {
		return err
	}
	// When nothing needs rebuilding but something is to be fixed, the
	// comparison runs again with fixing; the first one only reports.
	preCompare := *res
	var highest int64
	c.compareRefcounts(res, 0, &rebuild, &highest)

	switch {
	case rebuild && fix&fixErrors != 0:
		old := *res
		freshLeaks := int64(0)
		c.report("Rebuilding refcount structure")
		err := c.rebuildRefcounts(res)
		c.forgetLength()
		if err != nil {
			return err
		}
		res.Corruptions, res.Leaks = 0, 0
		// The references must be counted again: the old structure
		// was exchanged for the new one.
		rebuild = false
		c.imrt.reset()
		if err := c.calculateRefcounts(res, 0, &rebuild); err != nil {
			return err
		}
		if fix&fixLeaks != 0 {
			// The old refcount structure now leaks; free it. Any
			// leak left was made by the rebuild itself.
			saved := *res
			*res = block.CheckResult{}
			c.compareRefcounts(res, fixLeaks, &rebuild, &highest)
			if rebuild {
				c.report("ERROR rebuilt refcount structure is still broken")
			}
			freshLeaks = res.Leaks
			*res = saved
		}
		if res.Corruptions < old.Corruptions {
			res.CorruptionsFixed += old.Corruptions - res.Corruptions
		}
		if res.Leaks < old.Leaks {
			res.LeaksFixed += old.Leaks - res.Leaks
		}
		res.Leaks += freshLeaks
	case fix != 0:
		if rebuild {
			c.report("ERROR need to rebuild refcount structures")
			res.CheckErrors++
			return syscall.EIO
		}
		if res.Leaks != 0 || res.Corruptions != 0 {
			*res = preCompare
			c.compareRefcounts(res, fix, &rebuild, &highest)
		}
	}
	if err := c.checkCopiedFlags(res, fix); err != nil {
		return err
	}
	res.ImageEndOffset = (highest + 1) * i.clusterSize
	return nil
}

// checkCopiedFlags checks that the COPIED flag of every active L1 and L2
// entry is set exactly when the refcount of the cluster it points to is
// one, and repairs them when that is safe (QEMU's check_oflag_copied).
// Refcounts that cannot be read were reported already.
func (c *checker) checkCopiedFlags(res *block.CheckResult, fix fixFlags) error {
	i := c.i
	var repair bool
	switch {
	case fix&fixErrors != 0:
		repair = true
	case fix&fixLeaks != 0:
		// The refcounts were just repaired: trust them only if that
		// went well.
		repair = res.CheckErrors == 0 && res.Corruptions == 0 && res.Leaks == 0
	}
	table := c.buf
	rr := newRefcountReader(i)
	defer rr.release()
	for k, l1e := range i.l1 {
		l2Offset := int64(l1e & l1OffsetMask)
		if l2Offset == 0 {
			continue
		}
		rc, err := rr.get(l2Offset >> i.clusterBits)
		if err != nil {
			continue
		}
		if (rc == 1) != (l1e&oflagCopied != 0) {
			res.Corruptions++
			c.reportf("%s OFLAG_COPIED L2 cluster: l1_index=%d l1_entry=%x refcount=%d", repairingOr(repair), k, l1e, rc)
			if repair {
				if rc == 1 {
					i.l1[k] = l1e | oflagCopied
				} else {
					i.l1[k] = l1e &^ oflagCopied
				}
				if err := i.writeL1Entry(int64(k)); err != nil {
					res.CheckErrors++
					return toErrno(err)
				}
				res.Corruptions--
				res.CorruptionsFixed++
			}
		}
		if err := storage.ReadFull(i.f, table, l2Offset); err != nil {
			c.reportf("ERROR: Could not read L2 table: %s", storage.Strerror(err))
			res.CheckErrors++
			return err
		}
		var dirty int64
		for j := 0; j < i.l2Size; j++ {
			entry, _ := i.l2Entry(table, j)
			typ := i.layout.classify(entry)
			if typ != clusterNormal && typ != clusterZeroAlloc {
				continue
			}
			rc := uint64(1)
			if !i.hasDataFile {
				var err error
				if rc, err = rr.get(int64(entry&l2OffsetMask) >> i.clusterBits); err != nil {
					continue
				}
			}
			if (rc == 1) == (entry&oflagCopied != 0) {
				continue
			}
			res.Corruptions++
			c.reportf("%s OFLAG_COPIED data cluster: l2_entry=%x refcount=%d", repairingOr(repair), entry, rc)
			if repair {
				if rc == 1 {
					i.setL2Entry(table, j, entry|oflagCopied)
				} else {
					i.setL2Entry(table, j, entry&^oflagCopied)
				}
				dirty++
			}
		}
		if dirty == 0 {
			continue
		}
		if err := i.overlapCheck(olActiveL2, l2Offset, i.clusterSize); err != nil {
			err = toErrno(err)
			c.reportf("ERROR: Could not write L2 table; metadata overlap check failed: %s", storage.Strerror(err))
			res.CheckErrors++
			return err
		}
		if _, err := i.f.WriteAt(table, l2Offset); err != nil {
			c.reportf("ERROR: Could not write L2 table: %s", storage.Strerror(err))
			res.CheckErrors++
			return err
		}
		res.Corruptions -= dirty
		res.CorruptionsFixed += dirty
	}
	return nil
}

// readSnapshotTable reads the snapshot table for the check, from the
// header on disk (an image opened for a check does not trust it), dropping
// what -r all repairs (QEMU's qcow2_check_read_snapshot_table).
func (c *checker) readSnapshotTable(res *block.CheckResult, fix fixFlags) error {
	i := c.i
	var ptr [12]byte
	if err := storage.ReadFull(i.f, ptr[:], 60); err != nil {
		res.CheckErrors++
		c.reportf("ERROR failed to read the snapshot table pointer from the image header: %s", storage.Strerror(err))
		return err
	}
	nb := int64(binary.BigEndian.Uint32(ptr[0:]))
	off := int64(binary.BigEndian.Uint64(ptr[4:]))
	i.snapshots, i.snapshotsOff, i.snapshotsSize, i.snapshotsUnread = nil, off, 0, false
	overhanging := 0
	if nb > maxSnapshots && fix&fixErrors != 0 {
		c.reportf("Discarding %d overhanging snapshots", nb-maxSnapshots)
		overhanging += int(nb - maxSnapshots)
		nb = maxSnapshots
	}
	if err := i.validateTable(uint64(off), uint64(nb), snapshotHeaderSize, snapshotHeaderSize*maxSnapshots, "snapshot table", -1); err != nil {
		res.CheckErrors++
		c.reportf("%s: ERROR %s", c.prog, err.Error())
		if nb > maxSnapshots {
			c.reportf("You can force-remove all %d overhanging snapshots with qemu-img check -r all", nb-maxSnapshots)
		}
		i.snapshotsOff = 0
		if nb > maxSnapshots {
			return syscall.EFBIG
		}
		return syscall.EINVAL
	}
	var repair *snapshotRepair
	if fix&fixErrors != 0 {
		repair = &snapshotRepair{report: c.report}
	}
	sns, size, err := decodeSnapshotTable(&snapshotZeroReader{f: i.f, base: off}, int(nb), uint64(i.size), repair)
	if err != nil {
		res.CheckErrors++
		c.reportf("%s: ERROR failed to read the snapshot table: %s", c.prog, err.Error())
		var h *hintError
		if errors.As(err, &h) {
			c.report(h.hint)
		}
		i.snapshotsOff = 0
		if h != nil {
			return syscall.EFBIG
		}
		return syscall.EIO
	}
	i.snapshots, i.snapshotsSize = sns, int64(size)
	dropped := 0
	if repair != nil {
		overhanging += repair.overhanging
		dropped = repair.extraDropped
	}
	res.Corruptions += int64(overhanging + dropped)
	if overhanging != 0 {
		// The header must say how many snapshots remain before the
		// refcounts are checked; this leaks the dropped ones' clusters,
		// which the check then frees.
		var d [4]byte
		binary.BigEndian.PutUint32(d[:], uint32(len(sns)))
		if err := i.writeSync(d[:], 60); err != nil {
			res.CheckErrors++
			c.reportf("ERROR failed to update the snapshot count in the image header: %s", storage.Strerror(err))
			return err
		}
		res.CorruptionsFixed += int64(overhanging)
		res.Corruptions -= int64(overhanging)
	}
	// Every snapshot of a version 3 image records its VM state size and
	// disk size (16 bytes of extra data).
	if i.hdr.Version >= 3 {
		for k, sn := range sns {
			if sn.ExtraDataSize < 16 {
				res.Corruptions++
				c.reportf("%s snapshot table entry %d is incomplete", repairingOr(fix&fixErrors != 0), k)
			}
		}
	}
	return nil
}

// snapshotZeroReader reads a snapshot table from a file; bytes past the
// end of the file read as zeroes, as in QEMU.
type snapshotZeroReader struct {
	f    storage.File
	base int64
}

func (r *snapshotZeroReader) readAt(p []byte, off int64) error {
	if err := storage.ReadFull(r.f, p, r.base+off); err != nil {
		return fmt.Errorf("Failed to read snapshot table: %s", storage.Strerror(err))
	}
	return nil
}

// fixSnapshotTable rewrites a snapshot table the check found broken, once
// the refcounts can be trusted to allocate it (QEMU's
// qcow2_check_fix_snapshot_table).
func (c *checker) fixSnapshotTable(res *block.CheckResult, fix fixFlags) error {
	if res.Corruptions == 0 || fix&fixErrors == 0 {
		return nil
	}
	if err := c.i.writeSnapshots(); err != nil {
		res.CheckErrors++
		err = toErrno(err)
		c.reportf("ERROR failed to update snapshot table: %s", storage.Strerror(err))
		return err
	}
	res.CorruptionsFixed += res.Corruptions
	res.Corruptions = 0
	return nil
}
