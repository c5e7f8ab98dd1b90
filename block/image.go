// Package block is qimg's block layer: the Image interface every disk image
// format implements, the registry of format drivers, format probing, and
// Open and Create, which assemble an image from its container file, its
// backing chain and any files it names.
//
// # Security stance
//
// The block layer is built to read hostile images. Drivers validate every
// field they decode before trusting it (offsets inside the file, table sizes
// against limits, alignment), no header field sizes an allocation unchecked,
// and a malformed image yields an error, never a panic or unbounded memory.
// Nothing an image names (backing file, external data file, extent) is opened
// except through the Env's Policy, which the caller sets: by default plain
// paths are followed as qemu-img follows them, and protocol or json: names are
// refused; in untrusted mode only relative paths that stay inside the image's
// directory are opened.
//
// # Capabilities
//
// The Image interface is small. What only some formats can do is expressed
// by optional interfaces found by type assertion:
//
//   - Infoer: cluster size, dirty flag and format-specific information for
//     `qemu-img info`
//   - Backed: the image has (or may have) a backing file
//   - Checker: consistency check and repair
//   - Snapshotter: internal snapshots
//   - Resizer: changing the virtual size
//   - Amender: changing creation options in place
//   - Compressor: writing compressed clusters
//   - AllocatedSizer: the storage the image occupies, when it spans files
//   - BackingChanger: rewriting the backing file name (rebase -u)
//   - Emptier: dropping all data at once (commit)
//   - StatusBounder: where a status run must end, to match QEMU's requests
//   - Measurer, BitmapSizer: space an image would need (qemu-img measure)
//   - ZeroIniter: whether a new image reads as zeroes
//   - DataFiler: the file host offsets refer to (copy offloading)
//   - FileUser: how a format uses its container, for locking
//
// As finds a capability on an Image or through a *Node.
package block

import (
	"errors"
	"fmt"
)

// Status describes a run of an image, as reported by BlockStatus.
type Status uint8

// Status bits. They follow QEMU's block-status flags.
const (
	// Allocated means this image decides the content of the run; when clear
	// the run reads through to the backing image (or as zeroes without one).
	Allocated Status = 1 << iota
	// Data means the run is stored in the image (not a hole).
	Data
	// Zero means the run reads as zeroes.
	Zero
	// OffsetValid means HostOffset says where the run's bytes lie,
	// uncompressed and unencrypted, in the image's data file.
	OffsetValid
	// Compressed means the run is stored compressed.
	Compressed
)

// Extent is one run of an image with a uniform status.
type Extent struct {
	// Offset and Length delimit the run in guest bytes.
	Offset int64
	Length int64
	Status Status
	// HostOffset is the run's position in the data file, when OffsetValid.
	HostOffset int64
}

// Has reports whether all bits of s are set in the extent's status.
func (e Extent) Has(s Status) bool { return e.Status&s == s }

// ZeroFlags modify WriteZeroes.
type ZeroFlags uint8

// WriteZeroes flags.
const (
	// MayUnmap allows the image to deallocate the range instead of writing
	// zeroes, as long as it reads as zeroes afterwards.
	MayUnmap ZeroFlags = 1 << iota
	// NoFallback asks for a fast zeroing method only; the call fails with
	// ErrNotSupported rather than writing zero bytes.
	NoFallback
)

// Image is an open disk image of any format.
//
// Offsets and lengths are in guest bytes and must lie within [0, Size()).
// Implementations are safe for concurrent ReadAt calls and serialise their
// own metadata updates; callers order writes to overlapping ranges.
type Image interface {
	// Format is the driver name, such as "qcow2" or "raw".
	Format() string
	// Size is the virtual disk size in bytes.
	Size() int64
	// ReadAt reads len(p) bytes at off. Unallocated ranges read through
	// to the backing image, or as zeroes without one.
	ReadAt(p []byte, off int64) (int, error)
	// WriteAt writes p at off.
	WriteAt(p []byte, off int64) (int, error)
	// BlockStatus describes the run that starts at off and is at most n
	// bytes long.
	BlockStatus(off, n int64) (Extent, error)
	// WriteZeroes makes [off, off+n) read as zeroes.
	WriteZeroes(off, n int64, flags ZeroFlags) error
	// Discard tells the image that [off, off+n) is no longer needed. The
	// content of a discarded range is unspecified afterwards.
	Discard(off, n int64) error
	// Flush makes all completed writes durable.
	Flush() error
	// Close flushes and releases the image. It does not close the backing
	// image; the block layer's Node does that.
	Close() error
}

