package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/storage"
)

// CreateSpecs lists qcow2's create options in QEMU's order (the order of
// the "Formatting" line).
func (*Driver) CreateSpecs() []block.OptionSpec {
	return []block.OptionSpec{
		{Name: "encryption", Type: block.OptBool, Help: "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)"},
		{Name: "encrypt.format", Type: block.OptString, Help: "Encrypt the image, format choices: 'aes', 'luks'"},
		{Name: "encrypt.key-secret", Type: block.OptString, Help: "ID of secret providing qcow AES key or LUKS passphrase"},
		{Name: "encrypt.cipher-alg", Type: block.OptString, Help: "Name of encryption cipher algorithm"},
		{Name: "encrypt.cipher-mode", Type: block.OptString, Help: "Name of encryption cipher mode"},
		{Name: "encrypt.ivgen-alg", Type: block.OptString, Help: "Name of IV generator algorithm"},
		{Name: "encrypt.ivgen-hash-alg", Type: block.OptString, Help: "Name of IV generator hash algorithm"},
		{Name: "encrypt.hash-alg", Type: block.OptString, Help: "Name of encryption hash algorithm"},
		{Name: "encrypt.iter-time", Type: block.OptNumber, Help: "Time to spend in PBKDF in milliseconds"},
		{Name: "cluster_size", Type: block.OptSize, Help: "qcow2 cluster size", Default: "65536"},
		{Name: "extended_l2", Type: block.OptBool, Help: "Extended L2 tables", Default: "off"},
		{Name: "preallocation", Type: block.OptString, Help: "Preallocation mode (allowed values: off, metadata, falloc, full)"},
		{Name: "compression_type", Type: block.OptString, Help: "Compression method used for image cluster compression", Default: "zlib"},
		{Name: "size", Type: block.OptSize, Help: "Virtual disk size"},
		{Name: "compat", Type: block.OptString, Help: "Compatibility level (v2 [0.10] or v3 [1.1])"},
		{Name: "backing_file", Type: block.OptString, Help: "File name of a base image"},
		{Name: "backing_fmt", Type: block.OptString, Help: "Image format of the base image"},
		{Name: "data_file", Type: block.OptString, Help: "File name of an external data file"},
		{Name: "data_file_raw", Type: block.OptBool, Help: "The external data file must stay valid as a raw image"},
		{Name: "lazy_refcounts", Type: block.OptBool, Help: "Postpone refcount updates", Default: "off"},
		{Name: "refcount_bits", Type: block.OptNumber, Help: "Width of a reference count entry in bits", Default: "16"},
	}
}

// blockdevDrivers are the driver names QEMU 7.2's BlockdevDriver enum
// accepts for backing_fmt.
var blockdevDrivers = []string{
	"blkdebug", "blklogwrites", "blkreplay", "blkverify", "bochs", "cloop", "compress",
	"copy-before-write", "copy-on-read", "dmg", "file", "snapshot-access", "ftp", "ftps",
	"gluster", "host_cdrom", "host_device", "http", "https", "iscsi", "luks", "nbd", "nfs",
	"null-aio", "null-co", "nvme", "parallels", "preallocate", "qcow", "qcow2", "qed",
	"quorum", "raw", "rbd", "replication", "ssh", "throttle", "vdi", "vhdx", "vmdk", "vpc", "vvfat",
}

// createParams are the checked create options.
type createParams struct {
	size          int64
	version       uint32
	clusterBits   int
	extendedL2    bool
	prealloc      string
	lazy          bool
	refcountOrder int
	compression   uint8
	backingFile   string
	hasBacking    bool
	backingFmt    string
	hasBackingFmt bool
	dataFile      string
	dataFileRaw   bool
}

