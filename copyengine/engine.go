package copyengine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/storage"
)

// compressBatch is how much data a worker of a compressed copy reads at
// once (whole clusters, at least one).
const compressBatch = 512 << 10

// errStopped is what a worker returns when the copy stopped under it; the
// error that stopped it is reported instead.
var errStopped = errors.New("copy stopped")

// copier is one running copy.
type copier struct {
	dst   block.Image
	parts []part
	total int64
	o     Options

	// sparse is the minimum zero run in bytes, 0 to write everything.
	sparse int64
	// align is the granularity of write boundaries found by zero
	// detection.
	align int64
	// bufSize is the size of each worker's buffer.
	bufSize  int64
	parallel int
	compress bool
	cluster  int64
	// zeroSkip is set when zeroes need not be written at all.
	zeroSkip   bool
	compressor block.Compressor
	offload    atomic.Bool

	read, written, compressed, zeroed, offloaded atomic.Int64

	mu  sync.Mutex
	err error
	// turns passes the right to write from one job to the next when
	// writes are in order: job n waits on turns[n%len(turns)], which job
	// n-1 signals when its writes are done. At most Parallel jobs are out
	// at once, so with Parallel+1 slots no two of them share one.
	turns []chan struct{}
	// quit is closed when the copy fails or is cancelled.
	quit chan struct{}

	rateMu  sync.Mutex
	limiter *rateLimiter

	warnMu sync.Mutex
}

// job is a unit of work handed to a worker: one unit, or for compressed
// copies several data units in a row.
type job struct {
	seq    int64
	off, n int64
	kind   kind
}

// Size returns how many bytes of the target the sources fill, laid end to
// end (each rounded up to a sector unless its Length is set).
func Size(srcs []Source) int64 {
	var total int64
	for _, s := range srcs {
		total += sourceLength(s)
	}
	return total
}

func sourceLength(s Source) int64 {
	if s.Length > 0 {
		return s.Length
	}
	return roundUp(max(s.Image.Size()-s.Offset, 0), sectorSize)
}

