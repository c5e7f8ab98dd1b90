package cli

import (
	"errors"
	"math"
	"sync"
	"syscall"
	"time"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/internal/units"
	"github.com/qimg/qimg/storage"
)

// benchMaxWorkers bounds the goroutines that keep bench's requests in
// flight: a queue deeper than this gains nothing when each request is a
// synchronous call.
const benchMaxWorkers = 256

// benchParams are bench's settings.
type benchParams struct {
	count, depth, bufSize, step, flushInterval int
	offset                                     int64
	write, drain                               bool
	pattern                                    byte
}

// benchRun issues the requests of a bench run, as qemu-img bench does:
// count requests of bufSize bytes at offsets that start at offset and
// advance by step modulo the image size, depth of them at a time; in write
// runs a flush every flushInterval completed requests, after the requests
// in flight have drained unless drain is off.
type benchRun struct {
	p    benchParams
	node *block.Node
	size int64

	mu sync.Mutex
	// issued counts requests handed out; next is the offset of the next.
	issued int
	next   int64
	// done counts completed requests since the last flush.
	done int
	err  error
	// gate is held for reading by requests and for writing by a
	// draining flush.
	gate sync.RWMutex
}

// take hands out the next request's offset; ok is false when all are out
// or the run failed.
func (r *benchRun) take() (off int64, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.issued >= r.p.count || r.err != nil {
		return 0, false
	}
	r.issued++
	off = r.next
	r.next = (r.next + int64(r.p.step)) % r.size
	return off, true
}

// fail records the first error.
func (r *benchRun) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err == nil {
		r.err = err
	}
}

// completed counts a finished request and reports whether a flush is due.
func (r *benchRun) completed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.done++
	return r.p.flushInterval > 0 && r.done%r.p.flushInterval == 0
}

func (r *benchRun) flush() {
	if r.p.drain {
		r.gate.Lock()
		defer r.gate.Unlock()
	}
	if err := r.node.Flush(); err != nil {
		r.fail(errors.New("Failed flush request: " + storage.Strerror(err)))
	}
}

// worker runs requests with its own buffer until none are left.
func (r *benchRun) worker(buf []byte) {
	for {
		off, ok := r.take()
		if !ok {
			return
		}
		r.gate.RLock()
		var err error
		if off+int64(len(buf)) > r.size {
			err = errBenchRange
		} else if r.p.write {
			_, err = r.node.WriteAt(buf, off)
		} else {
			_, err = r.node.ReadAt(buf, off)
		}
		r.gate.RUnlock()
		if err != nil {
			if errors.Is(err, block.ErrRange) {
				err = errBenchRange
			}
			r.fail(errors.New("Failed request: " + storage.Strerror(err)))
			return
		}
		if r.completed() {
			r.flush()
		}
	}
}

// errBenchRange is QEMU's error for a request beyond the image's end.
var errBenchRange error = syscall.EIO

// parseBenchUint parses a number as qemu_strtoul does (base 0, the whole
// string), accepting it up to max.
func parseBenchUint(s string, max uint64) (uint64, bool) {
	v, err := units.ParseUint(s)
	return v, err == nil && v <= max
}

