package mutate

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/klauspost/compress/flate"
)

// The qcow2 mutators work on images made by the real qemu-img (testdata/,
// see gen.sh), located with a small parser of their own: the layout of
// docs/interop/qcow2.txt, read only as far as a valid image needs.

// qcow2 header field offsets.
const (
	q2Version       = 4
	q2BackingOff    = 8
	q2BackingSize   = 16
	q2ClusterBits   = 20
	q2Size          = 24
	q2CryptMethod   = 32
	q2L1Size        = 36
	q2L1Offset      = 40
	q2RefTableOff   = 48
	q2RefTableClus  = 56
	q2NbSnapshots   = 60
	q2SnapshotsOff  = 64
	q2Incompatible  = 72
	q2Compatible    = 80
	q2Autoclear     = 88
	q2RefcountOrder = 96
	q2HeaderLength  = 100
	q2Compression   = 104
)

// qcow2 header extension magics.
const (
	q2ExtEnd           = 0
	q2ExtBackingFormat = 0xe2792aca
	q2ExtFeatures      = 0x6803f857
	q2ExtBitmaps       = 0x23852875
	q2ExtCrypto        = 0x0537be77
	q2ExtDataFile      = 0x44415441
)

const (
	q2Copied     = 1 << 63
	q2Compressed = 1 << 62
	q2OffsetMask = 0x00fffffffffffe00
)

// q2ext is a header extension: where its 8-byte header lies, its magic and
// its data.
type q2ext struct {
	at    int64
	magic uint32
	data  []byte
}

// q2layout is where a qcow2 image keeps its structures.
type q2layout struct {
	b           []byte
	version     uint32
	clusterBits uint
	cs          int64
	hdrLen      int64
	l1Off       int64
	l1Size      int64
	rtOff       int64
	rtLen       int64
	extL2       bool
	l2Entry     int64
	l2Tables    []int64
	// normal, compressed and zero L2 entries, by file offset
	normal, compressed, zero []int64
	refBlocks                []int64
	snapOff                  int64
	snapEntries              []int64
	exts                     []q2ext
	extsEnd                  int64 // just past the end marker
	bmDirOff, bmDirSize      int64
	bmTables                 []int64
}

func be64(b []byte, off int64) uint64 {
	if off < 0 || off+8 > int64(len(b)) {
		return 0
	}
	return binary.BigEndian.Uint64(b[off:])
}

func be32(b []byte, off int64) uint32 {
	if off < 0 || off+4 > int64(len(b)) {
		return 0
	}
	return binary.BigEndian.Uint32(b[off:])
}

func put64(b []byte, off int64, v uint64) {
	if off >= 0 && off+8 <= int64(len(b)) {
		binary.BigEndian.PutUint64(b[off:], v)
	}
}

func put32(b []byte, off int64, v uint32) {
	if off >= 0 && off+4 <= int64(len(b)) {
		binary.BigEndian.PutUint32(b[off:], v)
	}
}

// parseQcow2 locates the structures of a valid image.
func parseQcow2(b []byte) (*q2layout, error) {
	if len(b) < 112 || be32(b, 0) != 0x514649fb {
		return nil, errors.New("not a qcow2 image")
	}
	q := &q2layout{b: b, version: be32(b, q2Version), clusterBits: uint(be32(b, q2ClusterBits))}
	if q.clusterBits < 9 || q.clusterBits > 21 {
		return nil, errors.New("bad cluster bits")
	}
	q.cs = 1 << q.clusterBits
	q.hdrLen = 72
	if q.version >= 3 {
		q.hdrLen = int64(be32(b, q2HeaderLength))
		q.extL2 = be64(b, q2Incompatible)&(1<<4) != 0
	}
	q.l2Entry = 8
	if q.extL2 {
		q.l2Entry = 16
	}
	q.l1Off, q.l1Size = int64(be64(b, q2L1Offset)), int64(be32(b, q2L1Size))
	q.rtOff, q.rtLen = int64(be64(b, q2RefTableOff)), int64(be32(b, q2RefTableClus))*q.cs
	// Header extensions.
	end := q.cs
	if bo := int64(be64(b, q2BackingOff)); bo != 0 {
		end = bo
	}
	for off := q.hdrLen; off+8 <= end; {
		magic, n := be32(b, off), int64(be32(b, off+4))
		if off+8+n > int64(len(b)) {
			return nil, errors.New("bad extension")
		}
		q.exts = append(q.exts, q2ext{at: off, magic: magic, data: slices.Clone(b[off+8 : off+8+n])})
		off += 8 + (n+7)&^7
		if magic == q2ExtEnd {
			q.extsEnd = off
			break
		}
	}
	for _, x := range q.exts {
		if x.magic == q2ExtBitmaps && len(x.data) == 24 {
			q.bmDirSize = int64(binary.BigEndian.Uint64(x.data[8:]))
			q.bmDirOff = int64(binary.BigEndian.Uint64(x.data[16:]))
		}
	}
	// Active L1 and L2 tables.
	for i := int64(0); i < q.l1Size; i++ {
		l2 := int64(be64(b, q.l1Off+8*i) & q2OffsetMask)
		if l2 == 0 {
			continue
		}
		q.l2Tables = append(q.l2Tables, l2)
		for e := l2; e < l2+q.cs && e+q.l2Entry <= int64(len(b)); e += q.l2Entry {
			v := be64(b, e)
			switch {
			case v&q2Compressed != 0:
				q.compressed = append(q.compressed, e)
			case v&1 != 0 && !q.extL2:
				q.zero = append(q.zero, e)
			case v&q2OffsetMask != 0:
				q.normal = append(q.normal, e)
			}
		}
	}
	for i := int64(0); i < q.rtLen/8; i++ {
		if rb := int64(be64(b, q.rtOff+8*i)) &^ (q.cs - 1); rb != 0 {
			q.refBlocks = append(q.refBlocks, rb)
		}
	}
	// Snapshot table.
	q.snapOff = int64(be64(b, q2SnapshotsOff))
	off := q.snapOff
	for i := uint32(0); i < be32(b, q2NbSnapshots); i++ {
		q.snapEntries = append(q.snapEntries, off)
		extra, id, name := int64(be32(b, off+36)), int64(binary.BigEndian.Uint16(b[off+12:])), int64(binary.BigEndian.Uint16(b[off+14:]))
		off = (off + 40 + extra + id + name + 7) &^ 7
	}
	// Bitmap tables.
	for d := q.bmDirOff; q.bmDirSize > 0 && d+24 <= q.bmDirOff+q.bmDirSize; {
		q.bmTables = append(q.bmTables, int64(be64(b, d)))
		nameSize, extra := int64(binary.BigEndian.Uint16(b[d+18:])), int64(be32(b, d+20))
		d = (d + 24 + nameSize + extra + 7) &^ 7
	}
	return q, nil
}