// Copy copies the sources, laid end to end, into dst at o.TargetOffset,
// and returns what it did. dst must be large enough. Copy does not flush
// dst.
//
// A failed step is reported as an *Error. When ctx is cancelled, Copy
// stops handing out work, waits for the requests in flight and returns
// ctx.Err(); the target is then partly written.
func Copy(ctx context.Context, dst block.Image, srcs []Source, o Options) (Stats, error) {
	c, err := newCopier(dst, srcs, o)
	if err != nil {
		return Stats{}, err
	}
	if err := ctx.Err(); err != nil {
		return Stats{}, err
	}
	var total int64
	if o.Progress != nil {
		p := &planner{c: c}
		for !p.done() {
			if err := ctx.Err(); err != nil {
				return Stats{}, err
			}
			u, err := p.next()
			if err != nil {
				return Stats{}, err
			}
			if c.counted(u) {
				total += u.n
			}
		}
	}
	stop := context.AfterFunc(ctx, func() { c.fail(ctx.Err()) })
	defer stop()

	jobs := make(chan job)
	var wg sync.WaitGroup
	for range c.parallel {
		wg.Go(func() { c.worker(jobs) })
	}
	if err := c.dispatch(jobs, total); err != nil {
		c.fail(err)
	}
	close(jobs)
	wg.Wait()
	st := Stats{
		Read:       c.read.Load(),
		Written:    c.written.Load(),
		Compressed: c.compressed.Load(),
		Zeroed:     c.zeroed.Load(),
		Offloaded:  c.offloaded.Load(),
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return st, c.err
}

// newCopier checks the options and places the sources.
func newCopier(dst block.Image, srcs []Source, o Options) (*copier, error) {
	c := &copier{dst: dst, o: o, quit: make(chan struct{})}
	if len(srcs) == 0 {
		return nil, errors.New("no source to copy")
	}
	var pos int64
	for i, s := range srcs {
		if s.Image == nil {
			return nil, fmt.Errorf("source %d has no image", i)
		}
		size := s.Image.Size()
		if s.Offset < 0 || s.Offset > size || s.Length < 0 {
			return nil, fmt.Errorf("source %d: window at %d of %d bytes outside an image of %d bytes", i, s.Offset, s.Length, size)
		}
		align := max(s.Alignment, sectorSize)
		if align%sectorSize != 0 {
			return nil, fmt.Errorf("source %d: alignment %d is not a multiple of %d", i, s.Alignment, sectorSize)
		}
		length := sourceLength(s)
		c.parts = append(c.parts, part{Source: s, start: pos, length: length, size: size, align: align})
		pos += length
	}
	c.total = pos
	switch {
	case o.SparseSize < 0:
		c.sparse = 0
	case o.SparseSize == 0:
		c.sparse = DefaultSparseSize
	default:
		c.sparse = max(o.SparseSize&^(sectorSize-1), sectorSize)
	}
	c.parallel = o.Parallel
	if c.parallel <= 0 {
		c.parallel = DefaultParallel
	}
	c.bufSize = o.BufferSize
	if c.bufSize <= 0 {
		c.bufSize = DefaultBufferSize
	}
	if c.bufSize%sectorSize != 0 || c.bufSize > MaxBufferSize {
		return nil, fmt.Errorf("buffer size %d is not a multiple of %d up to %d", c.bufSize, sectorSize, MaxBufferSize)
	}
	if o.TargetOffset < 0 || o.TargetOffset%sectorSize != 0 {
		return nil, fmt.Errorf("target offset %d is not a multiple of %d", o.TargetOffset, sectorSize)
	}
	if end := o.TargetOffset + c.total; end > dst.Size() {
		return nil, fmt.Errorf("target of %d bytes is too small for %d bytes at offset %d", dst.Size(), c.total, o.TargetOffset)
	}
	c.cluster = o.ClusterSize
	if c.cluster == 0 {
		if info, ok := imageInfo(dst); ok {
			c.cluster = info.ClusterSize
		}
	}
	c.compress = o.Compress
	if c.compress {
		comp, ok := block.As[block.Compressor](dst)
		if !ok {
			return nil, fmt.Errorf("target cannot write compressed clusters: %w", block.ErrUnsupported)
		}
		if c.cluster <= 0 || c.cluster%sectorSize != 0 || c.cluster > MaxBufferSize {
			return nil, errors.New("invalid cluster size")
		}
		if o.TargetOffset%c.cluster != 0 {
			return nil, fmt.Errorf("target offset %d is not a multiple of the cluster size %d", o.TargetOffset, c.cluster)
		}
		c.compressor = comp
		// Compression is the work: one worker per processor at least,
		// each with a smaller batch of clusters, so that memory stays
		// near Parallel full buffers.
		c.parallel = max(c.parallel, runtime.GOMAXPROCS(0))
		batch := min(c.bufSize, max(compressBatch, c.cluster))
		c.bufSize = max(batch-batch%c.cluster, c.cluster)
	}
	// Zero runs found in data must be at least a sparse size long, and
	// writes end on multiples of the sparse size (rounded down to a power
	// of two) or of the target's alignment, as qemu-img's do.
	c.align = sectorSize
	if c.sparse > 0 {
		c.align = max(c.align, int64(1)<<(bits.Len64(uint64(c.sparse))-1))
	}
	if a := o.TargetAlignment; a > 0 && a&(a-1) == 0 {
		c.align = max(c.align, a)
	}
	c.zeroSkip = o.TargetZeroed && c.sparse > 0
	if o.RateLimit > 0 {
		c.limiter = &rateLimiter{rate: o.RateLimit}
	}
	c.offload.Store(o.CopyOffload && !c.compress)
	if c.inOrder() {
		c.turns = make([]chan struct{}, c.parallel+1)
		for i := range c.turns {
			c.turns[i] = make(chan struct{}, 1)
		}
		c.turns[0] <- struct{}{}
	}
	return c, nil
}

// dispatch plans the copy and hands the jobs to the workers, reporting
// progress as it goes.
func (c *copier) dispatch(jobs chan<- job, total int64) error {
	p := &planner{c: c}
	var done, seq int64
	var pending job
	havePending := false
	send := func(j job) bool {
		j.seq = seq
		seq++
		select {
		case jobs <- j:
			return true
		case <-c.quit:
			return false
		}
	}
	for !p.done() {
		select {
		case <-c.quit:
			return nil
		default:
		}
		u, err := p.next()
		if err != nil {
			return err
		}
		if c.counted(u) {
			done += u.n
			if c.o.Progress != nil {
				c.o.Progress(done, total)
			}
		}
		if c.compress && u.kind == kindData && havePending &&
			pending.off+pending.n == u.off && pending.n+u.n <= c.bufSize {
			pending.n += u.n
			continue
		}
		if havePending {
			if !send(pending) {
				return nil
			}
			havePending = false
		}
		switch {
		case u.kind == kindBacking:
			continue
		case u.kind == kindZero && c.zeroSkip:
			continue
		case c.compress && u.kind == kindData:
			pending, havePending = job{off: u.off, n: u.n, kind: u.kind}, true
			continue
		}
		if !send(job{off: u.off, n: u.n, kind: u.kind}) {
			return nil
		}
	}
	if havePending {
		send(pending)
	}
	return nil
}

// fail records the first error and stops the copy.
func (c *copier) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.err = err
		close(c.quit)
	}
}