// Info is what an image says about itself for `qemu-img info`.
type Info struct {
	// ClusterSize is the allocation unit; 0 when the format has none.
	ClusterSize int64
	// Encrypted reports an encrypted image.
	Encrypted bool
	// NoDirtyFlag is set when the driver gives no dirty flag at all; QEMU
	// then omits "dirty-flag" from JSON output.
	NoDirtyFlag bool
	// Dirty reports an image that was not closed cleanly (QEMU's
	// "cleanly shut down: no").
	Dirty bool
	// Specific is format-specific information ("Format specific
	// information:" in human output, "format-specific" in JSON), with keys
	// added in the order of QEMU's QAPI schema. Nil when the format has
	// none.
	Specific *Dict
	// Snapshots lists internal snapshots.
	Snapshots []SnapshotInfo
}

// Infoer is an image that describes itself beyond size and format.
type Infoer interface {
	Info() (Info, error)
}

// SnapshotInfo describes an internal snapshot, as `qemu-img snapshot -l`
// lists it.
type SnapshotInfo struct {
	ID          string
	Name        string
	VMStateSize uint64
	DateSec     int64
	DateNsec    int64
	VMClockNsec uint64
	// ICount is the instruction count, or -1 when not recorded.
	ICount int64
}

// Backed is an image that can have a backing file.
type Backed interface {
	// BackingFile returns the backing file name as recorded in the image
	// and its format ("" when not recorded). An empty name means no
	// backing file.
	BackingFile() (name, format string)
	// SetBacking attaches the opened backing image. Without one,
	// unallocated ranges read as zeroes.
	SetBacking(b Image)
}

// AllocatedSizer is an image that computes its own storage use, such as one
// whose data lives in several files.
type AllocatedSizer interface {
	AllocatedSize() (int64, error)
}

// Sentinel errors callers decide on. Drivers wrap them with context.
var (
	// ErrCorrupt means the image's metadata is inconsistent.
	ErrCorrupt = errors.New("image is corrupt")
	// ErrUnsupported means the image uses a feature qimg does not
	// implement, or the operation does not apply to the format.
	ErrUnsupported = errors.New("operation not supported")
	// ErrReadOnly means the image was opened read-only.
	ErrReadOnly = errors.New("image is read-only")
	// ErrRange means a request lies outside the image.
	ErrRange = errors.New("request beyond end of image")
	// ErrLocked means another process holds a conflicting lock.
	ErrLocked = errors.New("image is locked")
	// ErrNotAllowed means the open policy forbids opening a file an image
	// names.
	ErrNotAllowed = errors.New("not allowed by policy")
)

// Unsupported returns an error that reads as msg alone, as QEMU words it,
// and matches ErrUnsupported.
func Unsupported(msg string) error { return unsupportedError(msg) }

type unsupportedError string

func (e unsupportedError) Error() string        { return string(e) }
func (e unsupportedError) Is(target error) bool { return target == ErrUnsupported }

// FormatError reports a bad field in an image's on-disk structures.
type FormatError struct {
	// Field names the structure and field, such as "L1 table offset".
	Field string
	// Offset is where the field lies in the file, or -1.
	Offset int64
	// Value is the bad value.
	Value uint64
	// Reason says what is wrong with it.
	Reason string
	// Err is the sentinel the error wraps (ErrCorrupt by default).
	Err error
}

func (e *FormatError) Error() string {
	if e.Reason != "" {
		return fmt.Sprintf("%s %#x: %s", e.Field, e.Value, e.Reason)
	}
	return fmt.Sprintf("invalid %s %#x", e.Field, e.Value)
}

func (e *FormatError) Unwrap() error {
	if e.Err == nil {
		return ErrCorrupt
	}
	return e.Err
}

// CheckRange verifies that [off, off+n) lies within an image of the given
// size.
func CheckRange(size, off, n int64) error {
	if off < 0 || n < 0 || off > size || n > size-off {
		return fmt.Errorf("offset %d length %d: %w", off, n, ErrRange)
	}
	return nil
}

// Preallocation modes, as QEMU's PreallocMode names them.
const (
	PreallocOff      = "off"
	PreallocMetadata = "metadata"
	PreallocFalloc   = "falloc"
	PreallocFull     = "full"
)

// ParsePrealloc checks a preallocation mode name; "" means off.
func ParsePrealloc(s string) (string, error) {
	switch s {
	case "":
		return PreallocOff, nil
	case PreallocOff, PreallocMetadata, PreallocFalloc, PreallocFull:
		return s, nil
	}
	return "", fmt.Errorf("invalid parameter value: %s", s)
}

// Resizer is an image whose virtual size can change.
type Resizer interface {
	// Resize sets the virtual size. New space is allocated as prealloc
	// says (one of the Prealloc modes). Whether shrinking is allowed is
	// the caller's decision.
	Resize(size int64, prealloc string) error
}
