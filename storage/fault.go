package storage

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"syscall"
)

// This file holds a fault injector for tests: Files and an Opener that
// count every change made to the files, can make the N-th change (and, as
// a dead disk or a killed process, every later one) fail, and keep what a
// crash could leave behind: the data last made durable by Sync, plus any
// choice of the changes made since.

// ErrInjected is the error an injected fault returns unless another is set:
// EIO, as a failing disk reports.
var ErrInjected error = syscall.EIO

// Injector decides which changes to files fail. Changes are WriteAt,
// Truncate, PunchHole, ZeroRange and Preallocate; they are numbered from 1
// in the order they reach the injector, across every file that shares it.
// The zero value injects nothing. An Injector is safe for concurrent use.
type Injector struct {
	mu sync.Mutex
	// changes counts the changes seen.
	changes int
	// failAt is the number of the first change that fails (0: none).
	failAt int
	// stop makes every change after failAt fail too, and Sync with them.
	stop bool
	err  error
	// tripped is set once a fault was injected.
	tripped bool
	seq     int64
	// syncs makes Syncs count (and fail) as changes.
	syncs bool
}

// CountSyncs makes every Sync count as a change too, so that FailAt can
// stop a file just before a Sync (after the writes it would have made
// durable).
func (in *Injector) CountSyncs(on bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.syncs = on
}

// FailAt makes change n fail with err (ErrInjected when nil). With stop,
// every later change and every later Sync fails too, as on a disk that
// went away or in a process that died: the files keep what they had.
func (in *Injector) FailAt(n int, err error, stop bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if err == nil {
		err = ErrInjected
	}
	in.failAt, in.err, in.stop = n, err, stop
}

// Changes returns how many changes were made or attempted so far.
func (in *Injector) Changes() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.changes
}

// Tripped reports whether a fault was injected.
func (in *Injector) Tripped() bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.tripped
}

// change numbers a change and returns the error it must fail with, if any,
// and its sequence number.
func (in *Injector) change() (int64, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.changes++
	in.seq++
	if in.failAt > 0 && (in.changes == in.failAt || (in.stop && in.changes > in.failAt)) {
		in.tripped = true
		return in.seq, in.err
	}
	return in.seq, nil
}

// syncErr returns the error a Sync must fail with, if any.
func (in *Injector) syncErr() error {
	in.mu.Lock()
	counted := in.syncs
	if !counted {
		defer in.mu.Unlock()
		if in.stop && in.tripped {
			return in.err
		}
		return nil
	}
	in.mu.Unlock()
	_, err := in.change()
	return err
}

// opKind says what a recorded change did.
type opKind uint8

const (
	opWrite opKind = iota
	opTruncate
	opPunch // the range reads as zeroes; the length does not change
	opZero  // the range reads as zeroes; the file grows to hold it
	opPrealloc
)

// faultOp is one change made since the last Sync.
type faultOp struct {
	seq  int64
	kind opKind
	off  int64
	n    int64
	data []byte
}

// apply makes the change to f.
func (op *faultOp) apply(f *MemFile) {
	switch op.kind {
	case opWrite:
		_, _ = f.WriteAt(op.data, op.off)
	case opTruncate:
		_ = f.Truncate(op.off)
	case opPunch:
		_ = f.PunchHole(op.off, op.n)
	case opZero:
		_ = f.ZeroRange(op.off, op.n)
	case opPrealloc:
		_ = f.Preallocate(op.off, op.n)
	}
}

// faultState is what a crash of one file could leave: its content at the
// last Sync and the changes made since, shared by every handle on it.
type faultState struct {
	mu sync.Mutex
	// durable is the content as of the last successful Sync.
	durable *MemFile
	pending []faultOp
}

// FaultFile is a File that passes reads and changes to another File,
// failing the changes its Injector says, and remembers what a crash
// could leave: the content at the last Sync and the changes made since.
type FaultFile struct {
	inner File
	in    *Injector
	st    *faultState
}

// NewFaultFile wraps f. Its current content counts as durable; f's
// allocated ranges are copied into memory to keep it. A nil Injector gets
// a new one of its own.
func NewFaultFile(f File, in *Injector) (*FaultFile, error) {
	if in == nil {
		in = &Injector{}
	}
	durable, err := snapshotFile(f)
	if err != nil {
		return nil, err
	}
	return &FaultFile{inner: f, in: in, st: &faultState{durable: durable}}, nil
}