func (c *copier) stopped() bool {
	select {
	case <-c.quit:
		return true
	default:
		return false
	}
}

// worker runs jobs with its own buffer until the jobs run out.
func (c *copier) worker(jobs <-chan job) {
	var buf []byte
	for j := range jobs {
		if c.stopped() {
			continue
		}
		if buf == nil && (j.kind == kindData || c.sparse == 0) {
			buf = storage.AlignedBuffer(int(c.bufSize))
		}
		if err := c.run(j, buf); err != nil && !errors.Is(err, errStopped) {
			c.fail(err)
		}
	}
}

// inOrder reports whether writes wait for their turn.
func (c *copier) inOrder() bool { return !c.o.OutOfOrder && !c.compress }

// acquire waits until the job's writes may run. It returns false when the
// copy stopped.
func (c *copier) acquire(j job) bool {
	if !c.inOrder() {
		return !c.stopped()
	}
	select {
	case <-c.turns[j.seq%int64(len(c.turns))]:
		return !c.stopped()
	case <-c.quit:
		return false
	}
}

// release lets the next job's writes run.
func (c *copier) release(j job) {
	if !c.inOrder() {
		return
	}
	c.turns[(j.seq+1)%int64(len(c.turns))] <- struct{}{}
}

// run does one job.
func (c *copier) run(j job, buf []byte) error {
	if j.kind == kindZero {
		if !c.acquire(j) {
			return errStopped
		}
		var err error
		if c.sparse == 0 {
			b := buf[:j.n]
			clear(b)
			if c.compress {
				err = c.writeCompressed(j.off, b)
			} else {
				err = c.write(j.off, b)
			}
		} else {
			err = c.zero(j.off, j.n)
		}
		if err != nil {
			return c.wrap(OpWrite, j, err)
		}
		c.release(j)
		return nil
	}
	held := false
	if c.offload.Load() {
		if !c.acquire(j) {
			return errStopped
		}
		held = true
		if err := c.copyRange(j); err == nil {
			c.release(j)
			return nil
		} else if errors.Is(err, errStopped) {
			return err
		}
		// Fall back to reading and writing, for good.
		c.offload.Store(false)
	}
	b := buf[:j.n]
	if err := c.readCopy(j.off, b); err != nil {
		return c.wrap(OpRead, j, err)
	}
	if !held && !c.acquire(j) {
		return errStopped
	}
	var err error
	if c.compress {
		err = c.writeClusters(j.off, b)
	} else {
		err = c.writeData(j.off, b)
	}
	if err != nil {
		return c.wrap(OpWrite, j, err)
	}
	c.release(j)
	return nil
}

// wrap reports a failed job as qemu-img does, at the job's start.
func (c *copier) wrap(op string, j job, err error) error {
	if errors.Is(err, errStopped) {
		return err
	}
	return &Error{Op: op, Offset: j.off, Err: err}
}

// readCopy fills buf with the copy's bytes at pos, which may span sources.
func (c *copier) readCopy(pos int64, buf []byte) error {
	for len(buf) > 0 {
		pt := &c.parts[c.partAt(pos)]
		rel := pos - pt.start
		n := min(int64(len(buf)), pt.length-rel)
		imgOff := pt.Offset + rel
		avail := min(max(pt.size-imgOff, 0), n)
		if avail > 0 {
			if err := c.readImage(pt.Image, buf[:avail], imgOff); err != nil {
				return err
			}
		}
		clear(buf[avail:n])
		buf = buf[n:]
		pos += n
	}
	return nil
}

