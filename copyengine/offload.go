package copyengine

import (
	"errors"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/storage"
)

// errNoOffload means a range cannot be copied by offloading; the copy
// then reads and writes instead.
var errNoOffload = errors.New("copy offloading not possible")

// dataFile returns the file an image's host offsets refer to, or nil when
// the image does not say. A raw image's data file is its container.
func dataFile(img block.Image) storage.File {
	if d, ok := block.As[block.DataFiler](img); ok {
		return d.DataFile()
	}
	if isRaw(img) {
		return img.(*block.Node).File
	}
	return nil
}

// isRaw reports whether img is a raw image opened as a Node: its guest
// bytes are its container's bytes, holes included.
func isRaw(img block.Image) bool {
	n, ok := img.(*block.Node)
	return ok && n.Driver != nil && (n.Driver.Name() == "raw" || n.Driver.Name() == "file")
}

// copyRange copies a data job with storage.RangeCopier, from the files
// that hold the sources' bytes into the file that holds the target's. It
// returns errNoOffload (or the copier's error) when some piece cannot be
// copied that way; pieces already copied stay copied and are copied again
// by the fallback.
func (c *copier) copyRange(j job) error {
	dstFile := dataFile(c.dst)
	if dstFile == nil {
		return errNoOffload
	}
	for pos, end := j.off, j.off+j.n; pos < end; {
		if c.stopped() {
			return errStopped
		}
		pt := &c.parts[c.partAt(pos)]
		rel := pos - pt.start
		imgOff := pt.Offset + rel
		n := min(end-pos, pt.length-rel, pt.size-imgOff)
		if n <= 0 {
			// Sector padding past the end of an image.
			return errNoOffload
		}
		ext, layer, err := block.BlockStatusAbove(pt.Image, pt.Base, imgOff, n)
		if err != nil {
			return err
		}
		if !ext.Has(block.OffsetValid) || ext.Has(block.Compressed) || layer == nil {
			return errNoOffload
		}
		srcFile := dataFile(layer)
		rc, ok := srcFile.(storage.RangeCopier)
		if !ok {
			return errNoOffload
		}
		tOff := c.o.TargetOffset + pos
		text, err := c.dst.BlockStatus(tOff, ext.Length)
		if err != nil {
			return err
		}
		if !text.Has(block.OffsetValid) || text.Has(block.Compressed) ||
			(!isRaw(c.dst) && (!text.Has(block.Data) || text.Has(block.Zero))) {
			// Only a format's plain data clusters take bytes written
			// into the host file: writing there would neither clear
			// a zero flag nor allocate a subcluster. A raw hole is
			// just unwritten bytes.
			return errNoOffload
		}
		m := min(ext.Length, text.Length)
		if err := c.throttle(m); err != nil {
			return err
		}
		done, err := rc.CopyRange(dstFile, ext.HostOffset, text.HostOffset, m)
		if err != nil {
			return err
		}
		if done != m {
			return errNoOffload
		}
		c.offloaded.Add(m)
		pos += m
	}
	return nil
}
