package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/copyengine"
	"github.com/qimg/qimg/storage"
)

// Limits of convert's numeric options, as qemu-img has them.
const (
	// maxCoroutines bounds -m (QEMU's MAX_COROUTINES).
	maxCoroutines = 16
	// maxBufSectors bounds -S, in sectors (QEMU's MAX_BUF_SECTORS).
	maxBufSectors = 32768
	sectorSize    = 512
)

// compressingFormats are the formats whose QEMU drivers write compressed
// clusters; convert -c refuses the others before creating anything. A
// driver can also say so itself with a CanCompress() bool method.
var compressingFormats = map[string]bool{"qcow": true, "qcow2": true, "vmdk": true}

// convertParams is what convert's command line says.
type convertParams struct {
	fmt, outFmt     string
	cache, srcCache string
	baseImg         string
	hasBaseImg      bool
	backingFmt      string
	options         string
	snapshotName    string
	snapshotID      string
	snapshotOptName string
	snapshotOpts    bool
	sparse          int64
	explicitSparse  bool
	parallel        int
	outOfOrder      bool
	rateLimit       int64
	copyRange       bool
	compress        bool
	progress, quiet bool
	skipCreate      bool
	forceShare      bool
	imageOpts       bool
	tgtImageOpts    bool
	salvage         bool
	targetIsZero    bool
	bitmaps         bool
	skipBroken      bool
	filenames       []string
	outFilename     string
}

func cmdConvert(a *App, args []string) int {
	g := newGetopt(args, ":hf:O:B:CcF:o:l:S:pt:T:qnm:WUr:", []longOpt{
		{"help", noArgument, 'h'},
		{"object", requiredArgument, optObject},
		{"image-opts", noArgument, optImageOpts},
		{"force-share", noArgument, 'U'},
		{"target-image-opts", noArgument, optTargetImageOpts},
		{"salvage", noArgument, optSalvage},
		{"target-is-zero", noArgument, optTargetIsZero},
		{"bitmaps", noArgument, optBitmaps},
		{"skip-broken-bitmaps", noArgument, optSkipBroken},
	})
	p := &convertParams{
		cache:    defaultConvertCache,
		srcCache: defaultCache,
		sparse:   copyengine.DefaultSparseSize,
		parallel: copyengine.DefaultParallel,
	}
	outFmtSet := false
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
			p.fmt = g.optarg
		case 'O':
			p.outFmt, outFmtSet = g.optarg, true
		case 'B':
			p.baseImg, p.hasBaseImg = g.optarg, true
		case 'C':
			p.copyRange = true
		case 'c':
			p.compress = true
		case 'F':
			p.backingFmt = g.optarg
		case 'o':
			if !a.accumulateOptions(&p.options, g.optarg) {
				return 1
			}
		case 'l':
			if strings.HasPrefix(g.optarg, "snapshot.") {
				if !a.parseSnapshotOpts(p, g.optarg) {
					return 1
				}
			} else {
				p.snapshotName = g.optarg
			}
		case 'S':
			v, ok := a.cvtnum("buffer size for sparse output", g.optarg, 0, maxInt64)
			if !ok {
				return 1
			}
			if v%sectorSize != 0 || v/sectorSize > maxBufSectors {
				a.errorf("Invalid buffer size for sparse output specified. "+
					"Valid sizes are multiples of %d up to %d. Select "+
					"0 to disable sparse detection (fully allocates output).", sectorSize, maxBufSectors*sectorSize)
				return 1
			}
			p.sparse, p.explicitSparse = v, true
		case 'p':
			p.progress = true
		case 't':
			p.cache = g.optarg
		case 'T':
			p.srcCache = g.optarg
		case 'q':
			p.quiet = true
		case 'n':
			p.skipCreate = true
		case 'm':
			n, ok := parseCLong(g.optarg)
			if !ok || n < 1 || n > maxCoroutines {
				a.errorf("Invalid number of coroutines. Allowed number of coroutines is between 1 and %d", maxCoroutines)
				return 1
			}
			p.parallel = int(n)
		case 'W':
			p.outOfOrder = true
		case 'U':
			p.forceShare = true
		case 'r':
			v, ok := a.cvtnum("rate limit", g.optarg, 0, maxInt64)
			if !ok {
				return 1
			}
			p.rateLimit = v
		case optImageOpts:
			p.imageOpts = true
		case optSalvage:
			p.salvage = true
		case optTargetImageOpts:
			p.tgtImageOpts = true
		case optTargetIsZero:
			p.targetIsZero = true
		case optBitmaps:
			p.bitmaps = true
		case optSkipBroken:
			p.skipBroken = true
		}
	}
	if !outFmtSet && !p.tgtImageOpts {
		p.outFmt = "raw"
	}
	switch {
	case p.skipBroken && !p.bitmaps:
		a.errorf("Use of --skip-broken-bitmaps requires --bitmaps")
		return 1
	case p.compress && p.copyRange:
		a.errorf("Cannot enable copy offloading when -c is used")
		return 1
	case p.explicitSparse && p.copyRange:
		a.errorf("Cannot enable copy offloading when -S is used")
		return 1
	case p.copyRange && p.salvage:
		a.errorf("Cannot use copy offloading in salvaging mode")
		return 1
	case p.tgtImageOpts && !p.skipCreate:
		a.errorf("--target-image-opts requires use of -n flag")
		return 1
	case p.skipCreate && p.options != "":
		a.errorf("-o has no effect when skipping image creation")
		return 1
	case p.targetIsZero && !p.skipCreate:
		a.errorf("--target-is-zero requires use of -n flag")
		return 1
	}
	ops := g.operands()
	if len(ops) >= 2 {
		p.filenames, p.outFilename = ops[:len(ops)-1], ops[len(ops)-1]
	}
	if p.options != "" && hasHelpOption(p.options) {
		if p.outFmt == "" {
			a.errorf("Option help requires a format be specified")
			return 1
		}
		return a.printOptionHelp(p.outFilename, p.outFmt, p.outFilename != "")
	}
	if len(p.filenames) < 1 {
		a.errorf("Must specify image file name")
		return 1
	}
	srcCache, ok := a.parseCache(p.srcCache, true)
	if !ok {
		return 1
	}
	if p.quiet {
		p.progress = false
	}
	return a.convert(p, srcCache)
}