// meta lists the metadata ranges of the image.
func (q *q2layout) meta() []Range {
	hdr := q.extsEnd
	if hdr == 0 {
		hdr = q.hdrLen
	}
	if bo, bs := int64(be64(q.b, q2BackingOff)), int64(be32(q.b, q2BackingSize)); bo != 0 {
		hdr = max(hdr, bo+bs)
	}
	r := []Range{{0, hdr}, {q.l1Off, q.l1Size * 8}, {q.rtOff, q.rtLen}}
	for _, l2 := range q.l2Tables {
		r = append(r, Range{l2, q.cs})
	}
	for _, rb := range q.refBlocks {
		r = append(r, Range{rb, q.cs})
	}
	if len(q.snapEntries) > 0 {
		r = append(r, Range{q.snapOff, 256})
	}
	if q.bmDirSize > 0 {
		r = append(r, Range{q.bmDirOff, q.bmDirSize})
	}
	return r
}

// qcow2Bases are the qemu-made images and the files they name; flips says
// how many random bit flips each gets.
var qcow2Bases = []struct {
	name  string
	files []string
	flips int
}{
	{"v3", nil, 24},
	{"v2", nil, 12},
	{"c64k", nil, 8},
	{"zstd", nil, 10},
	{"extl2", nil, 12},
	{"snap", nil, 14},
	{"bitmaps", nil, 14},
	{"overlay", []string{"base.qcow2"}, 6},
	{"rawbacked", []string{"base.raw"}, 0},
	{"datafile", []string{"data.raw"}, 6},
	{"dirty", nil, 6},
}

func qcow2Format() Format {
	return Format{
		Bases: func() ([]Base, error) {
			var out []Base
			for _, qb := range qcow2Bases {
				data, err := loadTestdata(qb.name + ".qcow2")
				if err != nil {
					return nil, err
				}
				q, err := parseQcow2(data)
				if err != nil {
					return nil, fmt.Errorf("%s: %w", qb.name, err)
				}
				b := Base{Name: qb.name, Main: qb.name + ".qcow2", Files: map[string]File{qb.name + ".qcow2": {Data: data}},
					Meta: q.meta(), Flips: qb.flips}
				for _, f := range qb.files {
					d, err := loadTestdata(f)
					if err != nil {
						return nil, err
					}
					b.Files[f] = File{Data: d}
				}
				out = append(out, b)
			}
			return out, nil
		},
		Mutators: []Mutator{
			{Name: "header", Apply: q2Header},
			{Name: "ext", Apply: q2Extensions},
			{Name: "l1", Apply: q2L1},
			{Name: "l2", Apply: q2L2},
			{Name: "compressed", Apply: q2CompressedMut, Essential: true},
			{Name: "amplify", Apply: q2Amplify, Essential: true},
			{Name: "refcount", Apply: q2Refcount},
			{Name: "snapshot", Apply: q2Snapshots},
			{Name: "bitmap", Apply: q2Bitmaps},
			{Name: "huge", Apply: q2Huge, Essential: true},
			{Name: "datafile", Apply: q2DataFileFlags, Essential: true},
		},
		References: []Reference{
			{Kind: "backing", Base: "v3", Embed: func(b Base, name string) (Base, error) { return q2Embed(b, name, "", false) }},
			{Kind: "backing-raw", Base: "v3", Labels: []string{"absolute-secret", "symlink-to-secret", "json-raw-offset", "proc-environ", "dev-zero", "self"}, Embed: func(b Base, name string) (Base, error) { return q2Embed(b, name, "raw", false) }},
			{Kind: "data-file", Base: "v3", Embed: func(b Base, name string) (Base, error) { return q2Embed(b, name, "", true) }},
		},
	}
}

