package qcow2

import (
	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/storage"
)

// DataFile returns the external data file that host offsets refer to, or
// nil when the image keeps its data in its own file (block.DataFiler).
func (i *Image) DataFile() storage.File {
	if !i.hasDataFile {
		return nil
	}
	return i.data
}

// Info returns what `qemu-img info` shows about the image: the cluster
// size, the dirty and encryption flags, the format-specific information
// (fields in the order of QEMU's ImageInfoSpecificQCow2) and the snapshot
// list.
func (i *Image) Info() (block.Info, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	info := block.Info{
		ClusterSize: i.clusterSize,
		Encrypted:   i.hdr.CryptMethod != cryptNone,
		Dirty:       i.incompat&incompatDirty != 0,
	}
	d := block.NewDict()
	if i.hdr.Version == 2 {
		d.Set("compat", "0.10")
	} else {
		d.Set("compat", "1.1")
		if i.ext.HasDataFile {
			d.Set("data-file", i.ext.DataFile)
		}
		if i.hasDataFile {
			d.Set("data-file-raw", i.autoclear&autoclearDataRaw != 0)
		}
		d.Set("extended-l2", i.subPerClus > 1)
		d.Set("lazy-refcounts", i.compat&compatLazyRefcounts != 0)
		d.Set("corrupt", i.incompat&incompatCorrupt != 0)
	}
	d.Set("refcount-bits", int64(1)<<i.hdr.RefcountOrder)
	if i.hdr.CryptMethod == cryptAES {
		d.Set("encrypt", block.NewDict().Set("format", "aes"))
	}
	if i.hdr.Version >= 3 && len(i.bitmaps) > 0 {
		var list []any
		for _, bm := range i.bitmaps {
			flags := []any{}
			if bm.Flags&bmeFlagInUse != 0 {
				flags = append(flags, "in-use")
			}
			if bm.Flags&bmeFlagAuto != 0 {
				flags = append(flags, "auto")
			}
			list = append(list, block.NewDict().
				Set("name", bm.Name).
				Set("granularity", int64(1)<<bm.GranularityBits).
				Set("flags", flags))
		}
		d.Set("bitmaps", list)
	}
	if i.hdr.CompressionType == compressionZstd {
		d.Set("compression-type", "zstd")
	} else {
		d.Set("compression-type", "zlib")
	}
	info.Specific = d
	// QEMU lists no snapshots for images with a data file.
	if !i.hasDataFile {
		info.Snapshots = i.snapshotInfos()
	}
	return info, nil
}