// parseSnapshotOpts parses -l snapshot.id=…,snapshot.name=….
func (a *App) parseSnapshotOpts(p *convertParams, arg string) bool {
	opts := block.NewOptions([]block.OptionSpec{
		{Name: "snapshot.id", Type: block.OptString, Help: "snapshot id"},
		{Name: "snapshot.name", Type: block.OptString, Help: "snapshot name"},
	})
	if err := opts.Parse(arg); err != nil {
		a.reportErr("", err)
		a.errorf("Failed in parsing snapshot param '%s'", arg)
		return false
	}
	p.snapshotOpts = true
	p.snapshotID = opts.String("snapshot.id")
	p.snapshotOptName = opts.String("snapshot.name")
	return true
}

// parseCLong parses a whole string as C's strtol with base 0 does (leading
// white space, a sign, 0x for hex, a leading 0 for octal), as qemu_strtol
// does for -m.
func parseCLong(s string) (int64, bool) {
	t := strings.TrimLeft(s, " \t\n\v\f\r")
	neg := false
	if t != "" && (t[0] == '+' || t[0] == '-') {
		neg = t[0] == '-'
		t = t[1:]
	}
	base := 10
	switch {
	case len(t) > 2 && (t[:2] == "0x" || t[:2] == "0X"):
		base, t = 16, t[2:]
	case len(t) > 1 && t[0] == '0':
		base, t = 8, t[1:]
	}
	if t == "" || t[0] == '+' || t[0] == '-' || strings.ContainsRune(t, '_') {
		return 0, false
	}
	v, err := strconv.ParseInt(t, base, 64)
	if err != nil {
		return 0, false
	}
	if neg {
		v = -v
	}
	return v, true
}

// convertRun holds what a running convert has opened and created, so that
// a failure can release it.
type convertRun struct {
	a       *App
	p       *convertParams
	prog    *progress
	sources []*block.Node
	// views are snapshot views opened for -l, closed with the sources.
	views  []block.Image
	target *block.Node
	// created is set once convert has created the target file, and
	// existed says whether a file of that name existed before.
	created, existed bool
}

