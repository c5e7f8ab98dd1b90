package qcow2

import (
	"errors"
	"fmt"
	"math/bits"

	"github.com/qimg/qimg/block"
)

// LUKS header layout (QEMU's crypto/block-luks.c), for the size of the
// encryption header of a LUKS-encrypted qcow2 image.
const (
	luksSectorSize     = 512
	luksKeySlotOffset  = 4096
	luksNumKeySlots    = 8
	luksStripes        = 4000
	bitmapDirEntryBase = 24 // sizeof(Qcow2BitmapDirEntry)
	bitmapTableEntry   = 8
)

// luksCipherKeyBytes are the key sizes of the ciphers QEMU's LUKS driver
// names; the others of QCryptoCipherAlgorithm ("des", "3des") it refuses.
var luksCipherKeyBytes = map[string]int{
	"aes-128": 16, "aes-192": 24, "aes-256": 32,
	"cast5-128":   16,
	"serpent-128": 16, "serpent-192": 24, "serpent-256": 32,
	"twofish-128": 16, "twofish-192": 24, "twofish-256": 32,
}

// Measure computes the sizes of a new qcow2 image as QEMU's qcow2_measure
// does (block.Measurer): the metadata of a fully allocated image of the
// options' cluster size, refcount width and L2 entry size (plus a LUKS
// header), and, for the required size, only the clusters in holds data in
// (all of them with a backing file or full preallocation).
func (*Driver) Measure(opts *block.Options, in block.Image, env *block.Env) (block.MeasureInfo, error) {
	extendedL2 := opts.Bool("extended_l2", false)
	cs := int64(opts.Uint("cluster_size", 65536))
	if err := validateClusterSize(uint64(cs), extendedL2); err != nil {
		return block.MeasureInfo{}, err
	}
	version := 3
	if v, ok := opts.Lookup("compat"); ok {
		switch v {
		case "0.10":
			version = 2
		case "1.1":
		default:
			return block.MeasureInfo{}, fmt.Errorf("Invalid compatibility level: '%s'", v)
		}
	}
	refcountBits := opts.Uint("refcount_bits", 16)
	if refcountBits > 64 || refcountBits == 0 || refcountBits&(refcountBits-1) != 0 {
		return block.MeasureInfo{}, errors.New("Refcount width must be a power of two and may not exceed 64 bits")
	}
	if version < 3 && refcountBits != 16 {
		return block.MeasureInfo{}, errors.New("Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)")
	}
	prealloc := block.PreallocOff
	if v, ok := opts.Lookup("preallocation"); ok {
		if v == "" {
			return block.MeasureInfo{}, errors.New("invalid parameter value: ")
		}
		p, err := block.ParsePrealloc(v)
		if err != nil {
			return block.MeasureInfo{}, err
		}
		prealloc = p
	}
	hasBacking := opts.Has("backing_file")
	var luksPayload int64
	if opts.String("encrypt.format") == "luks" {
		n, err := luksHeaderLength(opts, env)
		if err != nil {
			return block.MeasureInfo{}, err
		}
		luksPayload = roundUp64(n, cs)
	}
	entryBytes := uint64(l2EntrySizeNormal)
	if extendedL2 {
		entryBytes = l2EntrySizeExt
	}
	virtualSize := roundUpU(opts.Uint("size", 0), uint64(cs))
	l2Tables := (virtualSize/uint64(cs) + uint64(cs)/entryBytes - 1) / (uint64(cs) / entryBytes)
	if l2Tables*l1EntrySize > maxL1Bytes {
		return block.MeasureInfo{}, errors.New("The image size is too large (try using a larger cluster size)")
	}
	var required uint64
	if in != nil {
		ssize := in.Size()
		virtualSize = roundUpU(uint64(ssize), uint64(cs))
		if hasBacking {
			// The backing file may have nothing in common with in:
			// every cluster may need writing.
			required = virtualSize
		} else {
			r, err := dataClusterBytes(in, ssize, cs)
			if err != nil {
				return block.MeasureInfo{}, err
			}
			required = r
		}
	}
	if prealloc == block.PreallocFull || prealloc == block.PreallocFalloc {
		required = virtualSize
	}
	order := bits.TrailingZeros64(refcountBits)
	full := uint64(luksPayload) + preallocSize(virtualSize, uint64(cs), order, entryBytes)
	info := block.MeasureInfo{
		FullyAllocated: int64(full),
		Required:       int64(full - virtualSize + required),
	}
	if b, ok := bitmapSizer(in); ok && version >= 3 {
		if supported, size := b.PersistentBitmaps(cs); supported {
			info.HasBitmaps, info.Bitmaps = true, size
		}
	}
	return info, nil
}

// validateClusterSize checks a cluster size as QEMU's validate_cluster_size
// does (on its low 32 bits, as ctz32 sees it).
func validateClusterSize(cs uint64, extendedL2 bool) error {
	b := bits.TrailingZeros32(uint32(cs))
	if b < minClusterBits || b > maxClusterBits || uint64(1)<<b != cs {
		return fmt.Errorf("Cluster size must be a power of two between %d and %dk", 1<<minClusterBits, 1<<(maxClusterBits-10))
	}
	if extendedL2 && cs < (1<<minClusterBits)*subclustersPerCluster {
		return fmt.Errorf("Extended L2 entries are only supported with cluster sizes of at least %d bytes", (1<<minClusterBits)*subclustersPerCluster)
	}
	return nil
}

