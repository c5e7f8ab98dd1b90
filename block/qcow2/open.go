package qcow2

import (
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/storage"
)

// Driver is the qcow2 format driver.
type Driver struct{}

// New returns the qcow2 driver.
func New() *Driver { return &Driver{} }

// Name returns "qcow2".
func (*Driver) Name() string { return "qcow2" }

// Probe recognises the qcow2 signature with version 2 or later, as QEMU's
// qcow2_probe does. QEMU probes a zero-padded 512-byte buffer, so a file
// shorter than a header still probes as qcow2.
func (*Driver) Probe(p *block.ProbeInput) int {
	b := p.Header
	if len(b) >= 8 && binary.BigEndian.Uint32(b) == Magic && binary.BigEndian.Uint32(b[4:]) >= 2 {
		return 100
	}
	return 0
}

// Runtime option names (QEMU's QCOW2_OPT_*).
const (
	optDataFile           = "data-file"
	optLazyRefcounts      = "lazy-refcounts"
	optDiscardRequest     = "pass-discard-request"
	optDiscardSnapshot    = "pass-discard-snapshot"
	optDiscardOther       = "pass-discard-other"
	optOverlap            = "overlap-check"
	optOverlapTemplate    = "overlap-check.template"
	optCacheSize          = "cache-size"
	optL2CacheSize        = "l2-cache-size"
	optL2CacheEntrySize   = "l2-cache-entry-size"
	optRefcountCacheSize  = "refcount-cache-size"
	optCacheCleanInterval = "cache-clean-interval"
	optEncryptKeySecret   = "encrypt.key-secret"
	optEncryptFormat      = "encrypt.format"
)

// Overlap check bits (QEMU's QCow2MetadataOverlap).
const (
	olMainHeader = 1 << iota
	olActiveL1
	olActiveL2
	olRefcountTable
	olRefcountBlock
	olSnapshotTable
	olInactiveL1
	olInactiveL2
	olBitmapDirectory
	olMaxBits = iota

	olConstant = olMainHeader | olActiveL1 | olRefcountTable | olSnapshotTable | olBitmapDirectory
	olCached   = olConstant | olActiveL2 | olRefcountBlock | olInactiveL1
	olAll      = olCached | olInactiveL2
)

// overlapNames name the overlap check bits in messages and options.
var overlapNames = [olMaxBits]string{
	"qcow2_header", "active L1 table", "active L2 table", "refcount table", "refcount block",
	"snapshot table", "inactive L1 table", "inactive L2 table", "bitmap directory",
}

// overlapOptions are the per-structure overlap check options.
var overlapOptions = [olMaxBits]string{
	"overlap-check.main-header", "overlap-check.active-l1", "overlap-check.active-l2",
	"overlap-check.refcount-table", "overlap-check.refcount-block", "overlap-check.snapshot-table",
	"overlap-check.inactive-l1", "overlap-check.inactive-l2", "overlap-check.bitmap-directory",
}

// Cache defaults (QEMU on Linux).
const (
	defaultL2CacheMax         = 32 << 20
	defaultCacheCleanInterval = 600 * time.Second
	minL2CacheEntries         = 2
	minRefcountCacheClusters  = 4
)

