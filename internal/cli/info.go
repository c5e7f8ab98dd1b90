package cli

import (
	"fmt"
	"strings"
	"time"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/internal/units"
)

// outputFormat is --output's value.
type outputFormat int

const (
	outputHuman outputFormat = iota
	outputJSON
)

// parseOutput checks an --output value, printing qemu-img's error.
func (a *App) parseOutput(s string, given bool) (outputFormat, bool) {
	switch {
	case !given || s == "human":
		return outputHuman, true
	case s == "json":
		return outputJSON, true
	}
	a.errorf("--output must be used with human or json as argument.")
	return 0, false
}

// imageInfo is what `qemu-img info` reports about one image.
type imageInfo struct {
	filename         string
	format           string
	virtualSize      int64
	actualSize       int64
	info             block.Info
	backingFile      string
	fullBackingFile  string
	backingFormat    string
	hasBackingFormat bool
}

// collectInfo gathers the information about an opened image.
func collectInfo(n *block.Node) (*imageInfo, error) {
	info, err := n.Info()
	if err != nil {
		return nil, err
	}
	ii := &imageInfo{
		filename:    n.Filename,
		format:      n.Driver.Name(),
		virtualSize: n.Size(),
		actualSize:  n.AllocatedSize(),
		info:        info,
	}
	if b, ok := n.Image.(block.Backed); ok {
		name, format := b.BackingFile()
		if name != "" {
			ii.backingFile = name
			ii.fullBackingFile = n.FullBackingFilename()
			ii.backingFormat = format
			ii.hasBackingFormat = format != ""
		}
	}
	return ii, nil
}

// dict builds the QAPI ImageInfo object, fields in schema order.
func (ii *imageInfo) dict() *block.Dict {
	d := block.NewDict()
	d.Set("filename", ii.filename)
	d.Set("format", ii.format)
	if !ii.info.NoDirtyFlag {
		d.Set("dirty-flag", ii.info.Dirty)
	}
	if ii.actualSize >= 0 {
		d.Set("actual-size", ii.actualSize)
	}
	d.Set("virtual-size", ii.virtualSize)
	if ii.info.ClusterSize != 0 {
		d.Set("cluster-size", ii.info.ClusterSize)
	}
	if ii.info.Encrypted {
		d.Set("encrypted", true)
	}
	if ii.backingFile != "" {
		d.Set("backing-filename", ii.backingFile)
		if ii.fullBackingFile != "" {
			d.Set("full-backing-filename", ii.fullBackingFile)
		}
		if ii.hasBackingFormat {
			d.Set("backing-filename-format", ii.backingFormat)
		}
	}
	if len(ii.info.Snapshots) > 0 {
		var list []any
		for _, s := range ii.info.Snapshots {
			list = append(list, snapshotDict(s))
		}
		d.Set("snapshots", list)
	}
	if ii.info.Specific != nil {
		d.Set("format-specific", block.NewDict().Set("type", ii.format).Set("data", ii.info.Specific))
	}
	return d
}

// snapshotDict builds a QAPI SnapshotInfo object.
func snapshotDict(s block.SnapshotInfo) *block.Dict {
	d := block.NewDict()
	d.Set("id", s.ID)
	d.Set("name", s.Name)
	d.Set("vm-state-size", int64(s.VMStateSize))
	d.Set("date-sec", s.DateSec)
	d.Set("date-nsec", s.DateNsec)
	d.Set("vm-clock-sec", int64(s.VMClockNsec/1e9))
	d.Set("vm-clock-nsec", int64(s.VMClockNsec%1e9))
	if s.ICount >= 0 {
		d.Set("icount", s.ICount)
	}
	return d
}

// human renders the image as `qemu-img info` prints it.
func (ii *imageInfo) human() string {
	var b strings.Builder
	dsize := "unavailable"
	if ii.actualSize >= 0 {
		dsize = units.FormatSize(uint64(ii.actualSize))
	}
	fmt.Fprintf(&b, "image: %s\nfile format: %s\nvirtual size: %s (%d bytes)\ndisk size: %s\n",
		ii.filename, ii.format, units.FormatSize(uint64(ii.virtualSize)), ii.virtualSize, dsize)
	if ii.info.Encrypted {
		b.WriteString("encrypted: yes\n")
	}
	if ii.info.ClusterSize != 0 {
		fmt.Fprintf(&b, "cluster_size: %d\n", ii.info.ClusterSize)
	}
	if !ii.info.NoDirtyFlag && ii.info.Dirty {
		b.WriteString("cleanly shut down: no\n")
	}
	if ii.backingFile != "" {
		fmt.Fprintf(&b, "backing file: %s", ii.backingFile)
		if ii.fullBackingFile == "" {
			b.WriteString(" (cannot determine actual path)")
		} else if ii.fullBackingFile != ii.backingFile {
			fmt.Fprintf(&b, " (actual path: %s)", ii.fullBackingFile)
		}
		b.WriteString("\n")
		if ii.hasBackingFormat {
			fmt.Fprintf(&b, "backing file format: %s\n", ii.backingFormat)
		}
	}
	if len(ii.info.Snapshots) > 0 {
		b.WriteString("Snapshot list:\n")
		b.WriteString(snapshotHeader())
		b.WriteString("\n")
		for _, s := range ii.info.Snapshots {
			b.WriteString(snapshotLine(s))
			b.WriteString("\n")
		}
	}
	if ii.info.Specific != nil {
		b.WriteString("Format specific information:\n")
		dumpHuman(&b, 1, ii.info.Specific)
	}
	return b.String()
}