// q2field is a header field and the values to try in it.
type q2field struct {
	name   string
	off    int64
	width  int
	values func(q *q2layout) []uint64
}

func vals(v ...uint64) func(*q2layout) []uint64 { return func(*q2layout) []uint64 { return v } }

var q2Fields = []q2field{
	{"version", q2Version, 4, vals(0, 1, 4, 0xffffffff)},
	{"cluster-bits", q2ClusterBits, 4, vals(0, 8, 22, 31, 32, 63, 0xffffffff)},
	{"size", q2Size, 8, vals(0, 511, 1<<62, 1<<63-1, ^uint64(0), 1<<40)},
	{"l1-size", q2L1Size, 4, func(q *q2layout) []uint64 {
		return []uint64{0, uint64(q.l1Size) - 1, 1 << 22, 1<<22 + 1, 0x7fffffff, 0xffffffff}
	}},
	{"l1-offset", q2L1Offset, 8, func(q *q2layout) []uint64 {
		n := uint64(len(q.b))
		return []uint64{0, 1, uint64(q.l1Off) + 8, n, n + uint64(q.cs), uint64(q.rtOff), 1 << 62, ^uint64(0) - uint64(q.cs) + 1}
	}},
	{"reftable-offset", q2RefTableOff, 8, func(q *q2layout) []uint64 {
		n := uint64(len(q.b))
		return []uint64{0, 8, n, uint64(q.l1Off), 1<<63 - uint64(q.cs)}
	}},
	{"reftable-clusters", q2RefTableClus, 4, vals(0, 2, 1<<20, 0xffffffff)},
	{"nb-snapshots", q2NbSnapshots, 4, vals(1, 65536, 65537, 0xffffffff)},
	{"snapshots-offset", q2SnapshotsOff, 8, func(q *q2layout) []uint64 {
		return []uint64{8, uint64(len(q.b)), 1<<63 - 8}
	}},
	{"crypt-method", q2CryptMethod, 4, vals(1, 2, 3, 0xffffffff)},
	{"incompatible", q2Incompatible, 8, vals(1, 2, 4, 8, 16, 32, 1<<63, ^uint64(0))},
	{"compatible", q2Compatible, 8, vals(^uint64(0))},
	{"autoclear", q2Autoclear, 8, vals(1, 2, ^uint64(0))},
	{"refcount-order", q2RefcountOrder, 4, vals(0, 3, 6, 7, 0xffffffff)},
	{"header-length", q2HeaderLength, 4, vals(0, 103, 104, 4095, 4096, 4097, 0xffffffff)},
	{"compression-type", q2Compression, 1, vals(1, 2, 0xff)},
	{"backing-offset", q2BackingOff, 8, func(q *q2layout) []uint64 {
		return []uint64{8, uint64(q.cs) - 1, uint64(q.cs), ^uint64(0)}
	}},
	{"backing-size", q2BackingSize, 4, vals(1023, 1024, 0xffffffff)},
}

func setField(b []byte, off int64, width int, v uint64) {
	switch width {
	case 1:
		b[off] = byte(v)
	case 2:
		if off >= 0 && off+2 <= int64(len(b)) {
			binary.BigEndian.PutUint16(b[off:], uint16(v))
		}
	case 4:
		put32(b, off, uint32(v))
	default:
		put64(b, off, v)
	}
}

// poke is one change to an image: the big-endian field of width bytes at
// off set to v.
type poke struct {
	name  string
	off   int64
	width int
	v     uint64
}

// at returns pokes of 8-byte words at off, one per value.
func at(off int64, values []named) []poke {
	p := make([]poke, len(values))
	for k, v := range values {
		p[k] = poke{v.name, off, 8, v.v}
	}
	return p
}

// named is a value with a name for the mutation that writes it.
type named struct {
	name string
	v    uint64
}

// pokes returns one mutation per poke: a copy of the base whose main image
// has that one change.
func pokes(b Base, ps []poke) []Mutation {
	data := b.Files[b.Main].Data
	out := make([]Mutation, 0, len(ps))
	for _, p := range ps {
		d := slices.Clone(data)
		setField(d, p.off, p.width, p.v)
		out = append(out, Mutation{Name: p.name, Base: b.with(d)})
	}
	return out
}

// layoutOf returns the layout of the base's main image when the base is one
// of names.
func layoutOf(b Base, names ...string) (*q2layout, bool) {
	if !slices.Contains(names, b.Name) {
		return nil, false
	}
	q, err := parseQcow2(b.Files[b.Main].Data)
	return q, err == nil
}

// q2Header sets each header field to boundary values, in the v3 base (and
// the version-specific ones in v2).
func q2Header(b Base, _ Target) []Mutation {
	q, ok := layoutOf(b, "v3", "v2")
	if !ok {
		return nil
	}
	var ps []poke
	for _, f := range q2Fields {
		if b.Name == "v2" && !slices.Contains([]string{"version", "size", "l1-offset", "backing-offset"}, f.name) {
			continue
		}
		for _, v := range f.values(q) {
			ps = append(ps, poke{fmt.Sprintf("%s=%#x", f.name, v), f.off, f.width, v})
		}
	}
	out := pokes(b, ps)
	// A backing file name size without an offset means nothing; give
	// those an offset.
	for _, m := range out {
		if d := m.Base.Files[m.Base.Main].Data; strings.HasPrefix(m.Name, "backing-size=") {
			put64(d, q2BackingOff, uint64(q.extsEnd))
		}
	}
	return out
}

