package storage

import (
	"errors"
	"io/fs"
	"os"
)

// OpenOptions says how an Opener opens a file.
type OpenOptions struct {
	// Write opens the file for writing.
	Write bool
	// Direct bypasses the host page cache where the store has one.
	Direct bool
	// NoSync makes Sync a no-op (cache=unsafe).
	NoSync bool
}

// Opener opens files by name. The block layer opens images, backing files and
// data files through an Opener, so that tests can substitute an in-memory file
// system or one that injects faults.
type Opener interface {
	// Open opens an existing file.
	Open(name string, o OpenOptions) (File, error)
	// Create creates a file read-write, or truncates an existing one to
	// zero length.
	Create(name string, o OpenOptions) (File, error)
	// Exists reports whether name exists.
	Exists(name string) bool
	// Remove deletes a file.
	Remove(name string) error
}

// Local is the Opener for host files and devices.
type Local struct{}

// Open opens a host file or device.
func (Local) Open(name string, o OpenOptions) (File, error) {
	return OpenLocal(name, LocalOptions{Write: o.Write, Direct: o.Direct, NoSync: o.NoSync})
}

// Create creates or truncates a host file.
func (Local) Create(name string, o OpenOptions) (File, error) {
	return OpenLocal(name, LocalOptions{Create: true, Direct: o.Direct, NoSync: o.NoSync})
}

// Exists reports whether a host path exists.
func (Local) Exists(name string) bool {
	_, err := os.Stat(name)
	return err == nil || !errors.Is(err, fs.ErrNotExist)
}

// Remove deletes a host file.
func (Local) Remove(name string) error { return os.Remove(name) }
