package cli

import (
	"errors"
	"fmt"
	"strings"

	"github.com/qimg/qimg/block"
)

// measureParams is a parsed `qemu-img measure` command line.
type measureParams struct {
	format, outFmt, options string
	output                  outputFormat
	size                    int64
	hasSize                 bool
	imageOpts, forceShare   bool
	// snapshot is -l: a snapshot ID or name, or (with snapshotOpts)
	// snapshot.id= and snapshot.name=.
	snapshot, snapshotID, snapshotName string
	hasSnapshot, snapshotOpts          bool
}

// cmdMeasure is `qemu-img measure`: the file size a new image would need,
// for a given size or to hold an existing image's content, as qemu-img
// 7.2's img_measure computes it through the target driver's
// block.Measurer.
func cmdMeasure(a *App, args []string) int {
	g := newGetopt(args, "hf:O:o:l:U", []longOpt{
		{"help", noArgument, 'h'},
		{"image-opts", noArgument, optImageOpts},
		{"object", requiredArgument, optObject},
		{"output", requiredArgument, optOutput},
		{"size", requiredArgument, optSize},
		{"force-share", noArgument, 'U'},
	})
	p := measureParams{outFmt: "raw"}
	var options []string
	for {
		c := g.next()
		if c == -1 {
			break
		}
		switch c {
		case '?', 'h':
			if c == '?' {
				fmt.Fprintf(a.Stderr, "%s: %s\n", args[0], g.errText)
			}
			return a.help()
		case 'f':
			p.format = g.optarg
		case 'O':
			p.outFmt = g.optarg
		case 'o':
			options = append(options, g.optarg)
		case 'l':
			p.hasSnapshot = true
			if strings.HasPrefix(g.optarg, "snapshot.") {
				id, name, err := parseSnapshotParam(g.optarg)
				if err != nil {
					a.reportErr("", err)
					a.errorf("Failed in parsing snapshot param '%s'", g.optarg)
					return 1
				}
				p.snapshotOpts, p.snapshotID, p.snapshotName = true, id, name
			} else {
				p.snapshot = g.optarg
			}
		case 'U':
			p.forceShare = true
		case optObject:
			if code, stop := a.objectOption(g.optarg); stop {
				return code
			}
		case optImageOpts:
			p.imageOpts = true
		case optOutput:
			switch g.optarg {
			case "json":
				p.output = outputJSON
			case "human":
				p.output = outputHuman
			default:
				a.errorf("--output must be used with human or json as argument.")
				return 1
			}
		case optSize:
			v, ok := a.cvtnum("image size", g.optarg, 0, maxInt64)
			if !ok {
				return 1
			}
			p.size, p.hasSize = v, true
		}
	}
	p.options = strings.Join(options, ",")
	ops := g.operands()
	switch {
	case len(ops) > 1:
		a.errorf("At most one filename argument is allowed.")
		return 1
	case len(ops) == 0 && (p.imageOpts || p.format != "" || p.hasSnapshot):
		a.errorf("--image-opts, -f, and -l require a filename argument.")
		return 1
	case len(ops) == 1 && p.hasSize:
		a.errorf("--size N cannot be used together with a filename.")
		return 1
	case len(ops) == 0 && !p.hasSize:
		a.errorf("Either --size N or one filename must be specified.")
		return 1
	}
	info, err := a.measure(&p, ops)
	if err != nil {
		if !errors.Is(err, errReported) {
			a.reportErr("", err)
		}
		return 1
	}
	if p.output == outputHuman {
		a.printf("required size: %d\nfully allocated size: %d\n", info.Required, info.FullyAllocated)
		if info.HasBitmaps {
			a.printf("bitmaps size: %d\n", info.Bitmaps)
		}
		return 0
	}
	d := block.NewDict()
	d.Set("required", info.Required)
	d.Set("fully-allocated", info.FullyAllocated)
	if info.HasBitmaps {
		d.Set("bitmaps", info.Bitmaps)
	}
	a.printf("%s\n", toJSON(d))
	return 0
}

// measure opens the input, if any, and asks the target driver.
func (a *App) measure(p *measureParams, ops []string) (block.MeasureInfo, error) {
	var in block.Image
	if len(ops) == 1 {
		n, ok := a.openImage(ops[0], openSpec{imageOpts: p.imageOpts, format: p.format, forceShare: p.forceShare})
		if !ok {
			return block.MeasureInfo{}, errReported
		}
		defer n.Close()
		in = n
		if p.hasSnapshot {
			view, err := loadSnapshotView(n, p.snapshot, p.snapshotID, p.snapshotName, p.snapshotOpts)
			if err != nil {
				return block.MeasureInfo{}, fmt.Errorf("Failed to load snapshot: %w", err)
			}
			defer view.Close()
			in = view
		}
	}
	specs, _, err := a.env().CreateSpecs(p.outFmt)
	if err != nil {
		return block.MeasureInfo{}, err
	}
	opts := block.NewOptions(specs)
	if p.options != "" {
		if err := opts.Parse(p.options); err != nil {
			a.reportErr("", err)
			return block.MeasureInfo{}, fmt.Errorf("Invalid options for file format '%s'", p.outFmt)
		}
	}
	if p.hasSize {
		opts.SetNumber("size", uint64(p.size))
	}
	drv, _ := a.env().Registry.Lookup(p.outFmt)
	m, ok := drv.(block.Measurer)
	if !ok {
		return block.MeasureInfo{}, fmt.Errorf("Block driver '%s' does not support size measurement", p.outFmt)
	}
	return m.Measure(opts, in, a.env())
}

// parseSnapshotParam parses -l snapshot.id=…,snapshot.name=….
func parseSnapshotParam(arg string) (id, name string, err error) {
	opts := block.NewOptions([]block.OptionSpec{
		{Name: "snapshot.id", Type: block.OptString, Help: "snapshot id"},
		{Name: "snapshot.name", Type: block.OptString, Help: "snapshot name"},
	})
	if err := opts.Parse(arg); err != nil {
		return "", "", err
	}
	return opts.String("snapshot.id"), opts.String("snapshot.name"), nil
}

// loadSnapshotView opens the internal snapshot -l names read-only, as QEMU's
// bdrv_snapshot_load_tmp (with ID and name) or
// bdrv_snapshot_load_tmp_by_id_or_name (an ID first, then a name) do.
func loadSnapshotView(n *block.Node, idOrName, id, name string, byOpts bool) (block.Image, error) {
	sn, ok := n.Image.(block.Snapshotter)
	if !ok {
		return nil, fmt.Errorf("Block format '%s' used by device '' does not support temporarily loading internal snapshots", n.Driver.Name())
	}
	if byOpts {
		return sn.OpenSnapshot(id, name)
	}
	view, err := sn.OpenSnapshot(idOrName, "")
	if err != nil {
		view, err = sn.OpenSnapshot("", idOrName)
	}
	return view, err
}
