package block

import (
	"fmt"
	"sort"

	"github.com/qimg/qimg/storage"
)

// Driver is one image format.
type Driver interface {
	// Name is the format name used on the command line ("qcow2").
	Name() string
	// Probe scores how likely it is that the file holds this format: 0
	// means not this format, 100 a certain match. Raw scores 1.
	Probe(p *ProbeInput) int
	// Open opens an image stored in f.
	Open(f storage.File, o *DriverOptions) (Image, error)
}

// Creator is a driver that can create images.
type Creator interface {
	Driver
	// CreateSpecs lists the format's create options in QEMU's order.
	CreateSpecs() []OptionSpec
	// Create writes a new, empty image into f, which is empty.
	Create(f storage.File, r *CreateRequest) error
}

// OpenSpecser is a driver with runtime open options (such as qcow2's
// l2-cache-size). Options a driver does not list are refused at open.
type OpenSpecser interface {
	OpenSpecs() []OptionSpec
}

// ProbeInput is what probing looks at.
type ProbeInput struct {
	// Header holds the first bytes of the file (up to ProbeSize).
	Header []byte
	// File is the whole file, for formats whose signature is elsewhere
	// (such as a footer).
	File storage.File
	// Size is the file size.
	Size int64
}

// ProbeSize is how many leading bytes probing reads, as QEMU's
// BLOCK_PROBE_BUF_SIZE.
const ProbeSize = 512

// DriverOptions are passed to Driver.Open.
type DriverOptions struct {
	// Filename is the image's name, for messages and for resolving
	// relative names it records.
	Filename string
	// Write opens the image for writing.
	Write bool
	// Probed is set when the format was guessed from content.
	Probed bool
	// NoIO is set when the image is opened only to look at its metadata
	// (OpenOptions.NoIO): encrypted formats then need no key.
	NoIO bool
	// ForCheck is set when the image is opened to be checked or repaired
	// (OpenOptions.ForCheck).
	ForCheck bool
	// Options holds the driver's runtime options (see OpenSpecser); never
	// nil.
	Options *Options
	// Env is the environment the image is opened in.
	Env *Env
	// OpenRelated opens a file the image names (an extent), resolved
	// against the image's directory and checked against the Env's policy.
	OpenRelated func(name string, write bool) (storage.File, error)
	// OpenDataFile opens the external data file the image names: as
	// OpenRelated, except that a relative name is found from the working
	// directory first, as QEMU 7.2 finds it (see Env.ResolveDataFile).
	OpenDataFile func(name string, write bool) (storage.File, error)
	// Warn reports a warning to the user.
	Warn func(msg string)
}

// CreateRequest is passed to Creator.Create.
type CreateRequest struct {
	// Filename is the new image's name.
	Filename string
	// Size is the virtual size in bytes.
	Size int64
	// Options holds the create options (the format's and the protocol's),
	// already checked against their specs.
	Options *Options
	// Env is the environment the image is created in.
	Env *Env
	// OpenRelated opens an existing file the new image will name.
	OpenRelated func(name string, write bool) (storage.File, error)
	// CreateRelated creates a file the new image will name (a data file).
	CreateRelated func(name string) (storage.File, error)
	// RemoveRelated deletes a file CreateRelated created, when creating
	// the image fails after it.
	RemoveRelated func(name string) error
}

// Registry is a set of drivers, looked up by name and probed in order.
type Registry struct {
	drivers []Driver
}

// NewRegistry returns a registry of the given drivers. Probing ties go to
// the driver listed first.
func NewRegistry(drivers ...Driver) *Registry {
	return &Registry{drivers: append([]Driver(nil), drivers...)}
}

// Register adds a driver.
func (r *Registry) Register(d Driver) { r.drivers = append(r.drivers, d) }

// Lookup finds a driver by name.
func (r *Registry) Lookup(name string) (Driver, bool) {
	for _, d := range r.drivers {
		if d.Name() == name {
			return d, true
		}
	}
	return nil, false
}

// Names lists the driver names, sorted.
func (r *Registry) Names() []string {
	var names []string
	for _, d := range r.drivers {
		names = append(names, d.Name())
	}
	sort.Strings(names)
	return names
}

// Probe picks the driver that scores highest for the input, or nil.
func (r *Registry) Probe(p *ProbeInput) Driver {
	var best Driver
	bestScore := 0
	for _, d := range r.drivers {
		if s := d.Probe(p); s > bestScore {
			best, bestScore = d, s
		}
	}
	return best
}

// ProbeFile reads the head of f and picks a driver for it. An empty file is
// raw, as in QEMU.
func (r *Registry) ProbeFile(f storage.File) (Driver, error) {
	size, err := f.Size()
	if err != nil {
		return nil, err
	}
	if size == 0 {
		if d, ok := r.Lookup("raw"); ok {
			return d, nil
		}
	}
	head := make([]byte, min(size, ProbeSize))
	if err := storage.ReadExact(f, head, 0); err != nil {
		return nil, fmt.Errorf("Could not read image for determining its format: %s", storage.Strerror(err))
	}
	d := r.Probe(&ProbeInput{Header: head, File: f, Size: size})
	if d == nil {
		return nil, fmt.Errorf("Could not determine image format: No compatible driver found")
	}
	return d, nil
}