func cmdBench(a *App, args []string) int {
	g := newGetopt(args, ":hc:d:f:ni:o:qs:S:t:wU", []longOpt{
		{"help", noArgument, 'h'},
		{"flush-interval", requiredArgument, optFlushInterval},
		{"image-opts", noArgument, optImageOpts},
		{"pattern", requiredArgument, optPattern},
		{"no-drain", noArgument, optNoDrain},
		{"force-share", noArgument, 'U'},
	})
	p := benchParams{count: 75000, depth: 64, bufSize: 4096, drain: true}
	var format string
	cache := defaultCache
	nativeAIO, imageOpts, forceShare := false, false, false
	for {
		c := g.next()
		if c == -1 {
			break
		}
		if code, stop := a.commonOption(g, c); stop {
			return code
		}
		switch c {
		case 'c':
			v, ok := parseBenchUint(g.optarg, math.MaxInt32)
			if !ok {
				a.errorf("Invalid request count specified")
				return 1
			}
			p.count = int(v)
		case 'd':
			v, ok := parseBenchUint(g.optarg, math.MaxInt32)
			if !ok {
				a.errorf("Invalid queue depth specified")
				return 1
			}
			p.depth = int(v)
		case 'f':
			format = g.optarg
		case 'n':
			nativeAIO = true
		case 'i':
			switch g.optarg {
			case "native":
				nativeAIO = true
			case "threads", "io_uring":
				nativeAIO = false
			default:
				a.errorf("Invalid aio option: %s", g.optarg)
				return 1
			}
		case 'o':
			v, ok := a.cvtnum("offset", g.optarg, 0, maxInt64)
			if !ok {
				return 1
			}
			p.offset = v
		case 'q':
		case 's':
			v, ok := a.cvtnum("buffer size", g.optarg, 0, math.MaxInt32)
			if !ok {
				return 1
			}
			p.bufSize = int(v)
		case 'S':
			v, ok := a.cvtnum("step_size", g.optarg, 0, math.MaxInt32)
			if !ok {
				return 1
			}
			p.step = int(v)
		case 't':
			if _, err := block.ParseCacheMode(g.optarg); err != nil {
				a.errorf("Invalid cache mode")
				return 1
			}
			cache = g.optarg
		case 'w':
			p.write = true
		case 'U':
			forceShare = true
		case optPattern:
			v, ok := parseBenchUint(g.optarg, 0xff)
			if !ok {
				a.errorf("Invalid pattern byte specified")
				return 1
			}
			p.pattern = byte(v)
		case optFlushInterval:
			v, ok := parseBenchUint(g.optarg, math.MaxInt32)
			if !ok {
				a.errorf("Invalid flush interval specified")
				return 1
			}
			p.flushInterval = int(v)
		case optNoDrain:
			p.drain = false
		case optImageOpts:
			imageOpts = true
		}
	}
	ops := g.operands()
	if len(ops) != 1 {
		return a.usageError("Expecting one image file name")
	}
	filename := ops[len(ops)-1]
	if !p.write && p.flushInterval != 0 {
		a.errorf("--flush-interval is only available in write tests")
		return 1
	}
	if p.flushInterval != 0 && p.flushInterval < p.depth {
		a.errorf("Flush interval can't be smaller than depth")
		return 1
	}
	mode, err := block.ParseCacheMode(cache)
	if err != nil {
		a.errorf("Invalid cache mode")
		return 1
	}
	if nativeAIO && !mode.Direct() {
		a.errorf("Could not open '%s': aio=native was specified, but it requires cache.direct=on, which was not specified.", filename)
		return 1
	}
	n, ok := a.openImage(filename, openSpec{imageOpts: imageOpts, format: format, forceShare: forceShare, cache: mode, write: p.write})
	if !ok {
		return 1
	}
	defer n.Close()
	if p.step == 0 {
		p.step = p.bufSize
	}
	kind := "read"
	if p.write {
		kind = "write"
	}
	a.printf("Sending %d %s requests, %d bytes each, %d in parallel (starting at offset %d, step size %d)\n",
		p.count, kind, p.bufSize, p.depth, p.offset, p.step)
	if p.flushInterval != 0 {
		a.printf("Sending flush every %d requests\n", p.flushInterval)
	}
	r := &benchRun{p: p, node: n, size: n.Size(), next: p.offset}
	if r.size <= 0 && p.count > 0 {
		a.errorf("Failed request: %s", storage.Strerror(errBenchRange))
		return 1
	}
	workers := min(p.depth, p.count, benchMaxWorkers)
	start := time.Now()
	var wg sync.WaitGroup
	for range workers {
		buf := storage.AlignedBuffer(p.bufSize)
		for i := range buf {
			buf[i] = p.pattern
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.worker(buf)
		}()
	}
	wg.Wait()
	if r.err != nil {
		a.errorf("%s", r.err)
		return 1
	}
	a.printf("Run completed in %3.3f seconds.\n", time.Since(start).Seconds())
	return 0
}
