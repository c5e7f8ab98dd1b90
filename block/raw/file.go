package raw

import (
	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/storage"
)

// FileDriver is QEMU's "file" protocol driver used as an image format
// (`-f file`, `--image-opts driver=file,filename=…`): the file itself is
// the disk, as with raw, but it is never probed, takes no offset or size
// option, and cannot be measured.
type FileDriver struct{ raw Driver }

// NewFile returns the file driver.
func NewFile() *FileDriver { return &FileDriver{} }

// Name returns "file".
func (*FileDriver) Name() string { return "file" }

// Probe never picks the file driver: probing falls back to raw.
func (*FileDriver) Probe(*block.ProbeInput) int { return 0 }

// CreateSpecs lists the file protocol's create options, which are this
// format's own.
func (*FileDriver) CreateSpecs() []block.OptionSpec { return block.FileProtocolSpecs() }

// OpenSpecs lists no runtime options: the protocol's are the block
// layer's.
func (*FileDriver) OpenSpecs() []block.OptionSpec { return nil }

// FileUse passes the file through, written or resized only on request.
func (*FileDriver) FileUse(*block.DriverOptions) block.FileUse {
	return block.FileUse{Role: block.RoleFiltered | block.RolePrimary, WriteOnRequest: true}
}

// Create sizes the new file as raw does.
func (d *FileDriver) Create(f storage.File, r *block.CreateRequest) error { return d.raw.Create(f, r) }

// Open opens the file as the image. It is never probed, so writes to its
// first sector are not restricted.
func (d *FileDriver) Open(f storage.File, o *block.DriverOptions) (block.Image, error) {
	opened := *o
	opened.Probed = false
	img, err := d.raw.Open(f, &opened)
	if err != nil {
		return nil, err
	}
	img.(*Image).asFile = true
	return img, nil
}
