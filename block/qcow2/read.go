package qcow2

import (
	"fmt"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/storage"
)

// ReadAt reads guest bytes. Unallocated ranges read from the backing image
// (zeroes past its end) or as zeroes without one. Concurrent reads run in
// parallel; only the mapping lookups take the metadata lock.
func (i *Image) ReadAt(p []byte, off int64) (int, error) {
	if err := block.CheckRange(i.Size(), off, int64(len(p))); err != nil {
		return 0, err
	}
	if err := i.readGuest(p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}

// readGuest reads guest bytes without a range check.
func (i *Image) readGuest(p []byte, off int64) error {
	for len(p) > 0 {
		i.mu.Lock()
		if i.broken != nil {
			i.mu.Unlock()
			return i.broken
		}
		m, err := i.getHostOffset(off, int64(len(p)))
		backing := i.backing
		i.mu.Unlock()
		if err != nil {
			return err
		}
		n := m.bytes
		chunk := p[:n]
		switch m.typ {
		case subZeroPlain, subZeroAlloc:
			clear(chunk)
		case subUnallocatedPlain, subUnallocatedAlloc:
			if backing == nil {
				clear(chunk)
			} else if err := readBacking(backing, chunk, off); err != nil {
				return err
			}
		case subCompressed:
			if err := i.readCompressed(m.host, off, chunk); err != nil {
				return err
			}
		case subNormal:
			if err := i.checkDecryption(); err != nil {
				return err
			}
			if i.aes != nil {
				err = i.readEncrypted(chunk, off, int64(m.host))
			} else {
				err = storage.ReadFull(i.data, chunk, int64(m.host))
			}
			if err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: invalid cluster type: %w", i.name, errCorrupt)
		}
		p = p[n:]
		off += n
	}
	return nil
}

// readBacking reads from a backing image; what lies past its end reads as
// zeroes.
func readBacking(b block.Image, p []byte, off int64) error {
	size := b.Size()
	n := int64(len(p))
	if off >= size {
		clear(p)
		return nil
	}
	if off+n > size {
		clear(p[size-off:])
		p = p[:size-off]
	}
	_, err := b.ReadAt(p, off)
	return err
}

// checkDecryption refuses to read encrypted data qimg cannot decrypt.
func (i *Image) checkDecryption() error {
	switch {
	case i.hdr.CryptMethod == cryptNone:
		return nil
	case i.hdr.CryptMethod == cryptAES && i.aes != nil:
		return nil
	case i.hdr.CryptMethod == cryptAES:
		return fmt.Errorf("%s: the image was opened without its key: %w", i.name, block.ErrUnsupported)
	}
	return errLUKS
}

// checkEncryption refuses writes to encrypted images.
func (i *Image) checkEncryption() error {
	switch i.hdr.CryptMethod {
	case cryptNone:
		return nil
	case cryptAES:
		return errAESWrite
	}
	return errLUKS
}

// errLUKS refuses I/O on LUKS-encrypted images until the LUKS driver
// provides it.
var errLUKS = fmt.Errorf("qcow2 images with encrypt.format=luks are not supported yet: %w", block.ErrUnsupported)

// readCompressed reads part of a compressed cluster: entry is its L2
// entry, off the guest offset of the first byte wanted.
func (i *Image) readCompressed(entry uint64, off int64, p []byte) error {
	if err := i.checkDecryption(); err != nil {
		return err
	}
	coff, csize := i.compressed.parse(entry)
	bufp := i.getClusterBuf()
	defer i.putClusterBuf(bufp)
	out := (*bufp)[:i.clusterSize]
	in := make([]byte, csize)
	if err := storage.ReadFull(i.f, in, int64(coff)); err != nil {
		return err
	}
	if err := i.codec().decompress(out, in); err != nil {
		return err
	}
	copy(p, out[i.inCluster(off):])
	return nil
}

// BlockStatus describes the run at off: data, zero (allocated as zero, or
// unallocated with nothing behind it), or unallocated.
func (i *Image) BlockStatus(off, n int64) (block.Extent, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if err := block.CheckRange(i.size, off, n); err != nil {
		return block.Extent{}, err
	}
	if i.broken != nil {
		return block.Extent{}, i.broken
	}
	n = min(n, i.size-off)
	if !i.mdPreallocChecked {
		i.mdPrealloc = i.detectMetadataPrealloc()
		i.mdPreallocChecked = true
	}
	m, err := i.getHostOffset(off, n)
	if err != nil {
		return block.Extent{}, err
	}
	// Runs without data continue past L2 slices while the type stays
	// the same.
	for k := 0; k < 1024 && m.bytes < n && m.typ != subNormal && m.typ != subCompressed && m.typ != subZeroAlloc; k++ {
		next, err := i.getHostOffset(off+m.bytes, n-m.bytes)
		if err != nil || next.typ != m.typ {
			break
		}
		m.bytes += next.bytes
	}
	ext := block.Extent{Offset: off, Length: m.bytes}
	encrypted := i.hdr.CryptMethod != cryptNone
	switch m.typ {
	case subNormal:
		ext.Status = block.Allocated | block.Data
	case subZeroAlloc, subZeroPlain:
		ext.Status = block.Allocated | block.Zero
	case subCompressed:
		ext.Status = block.Allocated | block.Data | block.Compressed
	default:
		if i.backing == nil {
			ext.Status = block.Zero
		} else if bs := i.backing.Size(); off >= bs {
			ext.Status = block.Zero
		} else {
			ext.Length = min(ext.Length, bs-off)
		}
	}
	// A host cluster whose subcluster is unallocated still has its
	// offset reported, as QEMU does.
	if (m.typ == subNormal || m.typ == subZeroAlloc || m.typ == subUnallocatedAlloc) && !encrypted {
		ext.Status |= block.OffsetValid
		ext.HostOffset = int64(m.host)
		if m.typ == subNormal && i.mdPrealloc {
			i.fileStatus(&ext)
		}
	}
	return ext, nil
}

// fileStatus refines the status of a run of data clusters by the data
// file's holes, as QEMU's block layer does for an image that looks
// preallocated with metadata: a run that starts in a hole is cut to the
// hole and reads as zeroes (all of it, when the hole reaches the end of the
// file or the run starts past it); one that starts in data is cut to the
// data. Errors only leave the run as it was.
func (i *Image) fileStatus(ext *block.Extent) {
	size, err := i.data.Size()
	if err != nil {
		return
	}
	host := ext.HostOffset
	start, end, err := storage.NextData(i.data, host, size)
	switch {
	case err != nil:
	case start >= size:
		// A hole to the end of the file, or past it.
		ext.Status |= block.Zero
	case start > host:
		ext.Status |= block.Zero
		ext.Length = min(ext.Length, start-host)
	default:
		ext.Length = min(ext.Length, end-host)
	}
}

// detectMetadataPrealloc reports whether the image looks preallocated with
// metadata, by QEMU's rule: more clusters have a refcount than the file
// has allocated clusters (by a ninth, and at least two). It reads
// each refcount block the table names at most once per offset, and never
// looks past the refcount table, so that a hostile table costs at most one
// pass over its blocks.
func (i *Image) detectMetadataPrealloc() bool {
	length, err := i.f.Size()
	if err != nil {
		return false
	}
	as, ok := i.f.(storage.AllocatedSizer)
	if !ok {
		return false
	}
	alloc, err := as.AllocatedSize()
	if err != nil {
		return false
	}
	real := alloc / i.clusterSize
	threshold := max(real*10/9, real+2)
	end := min(i.sizeToClusters(length), int64(len(i.reftable))*i.rbSize)
	counted := make(map[int64]int64) // whole blocks, by offset
	var count int64
	for first := int64(0); first < end && count < threshold; first += i.rbSize {
		off, _, err := i.refcountBlockOffset(first)
		if err != nil {
			return false
		}
		if off == 0 {
			continue
		}
		n := min(i.rbSize, end-first)
		if c, ok := counted[off]; ok && n == i.rbSize {
			count += c
			continue
		}
		e, err := i.rcCache.get(off)
		if err != nil {
			return false
		}
		var c int64
		for k := range n {
			if i.refcount.get(e.data, uint64(k)) != 0 {
				c++
			}
		}
		i.rcCache.put(e)
		if n == i.rbSize {
			counted[off] = c
		}
		count += c
	}
	return count >= threshold
}