// OpenSpecs lists qcow2's runtime options.
func (*Driver) OpenSpecs() []block.OptionSpec {
	specs := []block.OptionSpec{
		{Name: optDataFile, Type: block.OptString, Help: "File name of the external data file"},
		{Name: optLazyRefcounts, Type: block.OptBool, Help: "Postpone refcount updates"},
		{Name: optDiscardRequest, Type: block.OptBool, Help: "Pass guest discard requests to the layer below"},
		{Name: optDiscardSnapshot, Type: block.OptBool, Help: "Generate discard requests when snapshot related space is freed"},
		{Name: optDiscardOther, Type: block.OptBool, Help: "Generate discard requests when other clusters are freed"},
		{Name: optOverlap, Type: block.OptString, Help: "Selects which overlap checks to perform from a range of templates (none, constant, cached, all)"},
		{Name: optOverlapTemplate, Type: block.OptString, Help: "Selects which overlap checks to perform from a range of templates (none, constant, cached, all)"},
	}
	for _, name := range overlapOptions {
		specs = append(specs, block.OptionSpec{Name: name, Type: block.OptBool})
	}
	return append(specs,
		block.OptionSpec{Name: optCacheSize, Type: block.OptSize, Help: "Maximum combined metadata (L2 tables and refcount blocks) cache size"},
		block.OptionSpec{Name: optL2CacheSize, Type: block.OptSize, Help: "Maximum L2 table cache size"},
		block.OptionSpec{Name: optL2CacheEntrySize, Type: block.OptSize, Help: "Size of each entry in the L2 cache"},
		block.OptionSpec{Name: optRefcountCacheSize, Type: block.OptSize, Help: "Maximum refcount block cache size"},
		block.OptionSpec{Name: optCacheCleanInterval, Type: block.OptNumber, Help: "Clean unused cache entries after this time (in seconds)"},
		block.OptionSpec{Name: optEncryptKeySecret, Type: block.OptString, Help: "ID of secret providing qcow2 AES key or LUKS passphrase"},
		block.OptionSpec{Name: optEncryptFormat, Type: block.OptString, Help: "Encryption format"},
	)
}

// Discard kinds (QEMU's qcow2_discard_type): whether freeing clusters for a
// reason also punches holes in the file.
type discardKind int

const (
	discardNever discardKind = iota
	discardAlways
	discardRequest
	discardSnapshot
	discardOther
	discardKinds
)

// errCorrupt marks errors caused by inconsistent metadata.
var errCorrupt = block.ErrCorrupt

// Image is an open qcow2 image.
type Image struct {
	f    storage.File // the qcow2 file
	data storage.File // where guest data lives: f, or the external data file
	name string
	// hasDataFile is set with an external data file.
	hasDataFile bool
	// mdPrealloc says whether the image looked preallocated with
	// metadata when BlockStatus was first called (mdPreallocChecked):
	// its data clusters are then looked up in the data file, whose holes
	// read as zeroes.
	mdPrealloc, mdPreallocChecked bool
	dataFileOwned                 bool
	write                         bool
	warn                          func(string)
	notice                        func(string)
	// prog prefixes the errors a check reports as QEMU's error_report.
	prog string
	// forCheck is set when the image was opened to be checked: a dirty
	// image is not repaired on open, a corrupt one may be written.
	forCheck bool
	// snapshotsUnread is set when an image opened for a check has a
	// snapshot table that could not be read; the check reads it.
	snapshotsUnread bool

	hdr Header
	ext Extensions

	backingFile    string
	hasBackingFile bool

	clusterBits  int
	clusterSize  int64
	l2Bits       int
	l2Size       int // entries in an L2 table
	l2EntryBytes int
	l2SliceSize  int // entries in an L2 cache entry
	subBits      int
	subSize      int64
	subPerClus   int
	layout       entryLayout
	compressed   compressedLayout
	refcount     refcountAccess
	refcountMax  uint64
	rbBits       int // log2 of refcounts per refcount block
	rbSize       int64

	// mu guards the metadata below and the caches.
	mu sync.Mutex
	// allocDone is signalled when an in-flight allocation completes.
	allocDone *sync.Cond

	size          int64 // virtual size
	l1            []uint64
	l1Offset      int64
	l1VMStateIdx  int64
	reftable      []uint64
	reftableOff   int64
	reftableMaxIx int

	freeClusterIndex int64
	freeByteOffset   int64

	incompat  uint64
	compat    uint64
	autoclear uint64

	bitmapsMarked bool
	// aes decrypts data of an AES-encrypted image opened with its key.
	aes           cipher.Block
	snapshots     []snapshot
	snapshotsOff  int64
	snapshotsSize int64
	bitmaps       []bitmapEntry

	l2Cache *metaCache
	rcCache *metaCache

	cacheCleanInterval time.Duration
	lazyRefcounts      bool
	overlapChecks      int
	discardPassthrough [discardKinds]bool
	cacheDiscards      bool
	discards           []hostRange

	// inflight lists the allocating writes whose L2 entries are not yet
	// linked.
	inflight []*l2Meta

	// broken is set once a fatal corruption was found; the image then
	// refuses all I/O, as QEMU drops the driver.
	broken error
	// signalled is set once a corruption was reported.
	signalled bool

	backing     block.Image
	backingSize int64

	// opts are the runtime options, applied again after a resize.
	opts *block.Options
	cdc  *codec
	// bufs holds cluster-sized buffers.
	bufs sync.Pool
}