// dataClusterBytes counts the bytes of the clusters of a new image that
// would hold data of in, as qcow2_measure walks in's block status: zero runs
// are skipped, and a data run takes the clusters it touches.
func dataClusterBytes(in block.Image, ssize, cs int64) (uint64, error) {
	var required uint64
	for off, n := int64(0), int64(0); off < ssize; off += n {
		e, _, err := block.BlockStatusAbove(in, nil, off, ssize-off)
		if err != nil {
			return 0, fmt.Errorf("Unable to get block status: %w", err)
		}
		n = e.Length
		switch {
		case e.Has(block.Zero):
		case e.Has(block.Allocated | block.Data):
			n = roundUp64(off+n, cs) - off
			required += uint64(off%cs + n)
		}
	}
	return required, nil
}

// preallocSize is the size of a fully allocated image: the header, the L2
// and L1 tables, the refcount structures and the data (QEMU's
// qcow2_calc_prealloc_size).
func preallocSize(totalSize, cs uint64, refcountOrder int, entryBytes uint64) uint64 {
	aligned := roundUpU(totalSize, cs)
	meta := cs
	nl2e := roundUpU(aligned/cs, cs/entryBytes)
	meta += nl2e * entryBytes
	nl1e := roundUpU(nl2e*entryBytes/cs, cs/l1EntrySize)
	meta += nl1e * l1EntrySize
	rc, _ := refcountMetadataSize(int64((meta+aligned)/cs), int64(cs), refcountOrder, false)
	return meta + uint64(rc) + aligned
}

// luksHeaderLength is the length of the LUKS header QEMU would write for
// the "encrypt." options (qcrypto_block_calculate_payload_offset): the
// partition header, then eight key slots of the split master key, each on
// a 4 KiB boundary. The options are checked as QEMU checks them.
func luksHeaderLength(opts *block.Options, env *block.Env) (int64, error) {
	enums := []struct {
		name, def string
		values    []string
	}{
		{"cipher-alg", "aes-256", []string{"aes-128", "aes-192", "aes-256", "des", "3des", "cast5-128",
			"serpent-128", "serpent-192", "serpent-256", "twofish-128", "twofish-192", "twofish-256"}},
		{"cipher-mode", "xts", []string{"ecb", "cbc", "xts", "ctr"}},
		{"ivgen-alg", "plain64", []string{"plain", "plain64", "essiv"}},
		{"ivgen-hash-alg", "sha256", hashAlgorithms},
		{"hash-alg", "sha256", hashAlgorithms},
	}
	val := map[string]string{}
	for _, e := range enums {
		v, ok := opts.Lookup("encrypt." + e.name)
		if !ok {
			v = e.def
		} else if !contains(e.values, v) {
			return 0, fmt.Errorf("Parameter '%s' does not accept value '%s'", e.name, v)
		}
		val[e.name] = v
	}
	secret, ok := opts.Lookup("encrypt.key-secret")
	if !ok {
		return 0, errors.New("Parameter 'encrypt.key-secret' is required for cipher")
	}
	if env == nil || env.Secrets == nil {
		return 0, fmt.Errorf("No secret with id '%s'", secret)
	}
	if _, ok := env.Secrets[secret]; !ok {
		return 0, fmt.Errorf("No secret with id '%s'", secret)
	}
	keyBytes, ok := luksCipherKeyBytes[val["cipher-alg"]]
	if !ok {
		return 0, fmt.Errorf("Algorithm '%s' not supported", val["cipher-alg"])
	}
	if val["cipher-mode"] == "xts" {
		if val["cipher-alg"] == "cast5-128" {
			return 0, errors.New("Unsupported cipher mode xts")
		}
		keyBytes *= 2
	}
	splitSectors := (int64(keyBytes)*luksStripes + luksSectorSize - 1) / luksSectorSize
	slotSectors := roundUp64(splitSectors, luksKeySlotOffset/luksSectorSize)
	return (luksKeySlotOffset/luksSectorSize + luksNumKeySlots*slotSectors) * luksSectorSize, nil
}

// hashAlgorithms are QCryptoHashAlgorithm's values.
var hashAlgorithms = []string{"md5", "sha1", "sha224", "sha256", "sha384", "sha512", "ripemd160"}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func roundUp64(n, m int64) int64  { return (n + m - 1) / m * m }
func roundUpU(n, m uint64) uint64 { return (n + m - 1) / m * m }

// bitmapSizer finds the block.BitmapSizer of an input image, looking
// through a *block.Node.
func bitmapSizer(in block.Image) (block.BitmapSizer, bool) {
	if in == nil {
		return nil, false
	}
	if b, ok := in.(block.BitmapSizer); ok {
		return b, true
	}
	if n, ok := in.(*block.Node); ok {
		b, ok := n.Image.(block.BitmapSizer)
		return b, ok
	}
	return nil, false
}

// PersistentBitmaps reports that a version 3 image supports persistent
// bitmaps, and the size its bitmaps would take in an image of clusterSize
// (block.BitmapSizer), as QEMU's qcow2_get_persistent_dirty_bitmap_size
// counts the bitmaps it loaded: each whole, with its table, and the
// directory.
func (i *Image) PersistentBitmaps(clusterSize int64) (bool, int64) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.hdr.Version < 3 {
		return false, 0
	}
	var size, dir int64
	if i.hasBitmaps() {
		for _, bm := range i.bitmaps {
			granularity := int64(1) << bm.GranularityBits
			bytes := ((i.size+granularity-1)/granularity + 7) / 8
			clusters := (bytes + clusterSize - 1) / clusterSize
			size += clusters * clusterSize
			size += roundUp64(clusters*bitmapTableEntry, clusterSize)
			dir += roundUp64(bitmapDirEntryBase+int64(len(bm.Name)), 8)
		}
	}
	return true, size + roundUp64(dir, clusterSize)
}
