package cli

import (
	"bytes"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/copyengine"
	"github.com/qimg/qimg/storage"
)

// Exit codes of `qemu-img compare`.
const (
	compareSame      = 0
	compareDiffer    = 1
	compareOpenError = 2
	compareStatusErr = 3
	compareReadError = 4
)

// compareBufSize is the most compare reads of each image at once
// (qemu-img's IO_BUF_SIZE).
const compareBufSize = 2 << 20

// compareImage is one side of a comparison.
type compareImage struct {
	name string
	node *block.Node
	size int64
	buf  []byte
}

// status describes the run at off through the image's whole chain, as
// bdrv_block_status_above does, and says whether it ends the image.
func (c *compareImage) status(off int64) (block.Extent, bool, error) {
	e, _, err := block.BlockStatusAbove(c.node, nil, off, c.size-off)
	return e, err == nil && off+e.Length == c.size, err
}

// strictStatus is what strict mode compares of a run's status: QEMU's
// status flags, end of file included.
func strictStatus(e block.Extent, eof bool) [5]bool {
	return [5]bool{e.Has(block.Allocated), e.Has(block.Data), e.Has(block.Zero), e.Has(block.OffsetValid), eof}
}

// read reads n bytes at off into the image's buffer, printing qemu-img's
// error on failure.
func (a *App) compareRead(c *compareImage, off, n int64, buf []byte) bool {
	if _, err := c.node.ReadAt(buf[:n], off); err != nil {
		a.errorf("Error while reading offset %d of %s: %s", off, c.name, storage.Strerror(err))
		return false
	}
	return true
}

// checkEmpty reads n bytes at off of an image the other side does not
// allocate there and reports compareSame when they are zero (QEMU's
// check_empty_sectors); otherwise it prints where they are not.
func (a *App) checkEmpty(c *compareImage, off, n int64, buf []byte, quiet bool) int {
	if !a.compareRead(c, off, n, buf) {
		return compareReadError
	}
	b := buf[:n]
	for i := int64(0); i < n; i += sectorSize {
		if !copyengine.IsZero(b[i:min(i+sectorSize, n)]) {
			if !quiet {
				a.printf("Content mismatch at offset %d!\n", off+i)
			}
			return compareDiffer
		}
	}
	return compareSame
}

// firstDifference returns the offset of the first 512-byte sector where
// a and b differ, or -1.
func firstDifference(a, b []byte) int64 {
	for i := 0; i < len(a); i += sectorSize {
		end := min(i+sectorSize, len(a))
		if !bytes.Equal(a[i:end], b[i:end]) {
			return int64(i)
		}
	}
	return -1
}

func cmdCompare(a *App, args []string) int {
	g := newGetopt(args, ":hf:F:T:pqsU", []longOpt{
		{"help", noArgument, 'h'},
		{"object", requiredArgument, optObject},
		{"image-opts", noArgument, optImageOpts},
		{"force-share", noArgument, 'U'},
	})
	var fmt1, fmt2 string
	cache := defaultCache
	progressOn, quiet, strict, imageOpts, forceShare := false, false, false, false, false
	for {
		c := g.next()
		if c == -1 {
			break
		}
		if c == optObject {
			// A bad object is an error of compare's own kind.
			if code, stop := a.objectOption(g.optarg); stop {
				if code != 0 {
					return compareOpenError
				}
				return code
			}
			continue
		}
		if code, stop := a.commonOption(g, c); stop {
			return code
		}
		switch c {
		case 'f':
			fmt1 = g.optarg
		case 'F':
			fmt2 = g.optarg
		case 'T':
			cache = g.optarg
		case 'p':
			progressOn = true
		case 'q':
			quiet = true
		case 's':
			strict = true
		case 'U':
			forceShare = true
		case optImageOpts:
			imageOpts = true
		}
	}
	if quiet {
		progressOn = false
	}
	ops := g.operands()
	if len(ops) != 2 {
		return a.usageError("Expecting two image file names")
	}
	prog := a.newProgress(progressOn, 2.0)
	defer prog.end()
	mode, ok := a.parseCache(cache, true)
	if !ok {
		return compareOpenError
	}
	var imgs [2]*compareImage
	for k, f := range []string{fmt1, fmt2} {
		n, ok := a.openImage(ops[k], openSpec{imageOpts: imageOpts, format: f, forceShare: forceShare, cache: mode})
		if !ok {
			return compareOpenError
		}
		defer n.Close()
		imgs[k] = &compareImage{name: ops[k], node: n, size: n.Size(), buf: storage.AlignedBuffer(compareBufSize)}
	}
	return a.compare(imgs[0], imgs[1], prog, strict, quiet)
}

// compare compares two opened images as qemu-img compare does and returns
// its exit code.
func (a *App) compare(i1, i2 *compareImage, prog *progress, strict, quiet bool) int {
	qprintf := func(format string, args ...any) {
		if !quiet {
			a.printf(format, args...)
		}
	}
	total := min(i1.size, i2.size)
	progressBase := max(i1.size, i2.size)
	advance := func(chunk int64) { prog.print(float32(chunk)/float32(progressBase)*100, 100) }
	prog.print(0, 100)
	if strict && i1.size != i2.size {
		qprintf("Strict mode: Image size mismatch!\n")
		return compareDiffer
	}
	for off := int64(0); off < total; {
		e1, eof1, err := i1.status(off)
		if err != nil {
			a.errorf("Sector allocation test failed for %s", i1.name)
			return compareStatusErr
		}
		e2, eof2, err := i2.status(off)
		if err != nil {
			a.errorf("Sector allocation test failed for %s", i2.name)
			return compareStatusErr
		}
		chunk := min(e1.Length, e2.Length)
		if strict && strictStatus(e1, eof1) != strictStatus(e2, eof2) {
			qprintf("Strict mode: Offset %d block status mismatch!\n", off)
			return compareDiffer
		}
		alloc1, alloc2 := e1.Has(block.Allocated), e2.Has(block.Allocated)
		switch {
		case e1.Has(block.Zero) && e2.Has(block.Zero):
		case alloc1 == alloc2:
			if !alloc1 {
				break
			}
			chunk = min(chunk, compareBufSize)
			if !a.compareRead(i1, off, chunk, i1.buf) || !a.compareRead(i2, off, chunk, i2.buf) {
				return compareReadError
			}
			if d := firstDifference(i1.buf[:chunk], i2.buf[:chunk]); d >= 0 {
				qprintf("Content mismatch at offset %d!\n", off+d)
				return compareDiffer
			}
		default:
			chunk = min(chunk, compareBufSize)
			over := i1
			if !alloc1 {
				over = i2
			}
			if code := a.checkEmpty(over, off, chunk, i1.buf, quiet); code != compareSame {
				return code
			}
		}
		off += chunk
		advance(chunk)
	}
	if i1.size != i2.size {
		qprintf("Warning: Image size mismatch!\n")
		over := i1
		if i2.size > i1.size {
			over = i2
		}
		for off := total; off < progressBase; {
			e, _, err := over.status(off)
			if err != nil {
				a.errorf("Sector allocation test failed for %s", over.name)
				return compareStatusErr
			}
			chunk := e.Length
			if e.Has(block.Allocated) && !e.Has(block.Zero) {
				chunk = min(chunk, compareBufSize)
				if code := a.checkEmpty(over, off, chunk, i1.buf, quiet); code != compareSame {
					return code
				}
			}
			off += chunk
			advance(chunk)
		}
	}
	qprintf("Images are identical.\n")
	return compareSame
}