// codec returns the image's (de)compressor.
func (i *Image) codec() *codec { return i.cdc }

// getClusterBuf returns a cluster-sized buffer from the pool.
func (i *Image) getClusterBuf() *[]byte {
	if v := i.bufs.Get(); v != nil {
		return v.(*[]byte)
	}
	b := make([]byte, i.clusterSize)
	return &b
}

// putClusterBuf returns a buffer to the pool.
func (i *Image) putClusterBuf(b *[]byte) { i.bufs.Put(b) }

// hostRange is a range of the image file.
type hostRange struct {
	offset, length int64
}

// Open opens a qcow2 image, checking its header and tables as QEMU's
// qcow2_do_open does.
func (d *Driver) Open(f storage.File, o *block.DriverOptions) (block.Image, error) {
	i, err := open(f, o)
	if err != nil {
		return nil, err
	}
	return i, nil
}

func open(f storage.File, o *block.DriverOptions) (*Image, error) {
	fileSize, err := f.Size()
	if err != nil {
		return nil, fmt.Errorf("Could not read qcow2 header: %s", storage.Strerror(err))
	}
	var fixed [headerV3Length]byte
	if err := storage.ReadFull(f, fixed[:], 0); err != nil {
		return nil, fmt.Errorf("Could not read qcow2 header: %s", storage.Strerror(err))
	}
	if _, err := DecodeHeader(fixed[:]); err != nil {
		return nil, err
	}
	cluster := make([]byte, 1<<binary.BigEndian.Uint32(fixed[20:]))
	if err := storage.ReadFull(f, cluster, 0); err != nil {
		return nil, fmt.Errorf("Could not read qcow2 header: %s", storage.Strerror(err))
	}
	h, err := DecodeHeader(cluster)
	if err != nil {
		return nil, err
	}
	i := &Image{f: f, data: f, name: o.Filename, write: o.Write, hdr: *h, warn: o.Warn}
	if o.Env != nil {
		i.notice, i.prog = o.Env.Notice, o.Env.Prog
	}
	i.allocDone = sync.NewCond(&i.mu)
	i.incompat, i.compat, i.autoclear = h.IncompatibleFeatures, h.CompatibleFeatures, h.AutoclearFeatures

	if i.incompat&^incompatMask != 0 {
		x, _ := ParseExtensions(cluster, h)
		var table []feature
		if x != nil {
			table = x.Features
		}
		return nil, unsupportedFeatures(table, i.incompat&^incompatMask)
	}
	// A corrupt image may be written only to repair it.
	if i.incompat&incompatCorrupt != 0 && o.Write && !o.ForCheck {
		return nil, errors.New("qcow2: Image is corrupt; cannot be opened read/write")
	}
	i.clusterBits = int(h.ClusterBits)
	i.clusterSize = 1 << i.clusterBits
	i.subPerClus = 1
	if i.incompat&incompatExtL2 != 0 {
		i.subPerClus = subclustersPerCluster
	}
	i.subSize = i.clusterSize / int64(i.subPerClus)
	if i.subSize < 1<<minClusterBits {
		return nil, fmt.Errorf("Unsupported subcluster size: %d", i.subSize)
	}
	i.subBits = trailingZeros64(uint64(i.subSize))
	if h.RefcountOrder > 6 {
		return nil, errors.New("Reference count entry width too large; may not exceed 64 bits")
	}
	i.refcount = refcountAccess{order: uint(h.RefcountOrder)}
	i.refcountMax = i.refcount.max()
	i.l2EntryBytes = l2EntrySizeNormal
	if i.subPerClus > 1 {
		i.l2EntryBytes = l2EntrySizeExt
	}
	i.l2Bits = i.clusterBits - trailingZeros64(uint64(i.l2EntryBytes))
	i.l2Size = 1 << i.l2Bits
	i.rbBits = i.clusterBits - (int(h.RefcountOrder) - 3)
	i.rbSize = 1 << i.rbBits
	i.size = int64(h.Size/sectorSize) * sectorSize
	i.compressed = newCompressedLayout(i.clusterBits)
	i.cdc = newCodec(h.CompressionType, int(i.clusterSize))
	i.layout = entryLayout{clusterBits: i.clusterBits, extendedL2: i.subPerClus > 1}
	i.opts = o.Options

	if h.RefcountTableClusters == 0 && !o.ForCheck {
		return nil, errors.New("Image does not contain a reference count table")
	}
	if err := i.validateTable(h.RefcountTableOffset, uint64(h.RefcountTableClusters), uint64(i.clusterSize),
		maxRefcountTableBytes, "Reference count table", fileSize); err != nil {
		return nil, err
	}
	// A check reads the snapshot table itself and reports what is wrong
	// with it (QEMU's open in check mode does not read it).
	i.forCheck = o.ForCheck
	if err := i.validateTable(h.SnapshotsOffset, uint64(h.NbSnapshots), snapshotHeaderSize,
		snapshotHeaderSize*maxSnapshots, "Snapshot table", -1); err != nil && !o.ForCheck {
		return nil, err
	} else if err != nil {
		i.snapshotsUnread = true
	}
	if err := i.validateTable(h.L1TableOffset, uint64(h.L1Size), l1EntrySize, maxL1Bytes, "Active L1 table", fileSize); err != nil {
		return nil, err
	}
	i.l1VMStateIdx = i.sizeToL1(int64(h.Size))
	if i.l1VMStateIdx > 1<<31-1 {
		return nil, errors.New("Image is too big")
	}
	if int64(h.L1Size) < i.l1VMStateIdx {
		return nil, errors.New("L1 table is too small")
	}
	i.l1Offset = int64(h.L1TableOffset)
	if h.L1Size > 0 {
		if i.l1, err = readTable(f, i.l1Offset, int(h.L1Size)); err != nil {
			return nil, fmt.Errorf("Could not read L1 table: %s", storage.Strerror(err))
		}
	}
	if err := i.applyOptions(o.Options); err != nil {
		return nil, err
	}
	if i.hdr.CryptMethod == cryptAES {
		if err := i.setUpAES(o); err != nil {
			return nil, err
		}
	}
	if err := i.loadRefcountTable(); err != nil {
		return nil, fmt.Errorf("Could not initialize refcount handling: %s", storage.Strerror(err))
	}
	x, err := ParseExtensions(cluster, h)
	if err != nil {
		return nil, err
	}
	i.ext = *x
	if x.BitmapsInconsistent {
		i.warnBitmapsInconsistent(o)
	}
	if err := i.openDataFile(o); err != nil {
		return nil, err
	}
	if i.hdr.CryptMethod == cryptLUKS && x.Crypto == nil && !o.NoIO {
		return nil, fmt.Errorf("Missing CRYPTO header for crypt method %d", i.hdr.CryptMethod)
	}
	if h.BackingFileOffset != 0 {
		n := uint64(h.BackingFileSize)
		if n > min(maxBackingFileName, uint64(i.clusterSize)-h.BackingFileOffset) {
			return nil, errors.New("Backing file name too long")
		}
		i.backingFile = string(cluster[h.BackingFileOffset : h.BackingFileOffset+n])
		i.hasBackingFile = true
	}
	i.snapshotsOff, i.snapshotsSize = int64(h.SnapshotsOffset), 0
	if h.NbSnapshots > 0 && !i.snapshotsUnread {
		sns, n, err := readSnapshotTable(f, int64(h.SnapshotsOffset), int(h.NbSnapshots), uint64(i.size))
		switch {
		case err == nil:
			i.snapshots, i.snapshotsSize = sns, n
		case o.ForCheck:
			i.snapshotsUnread = true
		default:
			return nil, err
		}
	}
	if i.ext.Bitmaps != nil {
		bms, err := i.loadBitmapDirectory()
		if err != nil {
			return nil, err
		}
		i.bitmaps = bms
	}
	if o.Write {
		if err := i.openForWriting(); err != nil {
			return nil, err
		}
	}
	return i, nil
}

