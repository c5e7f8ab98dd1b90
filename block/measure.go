package block

// MeasureInfo is what `qemu-img measure` reports (QEMU's BlockMeasureInfo):
// the sizes a new image file needs.
type MeasureInfo struct {
	// Required is the file size the content needs, without
	// preallocation.
	Required int64
	// FullyAllocated is the file size with every cluster allocated.
	FullyAllocated int64
	// HasBitmaps is set when the input's persistent bitmaps would be
	// copied (both formats support them); Bitmaps is then their size.
	HasBitmaps bool
	Bitmaps    int64
}

// Measurer is a driver that can compute how large a new image would be
// (QEMU's bdrv_measure). Drivers without it give qemu-img's "Block driver
// 'x' does not support size measurement".
type Measurer interface {
	// Measure computes the sizes of a new image created with opts (the
	// format's create options and the protocol's, as parsed for
	// `qemu-img measure -o`; "size" holds --size when there is no
	// input) holding the content of in, or of an empty image when in is
	// nil. in is read through its backing chain. Errors are worded as
	// qemu-img words them.
	Measure(opts *Options, in Image, env *Env) (MeasureInfo, error)
}

// BitmapSizer is an image that holds persistent dirty bitmaps a copy could
// keep (QEMU's bdrv_supports_persistent_dirty_bitmap).
type BitmapSizer interface {
	// PersistentBitmaps reports whether the image supports persistent
	// bitmaps, and the bytes its bitmaps (tables, data and directory)
	// would take in a qcow2 image of the given cluster size, as QEMU's
	// qcow2_get_persistent_dirty_bitmap_size counts them.
	PersistentBitmaps(clusterSize int64) (supported bool, size int64)
}
