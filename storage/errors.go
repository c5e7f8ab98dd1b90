package storage

import (
	"errors"
	"fmt"
	"io/fs"
	"syscall"
)

// OpenError reports a file that could not be opened or created, worded as
// QEMU words it: "Could not open 'name': No such file or directory", or
// "Could not create 'name': Is a directory".
type OpenError struct {
	Name string
	Err  error
	// Create is set when the file was being created.
	Create bool
}

func (e *OpenError) Error() string {
	action := "open"
	if e.Create {
		action = "create"
	}
	return fmt.Sprintf("Could not %s '%s': %s", action, e.Name, Strerror(e.Err))
}

func (e *OpenError) Unwrap() error { return e.Err }

// SysError is a failed system operation, worded as QEMU's
// error_setg_errno words it: "Could not resize file: File too large". It
// keeps the underlying error (usually a syscall.Errno) for errors.Is.
type SysError struct {
	// Op says what failed ("Could not resize file").
	Op  string
	Err error
}

func (e *SysError) Error() string { return e.Op + ": " + Strerror(e.Err) }

func (e *SysError) Unwrap() error { return e.Err }

// ErrNoFilename is the error of opening a file with an empty name.
var ErrNoFilename = errors.New("The 'file' block driver requires a file name")

// NotRegularError reports a path the file protocol cannot use, such as a
// directory.
type NotRegularError struct {
	Name string
}

func (e *NotRegularError) Error() string {
	return fmt.Sprintf("'file' driver requires '%s' to be a regular file", e.Name)
}

// Strerror words an error as the C library's strerror does ("No such file or
// directory"), so messages match QEMU's. Errors that carry no errno keep
// their own text.
func Strerror(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		s := errno.Error()
		if s != "" && s[0] >= 'a' && s[0] <= 'z' {
			s = string(s[0]-'a'+'A') + s[1:]
		}
		return s
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return Strerror(pe.Err)
	}
	if errors.Is(err, fs.ErrNotExist) {
		return "No such file or directory"
	}
	if errors.Is(err, fs.ErrPermission) {
		return "Permission denied"
	}
	return err.Error()
}

// errNoEnt is the error of a name that does not exist in a MemFS.
var errNoEnt error = syscall.ENOENT