// trailingZeros64 counts the trailing zero bits of v (v != 0).
func trailingZeros64(v uint64) int {
	n := 0
	for v&1 == 0 && n < 64 {
		v >>= 1
		n++
	}
	return n
}

// sizeToL1 is the number of L1 entries a virtual size needs.
func (i *Image) sizeToL1(size int64) int64 {
	shift := uint(i.clusterBits + i.l2Bits)
	return int64((uint64(size) + (1 << shift) - 1) >> shift)
}

// validateTable checks a table's size against a limit and its offset for
// alignment, as QEMU's qcow2_validate_table does, and (with fileSize >= 0)
// that it lies inside the file.
func (i *Image) validateTable(offset, entries, entryLen, maxBytes uint64, what string, fileSize int64) error {
	if entries > maxBytes/entryLen {
		return fmt.Errorf("%s too large", what)
	}
	const int64Max = 1<<63 - 1
	if int64Max-entries*entryLen < offset || offset&uint64(i.clusterSize-1) != 0 {
		return fmt.Errorf("%s offset invalid", what)
	}
	if fileSize >= 0 && entries > 0 && offset+entries*entryLen > uint64(fileSize) {
		return fmt.Errorf("%s extends beyond the end of the file", what)
	}
	return nil
}

// applyOptions reads the runtime options: cache sizes, lazy refcounts,
// overlap checks and discard passthrough (QEMU's
// qcow2_update_options_prepare).
func (i *Image) applyOptions(o *block.Options) error {
	if o == nil {
		o = block.NewOptions(nil)
	}
	l2Bytes, l2Entry, rcBytes, err := i.cacheSizes(o)
	if err != nil {
		return err
	}
	l2Entries := l2Bytes / l2Entry
	if l2Entries < minL2CacheEntries {
		l2Entries = minL2CacheEntries
	}
	if l2Entries > 1<<31-1 {
		return errors.New("L2 cache size too big")
	}
	rcEntries := rcBytes / uint64(i.clusterSize)
	if rcEntries < minRefcountCacheClusters {
		rcEntries = minRefcountCacheClusters
	}
	if rcEntries > 1<<31-1 {
		return errors.New("Refcount cache size too big")
	}
	if i.l2Cache != nil {
		if err := i.l2Cache.flush(); err != nil {
			return fmt.Errorf("Failed to flush the L2 table cache: %s", storage.Strerror(err))
		}
		if err := i.rcCache.flush(); err != nil {
			return fmt.Errorf("Failed to flush the refcount block cache: %s", storage.Strerror(err))
		}
	}
	interval := o.Uint(optCacheCleanInterval, uint64(defaultCacheCleanInterval/time.Second))
	if interval > 1<<32-1 {
		return errors.New("Cache clean interval too big")
	}
	lazy := o.Bool(optLazyRefcounts, i.compat&compatLazyRefcounts != 0)
	if lazy && i.hdr.Version < 3 {
		return errors.New("Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level")
	}
	overlap, hasOverlap := "", o.Has(optOverlap)
	if hasOverlap {
		overlap = o.String(optOverlap)
	}
	if o.Has(optOverlapTemplate) {
		t := o.String(optOverlapTemplate)
		if hasOverlap && t != overlap {
			return fmt.Errorf("Conflicting values for qcow2 options 'overlap-check' ('%s') and 'overlap-check.template' ('%s')", overlap, t)
		}
		overlap, hasOverlap = t, true
	}
	if !hasOverlap {
		overlap = "cached"
	}
	var template int
	switch overlap {
	case "none":
	case "constant":
		template = olConstant
	case "cached":
		template = olCached
	case "all":
		template = olAll
	default:
		return fmt.Errorf("Unsupported value '%s' for qcow2 option 'overlap-check'. Allowed are any of the following: none, constant, cached, all", overlap)
	}
	checks := 0
	for b, name := range overlapOptions {
		if o.Bool(name, template&(1<<b) != 0) {
			checks |= 1 << b
		}
	}
	if f := o.String(optEncryptFormat); f != "" {
		switch i.hdr.CryptMethod {
		case cryptNone:
			return fmt.Errorf("No encryption in image header, but options specified format '%s'", f)
		case cryptAES:
			if f != "aes" {
				return fmt.Errorf("Header reported 'aes' encryption format but options specify '%s'", f)
			}
		case cryptLUKS:
			if f != "luks" {
				return fmt.Errorf("Header reported 'luks' encryption format but options specify '%s'", f)
			}
		}
	}
	if i.hdr.CryptMethod > cryptLUKS {
		return fmt.Errorf("Unsupported encryption method %d", i.hdr.CryptMethod)
	}
	if i.lazyRefcounts && !lazy && i.incompat&incompatDirty != 0 {
		if err := i.markClean(); err != nil {
			return fmt.Errorf("Failed to disable lazy refcounts: %s", storage.Strerror(err))
		}
	}
	i.l2SliceSize = int(l2Entry) / i.l2EntryBytes
	i.l2Cache = newMetaCache(i, olActiveL2, int(l2Entry), int(l2Entries))
	i.rcCache = newMetaCache(i, olRefcountBlock, int(i.clusterSize), int(rcEntries))
	i.cacheCleanInterval = time.Duration(interval) * time.Second
	i.lazyRefcounts = lazy
	i.overlapChecks = checks
	i.discardPassthrough = [discardKinds]bool{
		discardNever:    false,
		discardAlways:   true,
		discardRequest:  o.Bool(optDiscardRequest, true),
		discardSnapshot: o.Bool(optDiscardSnapshot, true),
		discardOther:    o.Bool(optDiscardOther, false),
	}
	return nil
}

