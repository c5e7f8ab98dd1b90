package cli

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/internal/units"
	"github.com/qimg/qimg/storage"
)

// This file reads --image-opts (and --target-image-opts) strings the way
// qemu-img does: the string is parsed as a QemuOpts list whose first item
// may omit "file=", turned into a flat option dictionary, and opened as
// blk_new_open opens one. qimg's block layer takes a filename, a format and
// options, so the dictionary is checked here and mapped onto those.

// imageOpts is an --image-opts string resolved into what block.Env.Open
// takes.
type imageOpts struct {
	// filename is the file to open.
	filename string
	// display is the name QEMU gives the image (bdrv_refresh_filename):
	// the filename, or a json: description when options that change what
	// the image shows (raw's offset and size) are set.
	display string
	// warnings are printed before the open, as QEMU prints them while
	// parsing: a "warning: …" line and a plain line after it.
	warnings [][2]string
}

// parseError is an --image-opts error QEMU reports while parsing the option
// string, before opening: it is printed without "Could not open '…': ".
type parseError struct {
	msg, hint string
}

func (e *parseError) Error() string     { return e.msg }
func (e *parseError) ErrorHint() string { return e.hint }

// keyValue is one item of a QemuOpts string, with whether it was written
// as a flag (no "=").
type keyValue struct {
	key, value string
	flag       bool
	prefix     string // "no" for a flag written "noname"
}

// splitQemuOpts splits an option string as qemu_opts_parse with an implied
// first option name does: the first item without "=" is firstName's value
// (its commas may be doubled), later items without "=" are flags.
func splitQemuOpts(s, firstName string) []keyValue {
	var out []keyValue
	for p := s; p != ""; {
		n := strings.IndexAny(p, "=,")
		var kv keyValue
		switch {
		case (n < 0 || p[n] != '=') && firstName != "":
			kv.key = firstName
			kv.value, p = block.SplitValue(p)
		case n < 0 || p[n] != '=':
			if n < 0 {
				n = len(p)
			}
			kv.key, kv.flag, kv.value = p[:n], true, "on"
			if strings.HasPrefix(kv.key, "no") {
				kv.key, kv.value, kv.prefix = kv.key[2:], "off", "no"
			}
			p = p[n:]
		default:
			kv.key = p[:n]
			kv.value, p = block.SplitValue(p[n+1:])
		}
		firstName = ""
		out = append(out, kv)
		p = strings.TrimPrefix(p, ",")
	}
	return out
}

// qemuProtocols are QEMU protocol drivers qimg does not implement.
var qemuProtocols = map[string]bool{
	"nbd": true, "http": true, "https": true, "ftp": true, "ftps": true, "ssh": true, "iscsi": true,
	"gluster": true, "nfs": true, "rbd": true, "nvme": true, "null-co": true, "null-aio": true,
	"host_cdrom": true, "blkdebug": true, "blkverify": true, "vvfat": true, "throttle": true,
	"copy-on-read": true, "compress": true, "quorum": true, "replication": true, "snapshot-access": true,
}

// strongOptions are, per format, the runtime options QEMU keeps in an
// image's name (its strong_runtime_opts): with any of them set the image is
// named by a json: description.
var strongOptions = map[string][]string{"raw": {"offset", "size"}}

// parseImageOpts resolves an --image-opts string into o and returns the
// file to open. forceShare is -U, which conflicts with force-share=off;
// known reports whether a format driver exists. Warnings are returned even
// with an error.
func parseImageOpts(spec string, o *block.OpenOptions, forceShare bool, known func(string) bool) (*imageOpts, error) {
	items := splitQemuOpts(spec, "file")
	res := &imageOpts{}
	opts := map[string]string{}
	var order []string
	for _, kv := range items {
		if kv.flag && !block.IsHelpOption(kv.key) {
			on := "on"
			if kv.prefix != "" {
				on = "off"
			}
			res.warnings = append(res.warnings, [2]string{
				fmt.Sprintf("warning: short-form boolean option '%s%s' deprecated", kv.prefix, kv.key),
				fmt.Sprintf("Please use %s=%s instead", kv.key, on)})
		}
		if kv.key == "id" && !validID(kv.value) {
			// A valid id stays among the options, which no driver
			// takes.
			return nil, &parseError{"Parameter 'id' expects an identifier",
				"Identifiers consist of letters, digits, '-', '.', '_', starting with a letter.\n"}
		}
		if _, seen := opts[kv.key]; !seen {
			order = append(order, kv.key)
		}
		opts[kv.key] = kv.value
	}
	if forceShare {
		if v, ok := opts["force-share"]; ok && v != "on" {
			return nil, &parseError{msg: "--force-share/-U conflicts with image options"}
		}
		opts["force-share"] = "on"
	}
	return res, res.resolve(opts, order, o, known)
}

