package cli

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/storage"
)

// rebaseParams is a parsed `qemu-img rebase` command line.
type rebaseParams struct {
	filename, format        string
	backing, backingFmt     string
	hasBacking              bool
	unsafe, progress, quiet bool
	imageOpts, forceShare   bool
	cache, srcCache         string
}

// cmdRebase is `qemu-img rebase`: it changes the backing file an image
// names. In safe mode it first writes into the image every sector whose
// content would change with the new backing chain (block.Rebase); with -u
// it only rewrites the header, as qemu-img 7.2's img_rebase does.
func cmdRebase(a *App, args []string) int {
	g := newGetopt(args, ":hf:F:b:upt:T:qU", []longOpt{
		{"help", noArgument, 'h'},
		{"object", requiredArgument, optObject},
		{"image-opts", noArgument, optImageOpts},
		{"force-share", noArgument, 'U'},
	})
	p := rebaseParams{cache: defaultCache, srcCache: defaultCache}
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
			p.format = g.optarg
		case 'F':
			p.backingFmt = g.optarg
		case 'b':
			p.backing, p.hasBacking = g.optarg, true
		case 'u':
			p.unsafe = true
		case 'p':
			p.progress = true
		case 't':
			p.cache = g.optarg
		case 'T':
			p.srcCache = g.optarg
		case 'q':
			p.quiet = true
		case optImageOpts:
			p.imageOpts = true
		case 'U':
			p.forceShare = true
		}
	}
	if p.quiet {
		p.progress = false
	}
	ops := g.operands()
	if len(ops) != 1 {
		return a.usageError("Expecting one image file name")
	}
	if !p.unsafe && !p.hasBacking {
		return a.usageError("Must specify backing file (-b) or use unsafe mode (-u)")
	}
	p.filename = ops[0]
	prog := a.newProgress(p.progress, 2.0)
	defer prog.close()
	prog.print(0, 100)
	err := a.rebase(&p, prog)
	prog.end()
	if err != nil {
		if !errors.Is(err, errReported) {
			a.reportErr("", err)
		}
		return 1
	}
	return 0
}

// errReported is returned once the error has been printed.
var errReported = errors.New("error reported")

// rebase opens the image and its old and new backing chains, copies what
// must be copied and rewrites the header.
func (a *App) rebase(p *rebaseParams, prog *progress) error {
	mode, ok := a.parseCache(p.cache, false)
	if !ok {
		return errReported
	}
	srcMode, ok := a.parseCache(p.srcCache, true)
	if !ok {
		return errReported
	}
	n, ok := a.openImage(p.filename, openSpec{imageOpts: p.imageOpts, format: p.format, cache: mode, write: true, noBacking: p.unsafe})
	if !ok {
		return errReported
	}
	defer n.Close()
	if p.backingFmt != "" {
		if _, ok := a.env().Registry.Lookup(p.backingFmt); !ok {
			return fmt.Errorf("Invalid format name: '%s'", p.backingFmt)
		}
	}
	if !p.unsafe {
		if err := a.rebaseData(n, p, srcMode, prog); err != nil {
			return err
		}
	}
	err := changeBacking(n, p.backing, p.backingFmt)
	switch {
	case errors.Is(err, syscall.ENOSPC):
		err = fmt.Errorf("Could not change the backing file to '%s': No space left in the file header", cName(p))
	case errors.Is(err, syscall.EINVAL) && p.backing != "" && p.backingFmt == "":
		err = fmt.Errorf("Could not change the backing file to '%s': backing format must be specified", cName(p))
	case err != nil:
		err = fmt.Errorf("Could not change the backing file to '%s': %s", cName(p), storage.Strerror(err))
	}
	prog.print(100, 0)
	return err
}

// cName is the new backing file name as qemu-img's messages print it: the
// C string, "(null)" when -b was not given.
func cName(p *rebaseParams) string {
	if !p.hasBacking {
		return "(null)"
	}
	return p.backing
}

// changeBacking records the new backing file in the image header, as
// QEMU's bdrv_change_backing_file: a backing file needs a format, and an
// empty name removes the backing file (and its format).
func changeBacking(n *block.Node, name, format string) error {
	if name == "" {
		format = ""
	} else if format == "" {
		return syscall.EINVAL
	}
	c, ok := n.Image.(block.BackingChanger)
	if !ok {
		return syscall.ENOTSUP
	}
	return c.ChangeBackingFile(name, format)
}

// rebaseData opens the new backing chain and writes into the image what
// would change with it.
func (a *App) rebaseData(n *block.Node, p *rebaseParams, srcMode block.CacheMode, prog *progress) error {
	var oldBacking, newBacking, prefix block.Image
	if n.Backing != nil {
		oldBacking = n.Backing
	}
	if p.backing != "" {
		full := block.CombinePath(n.File.Name(), p.backing)
		if pre := n.FindBackingImage(full); pre != nil {
			newBacking, prefix = pre, pre
		} else {
			nb, err := a.env().Open(full, block.OpenOptions{Format: p.backingFmt, ForceShare: p.forceShare, Cache: srcMode})
			if err != nil {
				a.reportErr(fmt.Sprintf("Could not open new backing file '%s': ", p.backing), err)
				return errReported
			}
			defer nb.Close()
			newBacking = nb
		}
	}
	size := n.Size()
	var step float32
	if size != 0 {
		step = 100 / float32(size/min(size, block.RebaseChunk))
	}
	return block.Rebase(block.RebaseParams{
		Image:      n,
		OldBacking: oldBacking,
		NewBacking: newBacking,
		Prefix:     prefix,
		Step:       func() { prog.print(step, 100) },
	})
}
