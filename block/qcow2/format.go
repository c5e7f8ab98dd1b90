// Package qcow2 is the qcow2 image format, QEMU's native format, as
// specified in QEMU's docs/interop/qcow2.txt
// (https://gitlab.com/qemu-project/qemu/-/blob/v7.2.0/docs/interop/qcow2.txt),
// compatible with QEMU 7.2: versions 2 and 3, cluster sizes from 512 bytes to
// 2 MiB, refcount widths from 1 to 64 bits, extended L2 entries, external
// data files, zlib and zstd compressed clusters, lazy refcounts and the
// dirty and corrupt bits.
//
// # Layout of this package
//
// format.go holds the on-disk structures and their decoding, encoding and
// validation; the other files hold one concern each: the metadata cache
// (cache.go), refcounts and cluster allocation (refcount.go), the L1/L2
// mapping (cluster.go), reads (read.go), writes (write.go), compression
// (compress.go), image creation (create.go), opening (open.go) and the
// information `qemu-img info` shows (info.go).
//
// # Security stance
//
// The driver is hardened against hostile images. The header, every header
// extension and every table size and offset are validated before anything
// trusts them or allocates memory for them: cluster_bits 9 to 21, an L1
// table of at most 32 MiB and a refcount table of at most 8 MiB that lie
// inside the file, at most 65536 snapshots, a backing file name of at most
// 1023 bytes, header extensions inside the first cluster. Decompression
// never produces more than one cluster. The metadata caches have fixed
// sizes, so memory stays bounded whatever the image size. Files an image
// names (backing file, external data file) are opened only through the
// block layer's policy.
//
// # Consistency
//
// Metadata updates are ordered as QEMU orders them, so that a crash at any
// point leaves an image that `qemu-img check` reports at worst as leaking
// clusters: guest data reaches the disk before the L2 entry that points to
// it, refcount increases before the references that need them, refcount
// decreases after the references are gone.
package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/qimg/qimg/storage"
)

// Magic is the qcow2 signature, "QFI\xfb".
const Magic = 0x514649fb

// On-disk limits, as QEMU 7.2 enforces them.
const (
	minClusterBits = 9
	maxClusterBits = 21
	// maxL1Bytes bounds the active L1 table (QCOW_MAX_L1_SIZE).
	maxL1Bytes = 32 << 20
	// maxRefcountTableBytes bounds the refcount table
	// (QCOW_MAX_REFTABLE_SIZE).
	maxRefcountTableBytes = 8 << 20
	maxSnapshots          = 65536
	// maxSnapshotsBytes bounds the snapshot table (QCOW_MAX_SNAPSHOTS_SIZE).
	maxSnapshotsBytes = 1024 * maxSnapshots
	// maxSnapshotExtraData bounds a snapshot entry's extra data.
	maxSnapshotExtraData = 1024
	maxBitmaps           = 65535
	// maxBitmapDirectoryBytes bounds the bitmap directory.
	maxBitmapDirectoryBytes = 1024 * maxBitmaps
	// maxBackingFileName is the longest backing file name QEMU accepts.
	maxBackingFileName = 1023
	// maxBackingFormat is the size of QEMU's backing_format buffer; the
	// format name must be shorter.
	maxBackingFormat = 16
	// maxHostOffset is the largest host offset an L1 or L2 entry can hold
	// (QCOW_MAX_CLUSTER_OFFSET).
	maxHostOffset = 1<<56 - 1
	// subclustersPerCluster is the number of subclusters with extended L2
	// entries.
	subclustersPerCluster = 32
	// compressedSectorSize is the unit of compressed cluster sizes.
	compressedSectorSize = 512
	// sectorSize is the unit of the virtual size.
	sectorSize = 512
)

// Header sizes.
const (
	headerV2Length = 72
	// headerV3MinLength is the shortest version 3 header (through
	// header_length).
	headerV3MinLength = 104
	// headerV3Length is the size of the header QEMU 7.2 writes (with
	// compression_type and padding).
	headerV3Length = 112
	// compressionTypeOffset is where compression_type lies.
	compressionTypeOffset = 104
)

// Incompatible feature bits.
const (
	incompatDirty       = 1 << 0
	incompatCorrupt     = 1 << 1
	incompatDataFile    = 1 << 2
	incompatCompression = 1 << 3
	incompatExtL2       = 1 << 4
	incompatMask        = incompatDirty | incompatCorrupt | incompatDataFile | incompatCompression | incompatExtL2
)

// Compatible and autoclear feature bits.
const (
	compatLazyRefcounts = 1 << 0
	autoclearBitmaps    = 1 << 0
	autoclearDataRaw    = 1 << 1
	autoclearMask       = autoclearBitmaps | autoclearDataRaw
)

// Encryption methods.
const (
	cryptNone = 0
	cryptAES  = 1
	cryptLUKS = 2
)

// Compression types.
const (
	compressionZlib = 0
	compressionZstd = 1
)

// Header extension magics.
const (
	extEnd           = 0x00000000
	extBackingFormat = 0xe2792aca
	extFeatureTable  = 0x6803f857
	extBitmaps       = 0x23852875
	extCryptoHeader  = 0x0537be77
	extDataFile      = 0x44415441
)

