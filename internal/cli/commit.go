package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"

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
		if code, stop := a.commonOption(g, c); stop {
			return code
		}
		switch c {
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
	spec := openSpec{imageOpts: imageOpts, format: format, cache: mode, write: true}
	n, ok := a.openImage(filename, spec)
	if !ok {
		return 1
	}
	prog := a.newProgress(progress, 1.0)
	defer prog.close()
	prog.print(0, 100)
	n, err := a.commit(n, filename, spec, base, hasBase, drop, rate, prog)
	prog.end()
	if n != nil {
		if cerr := n.Close(); err == nil && cerr != nil {
			err = cerr
		}
	}
	if err != nil {
		if !errors.Is(err, errReported) {
			a.reportErr("", err)
		}
		return 1
	}
	if !quiet {
		a.printf("Image committed.\n")
	}
	return 0
}

// reopenForCommit opens the image again with its base (the backing image
// level levels below) read-write, as QEMU reopens the base of a commit job;
// the other images of the chain stay read-only. Warnings the first open
// printed are not repeated. A failure is reported as QEMU reports a failed
// reopen: the error of the image that failed, without the chain of
// "Could not open backing file" around it.
func (a *App) reopenForCommit(filename string, spec openSpec, level int) (*block.Node, error) {
	env := *a.env()
	env.Stderr = nil
	spec.writeBacking, spec.writeBackingLevel = true, level
	if spec.imageOpts {
		var msgs bytes.Buffer
		quiet := a.withStreams(a.Stdout, &msgs)
		quiet.Env = &env
		n, ok := quiet.openImage(filename, spec)
		if !ok {
			a.Stderr.Write(msgs.Bytes())
			return nil, errReported
		}
		return n, nil
	}
	n, err := env.Open(filename, block.OpenOptions{Format: spec.format, Write: true, Cache: spec.cache,
		WriteBacking: true, WriteBackingLevel: level})
	for err != nil && strings.HasPrefix(err.Error(), "Could not open backing file: ") && errors.Unwrap(err) != nil {
		err = errors.Unwrap(err)
	}
	return n, err
}

// commit finds the base in the chain of the opened image, reopens the
// image with the base writable, runs the commit job and empties the image
// unless drop. It returns the image as it is open at the end.
func (a *App) commit(n *block.Node, filename string, spec openSpec, base string, hasBase, drop bool, rate int64, prog *progress) (*block.Node, error) {
	var target *block.Node
	if hasBase {
		target = n.FindBackingImage(base)
		if target == nil {
			return n, fmt.Errorf("Did not find '%s' in the backing chain of '%s'", base, filename)
		}
	} else {
		target = n.Backing
		if target == nil {
			return n, errors.New("Image does not have a backing file")
		}
	}
	level := 0
	for x := n; x != target; x = x.Backing {
		level++
	}
	n.Close()
	n, err := a.reopenForCommit(filename, spec, level)
	if err != nil {
		return nil, err
	}
	target = n
	for k := 0; k < level && target != nil; k++ {
		target = target.Backing
	}
	if target == nil {
		return n, errors.New("the backing chain changed while the image was reopened")
	}
	err = copyengine.Commit(context.Background(), n, target, copyengine.CommitOptions{
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
		return n, fmt.Errorf("Block job failed: %s", storage.Strerror(err))
	}
	prog.print(100, 0)
	if drop {
		return n, nil
	}
	e, ok := n.Image.(block.Emptier)
	if !ok {
		return n, nil // qemu-img ignores ENOTSUP
	}
	if err := e.MakeEmpty(); err != nil && !errors.Is(err, block.ErrUnsupported) {
		return n, fmt.Errorf("Failed to empty %s: %s", n.Filename, storage.Strerror(err))
	}
	return n, nil
}
