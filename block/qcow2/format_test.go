package qcow2

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testImage returns the content of testdata/name (stored gzipped).
func testImage(t testing.TB, name string) []byte {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name+".gz"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// testImageNames lists the qcow2 images in testdata.
func testImageNames(t testing.TB) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join("testdata", "*.qcow2.gz"))
	if err != nil || len(m) == 0 {
		t.Fatalf("no test images: %v", err)
	}
	var names []string
	for _, p := range m {
		names = append(names, strings.TrimSuffix(filepath.Base(p), ".gz"))
	}
	return names
}

// firstCluster returns an image's first cluster, zero-padded.
func firstCluster(t testing.TB, img []byte) []byte {
	t.Helper()
	bits := binary.BigEndian.Uint32(img[20:])
	c := make([]byte, 1<<bits)
	copy(c, img)
	return c
}

// validHeader returns a minimal valid version 3 header cluster.
func validHeader(clusterBits uint32) []byte {
	h := Header{Magic: Magic, Version: 3, ClusterBits: clusterBits, Size: 1 << 20,
		L1Size: 1, L1TableOffset: 3 << clusterBits, RefcountTableOffset: 1 << clusterBits,
		RefcountTableClusters: 1, RefcountOrder: 4, HeaderLength: headerV3Length}
	b := make([]byte, 1<<clusterBits)
	h.Encode(b)
	return b
}