// encodeExts lays out a header's extensions (ending with the end marker)
// from the header length on, and the backing file name after them; it
// fails when they do not fit in the first cluster.
func (q *q2layout) encodeExts(exts []q2ext, backing string) ([]byte, error) {
	d := slices.Clone(q.b)
	var area []byte
	for _, x := range exts {
		var h [8]byte
		binary.BigEndian.PutUint32(h[:], x.magic)
		binary.BigEndian.PutUint32(h[4:], uint32(len(x.data)))
		area = append(area, h[:]...)
		area = append(area, x.data...)
		for len(area)%8 != 0 {
			area = append(area, 0)
		}
	}
	area = append(area, make([]byte, 8)...) // end marker
	start := q.hdrLen
	if start+int64(len(area))+int64(len(backing)) > q.cs {
		return nil, errors.New("extensions do not fit in the first cluster")
	}
	clear(d[start:q.cs])
	copy(d[start:], area)
	if backing != "" {
		off := start + int64(len(area))
		copy(d[off:], backing)
		put64(d, q2BackingOff, uint64(off))
		put32(d, q2BackingSize, uint32(len(backing)))
	} else {
		put64(d, q2BackingOff, 0)
		put32(d, q2BackingSize, 0)
	}
	return d, nil
}

// knownExts returns the image's extensions without the end marker and
// without those of the given magics.
func (q *q2layout) knownExts(drop ...uint32) []q2ext {
	var out []q2ext
	for _, x := range q.exts {
		if x.magic != q2ExtEnd && !slices.Contains(drop, x.magic) {
			out = append(out, x)
		}
	}
	return out
}

// q2Embed makes the image name name as its backing file (with a backing
// format when format is set) or as its external data file.
func q2Embed(b Base, name, format string, dataFile bool) (Base, error) {
	q, err := parseQcow2(b.Files[b.Main].Data)
	if err != nil {
		return b, err
	}
	exts := q.knownExts(q2ExtBackingFormat, q2ExtDataFile)
	backing := name
	if dataFile {
		backing = ""
		exts = append(exts, q2ext{magic: q2ExtDataFile, data: []byte(name)})
	} else if format != "" {
		exts = append(exts, q2ext{magic: q2ExtBackingFormat, data: []byte(format)})
	}
	d, err := q.encodeExts(exts, backing)
	if err != nil {
		return b, err
	}
	if dataFile {
		put64(d, q2Incompatible, be64(d, q2Incompatible)|4)
	}
	return b.with(d), nil
}

// q2Extensions damages the header extensions: lengths past the cluster,
// unknown and repeated extensions, an over-long backing format, a feature
// table of odd length, crypto and bitmaps extensions where they do not
// belong, and extensions that leave no room for the backing file name.
func q2Extensions(b Base, _ Target) []Mutation {
	q, ok := layoutOf(b, "v3", "overlay", "bitmaps", "datafile")
	if !ok {
		return nil
	}
	data := q.b
	var out []Mutation
	add := func(name string, d []byte) { out = append(out, Mutation{Name: name, Base: b.with(d)}) }
	// Each existing extension's length set to boundary values.
	for k, x := range q.exts {
		for _, n := range []uint32{0xffffffff, uint32(q.cs), uint32(q.cs - x.at - 8), uint32(len(x.data) + 1)} {
			d := slices.Clone(data)
			put32(d, x.at+4, n)
			add(fmt.Sprintf("len%d=%#x", k, n), d)
		}
	}
	if b.Name != "v3" {
		return out
	}
	exts := q.knownExts()
	try := func(name string, xs []q2ext, backing string) {
		if d, err := q.encodeExts(xs, backing); err == nil {
			add(name, d)
		}
	}
	try("backing-format-16", append(slices.Clone(exts), q2ext{magic: q2ExtBackingFormat, data: []byte("qcow2qcow2qcow2q")}), "x.img")
	try("backing-format-255", append(slices.Clone(exts), q2ext{magic: q2ExtBackingFormat, data: bytes.Repeat([]byte("r"), 255)}), "x.img")
	try("backing-format-unknown", append(slices.Clone(exts), q2ext{magic: q2ExtBackingFormat, data: []byte("vvfat")}), "x.img")
	try("backing-format-nul", append(slices.Clone(exts), q2ext{magic: q2ExtBackingFormat, data: []byte("raw\x00qcow2")}), "x.img")
	try("feature-table-odd", append(slices.Clone(exts), q2ext{magic: q2ExtFeatures, data: bytes.Repeat([]byte{0xff}, 47)}), "")
	try("feature-table-names", append(slices.Clone(exts), q2ext{magic: q2ExtFeatures, data: q2FeatureTable()}), "")
	try("crypto-without-luks", append(slices.Clone(exts), q2ext{magic: q2ExtCrypto, data: make([]byte, 16)}), "")
	try("bitmaps-without-autoclear", append(slices.Clone(exts), q2ext{magic: q2ExtBitmaps, data: q2BitmapsExt(1, 1<<30, 1<<62)}), "")
	try("data-file-ext-without-bit", append(slices.Clone(exts), q2ext{magic: q2ExtDataFile, data: []byte("data.raw")}), "")
	many := slices.Clone(exts)
	for len(many) < int(q.cs-q.hdrLen)/8-2 {
		many = append(many, q2ext{magic: 0x12345678})
	}
	try("many-empty", many, "")
	try("unknown-big", append(slices.Clone(exts), q2ext{magic: 0xdeadbeef, data: make([]byte, q.cs-q.hdrLen-32)}), "")
	// A header length that overlaps the extensions.
	d := slices.Clone(data)
	put32(d, q2HeaderLength, uint32(q.cs-4))
	add("header-length-near-end", d)
	// No end marker: the extension area runs to the end of the cluster.
	if dd, err := q.encodeExts(exts, ""); err == nil {
		for i := q.hdrLen; i < q.cs; i += 8 {
			put32(dd, i, 0x11111111)
			put32(dd, i+4, 0)
		}
		add("no-end-marker", dd)
	}
	// A LUKS image whose crypto header points far away.
	if dd, err := q.encodeExts(append(slices.Clone(exts), q2ext{magic: q2ExtCrypto, data: q2Crypto(1<<62, 1<<62)}), ""); err == nil {
		put32(dd, q2CryptMethod, 2)
		add("luks-header-far", dd)
	}
	if dd, err := q.encodeExts(append(slices.Clone(exts), q2ext{magic: q2ExtCrypto, data: q2Crypto(uint64(q.cs), 1<<40)}), ""); err == nil {
		put32(dd, q2CryptMethod, 2)
		add("luks-header-huge", dd)
	}
	return out
}