// Feature name table entry types.
const (
	featureIncompatible = 0
	featureCompatible   = 1
	featureAutoclear    = 2
	featureEntrySize    = 48
	featureNameSize     = 46
)

// L1, L2 and refcount table entry bits.
const (
	oflagCopied     = 1 << 63
	oflagCompressed = 1 << 62
	oflagZero       = 1 << 0

	l1OffsetMask      = 0x00fffffffffffe00
	l1ReservedMask    = 0x7f000000000001ff
	l2OffsetMask      = 0x00fffffffffffe00
	l2StdReservedMask = 0x3f000000000001fe
	reftOffsetMask    = 0xfffffffffffffe00

	l2BitmapAllAlloc = 0x00000000ffffffff
	l2BitmapAllZero  = 0xffffffff00000000
)

// Entry sizes.
const (
	l1EntrySize       = 8
	l2EntrySizeNormal = 8
	l2EntrySizeExt    = 16
	reftableEntrySize = 8
)

// Header is the fixed part of a qcow2 header, with the version 3 fields
// filled with their version 2 defaults for version 2 images.
type Header struct {
	Magic                 uint32
	Version               uint32
	BackingFileOffset     uint64
	BackingFileSize       uint32
	ClusterBits           uint32
	Size                  uint64
	CryptMethod           uint32
	L1Size                uint32
	L1TableOffset         uint64
	RefcountTableOffset   uint64
	RefcountTableClusters uint32
	NbSnapshots           uint32
	SnapshotsOffset       uint64

	IncompatibleFeatures uint64
	CompatibleFeatures   uint64
	AutoclearFeatures    uint64
	RefcountOrder        uint32
	HeaderLength         uint32
	CompressionType      uint8

	// UnknownFields are the header bytes between the 112 bytes QEMU 7.2
	// knows and HeaderLength; they are kept when the header is rewritten.
	UnknownFields []byte
}

// errNotQcow2 is the error for a file without the qcow2 signature.
var errNotQcow2 = errors.New("Image is not in qcow2 format")

// DecodeHeader decodes and checks the fixed header from the start of the
// first cluster, b. Bytes of the first cluster that the file does not hold
// must read as zeroes. The checks and messages are those of QEMU's
// qcow2_do_open, in its order, up to the feature bits.
func DecodeHeader(b []byte) (*Header, error) {
	var fixed [headerV3Length]byte
	copy(fixed[:], b)
	be := binary.BigEndian
	h := &Header{
		Magic:                 be.Uint32(fixed[0:]),
		Version:               be.Uint32(fixed[4:]),
		BackingFileOffset:     be.Uint64(fixed[8:]),
		BackingFileSize:       be.Uint32(fixed[16:]),
		ClusterBits:           be.Uint32(fixed[20:]),
		Size:                  be.Uint64(fixed[24:]),
		CryptMethod:           be.Uint32(fixed[32:]),
		L1Size:                be.Uint32(fixed[36:]),
		L1TableOffset:         be.Uint64(fixed[40:]),
		RefcountTableOffset:   be.Uint64(fixed[48:]),
		RefcountTableClusters: be.Uint32(fixed[56:]),
		NbSnapshots:           be.Uint32(fixed[60:]),
		SnapshotsOffset:       be.Uint64(fixed[64:]),
	}
	if h.Magic != Magic {
		return nil, errNotQcow2
	}
	if h.Version < 2 || h.Version > 3 {
		return nil, fmt.Errorf("Unsupported qcow2 version %d", h.Version)
	}
	if h.ClusterBits < minClusterBits || h.ClusterBits > maxClusterBits {
		return nil, fmt.Errorf("Unsupported cluster size: 2^%d", h.ClusterBits)
	}
	clusterSize := uint64(1) << h.ClusterBits
	if h.Version == 2 {
		h.RefcountOrder = 4
		h.HeaderLength = headerV2Length
	} else {
		h.IncompatibleFeatures = be.Uint64(fixed[72:])
		h.CompatibleFeatures = be.Uint64(fixed[80:])
		h.AutoclearFeatures = be.Uint64(fixed[88:])
		h.RefcountOrder = be.Uint32(fixed[96:])
		h.HeaderLength = be.Uint32(fixed[100:])
		if h.HeaderLength < headerV3MinLength {
			return nil, errors.New("qcow2 header too short")
		}
	}
	if uint64(h.HeaderLength) > clusterSize {
		return nil, errors.New("qcow2 header exceeds cluster size")
	}
	if h.HeaderLength > headerV3Length {
		h.UnknownFields = make([]byte, h.HeaderLength-headerV3Length)
		if int(h.HeaderLength) <= len(b) {
			copy(h.UnknownFields, b[headerV3Length:h.HeaderLength])
		} else if len(b) > headerV3Length {
			copy(h.UnknownFields, b[headerV3Length:])
		}
	}
	if h.BackingFileOffset > clusterSize {
		return nil, errors.New("Invalid backing file offset")
	}
	if h.HeaderLength > compressionTypeOffset {
		h.CompressionType = fixed[compressionTypeOffset]
	}
	if err := h.checkCompressionType(); err != nil {
		return nil, err
	}
	return h, nil
}

