package cli

import (
	"fmt"
	"strings"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/storage"
)

// mapEntry is one run of `qemu-img map`: QEMU's MapEntry.
type mapEntry struct {
	start, length int64
	data, zero    bool
	present       bool
	// depth is how many backing images down the run's status was found.
	depth int
	// offset is where the run's bytes lie in filename, when hasOffset.
	offset    int64
	hasOffset bool
	filename  string
	// hasFilename is set with hasOffset: the file the offset refers to.
	hasFilename bool
}

// mergeable reports whether next continues e (QEMU's entry_mergeable).
func (e *mapEntry) mergeable(next *mapEntry) bool {
	switch {
	case e.length == 0:
		return false
	case e.zero != next.zero || e.data != next.data || e.depth != next.depth || e.present != next.present ||
		e.hasFilename != next.hasFilename || e.hasOffset != next.hasOffset:
		return false
	case e.hasFilename && e.filename != next.filename:
		return false
	case e.hasOffset && e.offset+e.length != next.offset:
		return false
	}
	return true
}

// mapStatus describes the run of the chain below n that starts at off, at
// most length bytes long, as qemu-img map's get_block_status does: each
// image's own status in turn, down the chain until one says the run holds
// data or zeroes.
func mapStatus(n *block.Node, off, length int64) (mapEntry, error) {
	depth := 0
	for cur := n; ; depth++ {
		size := cur.Size()
		if off >= size {
			// A backing image shorter than the run: zeroes, as the image
			// above it would have said.
			return mapEntry{start: off, length: length, zero: true, depth: max(depth-1, 0)}, nil
		}
		e, err := cur.BlockStatus(off, min(length, size-off))
		if err != nil {
			return mapEntry{}, err
		}
		if e.Length <= 0 || e.Length > length {
			return mapEntry{}, fmt.Errorf("block status of %d bytes at offset %d returned a run of %d bytes: %w",
				length, off, e.Length, block.ErrCorrupt)
		}
		length = e.Length
		if e.Status&(block.Data|block.Zero) != 0 || cur.Backing == nil {
			m := mapEntry{
				start: off, length: length, depth: depth,
				data:    e.Has(block.Data),
				zero:    e.Has(block.Zero),
				present: e.Has(block.Allocated),
			}
			if e.Has(block.OffsetValid) {
				m.offset, m.hasOffset = e.HostOffset, true
				if f := hostFile(cur); f != nil {
					m.filename, m.hasFilename = f.Name(), true
				}
			}
			return m, nil
		}
		cur = cur.Backing
	}
}

// hostFile is the file an image's host offsets refer to: its external data
// file, or its container.
func hostFile(n *block.Node) storage.File {
	if d, ok := n.Image.(block.DataFiler); ok {
		if f := d.DataFile(); f != nil {
			return f
		}
	}
	return n.File
}

// mapHex prints a number as C's "%#-16" PRIx64 does: "0x…" except for zero.
func mapHex(v int64) string {
	s := "0"
	if v != 0 {
		s = fmt.Sprintf("%#x", uint64(v))
	}
	return fmt.Sprintf("%-16s", s)
}

// dump prints one entry (QEMU's dump_map_entry); next, when there is one,
// is the entry after it, which human output may change to coalesce more.
// It reports false after printing an error.
func (a *App) dumpMapEntry(b *strings.Builder, ofmt outputFormat, e, next *mapEntry) bool {
	switch ofmt {
	case outputHuman:
		if e.data && !e.hasOffset {
			a.printf("%s", b.String())
			b.Reset()
			a.errorf("File contains external, encrypted or compressed clusters.")
			return false
		}
		if e.data && !e.zero {
			offset, file := int64(0), ""
			if e.hasOffset {
				offset = e.offset
			}
			if e.hasFilename {
				file = e.filename
			}
			fmt.Fprintf(b, "%s%s%s%s\n", mapHex(e.start), mapHex(e.length), mapHex(offset), file)
		}
		// Human output does not tell zero runs apart from unallocated
		// ones.
		if next != nil && (!next.data || next.zero) {
			next.data, next.zero = false, true
		}
	case outputJSON:
		fmt.Fprintf(b, `{ "start": %d, "length": %d, "depth": %d, "present": %t, "zero": %t, "data": %t`,
			e.start, e.length, e.depth, e.present, e.zero, e.data)
		if e.hasOffset {
			fmt.Fprintf(b, `, "offset": %d`, e.offset)
		}
		b.WriteByte('}')
		if next != nil {
			b.WriteString(",\n")
		}
	}
	return true
}

// mapFlushSize is how much output map gathers before writing it.
const mapFlushSize = 64 << 10

func cmdMap(a *App, args []string) int {
	g := newGetopt(args, ":f:s:l:hU", []longOpt{
		{"help", noArgument, 'h'},
		{"format", requiredArgument, 'f'},
		{"output", requiredArgument, optOutput},
		{"object", requiredArgument, optObject},
		{"image-opts", noArgument, optImageOpts},
		{"force-share", noArgument, 'U'},
		{"start-offset", requiredArgument, 's'},
		{"max-length", requiredArgument, 'l'},
	})
	var format, output string
	hasOutput, imageOpts, forceShare := false, false, false
	start, maxLength := int64(0), int64(-1)
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
		case 'U':
			forceShare = true
		case optOutput:
			output, hasOutput = g.optarg, true
		case 's':
			v, ok := a.cvtnum("start offset", g.optarg, 0, maxInt64)
			if !ok {
				return 1
			}
			start = v
		case 'l':
			v, ok := a.cvtnum("max length", g.optarg, 0, maxInt64)
			if !ok {
				return 1
			}
			maxLength = v
		case optImageOpts:
			imageOpts = true
		}
	}
	ops := g.operands()
	if len(ops) != 1 {
		return a.usageError("Expecting one image file name")
	}
	filename := ops[0]
	ofmt, ok := a.parseOutput(output, hasOutput)
	if !ok {
		return 1
	}
	n, ok := a.openImage(filename, openSpec{imageOpts: imageOpts, format: format, forceShare: forceShare})
	if !ok {
		return 1
	}
	defer n.Close()
	var b strings.Builder
	if ofmt == outputHuman {
		fmt.Fprintf(&b, "%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File")
	} else {
		b.WriteByte('[')
	}
	length := n.Size()
	if maxLength != -1 {
		// The sum wraps as QEMU's does.
		length = min(start+maxLength, length)
	}
	curr := mapEntry{start: start}
	for curr.start+curr.length < length {
		off := curr.start + curr.length
		next, err := mapStatus(n, off, length-off)
		if err != nil {
			a.printf("%s", b.String())
			a.errorf("Could not read file metadata: %s", storage.Strerror(err))
			return 1
		}
		if curr.mergeable(&next) {
			curr.length += next.length
			continue
		}
		if curr.length > 0 && !a.dumpMapEntry(&b, ofmt, &curr, &next) {
			return 1
		}
		curr = next
		if b.Len() >= mapFlushSize {
			a.printf("%s", b.String())
			b.Reset()
		}
	}
	if !a.dumpMapEntry(&b, ofmt, &curr, nil) {
		return 1
	}
	if ofmt == outputJSON {
		b.WriteString("]\n")
	}
	a.printf("%s", b.String())
	return 0
}