// resolve maps the option dictionary onto o and the filename, with QEMU's
// errors (the caller prefixes them with "Could not open '…': ").
func (res *imageOpts) resolve(opts map[string]string, order []string, o *block.OpenOptions, known func(string) bool) error {
	fileOpts := map[string]string{}
	var fileOrder []string
	for _, k := range order {
		if rest, ok := strings.CutPrefix(k, "file."); ok {
			fileOpts[rest] = opts[k]
			fileOrder = append(fileOrder, rest)
		}
	}
	if ref, ok := opts["file"]; ok {
		if len(fileOpts) > 0 {
			return errors.New("Cannot reference an existing block device with additional options or a new filename")
		}
		return fmt.Errorf("Cannot find device='%s' nor node-name='%s'", ref, ref)
	}
	driver, hasDriver := opts["driver"]
	if !hasDriver && len(fileOpts) == 0 {
		return errors.New("Must specify either driver or file")
	}
	// driver=file opens the file itself as the image (the "file"
	// format): the options beside it are the protocol's.
	asFile := hasDriver && driver == "file"
	if asFile {
		if _, ok := opts["filename"]; !ok {
			return errors.New("The 'file' block driver requires a file name")
		}
		fileOpts, fileOrder = map[string]string{}, nil
		for _, k := range order {
			if !isNodeOption(k) {
				fileOpts[k] = opts[k]
				fileOrder = append(fileOrder, k)
			}
		}
	}
	if hasDriver {
		switch {
		case asFile:
		case driver == "file" || driver == "host_device" || qemuProtocols[driver]:
			return fmt.Errorf("Opening the protocol driver '%s' as an image is not supported by qimg", driver)
		case !known(driver):
			return fmt.Errorf("Unknown driver '%s'", driver)
		}
		o.Format = driver
	}
	if err := applyNodeOptions(opts, o); err != nil {
		return err
	}
	if len(fileOpts) == 0 {
		return errors.New("A block device must be specified for \"file\"")
	}
	protocol := "file"
	if d, ok := fileOpts["driver"]; ok {
		switch {
		case d == "file" || d == "host_device":
			protocol = d
		case qemuProtocols[d]:
			return fmt.Errorf("The protocol driver '%s' is not supported by qimg", d)
		default:
			return fmt.Errorf("Unknown driver '%s'", d)
		}
	}
	if err := applyNodeOptions(fileOpts, o); err != nil {
		return err
	}
	for _, k := range fileOrder {
		v := fileOpts[k]
		switch k {
		case "driver", "filename", "node-name", "cache.direct", "cache.no-flush", "read-only", "auto-read-only",
			"force-share", "discard", "detect-zeroes":
		case "locking":
			m, err := block.ParseLockMode(v)
			if err != nil {
				return err
			}
			o.Locking = m
		case "aio":
			switch v {
			case "threads", "io_uring":
			case "native":
				if !o.Cache.Direct() {
					return errors.New("aio=native was specified, but it requires cache.direct=on, which was not specified.")
				}
			default:
				return fmt.Errorf("invalid parameter value: %s", v)
			}
		case "aio-max-batch":
			if _, err := units.ParseUint(v); err != nil {
				return fmt.Errorf("Parameter '%s' expects a number", k)
			}
		case "drop-cache", "x-check-cache-dropped":
			if _, ok := block.ParseBool(v); !ok {
				return fmt.Errorf("Parameter '%s' expects 'on' or 'off'", k)
			}
		case "pr-manager":
			return fmt.Errorf("No persistent reservation manager with id '%s'", v)
		default:
			return fmt.Errorf("Block protocol '%s' doesn't support the option '%s'", protocol, k)
		}
	}
	res.filename = fileOpts["filename"]
	if _, ok := fileOpts["filename"]; !ok || res.filename == "" {
		return storage.ErrNoFilename
	}
	if protocol == "host_device" && !isDevice(res.filename) {
		return fmt.Errorf("'host_device' driver requires '%s' to be either a character or block device", res.filename)
	}
	if asFile {
		res.display = res.filename
		return nil
	}
	drvOpts := map[string]string{}
	for _, k := range order {
		if k == "driver" || k == "file" || strings.HasPrefix(k, "file.") || isNodeOption(k) {
			continue
		}
		drvOpts[k] = opts[k]
	}
	if _, ok := opts["filename"]; ok {
		// A format driver takes its file from "file"; a filename at the
		// top is left over, and QEMU misses the file first.
		return errors.New("A block device must be specified for \"file\"")
	}
	if len(drvOpts) > 0 {
		o.DriverOptions = drvOpts
	}
	res.display = res.filename
	return nil
}