func q2Crypto(off, n uint64) []byte {
	d := make([]byte, 16)
	binary.BigEndian.PutUint64(d, off)
	binary.BigEndian.PutUint64(d[8:], n)
	return d
}

func q2BitmapsExt(nb uint32, dirSize, dirOff uint64) []byte {
	d := make([]byte, 24)
	binary.BigEndian.PutUint32(d, nb)
	binary.BigEndian.PutUint64(d[8:], dirSize)
	binary.BigEndian.PutUint64(d[16:], dirOff)
	return d
}

// q2FeatureTable is a feature name table with names that fill their field
// (no terminating NUL) and control characters.
func q2FeatureTable() []byte {
	var d []byte
	for k := 0; k < 3; k++ {
		e := make([]byte, 48)
		e[0], e[1] = byte(k), byte(63-k)
		copy(e[2:], bytes.Repeat([]byte("\x1b[31mX\n"), 7))
		d = append(d, e...)
	}
	return d
}

// q2L1 points L1 entries outside the file, at misaligned offsets, into the
// header and the other tables, and sets reserved bits.
func q2L1(b Base, _ Target) []Mutation {
	q, ok := layoutOf(b, "v3", "v2", "extl2")
	if !ok || q.l1Size == 0 {
		return nil
	}
	data := q.b
	n := uint64(len(data))
	return pokes(b, at(q.l1Off, []named{
		{"beyond-eof", q2Copied | (n+uint64(q.cs))&q2OffsetMask},
		{"far", q2Copied | q2OffsetMask},
		{"misaligned", q2Copied | (uint64(q.l2Tables[0]) + 512)},
		{"header", q2Copied | 0},
		{"header-no-copied", uint64(q.cs) & q2OffsetMask},
		{"self", q2Copied | uint64(q.l1Off)},
		{"reftable", q2Copied | uint64(q.rtOff)},
		{"refblock", q2Copied | uint64(q.refBlocks[0])},
		{"reserved-bits", q2Copied | 0x7f00000000000000 | uint64(q.l2Tables[0])},
		{"compressed-bit", q2Compressed | uint64(q.l2Tables[0])},
		{"all-ones", ^uint64(0)},
	}))
}

// q2L2 damages the first data cluster's L2 entry.
func q2L2(b Base, _ Target) []Mutation {
	q, ok := layoutOf(b, "v3", "extl2", "v2")
	if !ok || len(q.normal) == 0 {
		return nil
	}
	data := q.b
	e := q.normal[0]
	orig := be64(data, e)
	n := uint64(len(data))
	ps := at(e, []named{
		{"beyond-eof", q2Copied | (n+uint64(q.cs))&q2OffsetMask},
		{"far", q2Copied | q2OffsetMask},
		{"misaligned", orig + 512},
		{"header", q2Copied},
		{"l1-table", q2Copied | uint64(q.l1Off)},
		{"own-l2", q2Copied | uint64(q.l2Tables[0])},
		{"reserved-bits", orig | 0x3f00000000000000},
		{"zero-misaligned", orig | 1 | 512},
		{"all-ones", ^uint64(0)},
		{"compressed-garbage", q2Compressed | uint64(q.l1Off)},
	})
	if q.extL2 {
		for _, bm := range []uint64{^uint64(0), 0x0000000100000001, 0xffffffff00000000} {
			ps = append(ps, poke{fmt.Sprintf("bitmap=%#x", bm), e + 8, 8, bm})
		}
	}
	out := pokes(b, ps)
	if q.extL2 {
		// The same bitmaps on an unallocated entry.
		for _, bm := range []uint64{^uint64(0), 0x0000000100000001, 0xffffffff00000000} {
			m := pokes(b, []poke{{fmt.Sprintf("unallocated-bitmap=%#x", bm), e + 8, 8, bm}})[0]
			put64(m.Base.Files[m.Base.Main].Data, e, 0)
			out = append(out, m)
		}
	}
	return out
}