// checkCompressionType checks the compression type against the
// incompatible bit, as QEMU's validate_compression_type does.
func (h *Header) checkCompressionType() error {
	switch h.CompressionType {
	case compressionZlib, compressionZstd:
	default:
		return fmt.Errorf("qcow2: unknown compression type: %d", h.CompressionType)
	}
	if h.CompressionType == compressionZlib {
		if h.IncompatibleFeatures&incompatCompression != 0 {
			return errors.New("qcow2: Compression type incompatible feature bit must not be set")
		}
	} else if h.IncompatibleFeatures&incompatCompression == 0 {
		return errors.New("qcow2: Compression type incompatible feature bit must be set")
	}
	return nil
}

// extensionsEnd is where the header extension area ends: at the backing file
// name, or at the end of the first cluster.
func (h *Header) extensionsEnd() uint64 {
	if h.BackingFileOffset != 0 {
		return h.BackingFileOffset
	}
	return 1 << h.ClusterBits
}

// Encode writes the fixed header into b, which must hold at least 72 bytes
// for version 2 and 112 bytes plus UnknownFields for version 3. It returns
// the number of bytes written.
func (h *Header) Encode(b []byte) int {
	be := binary.BigEndian
	be.PutUint32(b[0:], h.Magic)
	be.PutUint32(b[4:], h.Version)
	be.PutUint64(b[8:], h.BackingFileOffset)
	be.PutUint32(b[16:], h.BackingFileSize)
	be.PutUint32(b[20:], h.ClusterBits)
	be.PutUint64(b[24:], h.Size)
	be.PutUint32(b[32:], h.CryptMethod)
	be.PutUint32(b[36:], h.L1Size)
	be.PutUint64(b[40:], h.L1TableOffset)
	be.PutUint64(b[48:], h.RefcountTableOffset)
	be.PutUint32(b[56:], h.RefcountTableClusters)
	be.PutUint32(b[60:], h.NbSnapshots)
	be.PutUint64(b[64:], h.SnapshotsOffset)
	if h.Version == 2 {
		return headerV2Length
	}
	be.PutUint64(b[72:], h.IncompatibleFeatures)
	be.PutUint64(b[80:], h.CompatibleFeatures)
	be.PutUint64(b[88:], h.AutoclearFeatures)
	be.PutUint32(b[96:], h.RefcountOrder)
	be.PutUint32(b[100:], h.HeaderLength)
	b[104] = h.CompressionType
	clear(b[105:headerV3Length])
	copy(b[headerV3Length:], h.UnknownFields)
	return headerV3Length + len(h.UnknownFields)
}

// extension is a header extension kept as it is (one qimg does not
// interpret).
type extension struct {
	Magic uint32
	Data  []byte
}

// feature is an entry of the feature name table.
type feature struct {
	Type uint8
	Bit  uint8
	Name string
}

// cryptoHeader is the full disk encryption header pointer extension.
type cryptoHeader struct {
	Offset uint64
	Length uint64
}

// bitmapsExt is the bitmaps extension.
type bitmapsExt struct {
	NbBitmaps        uint32
	DirectorySize    uint64
	DirectoryOffset  uint64
	reservedNotZero  bool
	consistentOnDisk bool
}

// Extensions are the decoded header extensions.
type Extensions struct {
	// BackingFormat is the backing file format name, when recorded.
	BackingFormat    string
	HasBackingFormat bool
	// DataFile is the external data file name, when recorded.
	DataFile    string
	HasDataFile bool
	// Features is the feature name table, when present.
	Features    []feature
	HasFeatures bool
	// Crypto points to the LUKS header, when present.
	Crypto *cryptoHeader
	// Bitmaps describes the bitmap directory, when present and vouched
	// for by the autoclear bit.
	Bitmaps *bitmapsExt
	// BitmapsInconsistent is set when a bitmaps extension is present but
	// the autoclear bit that vouches for it is clear: a program without
	// bitmap support changed the image.
	BitmapsInconsistent bool
	// Unknown holds the extensions qimg does not interpret, in file
	// order.
	Unknown []extension
}

