package cli

import (
	"fmt"

	"github.com/qimg/qimg/block"
)

// cmdResize is `qemu-img resize`: change an image's virtual size to SIZE,
// or by +SIZE or -SIZE. Shrinking needs --shrink; preallocation applies to
// growing only.
func cmdResize(a *App, args []string) int {
	// The size is taken off the end first, so that a negative size is
	// not read as an option.
	if len(args) < 3 {
		return a.usageError("Not enough arguments")
	}
	sizeArg := args[len(args)-1]
	g := newGetopt(args[:len(args)-1], ":f:hq", []longOpt{
		{"help", noArgument, 'h'},
		{"object", requiredArgument, optObject},
		{"image-opts", noArgument, optImageOpts},
		{"preallocation", requiredArgument, optPreallocation},
		{"shrink", noArgument, optShrink},
	})
	var format string
	prealloc := block.PreallocOff
	quiet, imageOpts, shrink := false, false, false
	for {
		c := g.next()
		if c == -1 {
			break
		}
		if code, stop := a.commonOption(g, c); stop {
			return code
		}
		switch c {
		case 'f':
			format = g.optarg
		case 'q':
			quiet = true
		case optImageOpts:
			imageOpts = true
		case optPreallocation:
			if _, err := block.ParsePrealloc(g.optarg); err != nil || g.optarg == "" {
				a.errorf("Invalid preallocation mode '%s'", g.optarg)
				return 1
			}
			prealloc = g.optarg
		case optShrink:
			shrink = true
		}
	}
	ops := g.operands()
	if len(ops) != 1 {
		return a.usageError("Expecting image file name and size")
	}
	relative := int64(0)
	switch {
	case sizeArg != "" && sizeArg[0] == '+':
		relative, sizeArg = 1, sizeArg[1:]
	case sizeArg != "" && sizeArg[0] == '-':
		relative, sizeArg = -1, sizeArg[1:]
	}
	opts := block.NewOptions([]block.OptionSpec{{Name: "size", Type: block.OptSize, Help: "Virtual disk size"}})
	if err := opts.Set("size", sizeArg); err != nil {
		a.reportErr("", err)
		return 1
	}
	n := int64(opts.Uint("size", 0))
	node, ok := a.openImage(ops[0], openSpec{imageOpts: imageOpts, format: format, write: true, resize: true})
	if !ok {
		return 1
	}
	ok = a.resize(node, n, relative, prealloc, shrink, quiet)
	if err := node.Close(); err != nil && ok {
		a.reportErr("", err)
		ok = false
	}
	if !ok {
		return 1
	}
	return 0
}

// resize checks the new size as qemu-img does and resizes the image.
func (a *App) resize(node *block.Node, n, relative int64, prealloc string, shrink, quiet bool) bool {
	current := node.Size()
	total := n
	if relative != 0 {
		total = current + n*relative
	}
	switch {
	case total <= 0:
		a.errorf("New image size must be positive")
		return false
	case total <= current && prealloc != block.PreallocOff:
		a.errorf("Preallocation can only be used for growing images")
		return false
	case total < current && !shrink:
		a.errorf("Use the --shrink option to perform a shrink operation.")
		a.errorf("warning: Shrinking an image will delete all data beyond the shrunken image's end. " +
			"Before performing such an operation, make sure there is no important data there.")
		return false
	}
	r, ok := node.Image.(block.Resizer)
	if !ok {
		a.errorf("Image format driver does not support resize")
		return false
	}
	if err := r.Resize(total, prealloc); err != nil {
		a.reportErr("", err)
		return false
	}
	if !quiet {
		fmt.Fprintf(a.Stdout, "Image resized.\n")
	}
	return true
}