// parseCreateOptions checks the create options in the order QEMU does (its
// QAPI visitor, then qcow2_co_create), with QEMU's messages.
func parseCreateOptions(r *block.CreateRequest) (*createParams, error) {
	o := r.Options
	p := &createParams{size: (r.Size + sectorSize - 1) &^ (sectorSize - 1), version: 3}
	p.dataFile = o.String("data_file")
	p.dataFileRaw = o.Bool("data_file_raw", false)
	p.extendedL2 = o.Bool("extended_l2", false)
	if v, ok := o.Lookup("compat"); ok {
		switch v {
		case "0.10", "v2":
			p.version = 2
		case "1.1", "v3":
			p.version = 3
		default:
			return nil, fmt.Errorf("Parameter 'version' does not accept value '%s'", v)
		}
	}
	p.backingFile, p.hasBacking = o.Lookup("backing_file")
	p.backingFmt, p.hasBackingFmt = o.Lookup("backing_fmt")
	if p.hasBackingFmt && !slices.Contains(blockdevDrivers, p.backingFmt) {
		return nil, fmt.Errorf("Parameter 'backing-fmt' does not accept value '%s'", p.backingFmt)
	}
	if err := checkEncryptOptions(o, r.Env); err != nil {
		return nil, err
	}
	cs := o.Uint("cluster_size", 65536)
	p.prealloc = block.PreallocOff
	if v, ok := o.Lookup("preallocation"); ok {
		switch v {
		case block.PreallocOff, block.PreallocMetadata, block.PreallocFalloc, block.PreallocFull:
			p.prealloc = v
		default:
			return nil, fmt.Errorf("Parameter 'preallocation' does not accept value '%s'", v)
		}
	}
	p.lazy = o.Bool("lazy_refcounts", false)
	refcountBits := o.Uint("refcount_bits", 16)
	switch v := o.String("compression_type"); v {
	case "zlib", "":
		p.compression = compressionZlib
	case "zstd":
		p.compression = compressionZstd
	default:
		return nil, fmt.Errorf("Parameter 'compression-type' does not accept value '%s'", v)
	}

	if p.extendedL2 && p.version < 3 {
		return nil, errors.New("Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)")
	}
	bits := 0
	for bits < 64 && uint64(1)<<bits < cs {
		bits++
	}
	if bits < minClusterBits || bits > maxClusterBits || uint64(1)<<bits != cs {
		return nil, fmt.Errorf("Cluster size must be a power of two between %d and %dk", 1<<minClusterBits, 1<<(maxClusterBits-10))
	}
	if p.extendedL2 && cs < (1<<minClusterBits)*subclustersPerCluster {
		return nil, fmt.Errorf("Extended L2 entries are only supported with cluster sizes of at least %d bytes", (1<<minClusterBits)*subclustersPerCluster)
	}
	p.clusterBits = bits
	if p.hasBacking && p.prealloc != block.PreallocOff && !p.extendedL2 {
		return nil, errors.New("Backing file and preallocation can only be used at the same time if extended_l2 is on")
	}
	if p.hasBackingFmt && !p.hasBacking {
		return nil, errors.New("Backing format cannot be used without backing file")
	}
	if p.version < 3 && p.lazy {
		return nil, errors.New("Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)")
	}
	if refcountBits > 64 || refcountBits == 0 || refcountBits&(refcountBits-1) != 0 {
		return nil, errors.New("Refcount width must be a power of two and may not exceed 64 bits")
	}
	if p.version < 3 && refcountBits != 16 {
		return nil, errors.New("Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)")
	}
	for 1<<p.refcountOrder < refcountBits {
		p.refcountOrder++
	}
	if p.dataFileRaw && p.dataFile == "" {
		return nil, errors.New("data-file-raw requires data-file")
	}
	if p.dataFileRaw && p.hasBacking {
		return nil, errors.New("Backing file and data-file-raw cannot be used at the same time")
	}
	if p.dataFileRaw && p.prealloc == block.PreallocOff {
		p.prealloc = block.PreallocMetadata
	}
	if p.dataFile != "" && p.version < 3 {
		return nil, errors.New("External data files are only supported with compatibility level 1.1 and above (use version=v3 or greater)")
	}
	if p.compression != compressionZlib && p.version < 3 {
		return nil, errors.New("Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)")
	}
	return p, nil
}

// checkEncryptOptions checks the encryption options as QEMU's visitor does;
// creating encrypted images is not supported yet.
func checkEncryptOptions(o *block.Options, env *block.Env) error {
	format, ok := o.Lookup("encrypt.format")
	if o.Has("encryption") && o.Bool("encryption", false) {
		format, ok = "aes", true
	}
	if !ok {
		return nil
	}
	switch format {
	case "aes", "luks":
	default:
		return fmt.Errorf("Parameter 'format' does not accept value '%s'", format)
	}
	if !o.Has("encrypt.key-secret") {
		return errors.New("Parameter 'encrypt.key-secret' is required for cipher")
	}
	if iter, ok := o.Lookup("encrypt.iter-time"); ok {
		if _, err := strconv.ParseUint(iter, 0, 64); err != nil {
			return errors.New("Parameter 'encrypt.iter-time' expects a number")
		}
	}
	return fmt.Errorf("Creating encrypted qcow2 images (encrypt.format=%s) is not supported yet: %w", format, block.ErrUnsupported)
}