// cacheSizes computes the L2 cache size, its entry size and the refcount
// cache size in bytes, as QEMU's read_cache_sizes does.
func (i *Image) cacheSizes(o *block.Options) (l2, l2Entry, rc uint64, err error) {
	cs := uint64(i.clusterSize)
	minRefcount := uint64(minRefcountCacheClusters) * cs
	maxL2Entries := (uint64(i.size) + cs - 1) / cs
	maxL2Cache := (maxL2Entries*uint64(i.l2EntryBytes) + cs - 1) / cs * cs
	combinedSet, l2Set, rcSet, entrySet := o.Has(optCacheSize), o.Has(optL2CacheSize), o.Has(optRefcountCacheSize), o.Has(optL2CacheEntrySize)
	combined := o.Uint(optCacheSize, 0)
	l2Max := o.Uint(optL2CacheSize, defaultL2CacheMax)
	rc = o.Uint(optRefcountCacheSize, 0)
	l2Entry = o.Uint(optL2CacheEntrySize, cs)
	l2 = min(maxL2Cache, l2Max)
	if combinedSet {
		switch {
		case l2Set && rcSet:
			return 0, 0, 0, errors.New("cache-size, l2-cache-size and refcount-cache-size may not be set at the same time")
		case l2Set && l2Max > combined:
			return 0, 0, 0, errors.New("l2-cache-size may not exceed cache-size")
		case rc > combined:
			return 0, 0, 0, errors.New("refcount-cache-size may not exceed cache-size")
		}
		switch {
		case l2Set:
			rc = combined - l2
		case rcSet:
			l2 = combined - rc
		case combined >= maxL2Cache+minRefcount:
			l2 = maxL2Cache
			rc = combined - l2
		default:
			rc = min(combined, minRefcount)
			l2 = combined - rc
		}
	}
	if l2 < maxL2Cache && !entrySet {
		l2Entry = min(cs, 4096)
	}
	if l2Entry < 1<<minClusterBits || l2Entry > cs || l2Entry&(l2Entry-1) != 0 {
		return 0, 0, 0, fmt.Errorf("L2 cache entry size must be a power of two between %d and the cluster size (%d)", 1<<minClusterBits, cs)
	}
	return l2, l2Entry, rc, nil
}