func TestDecodeHeaderErrors(t *testing.T) {
	be := binary.BigEndian
	tests := []struct {
		name   string
		modify func(b []byte)
		want   string
	}{
		{"bad magic", func(b []byte) { b[0] = 'X' }, "Image is not in qcow2 format"},
		{"version 1", func(b []byte) { be.PutUint32(b[4:], 1) }, "Unsupported qcow2 version 1"},
		{"version 4", func(b []byte) { be.PutUint32(b[4:], 4) }, "Unsupported qcow2 version 4"},
		{"cluster bits 8", func(b []byte) { be.PutUint32(b[20:], 8) }, "Unsupported cluster size: 2^8"},
		{"cluster bits 22", func(b []byte) { be.PutUint32(b[20:], 22) }, "Unsupported cluster size: 2^22"},
		{"header too short", func(b []byte) { be.PutUint32(b[100:], 100) }, "qcow2 header too short"},
		{"header exceeds cluster", func(b []byte) { be.PutUint32(b[100:], 1<<16+8) }, "qcow2 header exceeds cluster size"},
		{"backing offset", func(b []byte) { be.PutUint64(b[8:], 1<<16+1) }, "Invalid backing file offset"},
		{"compression type", func(b []byte) { b[104] = 2 }, "qcow2: unknown compression type: 2"},
		{"zstd without bit", func(b []byte) { b[104] = 1 }, "qcow2: Compression type incompatible feature bit must be set"},
		{"bit without zstd", func(b []byte) { be.PutUint64(b[72:], incompatCompression) },
			"qcow2: Compression type incompatible feature bit must not be set"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := validHeader(16)
			tc.modify(b)
			_, err := DecodeHeader(b)
			if err == nil || err.Error() != tc.want {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

func TestDecodeHeaderVersion2Defaults(t *testing.T) {
	b := validHeader(9)
	binary.BigEndian.PutUint32(b[4:], 2)
	binary.BigEndian.PutUint64(b[72:], ^uint64(0)) // ignored for version 2
	h, err := DecodeHeader(b)
	if err != nil {
		t.Fatal(err)
	}
	if h.RefcountOrder != 4 || h.HeaderLength != 72 || h.IncompatibleFeatures != 0 {
		t.Fatalf("version 2 defaults not applied: %+v", h)
	}
}

func TestExtensionErrors(t *testing.T) {
	be := binary.BigEndian
	ext := func(magic uint32, data []byte) func(b []byte) {
		return func(b []byte) {
			copy(b[headerV3Length:], appendExtension(nil, magic, data))
		}
	}
	bitmaps := func(nb, reserved uint32, size, off uint64) []byte {
		d := make([]byte, 24)
		be.PutUint32(d, nb)
		be.PutUint32(d[4:], reserved)
		be.PutUint64(d[8:], size)
		be.PutUint64(d[16:], off)
		return d
	}
	withAutoclear := func(f func(b []byte)) func(b []byte) {
		return func(b []byte) {
			be.PutUint64(b[88:], autoclearBitmaps)
			f(b)
		}
	}
	tests := []struct {
		name   string
		modify func(b []byte)
		want   string
	}{
		{"too large", func(b []byte) {
			be.PutUint32(b[headerV3Length:], 0x1234)
			be.PutUint32(b[headerV3Length+4:], 1<<20)
		}, "Header extension too large"},
		{"backing format length", ext(extBackingFormat, []byte("0123456789abcdef")),
			"ERROR: ext_backing_format: len=16 too large (>=16)"},
		{"crypto without luks", ext(extCryptoHeader, make([]byte, 16)),
			"CRYPTO header extension only expected with LUKS encryption method"},
		{"bitmaps length", ext(extBitmaps, make([]byte, 8)), "bitmaps_ext: Invalid extension length"},
		{"bitmaps reserved", withAutoclear(ext(extBitmaps, bitmaps(1, 1, 24, 1<<16))), "bitmaps_ext: Reserved field is not zero"},
		{"bitmaps too many", withAutoclear(ext(extBitmaps, bitmaps(65536, 0, 24, 1<<16))),
			"bitmaps_ext: Image has 65536 bitmaps, exceeding the QEMU supported maximum of 65535"},
		{"bitmaps zero", withAutoclear(ext(extBitmaps, bitmaps(0, 0, 24, 1<<16))), "found bitmaps extension with zero bitmaps"},
		{"bitmaps offset", withAutoclear(ext(extBitmaps, bitmaps(1, 0, 24, 100))), "bitmaps_ext: invalid bitmap directory offset"},
		{"bitmaps size", withAutoclear(ext(extBitmaps, bitmaps(1, 0, 1<<30, 1<<16))),
			"bitmaps_ext: bitmap directory size (1073741824) exceeds the maximum supported size (67107840)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := validHeader(16)
			tc.modify(b)
			h, err := DecodeHeader(b)
			if err != nil {
				t.Fatal(err)
			}
			_, err = ParseExtensions(b, h)
			if err == nil || err.Error() != tc.want {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

func TestUnsupportedFeatures(t *testing.T) {
	table := []feature{{featureIncompatible, 5, "fancy"}, {featureCompatible, 6, "other"}, {featureIncompatible, 7, "nice"}}
	err := unsupportedFeatures(table, 1<<5|1<<6|1<<7|1<<9)
	want := "Unsupported qcow2 feature(s): fancy, nice, Unknown incompatible feature: 240"
	if err.Error() != want {
		t.Fatalf("got %q, want %q", err, want)
	}
}

// TestHeaderClusterMatchesQEMU re-encodes the first cluster of every image
// QEMU made and expects QEMU's bytes.
func TestHeaderClusterMatchesQEMU(t *testing.T) {
	for _, name := range testImageNames(t) {
		t.Run(name, func(t *testing.T) {
			c := firstCluster(t, testImage(t, name))
			h, err := DecodeHeader(c)
			if err != nil {
				t.Fatal(err)
			}
			x, err := ParseExtensions(c, h)
			if err != nil {
				t.Fatal(err)
			}
			hi := &headerImage{Header: *h, Ext: *x, WriteDataFileExt: h.IncompatibleFeatures&incompatDataFile != 0}
			if h.BackingFileOffset != 0 {
				hi.BackingFile = string(c[h.BackingFileOffset : h.BackingFileOffset+uint64(h.BackingFileSize)])
				hi.HasBackingFile = true
			}
			got, err := encodeHeaderCluster(hi)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, c) {
				for i := range got {
					if got[i] != c[i] {
						t.Fatalf("header cluster differs at byte %d: %#x, QEMU %#x", i, got[i], c[i])
					}
				}
			}
		})
	}
}

func TestUnknownExtensionsKept(t *testing.T) {
	b := validHeader(12)
	var exts []byte
	exts = appendExtension(exts, 0x1111, []byte("first"))
	exts = appendExtension(exts, 0x2222, []byte("second!!"))
	copy(b[headerV3Length:], exts)
	h, _ := DecodeHeader(b)
	x, err := ParseExtensions(b, h)
	if err != nil {
		t.Fatal(err)
	}
	if len(x.Unknown) != 2 || string(x.Unknown[0].Data) != "first" || x.Unknown[1].Magic != 0x2222 {
		t.Fatalf("unknown extensions %+v", x.Unknown)
	}
	out, err := encodeHeaderCluster(&headerImage{Header: *h, Ext: *x})
	if err != nil {
		t.Fatal(err)
	}
	h2, _ := DecodeHeader(out)
	x2, err := ParseExtensions(out, h2)
	if err != nil {
		t.Fatal(err)
	}
	// QEMU keeps unknown extensions in a list it prepends to, so each
	// rewrite reverses their order.
	if len(x2.Unknown) != 2 || x2.Unknown[0].Magic != 0x2222 || string(x2.Unknown[1].Data) != "first" {
		t.Fatalf("after rewrite %+v", x2.Unknown)
	}
}

func TestHeaderTooBigForCluster(t *testing.T) {
	h, _ := DecodeHeader(validHeader(9))
	hi := &headerImage{Header: *h, BackingFile: strings.Repeat("x", 400), HasBackingFile: true,
		Ext: Extensions{BackingFormat: "qcow2", HasBackingFormat: true}}
	if _, err := encodeHeaderCluster(hi); err != errNoSpace {
		t.Fatalf("error %v, want errNoSpace", err)
	}
}

func TestRefcountAccess(t *testing.T) {
	for order := uint(0); order <= 6; order++ {
		r := refcountAccess{order: order}
		b := make([]byte, 64)
		n := uint64(len(b)*8) >> order
		for i := uint64(0); i < n; i++ {
			r.set(b, i, (i*7+3)&r.max())
		}
		for i := uint64(0); i < n; i++ {
			if got := r.get(b, i); got != (i*7+3)&r.max() {
				t.Fatalf("order %d entry %d: %d", order, i, got)
			}
		}
	}
	// Sub-byte refcounts are stored least significant bits first.
	b := make([]byte, 1)
	refcountAccess{order: 0}.set(b, 0, 1)
	refcountAccess{order: 0}.set(b, 3, 1)
	if b[0] != 0x09 {
		t.Fatalf("1-bit layout %#x", b[0])
	}
}

func TestCompressedDescriptor(t *testing.T) {
	for bits := minClusterBits; bits <= maxClusterBits; bits++ {
		c := newCompressedLayout(bits)
		for _, tc := range []struct {
			off  uint64
			size int
		}{{1 << 20, 1}, {(1 << 20) + 100, 500}, {12345, 1 << bits}, {512, 1 << (bits - 1)}} {
			e := c.encode(tc.off, tc.size)
			off, size := c.parse(e)
			if off != tc.off || size < tc.size || size >= tc.size+compressedSectorSize {
				t.Fatalf("bits %d: %d bytes at %d -> %d bytes at %d", bits, tc.size, tc.off, size, off)
			}
		}
	}
}

func TestSubclusterRuns(t *testing.T) {
	e := entryLayout{clusterBits: 16, extendedL2: true}
	host := uint64(5 << 16)
	tests := []struct {
		entry, bitmap uint64
		from          int
		typ           subclusterType
		n             int
	}{
		{0, 0, 0, subUnallocatedPlain, 32},
		{0, 0xf << 32, 0, subZeroPlain, 4},
		{0, 0xf << 32, 4, subUnallocatedPlain, 28},
		{host, 0x0000000f, 0, subNormal, 4},
		{host, 0x0000000f, 2, subNormal, 2},
		{host, 0x000000f0, 0, subUnallocatedAlloc, 4},
		{host, 0x0000000f | 0xf0<<32, 4, subZeroAlloc, 4},
		{host, 1 | 1<<32, 0, subInvalid, -1},
		{0, 1, 0, subInvalid, -1},
		{host | oflagCompressed, 0, 3, subCompressed, 29},
	}
	for _, tc := range tests {
		typ, n := e.subclusterRun(tc.entry, tc.bitmap, tc.from)
		if typ != tc.typ || n != tc.n {
			t.Errorf("entry %#x bitmap %#x from %d: %d x%d, want %d x%d", tc.entry, tc.bitmap, tc.from, typ, n, tc.typ, tc.n)
		}
	}
	std := entryLayout{clusterBits: 16}
	if std.classify(host|oflagZero) != clusterZeroAlloc || std.classify(oflagZero) != clusterZeroPlain {
		t.Error("zero clusters misclassified")
	}
	withData := entryLayout{clusterBits: 16, dataFile: true}
	if withData.classify(oflagCopied) != clusterNormal || std.classify(oflagCopied) != clusterUnallocated {
		t.Error("offset 0 with data file misclassified")
	}
}

func TestParseSnapshotTable(t *testing.T) {
	img := testImage(t, "snap.qcow2")
	h, err := DecodeHeader(firstCluster(t, img))
	if err != nil {
		t.Fatal(err)
	}
	sns, _, err := decodeSnapshots(bytesSource(img[h.SnapshotsOffset:]), int(h.NbSnapshots), h.Size)
	if err != nil {
		t.Fatal(err)
	}
	if len(sns) != 2 || sns[0].ID != "1" || sns[0].Name != "first" || sns[1].Name != "second" || sns[1].DiskSize != 16384 {
		t.Fatalf("snapshots %+v", sns)
	}
	if _, _, err := decodeSnapshots(bytesSource(img[h.SnapshotsOffset:h.SnapshotsOffset+50]), 2, h.Size); err == nil {
		t.Fatal("truncated table accepted")
	}
}