// q2Descriptor encodes a compressed cluster descriptor.
func q2Descriptor(clusterBits uint, off uint64, size int) uint64 {
	shift := 62 - (clusterBits - 8)
	sectors := (off+uint64(size)-1)/512 - off/512
	return q2Compressed | off | sectors<<shift
}

// deflateBomb is a raw deflate stream of n zero bytes.
func deflateBomb(n int) []byte {
	var buf bytes.Buffer
	w, _ := flate.NewWriter(&buf, flate.BestSpeed)
	zero := make([]byte, 64<<10)
	for n > 0 {
		k := min(n, len(zero))
		w.Write(zero[:k])
		n -= k
	}
	w.Close()
	return buf.Bytes()
}

// zstdRLEBomb is a zstd frame of RLE blocks that produces n bytes, with a
// window descriptor asking for a window of 2^windowLog bytes.
func zstdRLEBomb(n int, windowLog uint) []byte {
	d := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, byte((windowLog - 10) << 3)}
	const block = 128 << 10
	for n > 0 {
		k := min(n, block)
		n -= k
		hdr := uint32(k)<<3 | 1<<1 // RLE block
		if n == 0 {
			hdr |= 1 // last block
		}
		d = append(d, byte(hdr), byte(hdr>>8), byte(hdr>>16), 0)
	}
	return d
}

// q2CompressedMut damages compressed cluster descriptors and points them
// at decompression bombs: streams that inflate far beyond a cluster.
func q2CompressedMut(b Base, _ Target) []Mutation {
	q, ok := layoutOf(b, "v3", "zstd", "c64k")
	if !ok || len(q.compressed) == 0 {
		return nil
	}
	data := q.b
	e := q.compressed[0]
	orig := be64(data, e)
	shift := 62 - (q.clusterBits - 8)
	n := uint64(len(data))
	out := pokes(b, at(e, []named{
		{"beyond-eof", q2Descriptor(q.clusterBits, n+512, 512)},
		{"max-sectors", orig | ((1<<(q.clusterBits-8))-1)<<shift},
		{"straddles-eof", q2Descriptor(q.clusterBits, n-100, 2*int(q.cs))},
		{"header", q2Descriptor(q.clusterBits, 0, 512)},
		{"l1-table", q2Descriptor(q.clusterBits, uint64(q.l1Off), 512)},
		{"far", q2Compressed | (1<<shift - 512)},
		{"copied-and-compressed", orig | q2Copied},
	}))
	add := func(name string, d []byte) { out = append(out, Mutation{Name: name, Base: b.with(d)}) }
	// Bombs appended at the end of the file, aligned to a sector, as
	// large as a descriptor can describe (two clusters).
	bombs := []struct {
		name   string
		stream []byte
	}{
		{"deflate-bomb", deflateBomb(min(1000*int(q.cs), 16<<20))},
		{"zstd-rle-bomb", zstdRLEBomb(64<<20, 23)},
		{"zstd-huge-window", zstdRLEBomb(4<<20, 31)},
		{"deflate-short", deflateBomb(int(q.cs) / 2)},
	}
	for _, bomb := range bombs {
		stream := bomb.stream
		if len(stream) > 2*int(q.cs)-512 {
			stream = stream[:2*int(q.cs)-512]
		}
		off := (n + 511) &^ 511
		d := make([]byte, off, off+uint64(len(stream)))
		copy(d, data)
		d = append(d, stream...)
		desc := q2Descriptor(q.clusterBits, off, len(stream))
		for _, ce := range q.compressed {
			put64(d, ce, desc)
		}
		// Every unallocated entry of the first L2 table points at the
		// bomb too, so that a whole table's worth of clusters inflates it.
		l2 := q.l2Tables[0]
		for x := l2; x < l2+q.cs; x += q.l2Entry {
			if be64(d, x) == 0 {
				put64(d, x, desc)
			}
		}
		add(bomb.name, d)
	}
	return out
}

// q2Amplify points every L1 entry at the same L2 table and every entry of
// that table at the same data cluster, so that a small file describes a
// virtual disk full of one cluster.
func q2Amplify(b Base, _ Target) []Mutation {
	q, ok := layoutOf(b, "v3")
	if !ok || len(q.normal) == 0 {
		return nil
	}
	data := q.b
	d := slices.Clone(data)
	l1 := be64(d, q.l1Off)
	for i := int64(0); i < q.l1Size; i++ {
		put64(d, q.l1Off+8*i, l1)
	}
	entry := be64(d, q.normal[0])
	for x := q.l2Tables[0]; x < q.l2Tables[0]+q.cs; x += 8 {
		put64(d, x, entry)
	}
	return []Mutation{{Name: "one-cluster", Base: b.with(d)}}
}