// ParseExtensions decodes the header extensions of a first cluster b
// (zero-padded to the cluster size if the file is shorter), with QEMU's
// checks and messages (qcow2_read_extensions).
func ParseExtensions(b []byte, h *Header) (*Extensions, error) {
	x := &Extensions{}
	end := h.extensionsEnd()
	if end > uint64(len(b)) {
		end = uint64(len(b))
	}
	be := binary.BigEndian
	for off := uint64(h.HeaderLength); off < end; {
		if off+8 > uint64(len(b)) {
			return nil, errors.New("Header extension too large")
		}
		magic := be.Uint32(b[off:])
		length := uint64(be.Uint32(b[off+4:]))
		off += 8
		if off > end || length > end-off {
			return nil, errors.New("Header extension too large")
		}
		data := b[off : off+length]
		switch magic {
		case extEnd:
			return x, nil
		case extBackingFormat:
			if length >= maxBackingFormat {
				return nil, fmt.Errorf("ERROR: ext_backing_format: len=%d too large (>=%d)", length, maxBackingFormat)
			}
			x.BackingFormat, x.HasBackingFormat = cString(data), true
		case extFeatureTable:
			x.Features = parseFeatureTable(data)
			x.HasFeatures = true
		case extCryptoHeader:
			if h.CryptMethod != cryptLUKS {
				return nil, errors.New("CRYPTO header extension only expected with LUKS encryption method")
			}
			if length != 16 {
				return nil, fmt.Errorf("CRYPTO header extension size %d, but expected size 16", length)
			}
			c := &cryptoHeader{Offset: be.Uint64(data), Length: be.Uint64(data[8:])}
			if c.Offset%(1<<h.ClusterBits) != 0 {
				return nil, fmt.Errorf("Encryption header offset '%d' is not a multiple of cluster size '%d'", c.Offset, 1<<h.ClusterBits)
			}
			x.Crypto = c
		case extBitmaps:
			if length != 24 {
				return nil, errors.New("bitmaps_ext: Invalid extension length")
			}
			if h.AutoclearFeatures&autoclearBitmaps == 0 {
				x.BitmapsInconsistent = true
				break
			}
			bm := &bitmapsExt{
				NbBitmaps:       be.Uint32(data),
				DirectorySize:   be.Uint64(data[8:]),
				DirectoryOffset: be.Uint64(data[16:]),
			}
			if be.Uint32(data[4:]) != 0 {
				return nil, errors.New("bitmaps_ext: Reserved field is not zero")
			}
			if bm.NbBitmaps > maxBitmaps {
				return nil, fmt.Errorf("bitmaps_ext: Image has %d bitmaps, exceeding the QEMU supported maximum of %d", bm.NbBitmaps, maxBitmaps)
			}
			if bm.NbBitmaps == 0 {
				return nil, errors.New("found bitmaps extension with zero bitmaps")
			}
			if bm.DirectoryOffset%(1<<h.ClusterBits) != 0 {
				return nil, errors.New("bitmaps_ext: invalid bitmap directory offset")
			}
			if bm.DirectorySize > maxBitmapDirectoryBytes {
				return nil, fmt.Errorf("bitmaps_ext: bitmap directory size (%d) exceeds the maximum supported size (%d)", bm.DirectorySize, maxBitmapDirectoryBytes)
			}
			x.Bitmaps = bm
		case extDataFile:
			x.DataFile, x.HasDataFile = cString(data), true
		default:
			x.Unknown = append(x.Unknown, extension{Magic: magic, Data: append([]byte(nil), data...)})
		}
		off += (length + 7) &^ 7
	}
	return x, nil
}

// cString returns the bytes of b up to the first NUL, as QEMU reads a
// string it stored NUL-terminated in a buffer.
func cString(b []byte) string {
	if i := strings.IndexByte(string(b), 0); i >= 0 {
		return string(b[:i])
	}
	return string(b)
}

// parseFeatureTable decodes a feature name table. A trailing partial entry
// is ignored; the table ends at the first entry with an empty name, as QEMU
// reads it.
func parseFeatureTable(b []byte) []feature {
	var out []feature
	for len(b) >= featureEntrySize {
		name := cString(b[2 : 2+featureNameSize])
		if b[2] == 0 {
			break
		}
		out = append(out, feature{Type: b[0], Bit: b[1], Name: name})
		b = b[featureEntrySize:]
	}
	if len(b) > 0 && len(b) < featureEntrySize && len(b) > 2 && b[2] != 0 {
		// QEMU reads the partial entry against a zero-filled
		// buffer; the name ends where the data does.
		out = append(out, feature{Type: b[0], Bit: b[1], Name: cString(b[2:])})
	}
	return out
}

// unsupportedFeatures words QEMU's "Unsupported qcow2 feature(s)" error for
// the unknown incompatible bits in mask, naming them from the feature table.
func unsupportedFeatures(table []feature, mask uint64) error {
	var names []string
	for _, f := range table {
		if f.Type != featureIncompatible || f.Bit >= 64 {
			continue
		}
		if mask&(1<<f.Bit) != 0 {
			name := f.Name
			if len(name) > featureNameSize {
				name = name[:featureNameSize]
			}
			names = append(names, name)
			mask &^= 1 << f.Bit
		}
	}
	if mask != 0 {
		names = append(names, fmt.Sprintf("Unknown incompatible feature: %x", mask))
	}
	return fmt.Errorf("Unsupported qcow2 feature(s): %s", strings.Join(names, ", "))
}

// qemuFeatures is the feature name table QEMU 7.2 writes.
var qemuFeatures = []feature{
	{featureIncompatible, 0, "dirty bit"},
	{featureIncompatible, 1, "corrupt bit"},
	{featureIncompatible, 2, "external data file"},
	{featureIncompatible, 3, "compression type"},
	{featureIncompatible, 4, "extended L2 entries"},
	{featureCompatible, 0, "lazy refcounts"},
	{featureAutoclear, 0, "bitmaps"},
	{featureAutoclear, 1, "raw external data"},
}

