package block

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"
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
	shown := printable(named)
	if HasProtocol(named) {
		if p.Untrusted {
			return "", fmt.Errorf("%s '%s' is a protocol or json: name, which untrusted mode does not open: %w",
				what, shown, ErrNotAllowed)
		}
		if !p.AllowProtocols {
			return "", fmt.Errorf("%s '%s' is a protocol or json: name, which is not opened unless %s is given: %w",
				what, shown, AllowProtocolsOption, ErrNotAllowed)
		}
		return named, nil
	}
	full := CombinePath(image, named)
	if !p.Untrusted {
		return full, nil
	}
	if strings.HasPrefix(named, "/") {
		return "", fmt.Errorf("%s '%s' is an absolute path, which untrusted mode does not open: %w", what, shown, ErrNotAllowed)
	}
	for _, part := range strings.Split(named, "/") {
		if part == ".." {
			return "", fmt.Errorf("%s '%s' leaves the image's directory, which untrusted mode does not allow: %w", what, shown, ErrNotAllowed)
		}
	}
	if strings.IndexByte(named, 0) >= 0 {
		return "", fmt.Errorf("%s '%s' holds a NUL byte: %w", what, shown, ErrNotAllowed)
	}
	dir, err := filepath.Abs(filepath.Dir(image))
	if err != nil {
		return "", err
	}
	realDir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", err
	}
	real, exists, err := resolveBeneath(realDir, named)
	if errors.Is(err, errLinkLoop) {
		return "", fmt.Errorf("%s '%s' is a loop of symbolic links: %w", what, shown, ErrNotAllowed)
	}
	if err != nil {
		return "", fmt.Errorf("%s '%s' is a link out of the image's directory, which untrusted mode does not allow: %w", what, shown, ErrNotAllowed)
	}
	if exists {
		if st, err := os.Stat(real); err == nil && !st.Mode().IsRegular() {
			return "", fmt.Errorf("%s '%s' is not a regular file, which untrusted mode does not open: %w", what, shown, ErrNotAllowed)
		}
	}
	return full, nil
}

// maxLinkHops bounds the symbolic links followed in one name, as the
// kernel's ELOOP limit does.
const maxLinkHops = 40

// Errors of resolveBeneath.
var (
	errEscapes  = errors.New("leaves the directory")
	errLinkLoop = errors.New("too many levels of symbolic links")
)

// resolveBeneath resolves the relative name inside root (an absolute path
// without symbolic links) one component at a time, following symbolic
// links as the kernel would, and fails unless the file it ends at lies
// beneath root. A component that does not exist ends the look-ups: the
// rest of the name is resolved lexically, so a dangling link out of root is
// refused rather than reported as missing, and no answer tells whether a
// file outside root exists. exists reports whether the whole name exists.
func resolveBeneath(root, name string) (real string, exists bool, err error) {
	cur := root
	rest := strings.Split(name, "/")
	hops := 0
	exists = true
	for len(rest) > 0 {
		c := rest[0]
		rest = rest[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			cur = filepath.Dir(cur)
			continue
		}
		next := filepath.Join(cur, c)
		if !exists {
			cur = next
			continue
		}
		fi, err := os.Lstat(next)
		if err != nil {
			exists = false
			cur = next
			continue
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			cur = next
			continue
		}
		if hops++; hops > maxLinkHops {
			return "", false, errLinkLoop
		}
		target, err := os.Readlink(next)
		if err != nil {
			return "", false, errEscapes
		}
		if strings.HasPrefix(target, "/") {
			cur = "/"
		}
		rest = append(strings.Split(target, "/"), rest...)
	}
	if !beneath(root, cur) {
		return "", false, errEscapes
	}
	return cur, exists, nil
}

// beneath reports whether the clean absolute path p is root or lies below
// it.
func beneath(root, p string) bool {
	rel, err := filepath.Rel(root, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../") && !filepath.IsAbs(rel)
}

// printable returns a name as it can be shown in a one-line message: bytes
// below 0x20, DEL and invalid UTF-8 are escaped as \xNN, so that a name an
// image records cannot forge lines or terminal control sequences.
func printable(name string) string {
	clean := true
	for i := 0; i < len(name); i++ {
		if name[i] < 0x20 || name[i] == 0x7f {
			clean = false
			break
		}
	}
	if clean && utf8.ValidString(name) {
		return name
	}
	var b strings.Builder
	for i := 0; i < len(name); {
		r, size := utf8.DecodeRuneInString(name[i:])
		if r < 0x20 || r == 0x7f || (r == utf8.RuneError && size == 1) {
			fmt.Fprintf(&b, "\\x%02x", name[i])
		} else {
			b.WriteString(name[i : i+size])
		}
		i += size
	}
	return b.String()
}
