// Package raw is the raw image format: the guest disk byte for byte, with
// holes in the host file for unwritten ranges.
//
// A raw image has no header, so any file is a raw image; probing gives raw
// the lowest score, and a probed raw image opened for writing refuses writes
// to its first sector that would make it look like another format (as QEMU
// does), because such a write could turn a guest's disk into, say, a qcow2
// image naming an arbitrary host file as its backing file.
//
// The runtime options "offset" and "size" expose a window of the file.
package raw

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"syscall"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/storage"
)

// Driver is the raw format driver.
type Driver struct{}

// New returns the raw driver.
func New() *Driver { return &Driver{} }

// Name returns "raw".
func (*Driver) Name() string { return "raw" }

// Probe gives raw the lowest positive score: raw is the fallback.
func (*Driver) Probe(*block.ProbeInput) int { return 1 }

// CreateSpecs lists raw's create option (the file protocol adds its own).
func (*Driver) CreateSpecs() []block.OptionSpec {
	return []block.OptionSpec{{Name: "size", Type: block.OptSize, Help: "Virtual disk size"}}
}

// OpenSpecs lists raw's runtime options.
func (*Driver) OpenSpecs() []block.OptionSpec {
	return []block.OptionSpec{
		{Name: "offset", Type: block.OptSize, Help: "offset in the disk where the image starts"},
		{Name: "size", Type: block.OptSize, Help: "virtual disk size"},
	}
}

// FileUse tells the block layer's locking how raw uses its file, as QEMU's
// raw driver does: passed through unchanged, unless the offset or size
// option makes the image a window of it, and written or resized only when
// the image's users ask for that.
func (*Driver) FileUse(o *block.DriverOptions) block.FileUse {
	role := block.RoleFiltered | block.RolePrimary
	if o.Options.Uint("offset", 0) != 0 || o.Options.Has("size") {
		role = block.RoleData | block.RolePrimary
	}
	return block.FileUse{Role: role, WriteOnRequest: true}
}

// sectorSize is the unit raw sizes are rounded to.
const sectorSize = 512

// Create sizes the new file (rounded up to a sector) with the requested
// preallocation.
func (*Driver) Create(f storage.File, r *block.CreateRequest) error {
	prealloc, err := block.ParsePrealloc(r.Options.String("preallocation"))
	if err != nil {
		return err
	}
	size := (r.Size + sectorSize - 1) &^ (sectorSize - 1)
	return storage.Truncate(f, size, prealloc)
}

// Image is an open raw image.
type Image struct {
	f      storage.File
	name   string
	offset int64
	// hasSize is set when the size option fixes the window; otherwise the
	// size follows the file.
	hasSize bool
	write   bool
	probed  bool
	// asFile is set when the file driver opened the image.
	asFile bool
	probe  func(sector []byte) bool

	mu   sync.RWMutex
	size int64
}

// Open opens a raw image.
func (d *Driver) Open(f storage.File, o *block.DriverOptions) (block.Image, error) {
	fileSize, err := f.Size()
	if err != nil {
		return nil, fmt.Errorf("Could not get image size: %s", storage.Strerror(err))
	}
	img := &Image{f: f, name: o.Filename, write: o.Write, probed: o.Probed}
	// The block layer sees every file in whole sectors: a file whose
	// length is not a multiple of 512 reads as if padded with zeroes.
	fileSize = roundUp(fileSize)
	off := int64(o.Options.Uint("offset", 0))
	if off < 0 || off > fileSize {
		return nil, fmt.Errorf("Offset (%d) cannot be greater than size of the containing file (%d)", uint64(off), fileSize)
	}
	img.offset = off
	img.size = roundUp(fileSize - off)
	if o.Options.Has("size") {
		size := o.Options.Uint("size", 0)
		if uint64(fileSize-off) < size {
			return nil, fmt.Errorf("The sum of offset (%d) and size (%d) has to be smaller or equal to the  actual size of the containing file (%d)", off, size, fileSize)
		}
		if size%sectorSize != 0 {
			return nil, fmt.Errorf("Specified size is not multiple of %d", sectorSize)
		}
		img.size, img.hasSize = int64(size), true
	}
	if o.Probed && o.Write {
		if o.Env != nil {
			o.Env.Notice(fmt.Sprintf("WARNING: Image format was not specified for '%s' and probing guessed raw.\n"+
				"         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n"+
				"         Specify the 'raw' format explicitly to remove the restrictions.\n", o.Filename))
			reg := o.Env.Registry
			img.probe = func(sector []byte) bool {
				p := reg.Probe(&block.ProbeInput{Header: sector, Size: int64(len(sector))})
				return p == nil || p.Name() == "raw"
			}
		}
	}
	return img, nil
}

// roundUp rounds a length up to whole sectors.
func roundUp(n int64) int64 {
	if n > math.MaxInt64-(sectorSize-1) {
		return n &^ (sectorSize - 1)
	}
	return (n + sectorSize - 1) &^ (sectorSize - 1)
}

// Format returns "raw", or "file" for an image the file driver opened.
func (i *Image) Format() string {
	if i.asFile {
		return "file"
	}
	return "raw"
}

// Size returns the virtual size.
func (i *Image) Size() int64 {
	i.mu.RLock()
	defer i.mu.RUnlock()
	return i.size
}

// ReadAt reads guest bytes.
func (i *Image) ReadAt(p []byte, off int64) (int, error) {
	if err := block.CheckRange(i.Size(), off, int64(len(p))); err != nil {
		return 0, err
	}
	if err := storage.ReadFull(i.f, p, i.offset+off); err != nil {
		return 0, err
	}
	return len(p), nil
}