// appendExtension appends one extension record (magic, length, data padded
// to 8 bytes) to b.
func appendExtension(b []byte, magic uint32, data []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, magic)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	b = append(b, data...)
	for pad := (8 - len(data)%8) % 8; pad > 0; pad-- {
		b = append(b, 0)
	}
	return b
}

// headerImage is everything qcow2_update_header writes into the first
// cluster.
type headerImage struct {
	Header
	BackingFile    string
	HasBackingFile bool
	Ext            Extensions
	// WriteDataFileExt is set when the image has an external data file
	// whose name is recorded.
	WriteDataFileExt bool
}

// errNoSpace is returned when the header does not fit in the first cluster
// (QEMU's -ENOSPC).
var errNoSpace = errors.New("No space left on device")

// encodeHeaderCluster lays out a whole first cluster as QEMU's
// qcow2_update_header does: fixed header, unknown header fields, backing
// format, data file name, encryption header pointer, feature table (version
// 3 with clusters above 4 KiB), bitmaps, unknown extensions (in reverse file
// order, as QEMU keeps them), the end marker and the backing file name.
func encodeHeaderCluster(hi *headerImage) ([]byte, error) {
	clusterSize := 1 << hi.ClusterBits
	if clusterSize < headerV3Length {
		return nil, errNoSpace
	}
	h := hi.Header
	if h.Version >= 3 {
		h.HeaderLength = uint32(headerV3Length + len(h.UnknownFields))
	}
	h.BackingFileOffset, h.BackingFileSize = 0, 0
	fixed := make([]byte, headerV3Length+len(h.UnknownFields))
	n := h.Encode(fixed)
	b := make([]byte, 0, clusterSize)
	b = append(b, fixed[:n]...)
	if hi.Ext.HasBackingFormat {
		b = appendExtension(b, extBackingFormat, []byte(hi.Ext.BackingFormat))
	}
	if hi.WriteDataFileExt && hi.Ext.HasDataFile {
		b = appendExtension(b, extDataFile, []byte(hi.Ext.DataFile))
	}
	if c := hi.Ext.Crypto; c != nil && c.Offset != 0 {
		var d [16]byte
		binary.BigEndian.PutUint64(d[0:], c.Offset)
		binary.BigEndian.PutUint64(d[8:], c.Length)
		b = appendExtension(b, extCryptoHeader, d[:])
	}
	if h.Version >= 3 && clusterSize > 4096 {
		var d []byte
		for _, f := range qemuFeatures {
			var e [featureEntrySize]byte
			e[0], e[1] = f.Type, f.Bit
			copy(e[2:], f.Name)
			d = append(d, e[:]...)
		}
		b = appendExtension(b, extFeatureTable, d)
	}
	if bm := hi.Ext.Bitmaps; bm != nil && bm.NbBitmaps > 0 {
		var d [24]byte
		binary.BigEndian.PutUint32(d[0:], bm.NbBitmaps)
		binary.BigEndian.PutUint64(d[8:], bm.DirectorySize)
		binary.BigEndian.PutUint64(d[16:], bm.DirectoryOffset)
		b = appendExtension(b, extBitmaps, d[:])
	}
	for i := len(hi.Ext.Unknown) - 1; i >= 0; i-- {
		u := hi.Ext.Unknown[i]
		b = appendExtension(b, u.Magic, u.Data)
	}
	b = appendExtension(b, extEnd, nil)
	if len(b) > clusterSize {
		return nil, errNoSpace
	}
	if hi.HasBackingFile {
		if len(b)+len(hi.BackingFile) > clusterSize {
			return nil, errNoSpace
		}
		h.BackingFileOffset = uint64(len(b))
		h.BackingFileSize = uint32(len(hi.BackingFile))
		b = append(b, hi.BackingFile...)
		h.Encode(b)
	}
	out := make([]byte, clusterSize)
	copy(out, b)
	return out, nil
}

// clusterType classifies a standard L2 entry (QEMU's QCow2ClusterType).
type clusterType uint8

const (
	clusterUnallocated clusterType = iota
	clusterZeroPlain
	clusterZeroAlloc
	clusterNormal
	clusterCompressed
)

// subclusterType classifies one subcluster (QEMU's QCow2SubclusterType);
// without extended L2 entries a cluster is one subcluster.
type subclusterType uint8

const (
	subUnallocatedPlain subclusterType = iota
	subUnallocatedAlloc
	subZeroPlain
	subZeroAlloc
	subNormal
	subCompressed
	subInvalid
)

// entryLayout is what decoding an L2 entry depends on.
type entryLayout struct {
	clusterBits int
	extendedL2  bool
	dataFile    bool
}

// classify returns the cluster type of an L2 entry.
func (e entryLayout) classify(entry uint64) clusterType {
	switch {
	case entry&oflagCompressed != 0:
		return clusterCompressed
	case entry&oflagZero != 0 && !e.extendedL2:
		if entry&l2OffsetMask != 0 {
			return clusterZeroAlloc
		}
		return clusterZeroPlain
	case entry&l2OffsetMask == 0:
		// Offset 0 is a valid data file offset; there every allocated
		// cluster has the COPIED flag.
		if e.dataFile && entry&oflagCopied != 0 {
			return clusterNormal
		}
		return clusterUnallocated
	}
	return clusterNormal
}