// loadRefcountTable reads the refcount table into memory.
func (i *Image) loadRefcountTable() error {
	n := int(i.hdr.RefcountTableClusters) << (i.clusterBits - 3)
	t, err := readTable(i.f, int64(i.hdr.RefcountTableOffset), n)
	if err != nil {
		return err
	}
	i.reftable = t
	i.reftableOff = int64(i.hdr.RefcountTableOffset)
	i.updateMaxReftableIndex()
	return nil
}

// tableReadChunk is how many bytes of a table readTable reads at a time.
const tableReadChunk = 64 << 10

// readTable reads a table of n big-endian 64-bit entries at off, a chunk at
// a time, so that loading a table takes its own size in memory and not
// twice that (a 32 MiB L1 table in each image of a chain adds up).
// Entries past the end of the file read as zeroes.
func readTable(f io.ReaderAt, off int64, n int) ([]uint64, error) {
	t := make([]uint64, n)
	raw := make([]byte, min(n*8, tableReadChunk))
	for k := 0; k < n; {
		m := min(n-k, len(raw)/8)
		if err := storage.ReadFull(f, raw[:m*8], off+int64(k)*8); err != nil {
			return nil, err
		}
		for j := 0; j < m; j++ {
			t[k+j] = binary.BigEndian.Uint64(raw[8*j:])
		}
		k += m
	}
	return t, nil
}