// q2Refcount damages the refcount table and a refcount block.
func q2Refcount(b Base, _ Target) []Mutation {
	q, ok := layoutOf(b, "v3", "zstd")
	if !ok || len(q.refBlocks) == 0 {
		return nil
	}
	data := q.b
	n := uint64(len(data))
	out := pokes(b, append(at(q.rtOff, []named{
		{"entry-beyond-eof", n + uint64(q.cs)},
		{"entry-misaligned", uint64(q.refBlocks[0]) + 512},
		{"entry-header", 0x0},
		{"entry-reftable-self", uint64(q.rtOff)},
		{"entry-l1-table", uint64(q.l1Off)},
		{"entry-far", ^uint64(0) - uint64(q.cs) + 1},
	}),
		// The second entry names a block beyond the end of the file.
		poke{"second-entry-beyond-eof", q.rtOff + 8, 8, n + 1<<20}))
	for _, fill := range []byte{0, 0xff} {
		d := slices.Clone(data)
		rb := q.refBlocks[0]
		for i := rb; i < rb+q.cs; i++ {
			d[i] = fill
		}
		out = append(out, Mutation{Name: fmt.Sprintf("block-%#x", fill), Base: b.with(d)})
	}
	return out
}

// q2Snapshots damages the snapshot table.
func q2Snapshots(b Base, _ Target) []Mutation {
	q, ok := layoutOf(b, "snap")
	if !ok || len(q.snapEntries) == 0 {
		return nil
	}
	data := q.b
	e := q.snapEntries[0]
	n := uint64(len(data))
	out := pokes(b, []poke{
		{"l1-offset-eof", e, 8, n + uint64(q.cs)},
		{"l1-offset-misaligned", e, 8, uint64(q.l1Off) + 8},
		{"l1-offset-zero", e, 8, 0},
		{"l1-size-huge", e + 8, 4, 0xffffffff},
		{"l1-size-limit", e + 8, 4, 1<<22 + 1},
		{"id-size", e + 12, 2, 0xffff},
		{"name-size", e + 14, 2, 0xffff},
		{"extra-size-huge", e + 36, 4, 0xffffffff},
		{"extra-size-1025", e + 36, 4, 1025},
		{"extra-size-odd", e + 36, 4, 7},
		{"extra-size-zero", e + 36, 4, 0},
		{"vm-state-size", e + 32, 4, 0xffffffff},
		{"date-nsec", e + 20, 4, 0xffffffff},
		{"count-more", q2NbSnapshots, 4, uint64(len(q.snapEntries) + 1)},
		{"count-max", q2NbSnapshots, 4, 65536},
		{"table-at-eof", q2SnapshotsOff, 8, n - 8},
		{"table-is-header", q2SnapshotsOff, 8, 0},
	})
	// 65536 snapshots whose table lies in a hole beyond the end of the
	// file content, each with the largest extra data QEMU accepts.
	d := slices.Clone(data)
	off := (n + uint64(q.cs) - 1) &^ uint64(q.cs-1)
	put32(d, q2NbSnapshots, 65536)
	put64(d, q2SnapshotsOff, off)
	entry := make([]byte, 40+1024+8)
	binary.BigEndian.PutUint32(entry[36:], 1024)
	binary.BigEndian.PutUint16(entry[12:], 1)
	entry[40+1024] = '1'
	var table []byte
	for k := 0; k < 1024; k++ {
		table = append(table, entry...)
	}
	nb := b.with(d)
	f := nb.Files[nb.Main]
	f.Chunks = []Chunk{{Off: int64(off), Data: table}}
	f.Size = int64(off) + 65536*int64(len(entry))
	nb.Files[nb.Main] = f
	out = append(out, Mutation{Name: "table-65536-large", Base: nb, Essential: true})
	return out
}

// q2Bitmaps damages the bitmaps extension, the bitmap directory and a
// bitmap table.
func q2Bitmaps(b Base, _ Target) []Mutation {
	q, ok := layoutOf(b, "bitmaps")
	if !ok || q.bmDirSize == 0 {
		return nil
	}
	data := q.b
	var ext int64
	for _, x := range q.exts {
		if x.magic == q2ExtBitmaps {
			ext = x.at + 8
		}
	}
	n := uint64(len(data))
	dir := q.bmDirOff
	out := pokes(b, []poke{
		{"count-zero", ext, 4, 0},
		{"count-more", ext, 4, 3},
		{"count-max", ext, 4, 65536},
		{"reserved", ext + 4, 4, 1},
		{"dir-size-zero", ext + 8, 8, 0},
		{"dir-size-huge", ext + 8, 8, 1 << 40},
		{"dir-size-limit", ext + 8, 8, 65535 * 1024},
		{"dir-offset-eof", ext + 16, 8, n},
		{"dir-offset-misaligned", ext + 16, 8, uint64(dir) + 8},
		{"dir-offset-far", ext + 16, 8, 1<<63 - uint64(q.cs)},
		{"table-offset-zero", dir, 8, 0},
		{"table-offset-eof", dir, 8, n + uint64(q.cs)},
		{"table-offset-misaligned", dir, 8, uint64(q.bmTables[0]) + 8},
		{"table-size-zero", dir + 8, 4, 0},
		{"table-size-huge", dir + 8, 4, 0xffffffff},
		{"table-size-limit", dir + 8, 4, 0x8000000},
		{"flags-reserved", dir + 12, 4, 0xfffffffc},
		{"type", dir + 16, 1, 2},
		{"granularity-low", dir + 17, 1, 8},
		{"granularity-high", dir + 17, 1, 63},
		{"name-size", dir + 18, 2, 0xffff},
		{"extra-size", dir + 20, 4, 8},
		{"autoclear-off", q2Autoclear, 8, 0},
	})
	t := q.bmTables[0]
	for _, v := range []uint64{n + uint64(q.cs), 512 + uint64(t), ^uint64(0)} {
		out = append(out, pokes(b, []poke{{fmt.Sprintf("table-entry=%#x", v), t, 8, v}})...)
	}
	return out
}