// subcluster returns the type of subcluster sc of an entry and its bitmap.
func (e entryLayout) subcluster(entry, bitmap uint64, sc int) subclusterType {
	t := e.classify(entry)
	if !e.extendedL2 {
		switch t {
		case clusterCompressed:
			return subCompressed
		case clusterZeroPlain:
			return subZeroPlain
		case clusterZeroAlloc:
			return subZeroAlloc
		case clusterNormal:
			return subNormal
		}
		return subUnallocatedPlain
	}
	alloc := uint64(1) << sc
	zero := alloc << 32
	switch t {
	case clusterCompressed:
		return subCompressed
	case clusterNormal:
		switch {
		case (bitmap>>32)&bitmap != 0:
			return subInvalid
		case bitmap&zero != 0:
			return subZeroAlloc
		case bitmap&alloc != 0:
			return subNormal
		}
		return subUnallocatedAlloc
	default: // unallocated
		switch {
		case bitmap&l2BitmapAllAlloc != 0:
			return subInvalid
		case bitmap&zero != 0:
			return subZeroPlain
		}
		return subUnallocatedPlain
	}
}

// subclusterRun returns the type of subcluster from and how many
// subclusters from there on (within the cluster) have the same type; -1
// when the entry is invalid (QEMU's qcow2_get_subcluster_range_type).
func (e entryLayout) subclusterRun(entry, bitmap uint64, from int) (subclusterType, int) {
	t := e.subcluster(entry, bitmap, from)
	if t == subInvalid {
		return t, -1
	}
	if !e.extendedL2 || t == subCompressed {
		if !e.extendedL2 {
			return t, 1 - from
		}
		return t, subclustersPerCluster - from
	}
	below := uint32(1)<<from - 1
	switch t {
	case subNormal:
		return t, countOnes32(uint32(bitmap)|below) - from
	case subZeroPlain, subZeroAlloc:
		return t, countOnes32(uint32(bitmap>>32)|below) - from
	default:
		v := (uint32(bitmap>>32) | uint32(bitmap)) &^ below
		return t, trailingZeros32(v) - from
	}
}

// countOnes32 counts the trailing one bits of v (QEMU's cto32).
func countOnes32(v uint32) int { return trailingZeros32(^v) }

// trailingZeros32 counts the trailing zero bits of v; 32 for zero.
func trailingZeros32(v uint32) int {
	n := 0
	for n < 32 && v&(1<<n) == 0 {
		n++
	}
	return n
}

// compressedLayout is what decoding a compressed cluster descriptor depends
// on.
type compressedLayout struct {
	csizeShift        uint
	csizeMask         uint64
	clusterOffsetMask uint64
}

// newCompressedLayout returns the descriptor layout for a cluster size.
func newCompressedLayout(clusterBits int) compressedLayout {
	shift := uint(62 - (clusterBits - 8))
	return compressedLayout{
		csizeShift:        shift,
		csizeMask:         1<<(clusterBits-8) - 1,
		clusterOffsetMask: 1<<shift - 1,
	}
}

// parse returns the host offset and the number of bytes from there that
// hold a compressed cluster (QEMU's qcow2_parse_compressed_l2_entry).
func (c compressedLayout) parse(entry uint64) (offset uint64, size int) {
	offset = entry & c.clusterOffsetMask
	sectors := int((entry>>c.csizeShift)&c.csizeMask) + 1
	return offset, sectors*compressedSectorSize - int(offset&(compressedSectorSize-1))
}

// encode builds the descriptor of size compressed bytes at offset.
func (c compressedLayout) encode(offset uint64, size int) uint64 {
	sectors := (offset+uint64(size)-1)/compressedSectorSize - offset/compressedSectorSize
	return oflagCompressed | offset | sectors<<c.csizeShift
}

// refcountAccess reads and writes refcounts of one width in a refcount
// block.
type refcountAccess struct {
	order uint // refcount_bits = 1 << order
}

// get returns refcount i of block b.
func (r refcountAccess) get(b []byte, i uint64) uint64 {
	switch r.order {
	case 0, 1, 2:
		bits := uint64(1) << r.order
		perByte := 8 / bits
		return uint64(b[i/perByte]>>((i%perByte)*bits)) & (1<<bits - 1)
	case 3:
		return uint64(b[i])
	case 4:
		return uint64(binary.BigEndian.Uint16(b[2*i:]))
	case 5:
		return uint64(binary.BigEndian.Uint32(b[4*i:]))
	}
	return binary.BigEndian.Uint64(b[8*i:])
}

// set stores refcount i of block b; v must fit the width.
func (r refcountAccess) set(b []byte, i, v uint64) {
	switch r.order {
	case 0, 1, 2:
		bits := uint64(1) << r.order
		perByte := 8 / bits
		shift := (i % perByte) * bits
		mask := byte((1<<bits - 1) << shift)
		b[i/perByte] = b[i/perByte]&^mask | byte(v<<shift)&mask
	case 3:
		b[i] = byte(v)
	case 4:
		binary.BigEndian.PutUint16(b[2*i:], uint16(v))
	case 5:
		binary.BigEndian.PutUint32(b[4*i:], uint32(v))
	default:
		binary.BigEndian.PutUint64(b[8*i:], v)
	}
}

