package cli

import (
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strings"

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
	// writeBacking opens the chain read-write (commit).
	writeBacking bool
}

// openImage opens an image as qemu-img's img_open does, printing
// "Could not open 'name': reason" on failure.
func (a *App) openImage(filename string, s openSpec) (*block.Node, bool) {
	name := filename
	o := block.OpenOptions{
		Format:       s.format,
		Write:        s.write,
		WriteBacking: s.writeBacking,
		Cache:        s.cache,
		ForceShare:   s.forceShare,
		NoBacking:    s.noBacking,
		NoIO:         s.noIO,
		NoShare:      s.noShare,
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

// splitImplied returns the first item of an option list, with ",," escapes
// resolved, and the rest.
func splitImplied(s string) (string, string) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			if i+1 < len(s) && s[i+1] == ',' {
				b.WriteByte(',')
				i++
				continue
			}
			return b.String(), s[i+1:]
		}
		b.WriteByte(s[i])
	}
	return b.String(), ""
}

// addObject handles --object. Secrets ("secret,id=ID,data=…|file=…",
// format=raw|base64) are kept for formats that need keys.
func (a *App) addObject(spec string) error {
	typ, rest := splitImplied(spec)
	if block.IsHelpOption(typ) {
		a.printf("List of user creatable objects:\n  secret\n")
		return errExitOK
	}
	props := map[string]string{}
	items, _ := block.SplitOptionList(rest)
	for _, kv := range items {
		props[kv.Key] = kv.Value
	}
	if typ == "qom-type" || strings.HasPrefix(typ, "qom-type=") {
		typ = strings.TrimPrefix(typ, "qom-type=")
	}
	if typ != "secret" {
		return fmt.Errorf("invalid object type: %s", typ)
	}
	id, ok := props["id"]
	if !ok {
		return errors.New("Parameter 'id' is missing")
	}
	if !validID(id) {
		return errors.New("Parameter 'id' expects an identifier")
	}
	var data []byte
	switch {
	case props["data"] != "" && props["file"] != "":
		return errors.New("'data' and 'file' are mutually exclusive")
	case props["file"] != "":
		b, err := os.ReadFile(props["file"])
		if err != nil {
			return fmt.Errorf("Unable to read %s: %v", props["file"], err)
		}
		data = b
	case props["data"] != "":
		data = []byte(props["data"])
	default:
		return errors.New("Either 'data' or 'file' must be provided")
	}
	if props["format"] == "base64" {
		dec, err := base64.StdEncoding.DecodeString(string(data))
		if err != nil {
			return errors.New("Unable to decode base64 data")
		}
		data = dec
	} else if f := props["format"]; f != "" && f != "raw" {
		return fmt.Errorf("invalid parameter value: %s", f)
	}
	env := a.env()
	if env.Secrets == nil {
		env.Secrets = map[string][]byte{}
	}
	if _, dup := env.Secrets[id]; dup {
		return fmt.Errorf("attempt to add duplicate property '%s' to object (type 'container')", id)
	}
	env.Secrets[id] = data
	return nil
}

// errExitOK signals that an option asked for output and the command should
// stop with exit code 0.
var errExitOK = errors.New("done")

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

// objectOption handles an --object argument inside a command's option loop:
// it returns an exit code and true when the command must stop.
func (a *App) objectOption(spec string) (int, bool) {
	err := a.addObject(spec)
	if err == nil {
		return 0, false
	}
	if errors.Is(err, errExitOK) {
		return 0, true
	}
	a.reportErr("", err)
	return 1, true
}