// Create writes a new qcow2 image into f as QEMU's qcow2_co_create does:
// a minimal header with a one-cluster refcount table and one refcount
// block, which the image then refcounts itself; the full header; the
// virtual size (growing the L1 table, with any preallocation); the backing
// file. The result is byte for byte what qemu-img writes.
func (d *Driver) Create(f storage.File, r *block.CreateRequest) error {
	p, err := parseCreateOptions(r)
	if err != nil {
		return err
	}
	var data storage.File
	if p.dataFile != "" {
		if r.CreateRelated == nil {
			return fmt.Errorf("Could not create '%s': %w", p.dataFile, block.ErrNotAllowed)
		}
		data, err = r.CreateRelated(p.dataFile)
		if err != nil {
			return err
		}
	}
	err = create(f, data, p, r)
	if data != nil {
		if cerr := data.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil && data != nil && r.RemoveRelated != nil {
		_ = r.RemoveRelated(p.dataFile)
	}
	return err
}

func create(f, data storage.File, p *createParams, r *block.CreateRequest) error {
	cs := int64(1) << p.clusterBits
	h := Header{
		Magic: Magic, Version: p.version, ClusterBits: uint32(p.clusterBits),
		RefcountTableOffset: uint64(cs), RefcountTableClusters: 1,
		RefcountOrder: uint32(p.refcountOrder), HeaderLength: headerV3Length,
		CompressionType: p.compression,
	}
	if p.lazy {
		h.CompatibleFeatures |= compatLazyRefcounts
	}
	if data != nil {
		h.IncompatibleFeatures |= incompatDataFile
	}
	if p.dataFileRaw {
		h.AutoclearFeatures |= autoclearDataRaw
	}
	if p.compression != compressionZlib {
		h.IncompatibleFeatures |= incompatCompression
	}
	if p.extendedL2 {
		h.IncompatibleFeatures |= incompatExtL2
	}
	first := make([]byte, cs)
	v3 := h
	v3.Version = 3 // QEMU writes the whole structure at first
	v3.Encode(first)
	binary.BigEndian.PutUint32(first[4:], p.version)
	if _, err := f.WriteAt(first, 0); err != nil {
		return fmt.Errorf("Could not write qcow2 header: %s", storage.Strerror(err))
	}
	reftable := make([]byte, 2*cs)
	binary.BigEndian.PutUint64(reftable, uint64(2*cs))
	if _, err := f.WriteAt(reftable, cs); err != nil {
		return fmt.Errorf("Could not write refcount table: %s", storage.Strerror(err))
	}

	opts := block.NewOptions((&Driver{}).OpenSpecs())
	o := &block.DriverOptions{Filename: r.Filename, Write: true, Options: opts, Env: r.Env}
	if data != nil {
		_ = opts.Set(optDataFile, p.dataFile)
		o.OpenRelated = func(string, bool) (storage.File, error) { return nopCloser{data}, nil }
	}
	img, err := open(f, o)
	if err != nil {
		return err
	}
	err = img.finishCreate(p, cs)
	if cerr := img.Close(); err == nil {
		err = cerr
	}
	return err
}

// nopCloser keeps the data file open when the image made during creation
// closes it; the creator closes it.
type nopCloser struct{ storage.File }

func (nopCloser) Close() error { return nil }

// finishCreate makes the minimal image consistent and gives it its size,
// preallocation and backing file.
func (i *Image) finishCreate(p *createParams, cs int64) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	off, err := i.allocClusters(3 * cs)
	if err != nil {
		return fmt.Errorf("Could not allocate clusters for qcow2 header and refcount table: %s", storage.Strerror(err))
	}
	if off != 0 {
		return errors.New("Huh, first cluster in empty image is already in use?")
	}
	if i.hasDataFile {
		i.ext.DataFile, i.ext.HasDataFile = p.dataFile, true
	}
	if err := i.updateHeader(); err != nil {
		return fmt.Errorf("Could not update qcow2 header: %s", storage.Strerror(err))
	}
	if err := i.resize(p.size, p.prealloc); err != nil {
		if errors.Is(err, errTooBig) {
			return fmt.Errorf("Could not resize image: %w", block.ErrTooBig)
		}
		return fmt.Errorf("Could not resize image: %w", err)
	}
	if p.hasBacking {
		fmtName := p.backingFmt
		i.mu.Unlock()
		err := i.ChangeBackingFile(p.backingFile, fmtName)
		i.mu.Lock()
		if err != nil {
			return fmt.Errorf("Could not assign backing file '%s' with format '%s': %s", p.backingFile, fmtName, storage.Strerror(err))
		}
	}
	return nil
}