// max returns the largest refcount of the width.
func (r refcountAccess) max() uint64 {
	bits := uint(1) << r.order
	if bits == 64 {
		return ^uint64(0)
	}
	return 1<<bits - 1
}

// snapshotHeaderSize is the fixed part of a snapshot table entry.
const snapshotHeaderSize = 40

// snapshotExtraSize is the extra data QEMU 7.2 knows.
const snapshotExtraSize = 24

// snapshot is one internal snapshot from the snapshot table.
type snapshot struct {
	L1TableOffset uint64
	L1Size        uint32
	ID            string
	Name          string
	DiskSize      uint64
	VMStateSize   uint64
	DateSec       uint32
	DateNsec      uint32
	VMClockNsec   uint64
	ICount        uint64
	// ExtraDataSize is the size of all extra data, including the known
	// fields.
	ExtraDataSize    uint32
	UnknownExtraData []byte
}

// snapshotSource reads bytes of a snapshot table, at offsets relative to
// its start.
type snapshotSource interface {
	readAt(p []byte, off int64) error
}

// bytesSource is a snapshot table held in memory.
type bytesSource []byte

func (b bytesSource) readAt(p []byte, off int64) error {
	if off < 0 || off+int64(len(p)) > int64(len(b)) {
		return errSnapshotRead
	}
	copy(p, b[off:])
	return nil
}

// snapshotReader reads a snapshot table from a file.
type snapshotReader struct {
	f    io.ReaderAt
	base int64
}

func (r *snapshotReader) readAt(p []byte, off int64) error {
	if err := storage.ReadExact(r.f, p, r.base+off); err != nil {
		return errSnapshotRead
	}
	return nil
}

var errSnapshotRead = errors.New("Failed to read snapshot table: Input/output error")

// decodeSnapshots decodes n snapshot table entries. virtualSize is the disk
// size of entries without the disk size field. It returns the table's length
// in bytes. Errors are worded as QEMU's qcow2_read_snapshots. Each entry is
// read on its own, so memory stays bounded by the table size limit.
func decodeSnapshots(src snapshotSource, n int, virtualSize uint64) ([]snapshot, int, error) {
	return decodeSnapshotTable(src, n, virtualSize, nil)
}

// snapshotRepair is what decoding a snapshot table for `check -r all`
// drops instead of failing, as QEMU's qcow2_do_read_snapshots in repair
// mode: extra data beyond the limit (the entry keeps its first bytes) and
// the entries that make the table too big.
type snapshotRepair struct {
	// report receives QEMU's "Discarding ..." lines.
	report func(string)
	// overhanging counts the entries dropped off the end.
	overhanging int
	// extraDropped counts the entries whose extra data was cut.
	extraDropped int
}

// decodeSnapshotTable decodes a snapshot table strictly (repair nil) or
// repairing what `check -r all` repairs. The length returned is that of
// the table on disk, up to the last entry kept.
func decodeSnapshotTable(src snapshotSource, n int, virtualSize uint64, repair *snapshotRepair) ([]snapshot, int, error) {
	var out []snapshot
	off := 0
	// length is the table's length with any cut extra data.
	length := 0
	be := binary.BigEndian
	var h [snapshotHeaderSize]byte
	for i := 0; i < n; i++ {
		entryStart := off
		off = (off + 7) &^ 7
		length = (length + 7) &^ 7
		if err := src.readAt(h[:], int64(off)); err != nil {
			return nil, 0, err
		}
		sn := snapshot{
			L1TableOffset: be.Uint64(h[0:]),
			L1Size:        be.Uint32(h[8:]),
			DateSec:       be.Uint32(h[16:]),
			DateNsec:      be.Uint32(h[20:]),
			VMClockNsec:   be.Uint64(h[24:]),
			VMStateSize:   uint64(be.Uint32(h[32:])),
			ExtraDataSize: be.Uint32(h[36:]),
		}
		idSize := int(be.Uint16(h[12:]))
		nameSize := int(be.Uint16(h[14:]))
		off += snapshotHeaderSize
		// skip is extra data on disk that is not kept.
		skip := 0
		if sn.ExtraDataSize > maxSnapshotExtraData {
			if repair == nil {
				return nil, 0, &hintError{
					msg:  fmt.Sprintf("Too much extra metadata in snapshot table entry %d", i),
					hint: "You can force-remove this extra metadata with qemu-img check -r all",
				}
			}
			repair.report(fmt.Sprintf("Discarding too much extra metadata in snapshot table entry %d (%d > %d)",
				i, sn.ExtraDataSize, maxSnapshotExtraData))
			repair.extraDropped++
			skip = int(sn.ExtraDataSize) - maxSnapshotExtraData
			sn.ExtraDataSize = maxSnapshotExtraData
		}
		extra := int(sn.ExtraDataSize)
		rest := make([]byte, extra+idSize+nameSize)
		if err := src.readAt(rest[:extra], int64(off)); err != nil {
			return nil, 0, err
		}
		off += extra + skip
		if err := src.readAt(rest[extra:], int64(off)); err != nil {
			return nil, 0, err
		}
		off += idSize + nameSize
		e := rest[:extra]
		if extra >= 8 {
			sn.VMStateSize = be.Uint64(e[0:])
		}
		if extra >= 16 {
			sn.DiskSize = be.Uint64(e[8:])
		} else {
			sn.DiskSize = virtualSize
		}
		if extra >= 24 {
			sn.ICount = be.Uint64(e[16:])
		} else {
			sn.ICount = ^uint64(0)
		}
		if extra > snapshotExtraSize {
			sn.UnknownExtraData = append([]byte(nil), e[snapshotExtraSize:]...)
		}
		// QEMU keeps them as C strings: they end at a NUL byte.
		sn.ID = cString(rest[extra : extra+idSize])
		sn.Name = cString(rest[extra+idSize:])
		length += snapshotHeaderSize + len(rest)
		if length > maxSnapshotsBytes || off > 1<<31-1 {
			if repair == nil {
				return nil, 0, &hintError{
					msg:  "Snapshot table is too big",
					hint: fmt.Sprintf("You can force-remove all %d overhanging snapshots with qemu-img check -r all", n-i),
				}
			}
			repair.report(fmt.Sprintf("Discarding %d overhanging snapshots (snapshot table is too big)", n-i))
			repair.overhanging += n - i
			off = entryStart
			break
		}
		out = append(out, sn)
	}
	return out, off, nil
}