// convert runs a parsed convert, from opening the sources on. It returns
// the exit code: 128 plus the signal's number when SIGINT, SIGTERM or
// SIGHUP stopped it, as a shell reports a process those signals end.
func (a *App) convert(p *convertParams, srcCache block.CacheMode) int {
	ctx, caught, stopSignals := interruptContext()
	defer stopSignals()
	r := &convertRun{a: a, p: p, prog: a.newProgress(p.progress, 1.0)}
	defer r.prog.close()
	r.prog.print(0, 100)
	code := r.run(ctx, srcCache)
	if code == 0 {
		r.prog.print(100, 0)
	}
	r.prog.end()
	if err := r.closeTarget(); err != nil && code == 0 {
		a.errorf("error while closing '%s': %s", p.outFilename, storage.Strerror(err))
		code = 1
	}
	if code != 0 {
		r.cleanup(ctx.Err() != nil)
	}
	r.closeSources()
	if sig := caught(); code != 0 && sig != 0 {
		return 128 + int(sig)
	}
	return code
}

// interruptContext returns a context that SIGINT, SIGTERM and SIGHUP
// cancel, a function that says which of them arrived (0 if none), and one
// that restores their default handling.
func interruptContext() (context.Context, func() syscall.Signal, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	var got atomic.Int32
	done := make(chan struct{})
	go func() {
		select {
		case s := <-ch:
			got.Store(int32(s.(syscall.Signal)))
			cancel()
		case <-done:
		}
	}()
	caught := func() syscall.Signal { return syscall.Signal(got.Load()) }
	stop := func() {
		signal.Stop(ch)
		close(done)
		cancel()
	}
	return ctx, caught, stop
}

