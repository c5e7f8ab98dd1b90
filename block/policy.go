package block

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Policy decides which files an image may name and have opened: backing
// files, external data files, extents.
type Policy struct {
	// Untrusted admits only relative names that stay inside the naming
	// image's directory: no absolute paths, no "..", no symbolic link that
	// leads out of the directory, no protocols.
	Untrusted bool
	// AllowProtocols admits json: and protocol (nbd://, http://) names
	// found in image metadata. They are refused by default.
	AllowProtocols bool
}

// AllowProtocolsOption names the command-line switch that sets
// AllowProtocols, for error messages.
const AllowProtocolsOption = "--allow-image-protocols"

// HasProtocol reports whether name is a protocol name ("nbd://…",
// "json:{…}", "http:…") rather than a path, as QEMU's path_has_protocol
// decides: a colon before any slash.
func HasProtocol(name string) bool {
	i := strings.IndexAny(name, ":/")
	return i >= 0 && name[i] == ':'
}

// IsAbsolute reports whether a name is an absolute path or a protocol name.
func IsAbsolute(name string) bool {
	return strings.HasPrefix(name, "/") || HasProtocol(name)
}

// CombinePath resolves a name recorded in an image against the image's own
// name, as QEMU's bdrv_get_full_backing_filename_from_filename does: an
// absolute or protocol name stays as it is; a relative one is appended, as
// path_combine appends it, to the directory part of base (no cleaning),
// where a protocol prefix of base ("nbd:") counts as a directory.
func CombinePath(base, name string) string {
	if IsAbsolute(name) {
		return name
	}
	dir := 0
	if HasProtocol(base) {
		dir = strings.IndexByte(base, ':') + 1
	}
	if i := strings.LastIndexByte(base, '/'); i+1 > dir {
		dir = i + 1
	}
	return base[:dir] + name
}

// Check decides whether the image named image may open the file it names as
// named. It returns the path to open.
func (p Policy) Check(image, named, what string) (string, error) {
	if HasProtocol(named) {
		if p.Untrusted {
			return "", fmt.Errorf("%s '%s' is a protocol or json: name, which untrusted mode does not open: %w",
				what, named, ErrNotAllowed)
		}
		if !p.AllowProtocols {
			return "", fmt.Errorf("%s '%s' is a protocol or json: name, which is not opened unless %s is given: %w",
				what, named, AllowProtocolsOption, ErrNotAllowed)
		}
		return named, nil
	}
	full := CombinePath(image, named)
	if !p.Untrusted {
		return full, nil
	}
	if strings.HasPrefix(named, "/") {
		return "", fmt.Errorf("%s '%s' is an absolute path, which untrusted mode does not open: %w", what, named, ErrNotAllowed)
	}
	for _, part := range strings.Split(named, "/") {
		if part == ".." {
			return "", fmt.Errorf("%s '%s' leaves the image's directory, which untrusted mode does not allow: %w", what, named, ErrNotAllowed)
		}
	}
	dir, err := filepath.Abs(filepath.Dir(image))
	if err != nil {
		return "", err
	}
	realDir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", err
	}
	if real, err := filepath.EvalSymlinks(filepath.Join(dir, named)); err == nil {
		rel, err := filepath.Rel(realDir, real)
		if err != nil || rel == ".." || strings.HasPrefix(rel, "../") || filepath.IsAbs(rel) {
			return "", fmt.Errorf("%s '%s' is a link out of the image's directory, which untrusted mode does not allow: %w", what, named, ErrNotAllowed)
		}
		if st, err := os.Stat(real); err == nil && !st.Mode().IsRegular() {
			return "", fmt.Errorf("%s '%s' is not a regular file, which untrusted mode does not open: %w", what, named, ErrNotAllowed)
		}
	}
	return full, nil
}
