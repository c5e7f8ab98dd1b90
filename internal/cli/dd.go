package cli

import (
	"fmt"
	"math"
	"strings"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/storage"
)

// ddChunk is the most dd copies in one request. qemu-img dd copies one
// block of bs bytes at a time, bs up to 2 GiB; copying the same bytes in
// the same order in requests of bounded size gives the same image with
// bounded memory.
const ddChunk = 4 << 20

// ddArgs are dd's operands.
type ddArgs struct {
	bs            int64
	count, skip   int64
	input, output string
	// has records which operands were given, by name.
	has map[string]bool
}

// parseDDOperand applies one "name=value" operand, printing qemu-img's
// error when it is not one.
func (a *App) parseDDOperand(d *ddArgs, operand string) bool {
	name, value, ok := strings.Cut(operand, "=")
	if !ok {
		a.errorf("unrecognized operand %s", operand)
		return false
	}
	switch name {
	case "bs":
		v, ok := a.cvtnum("bs", value, 1, math.MaxInt32)
		if !ok {
			return false
		}
		d.bs = v
	case "count":
		v, ok := a.cvtnum("count", value, 0, maxInt64)
		if !ok {
			return false
		}
		d.count = v
	case "skip":
		v, ok := a.cvtnum("skip", value, 0, maxInt64)
		if !ok {
			return false
		}
		d.skip = v
	case "if":
		d.input = value
	case "of":
		d.output = value
	default:
		a.errorf("unrecognized operand %s", name)
		return false
	}
	d.has[name] = true
	return true
}

func cmdDD(a *App, args []string) int {
	g := newGetopt(args, ":hf:O:U", []longOpt{
		{"help", noArgument, 'h'},
		{"object", requiredArgument, optObject},
		{"image-opts", noArgument, optImageOpts},
		{"force-share", noArgument, 'U'},
	})
	format, outFmt := "", "raw"
	imageOpts, forceShare := false, false
	for {
		c := g.next()
		if c == -1 {
			break
		}
		if code, stop := a.commonOption(g, c); stop {
			return code
		}
		switch c {
		case 'O':
			outFmt = g.optarg
		case 'f':
			format = g.optarg
		case 'U':
			forceShare = true
		case optImageOpts:
			imageOpts = true
		}
	}
	d := &ddArgs{bs: 512, has: map[string]bool{}}
	for _, op := range g.operands() {
		if !a.parseDDOperand(d, op) {
			return 1
		}
	}
	if !d.has["if"] || !d.has["of"] {
		a.errorf("Must specify both input and output files")
		return 1
	}
	in, ok := a.openImage(d.input, openSpec{imageOpts: imageOpts, format: format, forceShare: forceShare})
	if !ok {
		return 1
	}
	defer in.Close()
	if _, ok := a.env().Registry.Lookup(outFmt); !ok {
		a.errorf("Unknown file format")
		return 1
	}
	if _, _, err := a.env().CreateSpecs(outFmt); err != nil {
		a.errorf("Format driver '%s' does not support image creation", outFmt)
		return 1
	}
	size := in.Size()
	// count counts blocks from the start of the input, not from skip, as
	// in qemu-img.
	if d.has["count"] && d.count <= maxInt64/d.bs && d.count*d.bs < size {
		size = d.count * d.bs
	}
	skipPast := d.has["skip"] && (d.skip > maxInt64/d.bs || size < d.skip*d.bs)
	outSize := int64(0)
	if !skipPast {
		outSize = size - d.skip*d.bs
	}
	err := a.env().Create(block.CreateParams{Filename: d.output, Format: outFmt, Size: outSize})
	if err != nil {
		a.reportErr(fmt.Sprintf("%s: error while creating output image: ", d.output), err)
		return 1
	}
	out, ok := a.openImage(d.output, openSpec{format: outFmt, write: true})
	if !ok {
		return 1
	}
	defer out.Close()
	inPos := d.skip * d.bs
	if skipPast {
		// An empty output, as dd(1) leaves, with a warning.
		a.errorf("%s: cannot skip to specified offset", d.input)
		inPos = size
	}
	buf := storage.AlignedBuffer(int(min(ddChunk, max(size-inPos, 0))))
	for outPos := int64(0); inPos < size; {
		n := min(int64(len(buf)), size-inPos)
		if _, err := in.ReadAt(buf[:n], inPos); err != nil {
			a.errorf("error while reading from input image file: %s", storage.Strerror(err))
			return 1
		}
		if _, err := out.WriteAt(buf[:n], outPos); err != nil {
			a.errorf("error while writing to output image file: %s", storage.Strerror(err))
			return 1
		}
		inPos += n
		outPos += n
	}
	if err := out.Flush(); err != nil {
		a.errorf("error while writing to output image file: %s", storage.Strerror(err))
		return 1
	}
	return 0
}