// hintError is an error with an explanation QEMU prints on the following
// lines.
type hintError struct {
	msg, hint string
}

func (e *hintError) Error() string { return e.msg }

// ErrorHint returns the explanation.
func (e *hintError) ErrorHint() string { return e.hint }

// bitmapDirEntrySize is the fixed part of a bitmap directory entry.
const bitmapDirEntrySize = 24

// Bitmap directory limits and flags.
const (
	bmeMaxTableSize       = 0x8000000
	bmeMaxPhysSize        = 0x20000000
	bmeMaxGranularityBits = 31
	bmeMinGranularityBits = 9
	bmeMaxNameSize        = 1023
	bmeReservedFlags      = 0xfffffffc
	bmeFlagInUse          = 1 << 0
	bmeFlagAuto           = 1 << 1
	bmeTypeDirty          = 1
)

// bitmapEntry is one bitmap directory entry.
type bitmapEntry struct {
	TableOffset     uint64
	TableSize       uint32
	Flags           uint32
	Type            uint8
	GranularityBits uint8
	Name            string
	// offset is where the entry lies within the directory.
	offset int
}

// parseBitmapDirectory decodes a bitmap directory and checks every entry
// as QEMU's bitmap_list_load does.
func parseBitmapDirectory(b []byte, nb uint32, clusterSize, virtualSize uint64) ([]bitmapEntry, error) {
	var out []bitmapEntry
	be := binary.BigEndian
	broken := errors.New("Broken bitmap directory")
	var count uint32
	off := 0
	for off < len(b) {
		if off+bitmapDirEntrySize > len(b) {
			return nil, broken
		}
		count++
		if count > nb {
			return nil, errors.New("More bitmaps found than specified in header extension")
		}
		e := b[off:]
		ent := bitmapEntry{
			TableOffset:     be.Uint64(e[0:]),
			TableSize:       be.Uint32(e[8:]),
			Flags:           be.Uint32(e[12:]),
			Type:            e[16],
			GranularityBits: e[17],
			offset:          off,
		}
		nameSize := int(be.Uint16(e[18:]))
		extraSize := uint64(be.Uint32(e[20:]))
		size := (uint64(bitmapDirEntrySize) + extraSize + uint64(nameSize) + 7) &^ 7
		if uint64(off)+size > uint64(len(b)) {
			return nil, broken
		}
		if extraSize != 0 {
			return nil, errors.New("Bitmap extra data is not supported")
		}
		ent.Name = string(e[bitmapDirEntrySize : bitmapDirEntrySize+nameSize])
		if !ent.valid(clusterSize, virtualSize) {
			return nil, fmt.Errorf("Bitmap '%s' doesn't satisfy the constraints", ent.Name)
		}
		out = append(out, ent)
		off += int(size)
	}
	if count != nb {
		return nil, errors.New("Less bitmaps found than specified in header extension")
	}
	return out, nil
}

// valid applies QEMU's check_dir_entry.
func (e *bitmapEntry) valid(clusterSize, virtualSize uint64) bool {
	if e.TableSize == 0 || e.TableOffset == 0 || e.TableOffset%clusterSize != 0 ||
		e.TableSize > bmeMaxTableSize || e.GranularityBits > bmeMaxGranularityBits ||
		e.GranularityBits < bmeMinGranularityBits || e.Flags&bmeReservedFlags != 0 ||
		len(e.Name) > bmeMaxNameSize || e.Type != bmeTypeDirty {
		return false
	}
	phys := uint64(e.TableSize) * clusterSize
	if phys > bmeMaxPhysSize {
		return false
	}
	if e.Flags&bmeFlagInUse == 0 && virtualSize > (phys*8)<<e.GranularityBits {
		return false
	}
	return true
}