// q2Huge makes images whose tables are as large as QEMU allows (or one
// entry larger), held in sparse files: a 32 MiB L1 table describing an
// 8 TiB disk, an 8 MiB refcount table, and a virtual size at the limit.
func q2Huge(b Base, _ Target) []Mutation {
	q, ok := layoutOf(b, "v3")
	if !ok {
		return nil
	}
	data := q.b
	n := (int64(len(data)) + q.cs - 1) &^ (q.cs - 1)
	var out []Mutation
	sparse := func(name string, d []byte, size int64, chunks ...Chunk) {
		nb := b.with(d)
		f := nb.Files[nb.Main]
		f.Size, f.Chunks = size, chunks
		nb.Files[nb.Main] = f
		out = append(out, Mutation{Name: name, Base: nb})
	}
	l1Entries := int64(1 << 22) // 32 MiB
	perL1 := q.cs * (q.cs / 8)
	// A new, empty L1 table of 32 MiB after the content; the old entries
	// copied to its start.
	d := slices.Clone(data)
	put64(d, q2L1Offset, uint64(n))
	put32(d, q2L1Size, uint32(l1Entries))
	put64(d, q2Size, uint64(l1Entries*perL1))
	old := slices.Clone(data[q.l1Off : q.l1Off+q.l1Size*8])
	sparse("l1-32MiB-8TiB", d, n+l1Entries*8, Chunk{Off: n, Data: old})
	// The same, one entry over the limit.
	d2 := slices.Clone(d)
	put32(d2, q2L1Size, uint32(l1Entries+1))
	sparse("l1-over-limit", d2, n+(l1Entries+1)*8, Chunk{Off: n, Data: old})
	// A full L1 table whose every entry names the same L2 table, all of
	// whose entries name one cluster of zeroes: 8 TiB that read as zeroes
	// (so that a copy stays sparse) from a 4 KiB table.
	{
		d3 := slices.Clone(d)
		l2, zero := n+l1Entries*8, n+l1Entries*8+q.cs
		ent := make([]byte, 8)
		binary.BigEndian.PutUint64(ent, q2Copied|uint64(l2))
		l2ent := make([]byte, 8)
		binary.BigEndian.PutUint64(l2ent, uint64(zero))
		nb := b.with(d3)
		f := nb.Files[nb.Main]
		f.Chunks = []Chunk{{Off: n, Data: bytes.Repeat(ent, int(l1Entries))}, {Off: l2, Data: bytes.Repeat(l2ent, int(q.cs/8))}}
		f.Size = zero + q.cs
		nb.Files[nb.Main] = f
		out = append(out, Mutation{Name: "l1-32MiB-one-l2", Base: nb, Slow: true})
	}
	// An 8 MiB refcount table, its entries copied to its start.
	d4 := slices.Clone(data)
	put64(d4, q2RefTableOff, uint64(n))
	put32(d4, q2RefTableClus, uint32((8<<20)/q.cs))
	sparse("reftable-8MiB", d4, n+8<<20, Chunk{Off: n, Data: slices.Clone(data[q.rtOff : q.rtOff+q.rtLen])})
	d5 := slices.Clone(d4)
	put32(d5, q2RefTableClus, uint32((8<<20)/q.cs+1))
	sparse("reftable-over-limit", d5, n+8<<20+q.cs, Chunk{Off: n, Data: slices.Clone(data[q.rtOff : q.rtOff+q.rtLen])})
	// The largest virtual size whose L1 table fits QEMU's limit with
	// 2 MiB clusters cannot be made from 4 KiB clusters; instead: a size
	// just below 2^63 with a too-small L1.
	d6 := slices.Clone(data)
	put64(d6, q2Size, 1<<63-512)
	sparse("size-max", d6, 0)
	return out
}

// q2DataFileFlags damages the data file flags of the datafile base.
func q2DataFileFlags(b Base, _ Target) []Mutation {
	if b.Name != "datafile" {
		return nil
	}
	data := b.Files[b.Main].Data
	out := pokes(b, []poke{
		{"bit-cleared", q2Incompatible, 8, be64(data, q2Incompatible) &^ 4},
		{"raw-bit", q2Autoclear, 8, be64(data, q2Autoclear) | 2},
	})
	nb := b.clone()
	delete(nb.Files, "data.raw")
	out = append(out, Mutation{Name: "missing", Base: nb})
	nb = b.clone()
	nb.Files["data.raw"] = File{Data: nil}
	out = append(out, Mutation{Name: "empty", Base: nb})
	return out
}
