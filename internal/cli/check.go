package cli

import (
	"errors"
	"fmt"
	"strings"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/storage"
)

// checkReport is what `qemu-img check` reports: QEMU's ImageCheck.
type checkReport struct {
	filename string
	format   string
	block.CheckResult
}

// dict builds the QAPI ImageCheck object; optional fields are present only
// when non-zero, as qemu-img sets them.
func (r *checkReport) dict() *block.Dict {
	d := block.NewDict()
	d.Set("filename", r.filename)
	d.Set("format", r.format)
	d.Set("check-errors", r.CheckErrors)
	opt := func(k string, v int64) {
		if v != 0 {
			d.Set(k, v)
		}
	}
	opt("image-end-offset", r.ImageEndOffset)
	opt("corruptions", r.Corruptions)
	opt("leaks", r.Leaks)
	opt("corruptions-fixed", r.CorruptionsFixed)
	opt("leaks-fixed", r.LeaksFixed)
	opt("total-clusters", r.TotalClusters)
	opt("allocated-clusters", r.AllocatedClusters)
	opt("fragmented-clusters", r.FragmentedClusters)
	opt("compressed-clusters", r.CompressedClusters)
	return d
}

// human renders the summary as qemu-img prints it.
func (r *checkReport) human() string {
	var b strings.Builder
	if r.Corruptions == 0 && r.Leaks == 0 && r.CheckErrors == 0 {
		b.WriteString("No errors were found on the image.\n")
	} else {
		if r.Corruptions != 0 {
			fmt.Fprintf(&b, "\n%d errors were found on the image.\n"+
				"Data may be corrupted, or further writes to the image may corrupt it.\n", r.Corruptions)
		}
		if r.Leaks != 0 {
			fmt.Fprintf(&b, "\n%d leaked clusters were found on the image.\n"+
				"This means waste of disk space, but no harm to data.\n", r.Leaks)
		}
		if r.CheckErrors != 0 {
			fmt.Fprintf(&b, "\n%d internal errors have occurred during the check.\n", r.CheckErrors)
		}
	}
	if r.TotalClusters != 0 && r.AllocatedClusters != 0 {
		fmt.Fprintf(&b, "%d/%d = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed clusters\n",
			r.AllocatedClusters, r.TotalClusters,
			float64(r.AllocatedClusters)*100/float64(r.TotalClusters),
			float64(r.FragmentedClusters)*100/float64(r.AllocatedClusters),
			float64(r.CompressedClusters)*100/float64(r.AllocatedClusters))
	}
	if r.ImageEndOffset != 0 {
		fmt.Fprintf(&b, "Image end offset: %d\n", r.ImageEndOffset)
	}
	return b.String()
}

// Exit codes of `qemu-img check`.
const (
	checkOK          = 0
	checkFailed      = 1
	checkCorrupt     = 2
	checkLeaks       = 3
	checkUnsupported = 63
)

func cmdCheck(a *App, args []string) int {
	g := newGetopt(args, ":hf:r:T:qU", []longOpt{
		{"help", noArgument, 'h'},
		{"format", requiredArgument, 'f'},
		{"repair", requiredArgument, 'r'},
		{"output", requiredArgument, optOutput},
		{"object", requiredArgument, optObject},
		{"image-opts", noArgument, optImageOpts},
		{"force-share", noArgument, 'U'},
	})
	var format, output string
	cache := defaultCache
	fix := block.FixNone
	hasOutput, quiet, imageOpts, forceShare := false, false, false, false
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
		case 'r':
			switch g.optarg {
			case "leaks":
				fix = block.FixLeaks
			case "all":
				fix = block.FixAll
			default:
				return a.usageError("Unknown option value for -r (expecting 'leaks' or 'all'): %s", g.optarg)
			}
		case optOutput:
			output, hasOutput = g.optarg, true
		case 'T':
			cache = g.optarg
		case 'q':
			quiet = true
		case 'U':
			forceShare = true
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
		return checkFailed
	}
	mode, ok := a.parseCache(cache, true)
	if !ok {
		return checkFailed
	}
	n, ok := a.openImage(filename, openSpec{
		imageOpts: imageOpts, format: format, forceShare: forceShare, cache: mode,
		write: fix != block.FixNone, forCheck: true,
	})
	if !ok {
		return checkFailed
	}
	defer n.Close()
	checker, ok := n.Image.(block.Checker)
	if !ok {
		a.errorf("This image format does not support checks")
		return checkUnsupported
	}
	report := func(msg string) { fmt.Fprintln(a.Stderr, msg) }
	res, err := checker.Check(fix, report)
	if errors.Is(err, block.ErrUnsupported) {
		a.errorf("This image format does not support checks")
		return checkUnsupported
	}
	r := &checkReport{filename: filename, format: n.Driver.Name(), CheckResult: res}
	if err == nil && (res.CorruptionsFixed != 0 || res.LeaksFixed != 0) {
		if ofmt == outputHuman && !quiet {
			a.printf("The following inconsistencies were found and repaired:\n\n"+
				"    %d leaked clusters\n    %d corruptions\n\n"+
				"Double checking the fixed image now...\n", res.LeaksFixed, res.CorruptionsFixed)
		}
		res2, err2 := checker.Check(block.FixNone, report)
		err = err2
		res2.LeaksFixed, res2.CorruptionsFixed = res.LeaksFixed, res.CorruptionsFixed
		r.CheckResult = res2
	}
	if err == nil && !quiet {
		if ofmt == outputHuman {
			a.printf("%s", r.human())
		} else {
			a.printf("%s\n", toJSON(r.dict()))
		}
	}
	if err != nil {
		a.errorf("Check failed: %s", checkErrText(err))
		return checkFailed
	}
	if r.CheckErrors != 0 {
		a.errorf("Check failed")
		return checkFailed
	}
	switch {
	case r.Corruptions != 0:
		return checkCorrupt
	case r.Leaks != 0:
		return checkLeaks
	}
	return checkOK
}

// checkErrText words a failed check's cause like strerror where it can.
func checkErrText(err error) string {
	switch {
	case errors.Is(err, block.ErrReadOnly):
		return "Read-only file system"
	}
	return storage.Strerror(err)
}
