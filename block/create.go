package block

import (
	"errors"
	"fmt"
	"math"
	"syscall"

	"github.com/qimg/qimg/storage"
)

// FileProtocolSpecs are the create options of the host file protocol, which
// QEMU appends to every format's own.
var fileProtocolSpecs = []OptionSpec{
	{Name: "size", Type: OptSize, Help: "Virtual disk size"},
	{Name: "nocow", Type: OptBool, Help: "Turn off copy-on-write (valid only on btrfs)"},
	{Name: "preallocation", Type: OptString, Help: "Preallocation mode (allowed values: off, falloc, full)"},
	{Name: "extent_size_hint", Type: OptSize, Help: "Extent size hint for the image file, 0 to disable"},
}

// FileProtocolSpecs returns the host file protocol's create options.
func FileProtocolSpecs() []OptionSpec { return append([]OptionSpec(nil), fileProtocolSpecs...) }

// ErrTooBig is wrapped by a driver's Create when the size does not fit the
// format; Create rewords it as QEMU does.
var ErrTooBig = errors.New("image size too large")

// HintedError is an error with an explanation QEMU prints on the lines after
// the error line. The hint is printed as it is, so it carries its own line
// ends (QEMU's "Detected format of qcow2." has none).
type HintedError struct {
	Err  error
	Hint string
}

func (e *HintedError) Error() string { return e.Err.Error() }

// Unwrap returns the underlying error.
func (e *HintedError) Unwrap() error { return e.Err }

// ErrorHint returns the hint text.
func (e *HintedError) ErrorHint() string { return e.Hint }

// ErrorHint returns the hint text.
func (e *OptionError) ErrorHint() string { return e.Hint }

// CreateParams describes an image to create, as `qemu-img create` takes it.
type CreateParams struct {
	Filename string
	Format   string
	// Size is the virtual size, or -1 when not given.
	Size int64
	// Options is the -o option list.
	Options string
	// BackingFile and BackingFormat come from -b and -F.
	BackingFile   string
	BackingFormat string
	// NoOpenBacking (-u) creates without opening the backing file.
	NoOpenBacking bool
	// Announce, if set, is called with the options just before the image
	// is written, to print the "Formatting" line.
	Announce func(opts *Options)
}

// CreateSpecs returns the create options a format accepts on the host file
// protocol, or an error worded as qemu-img words it.
func (e *Env) CreateSpecs(format string) ([]OptionSpec, Creator, error) {
	d, ok := e.Registry.Lookup(format)
	if !ok {
		return nil, nil, fmt.Errorf("Unknown file format '%s'", format)
	}
	c, ok := d.(Creator)
	if !ok {
		return nil, nil, fmt.Errorf("Format driver '%s' does not support image creation", format)
	}
	return MergeSpecs(c.CreateSpecs(), fileProtocolSpecs), c, nil
}

// Create creates an image as qemu-img's bdrv_img_create does: it checks the
// options, opens the backing file to learn its size and check its format,
// announces the options, and writes the new image. A file Create made is
// removed again if writing it fails.
func (e *Env) Create(p CreateParams) error {
	specs, drv, err := e.CreateSpecs(p.Format)
	if err != nil {
		return err
	}
	opts := NewOptions(specs)
	if p.Options != "" {
		if err := opts.Parse(p.Options); err != nil {
			return err
		}
	}
	if !opts.Has("size") {
		opts.SetNumber("size", uint64(p.Size))
	} else if p.Size != -1 {
		return errors.New("The image size must be specified only once")
	}
	if p.BackingFile != "" {
		if findSpec(specs, "backing_file") == nil {
			return fmt.Errorf("Backing file not supported for file format '%s'", p.Format)
		}
		opts.Set("backing_file", p.BackingFile)
	}
	if p.BackingFormat != "" {
		if findSpec(specs, "backing_fmt") == nil {
			return fmt.Errorf("Backing file format not supported for file format '%s'", p.Format)
		}
		opts.Set("backing_fmt", p.BackingFormat)
	}
	backing, hasBacking := opts.Lookup("backing_file")
	if hasBacking {
		if backing == p.Filename {
			return errors.New("Error: Trying to create an image with the same filename as the backing file")
		}
		if backing == "" {
			return errors.New("Expected backing file name, got empty string")
		}
	}
	backingFmt, hasBackingFmt := opts.Lookup("backing_fmt")
	size := int64(opts.Uint("size", uint64(p.Size)))
	switch {
	case hasBacking && !p.NoOpenBacking:
		full := CombinePath(p.Filename, backing)
		b, err := e.Open(full, OpenOptions{Format: backingFmt, ForceShare: true, NoBacking: true, NoIO: true})
		if err != nil {
			return &HintedError{Err: err, Hint: "Could not open backing image.\n"}
		}
		bsize, bname := b.Size(), b.Driver.Name()
		b.Close()
		if !hasBackingFmt {
			return &HintedError{Err: errors.New("Backing file specified without backing format"),
				Hint: fmt.Sprintf("Detected format of %s.", bname)}
		}
		if size == -1 {
			size = bsize
			opts.SetNumber("size", uint64(size))
		}
	case hasBacking && !hasBackingFmt:
		return errors.New("Backing file specified without backing format")
	}
	if size == -1 {
		return errors.New("Image creation needs a size parameter")
	}
	if p.Announce != nil {
		p.Announce(opts)
	}
	err = e.createFile(drv, p.Filename, size, opts)
	if errors.Is(err, ErrTooBig) || errors.Is(err, syscall.EFBIG) {
		hint := ""
		if opts.Uint("cluster_size", 0) != 0 {
			hint = " (try using a larger cluster size)"
		}
		return fmt.Errorf("The image size is too large for file format '%s'%s", p.Format, hint)
	}
	return err
}

// createFile creates the container, applies the protocol options and lets
// the driver write the image. The container (and any data file the driver
// creates) stays locked against other users while it is written.
func (e *Env) createFile(drv Creator, name string, size int64, opts *Options) error {
	if opts.Uint("extent_size_hint", 0) > math.MaxUint32 {
		return errors.New("Extent size hint is too large")
	}
	existed := e.files().Exists(name)
	f, err := e.createLocked(name)
	if err != nil {
		return err
	}
	if opts.Bool("nocow", false) {
		if l, ok := f.(interface{ SetNoCOW() error }); ok {
			if err := l.SetNoCOW(); err != nil {
				f.Close()
				return err
			}
		}
	}
	req := &CreateRequest{
		Filename: name,
		Size:     size,
		Options:  opts,
		Env:      e,
		OpenRelated: func(related string, write bool) (storage.File, error) {
			return e.OpenRelated(name, related, "file", write, CacheWriteback)
		},
		// A file the user names at creation (a data file) is created
		// where the name points from the working directory, as QEMU's
		// bdrv_create_file does; the image records the name as given,
		// and opening it later finds it from the working directory
		// too (Env.ResolveDataFile).
		CreateRelated: func(related string) (storage.File, error) {
			return e.createLocked(related)
		},
		RemoveRelated: func(related string) error {
			return e.files().Remove(related)
		},
	}
	err = drv.Create(f, req)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil && !existed {
		e.files().Remove(name)
	}
	return err
}