// snapshotFile copies a file's content into a MemFile, skipping holes.
func snapshotFile(f File) (*MemFile, error) {
	if m, ok := f.(*MemFile); ok {
		return m.Clone(), nil
	}
	if h, ok := f.(*memHandle); ok {
		return h.MemFile.Clone(), nil
	}
	size, err := f.Size()
	if err != nil {
		return nil, err
	}
	m := NewMemFile(f.Name())
	if err := m.Truncate(size); err != nil {
		return nil, err
	}
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; {
		start, end, err := NextData(f, off, size)
		if err != nil {
			return nil, err
		}
		if start >= size {
			break
		}
		for pos := start; pos < end; {
			n := min(int64(len(buf)), end-pos)
			if err := ReadFull(f, buf[:n], pos); err != nil {
				return nil, err
			}
			if _, err := m.WriteAt(buf[:n], pos); err != nil {
				return nil, err
			}
			pos += n
		}
		off = end
	}
	return m, nil
}

// Injector returns the file's injector.
func (f *FaultFile) Injector() *Injector { return f.in }

// record numbers a change, and keeps it if it is made.
func (f *FaultFile) record(op faultOp, do func() error) error {
	seq, err := f.in.change()
	if err != nil {
		return err
	}
	f.st.mu.Lock()
	defer f.st.mu.Unlock()
	if err := do(); err != nil {
		return err
	}
	op.seq = seq
	f.st.pending = append(f.st.pending, op)
	return nil
}

// ReadAt reads from the wrapped file.
func (f *FaultFile) ReadAt(p []byte, off int64) (int, error) { return f.inner.ReadAt(p, off) }