// updateMaxReftableIndex finds the last refcount table entry in use.
func (i *Image) updateMaxReftableIndex() {
	k := len(i.reftable) - 1
	for k > 0 && i.reftable[k]&reftOffsetMask == 0 {
		k--
	}
	i.reftableMaxIx = max(k, 0)
}

// warnBitmapsInconsistent reports a bitmaps extension that a program without
// bitmap support invalidated, as QEMU does.
func (i *Image) warnBitmapsInconsistent(o *block.DriverOptions) {
	if i.warn == nil {
		return
	}
	if i.hdr.Version < 3 {
		i.warn("This qcow2 v2 image contains bitmaps, but they may have been modified by a program without persistent bitmap support; so now they must all be considered inconsistent")
	} else {
		i.warn("a program lacking bitmap support modified this file, so all bitmaps are now considered inconsistent")
	}
	if o.Env != nil {
		o.Env.Notice("Some clusters may be leaked, run 'qemu-img check -r' on the image file to fix.")
	}
}

// openDataFile opens the external data file the image names, or checks
// that none is named where none is allowed.
func (i *Image) openDataFile(o *block.DriverOptions) error {
	override := ""
	if o.Options != nil {
		override = o.Options.String(optDataFile)
	}
	if i.incompat&incompatDataFile == 0 {
		if override != "" {
			return errors.New("'data-file' can only be set for images with an external data file")
		}
		if i.autoclear&autoclearDataRaw != 0 {
			return errors.New("data-file-raw requires a data file")
		}
		return nil
	}
	name := override
	if name == "" {
		name = i.ext.DataFile
	}
	if name == "" {
		return errors.New("'data-file' is required for this image")
	}
	open := o.OpenDataFile
	if open == nil {
		open = o.OpenRelated
	}
	if open == nil {
		return fmt.Errorf("Could not open '%s': %w", name, block.ErrNotAllowed)
	}
	df, err := open(name, o.Write)
	if err != nil {
		if !o.NoIO {
			return err
		}
		// qemu-img info shows an image whose data file is missing.
		df = unopenedFile{name: name, err: err}
	}
	i.data, i.hasDataFile, i.dataFileOwned = df, true, true
	i.layout.dataFile = true
	return nil
}

