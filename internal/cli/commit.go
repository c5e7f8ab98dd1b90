package cli

import (
	"context"
	"errors"
	"fmt"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/copyengine"
	"github.com/qimg/qimg/storage"
)

// cmdCommit is `qemu-img commit`: it copies the image's data into its
// backing file (or into the image -b names further down the chain), then,
// unless -d or -b, empties the image, as qemu-img 7.2's img_commit does.
// Like qemu-img, it leaves every image's backing file name as it is: with
// -b, the images between the top and the base keep their data and stay in
// the chain on disk.
func cmdCommit(a *App, args []string) int {
	g := newGetopt(args, ":f:ht:b:dpqr:", []longOpt{
		{"help", noArgument, 'h'},
		{"object", requiredArgument, optObject},
		{"image-opts", noArgument, optImageOpts},
	})
	var format, base string
	cache := defaultCache
	var rate int64
	hasBase, drop, progress, quiet, imageOpts := false, false, false, false, false
	for {
		c := g.next()
		if c == -1 {
			break
		}
		switch c {
		case ':':
			return a.usageError("missing argument for option '%s'", g.prev())
		case '?':
			return a.usageError("unrecognized option '%s'", g.prev())
		case 'h':
			return a.help()
		case 'f':
			format = g.optarg
		case 't':
			cache = g.optarg
		case 'b':
			base, hasBase = g.optarg, true
			drop = true // -b implies -d
		case 'd':
			drop = true
		case 'p':
			progress = true
		case 'q':
			quiet = true
		case 'r':
			v, ok := a.cvtnum("rate limit", g.optarg, 0, maxInt64)
			if !ok {
				return 1
			}
			rate = v
		case optObject:
			if code, stop := a.objectOption(g.optarg); stop {
				return code
			}
		case optImageOpts:
			imageOpts = true
		}
	}
	if quiet {
		progress = false
	}
	ops := g.operands()
	if len(ops) != 1 {
		return a.usageError("Expecting one image file name")
	}
	filename := ops[0]
	mode, ok := a.parseCache(cache, false)
	if !ok {
		return 1
	}
	n, ok := a.openImage(filename, openSpec{imageOpts: imageOpts, format: format, cache: mode, write: true, writeBacking: true})
	if !ok {
		return 1
	}
	prog := a.newProgress(progress, 1.0)
	defer prog.close()
	prog.print(0, 100)
	err := a.commit(n, filename, base, hasBase, drop, rate, prog)
	prog.end()
	if cerr := n.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		a.reportErr("", err)
		return 1
	}
	if !quiet {
		a.printf("Image committed.\n")
	}
	return 0
}

// commit runs the commit job on an opened image and empties the image
// unless drop.
func (a *App) commit(n *block.Node, filename, base string, hasBase, drop bool, rate int64, prog *progress) error {
	var target *block.Node
	if hasBase {
		target = n.FindBackingImage(base)
		if target == nil {
			return fmt.Errorf("Did not find '%s' in the backing chain of '%s'", base, filename)
		}
	} else {
		target = n.Backing
		if target == nil {
			return errors.New("Image does not have a backing file")
		}
	}
	err := copyengine.Commit(context.Background(), n, target, copyengine.CommitOptions{
		RateLimit: rate,
		Progress: func(done, total int64) {
			if total > 0 {
				prog.print(float32(done)/float32(total)*100, 0)
			}
		},
	})
	if err != nil {
		var ce *copyengine.Error
		if errors.As(err, &ce) {
			err = ce.Err
		}
		return fmt.Errorf("Block job failed: %s", storage.Strerror(err))
	}
	prog.print(100, 0)
	if drop {
		return nil
	}
	e, ok := n.Image.(block.Emptier)
	if !ok {
		return nil // qemu-img ignores ENOTSUP
	}
	if err := e.MakeEmpty(); err != nil {
		if errors.Is(err, block.ErrUnsupported) {
			return nil
		}
		return fmt.Errorf("Failed to empty %s: %s", n.Filename, storage.Strerror(err))
	}
	return nil
}
