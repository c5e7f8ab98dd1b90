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
	if (m.typ == subNormal || m.typ == subZeroAlloc) && !encrypted {
		ext.Status |= block.OffsetValid
		ext.HostOffset = int64(m.host)
	}
	return ext, nil
}