// readImage reads from one image; in salvage mode unreadable sectors are
// zeroed with a warning each.
func (c *copier) readImage(img block.Image, buf []byte, off int64) error {
	err := readFull(img, buf, off)
	if err == nil || !c.o.Salvage {
		if err == nil {
			c.read.Add(int64(len(buf)))
		}
		return err
	}
	for i := 0; i < len(buf); i += sectorSize {
		if c.stopped() {
			return errStopped
		}
		s := buf[i:min(i+sectorSize, len(buf))]
		if err := readFull(img, s, off+int64(i)); err != nil {
			c.warn(fmt.Sprintf("error while reading offset %d: %s", off+int64(i), strerror(err)))
			clear(s)
			continue
		}
		c.read.Add(int64(len(s)))
	}
	return nil
}

func readFull(img block.Image, p []byte, off int64) error {
	n, err := img.ReadAt(p, off)
	if err == nil && n < len(p) {
		err = io.ErrUnexpectedEOF
	}
	if err == io.EOF && n == len(p) {
		err = nil
	}
	return err
}

// writeData writes a buffer of read data at pos, leaving out (or zeroing)
// its zero runs.
func (c *copier) writeData(pos int64, buf []byte) error {
	if c.sparse == 0 || c.o.KeepZeroData {
		return c.write(pos, buf)
	}
	for len(buf) > 0 {
		data, n := allocatedRunMin(buf, c.o.TargetOffset+pos, c.sparse, c.align)
		var err error
		switch {
		case data:
			err = c.write(pos, buf[:n])
		case !c.zeroSkip:
			err = c.zero(pos, int64(n))
		}
		if err != nil {
			return err
		}
		buf = buf[n:]
		pos += int64(n)
	}
	return nil
}

// writeClusters writes a buffer of whole clusters compressed, leaving out
// (or zeroing) the clusters that hold only zeroes.
func (c *copier) writeClusters(pos int64, buf []byte) error {
	for len(buf) > 0 {
		n := min(int64(len(buf)), c.cluster)
		cl := buf[:n]
		var err error
		switch {
		case c.sparse == 0 || !IsZero(cl):
			err = c.writeCompressed(pos, cl)
		case !c.zeroSkip:
			err = c.zero(pos, n)
		}
		if err != nil {
			return err
		}
		buf = buf[n:]
		pos += n
	}
	return nil
}

func (c *copier) write(pos int64, p []byte) error {
	if err := c.throttle(int64(len(p))); err != nil {
		return err
	}
	if _, err := c.dst.WriteAt(p, c.o.TargetOffset+pos); err != nil {
		return err
	}
	c.written.Add(int64(len(p)))
	return nil
}

func (c *copier) writeCompressed(pos int64, p []byte) error {
	for len(p) > 0 {
		n := min(int64(len(p)), c.cluster)
		if err := c.throttle(n); err != nil {
			return err
		}
		if err := c.compressor.WriteCompressed(p[:n], c.o.TargetOffset+pos); err != nil {
			return err
		}
		c.compressed.Add(n)
		p = p[n:]
		pos += n
	}
	return nil
}

func (c *copier) zero(pos, n int64) error {
	if !c.o.ZeroesFree {
		if err := c.throttle(n); err != nil {
			return err
		}
	}
	if err := c.dst.WriteZeroes(c.o.TargetOffset+pos, n, block.MayUnmap); err != nil {
		return err
	}
	c.zeroed.Add(n)
	return nil
}

// throttle waits until n more bytes may be written under the rate limit.
func (c *copier) throttle(n int64) error {
	if c.limiter == nil {
		return nil
	}
	c.rateMu.Lock()
	d := c.limiter.reserve(n, time.Now())
	c.rateMu.Unlock()
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-c.quit:
		return errStopped
	}
}

// warn passes a warning on; workers warn concurrently, Options.Warn sees
// one call at a time.
func (c *copier) warn(msg string) {
	if c.o.Warn != nil {
		c.warnMu.Lock()
		defer c.warnMu.Unlock()
		c.o.Warn(msg)
	}
}

// strerror words an error as qemu-img's messages do.
func strerror(err error) string { return storage.Strerror(err) }