// WriteAt writes unless a fault is injected; a faulted write changes
// nothing.
func (f *FaultFile) WriteAt(p []byte, off int64) (int, error) {
	err := f.record(faultOp{kind: opWrite, off: off, data: append([]byte(nil), p...)}, func() error {
		_, err := f.inner.WriteAt(p, off)
		return err
	})
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// Truncate sets the length unless a fault is injected.
func (f *FaultFile) Truncate(size int64) error {
	return f.record(faultOp{kind: opTruncate, off: size}, func() error { return f.inner.Truncate(size) })
}

// PunchHole deallocates a range unless a fault is injected.
func (f *FaultFile) PunchHole(off, n int64) error {
	return f.record(faultOp{kind: opPunch, off: off, n: n}, func() error { return PunchHole(f.inner, off, n) })
}

// ZeroRange zeroes a range unless a fault is injected.
func (f *FaultFile) ZeroRange(off, n int64) error {
	return f.record(faultOp{kind: opZero, off: off, n: n}, func() error {
		z, ok := f.inner.(ZeroRanger)
		if !ok {
			return ErrNotSupported
		}
		return z.ZeroRange(off, n)
	})
}

// Preallocate reserves a range unless a fault is injected.
func (f *FaultFile) Preallocate(off, n int64) error {
	return f.record(faultOp{kind: opPrealloc, off: off, n: n}, func() error {
		p, ok := f.inner.(Preallocator)
		if !ok {
			return ErrNotSupported
		}
		return p.Preallocate(off, n)
	})
}

// Sync makes every change so far durable, unless the injector stopped the
// file.
func (f *FaultFile) Sync() error {
	if err := f.in.syncErr(); err != nil {
		return err
	}
	f.st.mu.Lock()
	defer f.st.mu.Unlock()
	if err := f.inner.Sync(); err != nil {
		return err
	}
	for k := range f.st.pending {
		f.st.pending[k].apply(f.st.durable)
	}
	f.st.pending = nil
	return nil
}

// Name returns the wrapped file's name.
func (f *FaultFile) Name() string { return f.inner.Name() }

// Size returns the wrapped file's length.
func (f *FaultFile) Size() (int64, error) { return f.inner.Size() }

// Close closes the wrapped file; what a crash leaves stays available.
func (f *FaultFile) Close() error { return f.inner.Close() }

// SeekData passes to the wrapped file.
func (f *FaultFile) SeekData(off int64) (int64, error) {
	if d, ok := f.inner.(DataSeeker); ok {
		return d.SeekData(off)
	}
	return 0, ErrNotSupported
}

// SeekHole passes to the wrapped file.
func (f *FaultFile) SeekHole(off int64) (int64, error) {
	if d, ok := f.inner.(DataSeeker); ok {
		return d.SeekHole(off)
	}
	return 0, ErrNotSupported
}

// AllocatedSize passes to the wrapped file.
func (f *FaultFile) AllocatedSize() (int64, error) {
	if a, ok := f.inner.(AllocatedSizer); ok {
		return a.AllocatedSize()
	}
	return 0, ErrNotSupported
}

// FileID passes to the wrapped file.
func (f *FaultFile) FileID() (dev, ino uint64, ok bool) {
	if id, ok := f.inner.(Identifier); ok {
		return id.FileID()
	}
	return 0, 0, false
}

// LockByte passes to the wrapped file; without locks it locks nothing.
func (f *FaultFile) LockByte(off int64) error {
	if l, ok := f.inner.(ByteLocker); ok {
		return l.LockByte(off)
	}
	return nil
}

// UnlockByte passes to the wrapped file.
func (f *FaultFile) UnlockByte(off int64) error {
	if l, ok := f.inner.(ByteLocker); ok {
		return l.UnlockByte(off)
	}
	return nil
}

// ByteLocked passes to the wrapped file.
func (f *FaultFile) ByteLocked(off int64) (bool, error) {
	if l, ok := f.inner.(ByteLocker); ok {
		return l.ByteLocked(off)
	}
	return false, nil
}

// CrashMode says which changes made since the last Sync survive a crash.
type CrashMode int

const (
	// CrashSynced keeps only what was synced: a power failure on a disk
	// that wrote nothing it was not made to flush.
	CrashSynced CrashMode = iota
	// CrashAll keeps every change that was made: a killed process,
	// whose completed writes the operating system still has.
	CrashAll
	// CrashPrefix keeps the first Keep changes since the last Sync, in
	// the order they were made (across files for a FaultFS).
	CrashPrefix
	// CrashRandom keeps a random subset of the changes, chosen by
	// Rand: a disk that reorders unflushed writes.
	CrashRandom
	// CrashTorn is CrashRandom at the granularity of 512-byte sectors:
	// each sector of each write survives or not on its own (torn
	// writes).
	CrashTorn
	// CrashAllBut keeps every change but one, the Skip-th since the last
	// Sync (counting from 0, across files for a FaultFS): trying each in
	// turn finds any write that must not reach the disk before another.
	CrashAllBut
)

// CrashOptions choose what a simulated crash keeps.
type CrashOptions struct {
	Mode CrashMode
	// Keep is the number of changes CrashPrefix keeps.
	Keep int
	// Skip is the change CrashAllBut drops.
	Skip int
	// Rand draws the subsets of CrashRandom and CrashTorn.
	Rand *rand.Rand
}

// crashSector is the unit a torn write survives in.
const crashSector = 512

// Pending returns how many changes were made since the last Sync.
func (f *FaultFile) Pending() int {
	f.st.mu.Lock()
	defer f.st.mu.Unlock()
	return len(f.st.pending)
}

// Crash returns the file as a crash now could leave it.
func (f *FaultFile) Crash(o CrashOptions) (*MemFile, error) {
	f.st.mu.Lock()
	defer f.st.mu.Unlock()
	keep, err := crashFilter(o, f.st.pending, nil)
	if err != nil {
		return nil, err
	}
	return crashImage(f.st.durable, f.st.pending, keep, o), nil
}

// crashFilter decides which pending changes survive: the Keep first by
// sequence number, across all files (order holds the sequence numbers of
// all pending changes, sorted; nil for one file), or a random subset.
func crashFilter(o CrashOptions, pending []faultOp, order []int64) (func(op *faultOp) bool, error) {
	switch o.Mode {
	case CrashSynced:
		return func(*faultOp) bool { return false }, nil
	case CrashAll:
		return func(*faultOp) bool { return true }, nil
	case CrashTorn:
		if o.Rand == nil {
			return nil, errors.New("CrashTorn needs a random source")
		}
		return func(*faultOp) bool { return true }, nil
	case CrashPrefix, CrashAllBut:
		if order == nil {
			for _, op := range pending {
				order = append(order, op.seq)
			}
		}
		if o.Mode == CrashAllBut {
			if o.Skip < 0 || o.Skip >= len(order) {
				return func(*faultOp) bool { return true }, nil
			}
			skip := order[o.Skip]
			return func(op *faultOp) bool { return op.seq != skip }, nil
		}
		if o.Keep >= len(order) {
			return func(*faultOp) bool { return true }, nil
		}
		if o.Keep <= 0 {
			return func(*faultOp) bool { return false }, nil
		}
		last := order[o.Keep-1]
		return func(op *faultOp) bool { return op.seq <= last }, nil
	case CrashRandom:
		if o.Rand == nil {
			return nil, errors.New("CrashRandom needs a random source")
		}
		return func(*faultOp) bool { return o.Rand.IntN(2) != 0 }, nil
	}
	return nil, fmt.Errorf("unknown crash mode %d", o.Mode)
}

// crashImage applies the surviving changes to a copy of the durable
// content; with CrashTorn each sector of a write survives on its own.
func crashImage(durable *MemFile, pending []faultOp, keep func(*faultOp) bool, o CrashOptions) *MemFile {
	out := durable.Clone()
	for k := range pending {
		op := &pending[k]
		if !keep(op) {
			continue
		}
		if o.Mode != CrashTorn || op.kind != opWrite {
			if o.Mode == CrashTorn && o.Rand.IntN(2) == 0 {
				continue
			}
			op.apply(out)
			continue
		}
		for pos := op.off; pos < op.off+int64(len(op.data)); {
			end := min((pos/crashSector+1)*crashSector, op.off+int64(len(op.data)))
			if o.Rand.IntN(2) == 0 {
				_, _ = out.WriteAt(op.data[pos-op.off:end-op.off], pos)
			}
			pos = end
		}
	}
	return out
}

// FaultFS is an Opener over a MemFS whose files are FaultFiles sharing one
// Injector, so that a scenario touching several files (an image and its
// data file or backing file) fails and crashes as a whole. Every handle on
// a name shares what a crash of that file could leave.
type FaultFS struct {
	Mem *MemFS
	In  *Injector

	mu    sync.Mutex
	state map[string]*faultState
}

// NewFaultFS returns a FaultFS over mem with a new Injector. The files mem
// holds count as durable.
func NewFaultFS(mem *MemFS) *FaultFS {
	return &FaultFS{Mem: mem, In: &Injector{}, state: make(map[string]*faultState)}
}

// wrap makes a FaultFile of a handle on name.
func (fs *FaultFS) wrap(name string, h File) *FaultFile {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	st, ok := fs.state[name]
	if !ok {
		st = &faultState{durable: fs.Mem.File(name).Clone()}
		fs.state[name] = st
	}
	return &FaultFile{inner: h, in: fs.In, st: st}
}

// Open opens an existing file through the fault injector.
func (fs *FaultFS) Open(name string, o OpenOptions) (File, error) {
	h, err := fs.Mem.Open(name, o)
	if err != nil {
		return nil, err
	}
	return fs.wrap(name, h), nil
}

// Create creates or truncates a file through the fault injector (a change
// that may fail); the new file is empty and durable.
func (fs *FaultFS) Create(name string, o OpenOptions) (File, error) {
	if _, err := fs.In.change(); err != nil {
		return nil, err
	}
	h, err := fs.Mem.Create(name, o)
	if err != nil {
		return nil, err
	}
	fs.mu.Lock()
	delete(fs.state, name)
	fs.mu.Unlock()
	return fs.wrap(name, h), nil
}

// Exists reports whether a file exists.
func (fs *FaultFS) Exists(name string) bool { return fs.Mem.Exists(name) }

// Remove deletes a file (a change that may fail).
func (fs *FaultFS) Remove(name string) error {
	if _, err := fs.In.change(); err != nil {
		return err
	}
	fs.mu.Lock()
	delete(fs.state, name)
	fs.mu.Unlock()
	return fs.Mem.Remove(name)
}

// Pending returns how many changes were made to all files since their
// last Sync.
func (fs *FaultFS) Pending() int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n := 0
	for _, st := range fs.state {
		st.mu.Lock()
		n += len(st.pending)
		st.mu.Unlock()
	}
	return n
}

// Crash returns a MemFS holding every file as a crash now could leave it.
// With CrashPrefix, the first Keep changes across all files survive.
func (fs *FaultFS) Crash(o CrashOptions) (*MemFS, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	var order []int64
	for _, st := range fs.state {
		st.mu.Lock()
		defer st.mu.Unlock()
		for _, op := range st.pending {
			order = append(order, op.seq)
		}
	}
	sort.Slice(order, func(a, b int) bool { return order[a] < order[b] })
	out := NewMemFS()
	for _, name := range fs.Mem.Names() {
		st, ok := fs.state[name]
		if !ok {
			out.Put(name, fs.Mem.File(name).Clone())
			continue
		}
		keep, err := crashFilter(o, st.pending, order)
		if err != nil {
			return nil, err
		}
		out.Put(name, crashImage(st.durable, st.pending, keep, o))
	}
	return out, nil
}
