package cli

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/internal/units"
)

// Long-option values shared by the commands (as qemu-img numbers them).
const (
	optOutput = 256 + iota
	optBackingChain
	optObject
	optImageOpts
	optPattern
	optFlushInterval
	optNoDrain
	optTargetImageOpts
	optSize
	optPreallocation
	optShrink
	optSalvage
	optTargetIsZero
	optAdd
	optRemove
	optClear
	optEnable
	optDisable
	optMerge
	optBitmaps
	optForce
	optSkipBroken
	optStartOffset
	optMaxLength
)

// isValidOptionList reports whether an -o argument can be joined to others
// with ',' without its commas changing meaning.
func isValidOptionList(s string) bool {
	if s == "" || s[0] == ',' {
		return false
	}
	trailing := len(s) - len(strings.TrimRight(s, ","))
	return trailing%2 == 0
}

// accumulateOptions appends an -o argument to the options gathered so far.
func (a *App) accumulateOptions(opts *string, arg string) bool {
	if !isValidOptionList(arg) {
		a.errorf("Invalid option list: %s", arg)
		return false
	}
	if *opts == "" {
		*opts = arg
	} else {
		*opts += "," + arg
	}
	return true
}

// hasHelpOption reports whether an option list asks for help.
func hasHelpOption(opts string) bool {
	_, help := block.SplitOptionList(opts)
	return help
}

// printOptionHelp prints a format's create options, as `-o help` does; with
// a filename the protocol's options are included.
func (a *App) printOptionHelp(filename, format string, haveFilename bool) int {
	d, ok := a.env().Registry.Lookup(format)
	if !ok {
		a.errorf("Unknown file format '%s'", format)
		return 1
	}
	c, ok := d.(block.Creator)
	if !ok {
		a.errorf("Format driver '%s' does not support image creation", format)
		return 1
	}
	specs := c.CreateSpecs()
	if haveFilename {
		specs = block.MergeSpecs(specs, block.FileProtocolSpecs())
		a.printf("Supported options:\n")
	} else {
		a.printf("Supported %s options:\n", format)
	}
	io.WriteString(a.Stdout, block.HelpText(specs))
	if !haveFilename {
		a.printf("\nThe protocol level may support further options.\nSpecify the target filename to include those options.\n")
	}
	return 0
}

// cvtnum parses a size argument as qemu-img's cvtnum_full does, printing
// its errors. name is what the size is, for the message ("image size").
func (a *App) cvtnum(name, value string, min, max int64) (int64, bool) {
	if units.HexSuffix(value) {
		a.errorf("warning: Using a multiplier suffix on hex numbers is deprecated: %s", value)
	}
	v, err := units.ParseSize(value)
	if err != nil && !errors.Is(err, units.ErrRange) {
		a.errorf("Invalid %s specified. You may use k, M, G, T, P or E suffixes for", name)
		a.errorf("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.")
		return 0, false
	}
	if err != nil || v > uint64(max) || int64(v) < min {
		a.errorf("Invalid %s specified. Must be between %d and %d.", name, min, max)
		return 0, false
	}
	return int64(v), true
}

const maxInt64 = 1<<63 - 1

func cmdCreate(a *App, args []string) int {
	g := newGetopt(args, ":F:b:f:ho:qu", []longOpt{
		{"help", noArgument, 'h'},
		{"object", requiredArgument, optObject},
	})
	format := "raw"
	var baseFmt, baseFile, options string
	quiet, noBacking := false, false
	for {
		c := g.next()
		if c == -1 {
			break
		}
		if code, stop := a.commonOption(g, c); stop {
			return code
		}
		switch c {
		case 'F':
			baseFmt = g.optarg
		case 'b':
			baseFile = g.optarg
		case 'f':
			format = g.optarg
		case 'o':
			if !a.accumulateOptions(&options, g.optarg) {
				return 1
			}
		case 'q':
			quiet = true
		case 'u':
			noBacking = true
		}
	}
	ops := g.operands()
	if options != "" && hasHelpOption(options) {
		filename := ""
		if len(ops) > 0 {
			filename = ops[0]
		}
		return a.printOptionHelp(filename, format, len(ops) > 0)
	}
	if len(ops) < 1 {
		return a.usageError("Expecting image file name")
	}
	filename := ops[0]
	ops = ops[1:]
	size := int64(-1)
	if len(ops) > 0 {
		v, ok := a.cvtnum("image size", ops[0], 0, maxInt64)
		if !ok {
			return 1
		}
		size = v
		ops = ops[1:]
	}
	if len(ops) > 0 {
		return a.usageError("Unexpected argument: %s", ops[0])
	}
	err := a.env().Create(block.CreateParams{
		Filename:      filename,
		Format:        format,
		Size:          size,
		Options:       options,
		BackingFile:   baseFile,
		BackingFormat: baseFmt,
		NoOpenBacking: noBacking,
		Announce: func(opts *block.Options) {
			if !quiet {
				a.printf("Formatting '%s', fmt=%s %s\n", filename, format, opts.Print())
			}
		},
	})
	if err != nil {
		a.reportErr(fmt.Sprintf("%s: ", filename), err)
		return 1
	}
	return 0
}