// nodeOptions are the options every block node takes (QEMU's
// bdrv_runtime_opts and the cache options).
var nodeOptions = map[string]bool{
	"node-name": true, "cache.direct": true, "cache.no-flush": true, "read-only": true, "auto-read-only": true,
	"force-share": true, "discard": true, "detect-zeroes": true,
}

func isNodeOption(k string) bool { return nodeOptions[k] }

// applyNodeOptions checks the generic node options of the format node or of
// its file and applies those qimg acts on (one cache mode serves both).
func applyNodeOptions(opts map[string]string, o *block.OpenOptions) error {
	boolOpt := func(name string) (bool, bool, error) {
		v, ok := opts[name]
		if !ok {
			return false, false, nil
		}
		b, valid := block.ParseBool(v)
		if !valid {
			return false, false, fmt.Errorf("Parameter '%s' expects 'on' or 'off'", name)
		}
		return b, true, nil
	}
	if v, ok := opts["node-name"]; ok && !validID(v) {
		return fmt.Errorf("Invalid node-name: '%s'", v)
	}
	for _, name := range []string{"read-only", "auto-read-only", "force-share"} {
		b, set, err := boolOpt(name)
		if err != nil {
			return err
		}
		switch {
		case name == "read-only" && set && b:
			o.Write = false
		case name == "force-share" && set:
			o.ForceShare = o.ForceShare || b
		}
	}
	direct, setDirect, err := boolOpt("cache.direct")
	if err != nil {
		return err
	}
	noFlush, setNoFlush, err := boolOpt("cache.no-flush")
	if err != nil {
		return err
	}
	if setDirect || setNoFlush {
		o.Cache = cacheFromFlags(o.Cache, direct, setDirect, noFlush, setNoFlush)
	}
	discard := false
	if v, ok := opts["discard"]; ok {
		switch v {
		case "off", "ignore":
		case "on", "unmap":
			discard = true
		default:
			return errors.New("Invalid discard option")
		}
	}
	if v, ok := opts["detect-zeroes"]; ok {
		switch v {
		case "off", "on":
		case "unmap":
			if !discard {
				return errors.New("setting detect-zeroes to unmap is not allowed without setting discard operation to unmap")
			}
		default:
			return fmt.Errorf("invalid parameter value: %s", v)
		}
	}
	return nil
}

// isDevice reports whether name is a block or character device.
func isDevice(name string) bool {
	fi, err := os.Stat(name)
	return err == nil && fi.Mode()&os.ModeDevice != 0
}

// cacheFromFlags changes a cache mode's O_DIRECT and no-flush halves as
// cache.direct and cache.no-flush set them, keeping write-through.
func cacheFromFlags(c block.CacheMode, direct, setDirect, noFlush, setNoFlush bool) block.CacheMode {
	if !setDirect {
		direct = c.Direct()
	}
	if !setNoFlush {
		noFlush = c.IgnoreFlush()
	}
	switch {
	case noFlush:
		return block.CacheUnsafe
	case direct && c.WriteThrough():
		return block.CacheDirectSync
	case direct:
		return block.CacheNone
	case c.WriteThrough():
		return block.CacheWritethrough
	}
	return block.CacheWriteback
}

// jsonName returns the json: name QEMU gives an image opened with strong
// runtime options ("json:{"offset": "1M", "driver": "raw", "file": {…}}"),
// or "" when it has none.
func jsonName(format, filename string, driverOpts map[string]string) string {
	d := block.NewDict()
	strong := false
	d.Set("driver", format)
	for _, k := range strongOptions[format] {
		if v, ok := driverOpts[k]; ok {
			d.Set(k, v)
			strong = true
		}
	}
	if !strong {
		return ""
	}
	d.Set("file", block.NewDict().Set("driver", "file").Set("filename", filename))
	return "json:" + toCompactJSON(d)
}