// snapshotHeader is the column header of snapshot tables.
func snapshotHeader() string {
	return fmt.Sprintf("%-10s%-17s%8s%20s%13s%11s", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT")
}

// snapshotLine formats one snapshot as a table row, as QEMU's
// bdrv_snapshot_dump: widths count bytes, as C's printf does, and the clock
// fields are C ints.
func snapshotLine(s block.SnapshotInfo) string {
	date := time.Unix(s.DateSec, 0).Format("2006-01-02 15:04:05")
	secs := s.VMClockNsec / 1e9
	clock := fmt.Sprintf("%02d:%02d:%02d.%03d", int32(secs/3600), int32((secs/60)%60), int32(secs%60), int32((s.VMClockNsec/1e6)%1000))
	icount := ""
	if s.ICount >= 0 {
		icount = fmt.Sprint(s.ICount)
	}
	return fmt.Sprintf("%s %s %8s%20s%13s%11s", padBytes(s.ID, 9), padBytes(s.Name, 16), units.FormatSize(s.VMStateSize), date, clock, icount)
}

// padBytes pads s with spaces to n bytes, as printf's "%-ns" does in C.
func padBytes(s string, n int) string {
	if len(s) >= n {
		return s
	}
	return s + strings.Repeat(" ", n-len(s))
}

func cmdInfo(a *App, args []string) int {
	g := newGetopt(args, ":f:hU", []longOpt{
		{"help", noArgument, 'h'},
		{"format", requiredArgument, 'f'},
		{"output", requiredArgument, optOutput},
		{"backing-chain", noArgument, optBackingChain},
		{"object", requiredArgument, optObject},
		{"image-opts", noArgument, optImageOpts},
		{"force-share", noArgument, 'U'},
	})
	var format, output string
	hasOutput, chain, imageOpts, forceShare := false, false, false, false
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
		case optBackingChain:
			chain = true
		case optImageOpts:
			imageOpts = true
		}
	}
	ops := g.operands()
	if len(ops) != 1 {
		return a.usageError("Expecting one image file name")
	}
	ofmt, ok := a.parseOutput(output, hasOutput)
	if !ok {
		return 1
	}
	list, ok := a.collectInfoList(ops[0], format, imageOpts, chain, forceShare)
	if !ok {
		return 1
	}
	switch {
	case ofmt == outputHuman:
		for i, ii := range list {
			if i > 0 {
				a.printf("\n")
			}
			a.printf("%s", ii.human())
		}
	case chain:
		var arr []any
		for _, ii := range list {
			arr = append(arr, ii.dict())
		}
		a.printf("%s\n", toJSON(arr))
	default:
		a.printf("%s\n", toJSON(list[0].dict()))
	}
	return 0
}

// collectInfoList opens the image (and, with chain, each backing file in
// turn) and gathers their information.
func (a *App) collectInfoList(filename, format string, imageOpts, chain, forceShare bool) ([]*imageInfo, bool) {
	var list []*imageInfo
	seen := map[string]bool{}
	limit := a.env().MaxChainDepth
	if limit <= 0 {
		limit = block.DefaultMaxChainDepth
	}
	for first := true; first || filename != ""; first = false {
		if seen[filename] {
			a.errorf("Backing file '%s' creates an infinite loop.", filename)
			return nil, false
		}
		if len(list) > limit {
			a.errorf("Backing chain of '%s' is deeper than %d images", filename, limit)
			return nil, false
		}
		seen[filename] = true
		n, ok := a.openImage(filename, openSpec{imageOpts: imageOpts, format: format, forceShare: forceShare, noBacking: true, noIO: true})
		if !ok {
			return nil, false
		}
		ii, err := collectInfo(n)
		n.Close()
		if err != nil {
			a.reportErr("", err)
			return nil, false
		}
		list = append(list, ii)
		filename, format, imageOpts = "", "", false
		if chain && ii.backingFile != "" {
			full, err := a.env().Policy.Check(ii.filename, ii.backingFile, "backing file")
			if err != nil {
				a.reportErr("", err)
				return nil, false
			}
			filename, format = full, ii.backingFormat
		}
	}
	return list, true
}