// errProbeWrite is the EPERM QEMU returns for a write that would change a
// probed raw image's format.
var errProbeWrite error = probeWriteError{}

// probeWriteError words EPERM as strerror does and matches syscall.EPERM.
type probeWriteError struct{}

func (probeWriteError) Error() string { return "Operation not permitted" }

func (probeWriteError) Unwrap() error { return syscall.EPERM }

// WriteAt writes guest bytes.
func (i *Image) WriteAt(p []byte, off int64) (int, error) {
	if !i.write {
		return 0, block.ErrReadOnly
	}
	if err := block.CheckRange(i.Size(), off, int64(len(p))); err != nil {
		return 0, err
	}
	if i.probe != nil && off < block.ProbeSize && len(p) > 0 {
		if err := i.checkSectorZero(p, off); err != nil {
			return 0, err
		}
	}
	return i.f.WriteAt(p, i.offset+off)
}

// checkSectorZero refuses a write that makes sector 0 probe as another
// format.
func (i *Image) checkSectorZero(p []byte, off int64) error {
	sector := make([]byte, block.ProbeSize)
	if err := storage.ReadFull(i.f, sector, i.offset); err != nil {
		return err
	}
	copy(sector[off:], p)
	if !i.probe(sector) {
		return errProbeWrite
	}
	return nil
}

// BlockStatus reports data and holes of the host file.
func (i *Image) BlockStatus(off, n int64) (block.Extent, error) {
	size := i.Size()
	if err := block.CheckRange(size, off, n); err != nil {
		return block.Extent{}, err
	}
	n = min(n, size-off)
	fileSize, err := i.f.Size()
	if err != nil {
		return block.Extent{}, err
	}
	host := i.offset + off
	ext := block.Extent{Offset: off, Length: n, HostOffset: host}
	start, end, err := storage.NextData(i.f, host, fileSize)
	switch {
	case err != nil:
		ext.Status = block.Allocated | block.Data | block.OffsetValid
	case host >= fileSize:
		// The padding of a file that ends inside a sector.
		ext.Status = block.Allocated | block.Zero | block.OffsetValid
	case start > host:
		ext.Status = block.Allocated | block.Zero | block.OffsetValid
		ext.Length = min(n, start-host)
	default:
		ext.Status = block.Allocated | block.Data | block.OffsetValid
		ext.Length = min(n, end-host)
	}
	if ext.Length <= 0 {
		ext.Length = n
	}
	return ext, nil
}

// WriteZeroes zeroes a range, punching a hole when allowed.
func (i *Image) WriteZeroes(off, n int64, flags block.ZeroFlags) error {
	if !i.write {
		return block.ErrReadOnly
	}
	if err := block.CheckRange(i.Size(), off, n); err != nil {
		return err
	}
	if i.probe != nil && off < block.ProbeSize && n > 0 {
		if err := i.checkSectorZero(make([]byte, min(n, block.ProbeSize-off)), off); err != nil {
			return err
		}
	}
	if flags&block.NoFallback != 0 {
		if flags&block.MayUnmap != 0 {
			if err := storage.PunchHole(i.f, i.offset+off, n); err == nil {
				return nil
			}
		}
		if z, ok := i.f.(storage.ZeroRanger); ok {
			if err := z.ZeroRange(i.offset+off, n); err == nil {
				return nil
			}
		}
		return block.ErrUnsupported
	}
	return storage.WriteZeroes(i.f, i.offset+off, n, flags&block.MayUnmap != 0)
}

// Discard punches a hole where the file system can.
func (i *Image) Discard(off, n int64) error {
	if !i.write {
		return block.ErrReadOnly
	}
	if err := block.CheckRange(i.Size(), off, n); err != nil {
		return err
	}
	if i.probe != nil && off < block.ProbeSize && (off != 0 || n < block.ProbeSize) {
		// A hole punched into part of sector 0 zeroes bytes there, which
		// could make it probe as another format; QEMU, which aligns
		// requests to sectors on a probed image, drops such a part.
		cut := min(n, block.ProbeSize-off)
		off, n = off+cut, n-cut
	}
	if err := storage.PunchHole(i.f, i.offset+off, n); err != nil && !errors.Is(err, storage.ErrNotSupported) {
		return err
	}
	return nil
}

// Flush syncs the file.
func (i *Image) Flush() error { return i.f.Sync() }

// Close flushes the image; the file itself belongs to the caller.
func (i *Image) Close() error {
	if i.write {
		return i.f.Sync()
	}
	return nil
}

// Resize changes the size of the file (raw images are their file). With
// an offset option the file keeps the bytes before the offset and ends
// size bytes after it; a size option fixes the size, as in QEMU.
func (i *Image) Resize(size int64, prealloc string) error {
	if !i.write {
		return block.ErrReadOnly
	}
	if i.hasSize {
		return block.Unsupported("Cannot resize fixed-size raw disks")
	}
	if err := block.CheckLength(size); err != nil {
		return err
	}
	if size > math.MaxInt64-i.offset {
		return errors.New("Disk size too large for the chosen offset")
	}
	if err := block.CheckLength(i.offset + size); err != nil {
		return err
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	if err := storage.Truncate(i.f, i.offset+size, prealloc); err != nil {
		return err
	}
	i.size = size
	return nil
}

// Info reports no cluster size and a clean dirty flag.
func (*Image) Info() (block.Info, error) { return block.Info{}, nil }
