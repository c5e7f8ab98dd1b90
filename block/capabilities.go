package block

import "github.com/qimg/qimg/storage"

// This file declares the optional capabilities that only some formats have.
// Callers find them with As, which looks through a *Node to its format
// image. The package documentation lists every capability, including those
// declared beside the code that uses them (StatusBounder in chain.go,
// Measurer and BitmapSizer in measure.go, FileUser in lock.go).

// As returns img's capability T: img itself if it implements T, else, for
// a *Node, the format image inside it.
func As[T any](img Image) (T, bool) {
	if c, ok := img.(T); ok {
		return c, true
	}
	if n, ok := img.(*Node); ok {
		if c, ok := n.Image.(T); ok {
			return c, true
		}
	}
	var zero T
	return zero, false
}

// ZeroIniter is an image that says whether, newly created, it reads as
// zeroes everywhere (QEMU's bdrv_has_zero_init). A copy into an image that
// does may skip zero runs. Images without the method are assumed to, unless
// they are raw images on devices or have a backing file.
type ZeroIniter interface {
	HasZeroInit() bool
}

// DataFiler is an image whose Extent.HostOffset values refer to a file other
// than its container (an external data file), for copy offloading.
type DataFiler interface {
	DataFile() storage.File
}

// Compressor is an image that can store compressed clusters.
type Compressor interface {
	// WriteCompressed writes one whole cluster compressed. off is aligned
	// to the cluster size and len(p) is the cluster size, except for the
	// last cluster of an image whose size is not a multiple of it. When
	// compression does not make the data smaller the cluster is stored
	// uncompressed, as QEMU does.
	WriteCompressed(p []byte, off int64) error
}

// FixMode says what a check may repair (`qemu-img check -r`).
type FixMode int

// Repair modes.
const (
	// FixNone only reports.
	FixNone FixMode = iota
	// FixLeaks frees leaked clusters (-r leaks).
	FixLeaks
	// FixAll also repairs corruptions (-r all).
	FixAll
)

// CheckResult is what a consistency check found, with the fields of QEMU's
// BdrvCheckResult.
type CheckResult struct {
	Corruptions      int64
	Leaks            int64
	CheckErrors      int64
	CorruptionsFixed int64
	LeaksFixed       int64
	// ImageEndOffset is the end of the last used cluster; 0 if unknown.
	ImageEndOffset     int64
	TotalClusters      int64
	AllocatedClusters  int64
	FragmentedClusters int64
	CompressedClusters int64
}

// Checker is an image that can check (and repair) its own consistency.
type Checker interface {
	// Check examines the image. report receives the per-problem lines
	// QEMU prints to stderr ("ERROR cluster 5 refcount=0 reference=1",
	// "Leaked cluster 9 refcount=1 reference=0"), without newline. An
	// error means the check itself could not run.
	Check(fix FixMode, report func(msg string)) (CheckResult, error)
}

// Snapshotter is an image with internal snapshots.
type Snapshotter interface {
	// Snapshots lists the snapshots in table order.
	Snapshots() ([]SnapshotInfo, error)
	// CreateSnapshot records the current disk state under info's name
	// (and ID, if set; otherwise the next free one).
	CreateSnapshot(info SnapshotInfo) error
	// ApplySnapshot reverts the disk to the snapshot with that ID or name.
	ApplySnapshot(idOrName string) error
	// DeleteSnapshot removes a snapshot, selected by ID and/or name (an
	// empty string matches any).
	DeleteSnapshot(id, name string) error
	// OpenSnapshot returns a read-only view of a snapshot's disk state.
	OpenSnapshot(id, name string) (Image, error)
}

// Amender is an image whose creation options can change in place.
type Amender interface {
	// AmendSpecs lists the options amend accepts.
	AmendSpecs() []OptionSpec
	// Amend applies the options that were set. progress, if not nil,
	// receives work done and total.
	Amend(opts *Options, force bool, progress func(done, total int64)) error
}

// BackingChanger is an image whose backing file name can be rewritten
// without touching data (`rebase -u`, the last step of `rebase` and
// `commit`).
type BackingChanger interface {
	// ChangeBackingFile records a new backing file name and format; an
	// empty name removes the backing file.
	ChangeBackingFile(name, format string) error
}

// Emptier is an image that can drop all its allocated data at once, making
// every range read through to the backing image (`commit` without -d).
type Emptier interface {
	MakeEmpty() error
}