// unopenedFile stands for a data file that could not be opened when the
// image was opened only for its metadata; any I/O fails with the reason.
type unopenedFile struct {
	name string
	err  error
}

func (u unopenedFile) ReadAt([]byte, int64) (int, error)  { return 0, u.err }
func (u unopenedFile) WriteAt([]byte, int64) (int, error) { return 0, u.err }
func (u unopenedFile) Name() string                       { return u.name }
func (u unopenedFile) Size() (int64, error)               { return 0, u.err }
func (u unopenedFile) Truncate(int64) error               { return u.err }
func (u unopenedFile) Sync() error                        { return nil }
func (u unopenedFile) Close() error                       { return nil }

// readSnapshotTable reads n snapshot table entries at off, entry by entry,
// bounding the table as QEMU does.
func readSnapshotTable(f io.ReaderAt, off int64, n int, virtualSize uint64) ([]snapshot, int64, error) {
	r := &snapshotReader{f: f, base: off}
	sns, size, err := decodeSnapshots(r, n, virtualSize)
	if err != nil {
		return nil, 0, err
	}
	return sns, int64(size), nil
}

// loadBitmapDirectory reads and checks the bitmap directory.
func (i *Image) loadBitmapDirectory() ([]bitmapEntry, error) {
	bm := i.ext.Bitmaps
	if bm.DirectorySize == 0 {
		return nil, errors.New("Requested bitmap directory size is zero")
	}
	fileSize, err := i.f.Size()
	if err != nil {
		return nil, err
	}
	if bm.DirectoryOffset+bm.DirectorySize > uint64(fileSize) {
		return nil, errors.New("Failed to read bitmap directory: Input/output error")
	}
	dir := make([]byte, bm.DirectorySize)
	if err := storage.ReadFull(i.f, dir, int64(bm.DirectoryOffset)); err != nil {
		return nil, fmt.Errorf("Failed to read bitmap directory: %s", storage.Strerror(err))
	}
	return parseBitmapDirectory(dir, bm.NbBitmaps, uint64(i.clusterSize), uint64(i.size))
}

// Format returns "qcow2".
func (*Image) Format() string { return "qcow2" }

// Size returns the virtual size.
func (i *Image) Size() int64 {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.size
}

// BackingFile returns the backing file name and format the image records.
func (i *Image) BackingFile() (name, format string) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if !i.hasBackingFile {
		return "", ""
	}
	return i.backingFile, i.ext.BackingFormat
}

// SetBacking attaches the opened backing image.
func (i *Image) SetBacking(b block.Image) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.backing = b
	if b != nil {
		i.backingSize = b.Size()
	}
}

// syncFile flushes the image file (and the data file) to stable storage.
func (i *Image) syncFile() error {
	if i.hasDataFile {
		if err := i.data.Sync(); err != nil {
			return err
		}
	}
	return i.f.Sync()
}