// run opens, creates and copies; its result is the exit code.
func (r *convertRun) run(ctx context.Context, srcCache block.CacheMode) int {
	a, p := r.a, r.p
	var srcs []copyengine.Source
	for _, name := range p.filenames {
		n, ok := a.openImage(name, openSpec{imageOpts: p.imageOpts, format: p.fmt, forceShare: p.forceShare, cache: srcCache, noShare: true})
		if !ok {
			return 1
		}
		r.sources = append(r.sources, n)
		s := copyengine.Source{Image: n}
		if info, err := n.Info(); err == nil && info.ClusterSize > 0 {
			s.Alignment = info.ClusterSize
		}
		srcs = append(srcs, s)
	}
	if !r.loadSnapshot(srcs) {
		return 1
	}
	total := copyengine.Size(srcs)

	var opts *block.Options
	var creator block.Creator
	if !p.skipCreate {
		specs, c, err := a.env().CreateSpecs(p.outFmt)
		if err != nil {
			a.reportErr("", err)
			return 1
		}
		creator = c
		opts = block.NewOptions(specs)
		if p.options != "" {
			if err := opts.Parse(p.options); err != nil {
				a.reportErr("", err)
				return 1
			}
		}
		opts.SetNumber("size", uint64(total))
		if p.hasBaseImg {
			if !hasSpec(specs, "backing_file") {
				a.errorf("Backing file not supported for file format '%s'", p.outFmt)
				return 1
			}
			opts.Set("backing_file", p.baseImg)
		}
		if p.backingFmt != "" {
			if !hasSpec(specs, "backing_fmt") {
				a.errorf("Backing file format not supported for file format '%s'", p.outFmt)
				return 1
			}
			opts.Set("backing_fmt", p.backingFmt)
		}
	}
	hasBaseImg := p.hasBaseImg
	var hasBaseParam bool
	if opts != nil {
		_, hasBaseParam = opts.Lookup("backing_file")
		if hasBaseParam {
			hasBaseImg = true
		}
	}
	if p.targetIsZero && hasBaseImg {
		a.errorf("Cannot use --target-is-zero when the destination image has a backing file")
		// qemu-img 7.2 jumps to its exit path here with no error code
		// set, so it exits 0 (and reports 100% with -p); so does qimg.
		return 0
	}
	if len(p.filenames) > 1 && hasBaseImg {
		a.errorf("Having a backing file for the target makes no sense when concatenating multiple input images")
		return 1
	}
	if hasBaseParam {
		if _, ok := opts.Lookup("backing_fmt"); !ok {
			a.errorf("Use of backing file requires explicit backing format")
			return 1
		}
	}
	if p.compress {
		if creator != nil && !canCompress(creator) {
			a.errorf("Compression not supported for this file format")
			return 1
		}
		if opts != nil {
			_, encFmt := opts.Lookup("encrypt.format")
			if opts.Bool("encryption", false) || encFmt {
				a.errorf("Compression and encryption not supported at the same time")
				return 1
			}
			if pa, ok := opts.Lookup("preallocation"); ok && pa != "off" {
				a.errorf("Compression and preallocation not supported at the same time")
				return 1
			}
		}
	}
	if p.bitmaps && !r.checkBitmaps() {
		return 1
	}
	cache, ok := a.parseCache(p.cache, false)
	if !ok {
		return 1
	}
	if ctx.Err() != nil {
		return 1
	}
	if !p.skipCreate {
		existed := a.opener().Exists(p.outFilename)
		err := a.env().Create(block.CreateParams{
			Filename:      p.outFilename,
			Format:        p.outFmt,
			Size:          -1,
			Options:       createOptionList(p.options, total),
			BackingFile:   p.baseImg,
			BackingFormat: p.backingFmt,
			NoOpenBacking: true,
		})
		if err != nil {
			// Create removes a new file it failed to fill.
			a.reportErr(fmt.Sprintf("%s: error while converting %s: ", p.outFilename, p.outFmt), err)
			return 1
		}
		r.created, r.existed = true, existed
		// A resource limit may end the process mid-copy; the target
		// must not then pass for a complete copy.
		defer a.onAbort(func() { r.cleanup(false) })()
	}
	format := p.outFmt
	if p.tgtImageOpts {
		format = ""
	}
	target, ok := a.openImage(p.outFilename, openSpec{imageOpts: p.tgtImageOpts, format: format, write: true, cache: cache})
	if !ok {
		return 1
	}
	r.target = target
	if p.compress {
		if _, ok := target.Image.(block.Compressor); !ok {
			a.errorf("Compression not supported for this file format")
			return 1
		}
	}
	if p.skipCreate {
		if (target.Size()+sectorSize-1)/sectorSize < total/sectorSize {
			a.errorf("output file is smaller than input file")
			return 1
		}
	}
	o := copyengine.Options{
		SparseSize:  p.sparse,
		Parallel:    p.parallel,
		OutOfOrder:  p.outOfOrder,
		Compress:    p.compress,
		CopyOffload: p.copyRange,
		Salvage:     p.salvage,
		RateLimit:   p.rateLimit,
		Progress: func(done, total int64) {
			r.prog.print(float32(100.0*float64(done/sectorSize)/float64(total/sectorSize)), 0)
		},
	}
	if p.sparse == 0 {
		o.SparseSize = -1
	}
	if !p.quiet {
		o.Warn = a.env().Warn
	}
	if cache.Direct() {
		o.TargetAlignment = 4096
	}
	info, err := target.Info()
	if err != nil {
		if p.compress {
			a.errorf("could not get block driver info")
			return 1
		}
	} else {
		o.ClusterSize = info.ClusterSize
	}
	if hasBaseImg {
		o.TargetBacked = true
		if !p.skipCreate && target.Backing != nil {
			o.TargetBackingSize = target.Backing.Size()
		}
		for i := range srcs {
			// Only what the source's top image allocates is copied;
			// the target's backing file supplies the rest.
			if r.sources[i].Backing != nil && srcs[i].Image == block.Image(r.sources[i]) {
				srcs[i].Base = r.sources[i].Backing
			}
		}
	}
	o.TargetZeroed = p.targetIsZero ||
		(!p.skipCreate && p.sparse > 0 && !hasBaseImg && copyengine.HasZeroInit(target))
	if _, err := copyengine.Copy(ctx, target, srcs, o); err != nil {
		switch {
		case ctx.Err() != nil:
		case err.Error() == "invalid cluster size":
			a.errorf("invalid cluster size")
		default:
			a.reportErr("", err)
		}
		return 1
	}
	return 0
}

// hasSpec reports whether specs has an option of that name.
func hasSpec(specs []block.OptionSpec, name string) bool {
	for _, s := range specs {
		if s.Name == name {
			return true
		}
	}
	return false
}

// canCompress reports whether images of a format can hold compressed
// clusters.
func canCompress(d block.Driver) bool {
	if c, ok := d.(interface{ CanCompress() bool }); ok {
		return c.CanCompress()
	}
	return compressingFormats[d.Name()]
}

// createOptionList adds the target size to the -o options; a later value
// wins, so the size overrides any size given with -o, as in qemu-img.
func createOptionList(options string, size int64) string {
	s := fmt.Sprintf("size=%d", size)
	if options == "" {
		return s
	}
	return options + "," + s
}

