package qcow2

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// FuzzHeader decodes a first cluster and its extensions; what decodes must
// re-encode to a header that decodes to the same values.
func FuzzHeader(f *testing.F) {
	for _, name := range testImageNames(f) {
		img := testImage(f, name)
		f.Add(img[:min(len(img), 4096)])
	}
	f.Add(validHeader(9))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 1<<maxClusterBits {
			return
		}
		h, err := DecodeHeader(b)
		if err != nil {
			return
		}
		c := make([]byte, 1<<h.ClusterBits)
		copy(c, b)
		x, err := ParseExtensions(c, h)
		if err != nil {
			return
		}
		hi := &headerImage{Header: *h, Ext: *x, WriteDataFileExt: true}
		if h.BackingFileOffset != 0 && h.BackingFileSize <= maxBackingFileName &&
			h.BackingFileOffset+uint64(h.BackingFileSize) <= uint64(len(c)) {
			hi.BackingFile = string(c[h.BackingFileOffset : h.BackingFileOffset+uint64(h.BackingFileSize)])
			hi.HasBackingFile = true
		}
		out, err := encodeHeaderCluster(hi)
		if err != nil {
			if err != errNoSpace {
				t.Fatal(err)
			}
			return
		}
		h2, err := DecodeHeader(out)
		if err != nil {
			t.Fatalf("re-encoded header does not decode: %v", err)
		}
		x2, err := ParseExtensions(out, h2)
		if err != nil {
			t.Fatalf("re-encoded extensions do not decode: %v", err)
		}
		if h2.Size != h.Size || h2.L1TableOffset != h.L1TableOffset || h2.IncompatibleFeatures != h.IncompatibleFeatures ||
			!bytes.Equal(h2.UnknownFields, h.UnknownFields) || h2.CompressionType != h.CompressionType {
			t.Fatalf("header changed: %+v -> %+v", h, h2)
		}
		if x2.BackingFormat != x.BackingFormat || x2.DataFile != x.DataFile || len(x2.Unknown) != len(x.Unknown) {
			t.Fatalf("extensions changed: %+v -> %+v", x, x2)
		}
		if hi.HasBackingFile {
			got := string(out[h2.BackingFileOffset : h2.BackingFileOffset+uint64(h2.BackingFileSize)])
			if got != hi.BackingFile {
				t.Fatalf("backing file %q -> %q", hi.BackingFile, got)
			}
		}
	})
}

// FuzzL2Entry classifies arbitrary L2 entries; subcluster runs must stay
// inside their cluster and agree with the per-subcluster types.
func FuzzL2Entry(f *testing.F) {
	f.Add(uint64(0), uint64(0), uint8(16), true, false)
	f.Add(uint64(5<<16|oflagCopied), uint64(0xf), uint8(16), true, false)
	f.Add(uint64(oflagCompressed|12345), uint64(0), uint8(12), false, false)
	f.Add(uint64(oflagCopied), uint64(0), uint8(9), false, true)
	for _, name := range []string{"v3-512.qcow2", "extl2.qcow2"} {
		img := testImage(f, name)
		h, err := DecodeHeader(firstCluster(f, img))
		if err != nil {
			f.Fatal(err)
		}
		l1 := binary.BigEndian.Uint64(img[h.L1TableOffset:]) & l1OffsetMask
		ext := h.IncompatibleFeatures&incompatExtL2 != 0
		step := 8
		if ext {
			step = 16
		}
		for i := 0; i < 8; i++ {
			off := int(l1) + i*step
			var bm uint64
			if ext {
				bm = binary.BigEndian.Uint64(img[off+8:])
			}
			f.Add(binary.BigEndian.Uint64(img[off:]), bm, uint8(h.ClusterBits), ext, false)
		}
	}
	f.Fuzz(func(t *testing.T, entry, bitmap uint64, bits uint8, ext, dataFile bool) {
		if bits < minClusterBits || bits > maxClusterBits {
			return
		}
		e := entryLayout{clusterBits: int(bits), extendedL2: ext, dataFile: dataFile}
		nsc := 1
		if ext {
			nsc = subclustersPerCluster
		}
		for sc := 0; sc < nsc; sc++ {
			typ, n := e.subclusterRun(entry, bitmap, sc)
			if typ == subInvalid {
				if n != -1 {
					t.Fatalf("invalid entry with run %d", n)
				}
				continue
			}
			if n < 1 || sc+n > nsc {
				t.Fatalf("entry %#x bitmap %#x sc %d: run %d", entry, bitmap, sc, n)
			}
			for i := sc; i < sc+n; i++ {
				if got := e.subcluster(entry, bitmap, i); got != typ {
					t.Fatalf("entry %#x bitmap %#x: sc %d is %d, run from %d says %d", entry, bitmap, i, got, sc, typ)
				}
			}
		}
	})
}

// FuzzCompressedDescriptor parses arbitrary compressed cluster descriptors:
// the data they describe is bounded and re-encodes to the same range.
func FuzzCompressedDescriptor(f *testing.F) {
	f.Add(uint64(oflagCompressed|4096), uint8(9))
	f.Add(uint64(0x7fffffffffffffff), uint8(16))
	f.Add(uint64(oflagCompressed|3<<54|0x12345), uint8(16))
	f.Fuzz(func(t *testing.T, entry uint64, bits uint8) {
		if bits < minClusterBits || bits > maxClusterBits {
			return
		}
		c := newCompressedLayout(int(bits))
		off, size := c.parse(entry | oflagCompressed)
		if size <= 0 || size > 2<<bits {
			t.Fatalf("size %d for cluster bits %d", size, bits)
		}
		if off > c.clusterOffsetMask {
			t.Fatalf("offset %#x beyond mask", off)
		}
		e2 := c.encode(off, size)
		off2, size2 := c.parse(e2)
		if off2 != off || size2 != size {
			t.Fatalf("re-encode: %d@%d -> %d@%d", size, off, size2, off2)
		}
	})
}

// FuzzDecompress inflates arbitrary data as a compressed cluster: it fails
// or fills exactly one cluster, never more.
func FuzzDecompress(f *testing.F) {
	for _, name := range []string{"v3-512.qcow2", "zstd.qcow2"} {
		img := testImage(f, name)
		h, _ := DecodeHeader(firstCluster(f, img))
		c := newCodec(h.CompressionType, 512)
		out, _ := c.compress(nil, bytes.Repeat([]byte("qcow2 "), 100)[:512])
		f.Add(out, h.CompressionType == compressionZstd, uint8(9))
		f.Add(img[len(img)-600:], h.CompressionType == compressionZstd, uint8(9))
	}
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd, 0x60, 0, 0, 0, 0}, true, uint8(16))
	f.Fuzz(func(t *testing.T, src []byte, zstd bool, bits uint8) {
		if bits < minClusterBits || bits > 16 {
			return
		}
		kind := uint8(compressionZlib)
		if zstd {
			kind = compressionZstd
		}
		c := newCodec(kind, 1<<bits)
		dst := make([]byte, 1<<bits, 1<<bits+64)
		guard := dst[:cap(dst)][1<<bits:]
		for k := range guard {
			guard[k] = 0xa5
		}
		_ = c.decompress(dst, src)
		for _, b := range guard {
			if b != 0xa5 {
				t.Fatal("decompression wrote past the cluster")
			}
		}
	})
}
