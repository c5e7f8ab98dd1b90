package cli

import (
	"errors"
	"fmt"

	"github.com/qimg/qimg/block"
)

// openSpec says how a command opens an image.
type openSpec struct {
	// imageOpts means the filename is an --image-opts option string.
	imageOpts  bool
	format     string
	forceShare bool
	cache      block.CacheMode
	write      bool
	noBacking  bool
	// noIO opens for metadata only (info).
	noIO bool
	// noShare shares only reads with other users (convert's sources).
	noShare bool
	// writeBacking opens the chain read-write (commit); with
	// writeBackingLevel, only the backing image that many levels below.
	writeBacking      bool
	writeBackingLevel int
	// forCheck opens the image for check or repair (check).
	forCheck bool
	// resize takes the permission to change the size (resize).
	resize bool
}

// openImage opens an image as qemu-img's img_open does, printing
// "Could not open 'name': reason" on failure.
func (a *App) openImage(filename string, s openSpec) (*block.Node, bool) {
	name := filename
	o := block.OpenOptions{
		Format:            s.format,
		Write:             s.write,
		WriteBacking:      s.writeBacking,
		WriteBackingLevel: s.writeBackingLevel,
		Cache:             s.cache,
		ForceShare:        s.forceShare,
		NoBacking:         s.noBacking,
		NoIO:              s.noIO,
		NoShare:           s.noShare,
		ForCheck:          s.forCheck,
		Resize:            s.resize,
	}
	var iopts *imageOpts
	if s.imageOpts {
		if s.format != "" {
			a.errorf("--image-opts and --format are mutually exclusive")
			return nil, false
		}
		reg := a.env().Registry
		var err error
		iopts, err = parseImageOpts(filename, &o, s.forceShare, func(d string) bool { _, ok := reg.Lookup(d); return ok })
		if iopts != nil {
			for _, w := range iopts.warnings {
				a.errorf("%s", w[0])
				fmt.Fprintln(a.Stderr, w[1])
			}
		}
		if err != nil {
			var pe *parseError
			if errors.As(err, &pe) {
				a.reportErr("", err)
			} else {
				a.reportErr(fmt.Sprintf("Could not open '%s': ", filename), err)
			}
			return nil, false
		}
		name = iopts.filename
	}
	n, err := a.env().Open(name, o)
	if err != nil {
		a.reportErr(fmt.Sprintf("Could not open '%s': ", filename), err)
		return nil, false
	}
	if iopts != nil {
		if j := jsonName(n.Driver.Name(), name, o.DriverOptions); j != "" {
			n.Filename = j
		}
	}
	return n, true
}

// validID reports whether s is a QEMU identifier: a letter, then letters,
// digits, '-', '.', '_'.
func validID(s string) bool {
	if s == "" || !isLetter(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !isLetter(c) && !(c >= '0' && c <= '9') && c != '-' && c != '.' && c != '_' {
			return false
		}
	}
	return true
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