// opener returns where the Env opens files.
func (a *App) opener() storage.Opener {
	if f := a.env().Files; f != nil {
		return f
	}
	return storage.Local{}
}

// loadSnapshot replaces the first source by the snapshot -l names. The
// snapshot view comes from the source's block.Snapshotter; images without
// one get qemu-img's error.
func (r *convertRun) loadSnapshot(srcs []copyengine.Source) bool {
	a, p := r.a, r.p
	if !p.snapshotOpts && p.snapshotName == "" {
		return true
	}
	if !p.snapshotOpts && len(p.filenames) > 1 {
		a.errorf("No support for concatenating multiple snapshot")
		return false
	}
	src := r.sources[0]
	sn, ok := src.Image.(block.Snapshotter)
	if !ok {
		a.errorf("Failed to load snapshot: Block format '%s' used by device '' does not support temporarily loading internal snapshots", src.Driver.Name())
		return false
	}
	var view block.Image
	var err error
	if p.snapshotOpts {
		view, err = sn.OpenSnapshot(p.snapshotID, p.snapshotOptName)
	} else {
		// An ID first, then a name, as bdrv_snapshot_load_tmp_by_id_or_name.
		view, err = sn.OpenSnapshot(p.snapshotName, "")
		if err != nil {
			view, err = sn.OpenSnapshot("", p.snapshotName)
		}
	}
	if err != nil {
		a.reportErr("Failed to load snapshot: ", err)
		return false
	}
	r.views = append(r.views, view)
	srcs[0].Image = view
	srcs[0].Length = 0
	return true
}

// checkBitmaps refuses --bitmaps: qemu-img copies persistent dirty bitmaps,
// which only qcow2 images hold and qimg does not implement yet.
func (r *convertRun) checkBitmaps() bool {
	a, p := r.a, r.p
	if len(p.filenames) > 1 {
		a.errorf("Copying bitmaps only possible with single source")
		return false
	}
	if r.sources[0].Driver.Name() != "qcow2" {
		a.errorf("Source lacks bitmap support")
		return false
	}
	a.errorf("--bitmaps is not supported by qimg %s yet: persistent bitmaps cannot be copied", Version)
	return false
}

// closeTarget closes the target, which flushes it unless the cache mode is
// unsafe.
func (r *convertRun) closeTarget() error {
	if r.target == nil {
		return nil
	}
	err := r.target.Flush()
	if cerr := r.target.Close(); err == nil {
		err = cerr
	}
	r.target = nil
	return err
}

func (r *convertRun) closeSources() {
	for _, v := range r.views {
		v.Close()
	}
	for _, s := range r.sources {
		s.Close()
	}
	r.views, r.sources = nil, nil
}

// cleanup deals with a target left behind by a failed or interrupted
// convert, so that it cannot pass for a complete copy:
//
//   - a target file convert created where nothing existed is removed;
//   - a file that existed and that convert re-created (without -n) is
//     truncated to zero length: its old content was already gone, and the
//     file itself (its permissions, owner and links) stays the user's; a
//     block device is left alone;
//   - a target given with -n is left as the copy left it, as qemu-img
//     leaves it: it was the user's image, and removing it would lose what
//     the copy did not reach.
//
// One line says what happened when the convert was interrupted; a failed
// convert has already reported its error.
func (r *convertRun) cleanup(interrupted bool) {
	a, p := r.a, r.p
	what := ""
	switch {
	case !r.created:
		if p.skipCreate && interrupted {
			what = fmt.Sprintf("; '%s' is partly written", p.outFilename)
		}
	case !r.existed:
		if err := a.opener().Remove(p.outFilename); err == nil {
			what = fmt.Sprintf("; removed the incomplete target '%s'", p.outFilename)
		}
	default:
		if truncateRegular(a.opener(), p.outFilename) {
			what = fmt.Sprintf("; truncated the incomplete target '%s'", p.outFilename)
		}
	}
	if interrupted {
		a.errorf("convert interrupted%s", what)
	}
}

// truncateRegular empties a regular file, leaving devices alone.
func truncateRegular(o storage.Opener, name string) bool {
	if _, local := o.(storage.Local); local {
		st, err := os.Stat(name)
		if err != nil || !st.Mode().IsRegular() {
			return false
		}
	}
	f, err := o.Create(name, storage.OpenOptions{})
	if err != nil {
		return false
	}
	f.Close()
	return true
}
