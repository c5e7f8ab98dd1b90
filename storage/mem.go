package storage

import (
	"fmt"
	"io"
	"sort"
	"sync"
	"unsafe"
)

// memChunk is the allocation unit of a MemFile: ranges never written are
// holes and take no memory, so terabyte-sized files fit in a test.
const memChunk = 64 << 10

// MemFile is a sparse in-memory File. It supports hole punching, zero
// ranges, SEEK_DATA/SEEK_HOLE and allocated size at 64 KiB granularity. It is
// safe for concurrent use.
type MemFile struct {
	mu     sync.RWMutex
	name   string
	size   int64
	chunks map[int64][]byte // chunk index -> memChunk bytes
	syncs  int
	closed bool
	// locks models byte-range locks of MemFS handles (see lock.go).
	locks memLocks
}

// NewMemFile returns an empty in-memory file.
func NewMemFile(name string) *MemFile {
	return &MemFile{name: name, chunks: make(map[int64][]byte)}
}

// Name returns the file's name.
func (m *MemFile) Name() string { return m.name }

// Size returns the file length.
func (m *MemFile) Size() (int64, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.size, nil
}

// ReadAt reads from the file; holes read as zeroes.
func (m *MemFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%s: negative offset %d", m.name, off)
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if off >= m.size {
		return 0, io.EOF
	}
	n := len(p)
	var err error
	if int64(n) > m.size-off {
		n = int(m.size - off)
		err = io.EOF
	}
	for done := 0; done < n; {
		pos := off + int64(done)
		ci, co := pos/memChunk, pos%memChunk
		c := min(n-done, int(memChunk-co))
		if ch, ok := m.chunks[ci]; ok {
			copy(p[done:done+c], ch[co:])
		} else {
			clear(p[done : done+c])
		}
		done += c
	}
	return n, err
}

// WriteAt writes to the file, growing it as needed.
func (m *MemFile) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%s: negative offset %d", m.name, off)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for done := 0; done < len(p); {
		pos := off + int64(done)
		ci, co := pos/memChunk, pos%memChunk
		c := min(len(p)-done, int(memChunk-co))
		ch, ok := m.chunks[ci]
		if !ok {
			ch = make([]byte, memChunk)
			m.chunks[ci] = ch
		}
		copy(ch[co:], p[done:done+c])
		done += c
	}
	if end := off + int64(len(p)); end > m.size {
		m.size = end
	}
	return len(p), nil
}

// Truncate sets the length; bytes past a shrunken end are forgotten.
func (m *MemFile) Truncate(size int64) error {
	if size < 0 {
		return fmt.Errorf("%s: negative size %d", m.name, size)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if size < m.size {
		m.zeroLocked(size, m.size-size, true)
	}
	m.size = size
	return nil
}

// zeroLocked zeroes a range; whole chunks are freed when free is set.
func (m *MemFile) zeroLocked(off, n int64, free bool) {
	end := off + n
	for pos := off; pos < end; {
		ci, co := pos/memChunk, pos%memChunk
		c := min(end-pos, memChunk-co)
		if ch, ok := m.chunks[ci]; ok {
			if co == 0 && c == memChunk && free {
				delete(m.chunks, ci)
			} else {
				clear(ch[co : co+c])
			}
		}
		pos += c
	}
}

// PunchHole zeroes [off, off+n) and frees the whole chunks inside it.
func (m *MemFile) PunchHole(off, n int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off >= m.size {
		return nil
	}
	m.zeroLocked(off, min(n, m.size-off), true)
	return nil
}

// ZeroRange zeroes [off, off+n), growing the file if needed.
func (m *MemFile) ZeroRange(off, n int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.zeroLocked(off, n, true)
	if off+n > m.size {
		m.size = off + n
	}
	return nil
}

// Preallocate grows the file to cover [off, off+n).
func (m *MemFile) Preallocate(off, n int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off+n > m.size {
		m.size = off + n
	}
	return nil
}

// SeekData finds the first allocated chunk at or after off.
func (m *MemFile) SeekData(off int64) (int64, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if off >= m.size {
		return 0, ErrNoData
	}
	best := int64(-1)
	for ci := range m.chunks {
		if (ci+1)*memChunk > off && (best < 0 || ci < best) {
			best = ci
		}
	}
	if best < 0 {
		return 0, ErrNoData
	}
	pos := max(off, best*memChunk)
	if pos >= m.size {
		return 0, ErrNoData
	}
	return pos, nil
}

// SeekHole finds the first hole at or after off; the end of file is a hole.
func (m *MemFile) SeekHole(off int64) (int64, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if off >= m.size {
		return off, nil
	}
	ci := off / memChunk
	for {
		if _, ok := m.chunks[ci]; !ok {
			return max(off, ci*memChunk), nil
		}
		ci++
		if ci*memChunk >= m.size {
			return m.size, nil
		}
	}
}

// AllocatedSize returns the memory held by allocated chunks.
func (m *MemFile) AllocatedSize() (int64, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return int64(len(m.chunks)) * memChunk, nil
}

// Sync counts the call; data in memory is always "durable".
func (m *MemFile) Sync() error {
	m.mu.Lock()
	m.syncs++
	m.mu.Unlock()
	return nil
}

// Syncs returns how many times Sync was called.
func (m *MemFile) Syncs() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.syncs
}

// Close marks the file closed; its content stays available to Clone and to
// later opens through a MemFS.
func (m *MemFile) Close() error {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	return nil
}

// Clone returns an independent copy of the file.
func (m *MemFile) Clone() *MemFile {
	m.mu.RLock()
	defer m.mu.RUnlock()
	c := &MemFile{name: m.name, size: m.size, chunks: make(map[int64][]byte, len(m.chunks))}
	for k, v := range m.chunks {
		c.chunks[k] = append([]byte(nil), v...)
	}
	return c
}

// Bytes returns the whole content; for tests on small files.
func (m *MemFile) Bytes() []byte {
	m.mu.RLock()
	size := m.size
	m.mu.RUnlock()
	b := make([]byte, size)
	_, _ = m.ReadAt(b, 0)
	return b
}

// MemFS is an Opener over named MemFiles, for tests.
type MemFS struct {
	mu    sync.Mutex
	files map[string]*MemFile
}

// NewMemFS returns an empty in-memory file system.
func NewMemFS() *MemFS { return &MemFS{files: make(map[string]*MemFile)} }

// Open returns a handle on an existing file.
func (fs *MemFS) Open(name string, o OpenOptions) (File, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	f, ok := fs.files[name]
	if !ok {
		return nil, &OpenError{Name: name, Err: errNoEnt}
	}
	return &memHandle{MemFile: f, write: o.Write, noSync: o.NoSync}, nil
}

// Create creates or truncates a file.
func (fs *MemFS) Create(name string, o OpenOptions) (File, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	f, ok := fs.files[name]
	if !ok {
		f = NewMemFile(name)
		fs.files[name] = f
	}
	if err := f.Truncate(0); err != nil {
		return nil, err
	}
	return &memHandle{MemFile: f, write: true, noSync: o.NoSync}, nil
}

// Exists reports whether a file exists.
func (fs *MemFS) Exists(name string) bool {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	_, ok := fs.files[name]
	return ok
}

// Remove deletes a file.
func (fs *MemFS) Remove(name string) error {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if _, ok := fs.files[name]; !ok {
		return &OpenError{Name: name, Err: errNoEnt}
	}
	delete(fs.files, name)
	return nil
}

// File returns the named file itself, or nil.
func (fs *MemFS) File(name string) *MemFile {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.files[name]
}

// Put stores f under name, replacing any file there.
func (fs *MemFS) Put(name string, f *MemFile) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.files[name] = f
}

// Names lists the files, sorted.
func (fs *MemFS) Names() []string {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	var names []string
	for n := range fs.files {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// memHandle is an open handle on a MemFile; it enforces read-only opens,
// owns its byte-range locks (lock.go), and on Close only drops its locks, so
// the content stays in the MemFS.
type memHandle struct {
	*MemFile
	write bool
	// noSync makes Sync a no-op (cache=unsafe), as for a LocalFile.
	noSync bool
	// closed is guarded by MemFile.mu.
	closed bool
}

func (h *memHandle) WriteAt(p []byte, off int64) (int, error) {
	if !h.write {
		return 0, ErrReadOnly
	}
	return h.MemFile.WriteAt(p, off)
}

func (h *memHandle) Truncate(size int64) error {
	if !h.write {
		return ErrReadOnly
	}
	return h.MemFile.Truncate(size)
}

func (h *memHandle) PunchHole(off, n int64) error {
	if !h.write {
		return ErrReadOnly
	}
	return h.MemFile.PunchHole(off, n)
}

func (h *memHandle) ZeroRange(off, n int64) error {
	if !h.write {
		return ErrReadOnly
	}
	return h.MemFile.ZeroRange(off, n)
}

// Sync counts a sync on the file unless the handle was opened with NoSync.
func (h *memHandle) Sync() error {
	if h.noSync {
		return nil
	}
	return h.MemFile.Sync()
}

func (h *memHandle) Preallocate(off, n int64) error {
	if !h.write {
		return ErrReadOnly
	}
	return h.MemFile.Preallocate(off, n)
}

// FileID identifies the MemFile behind a handle.
func (m *MemFile) FileID() (dev, ino uint64, ok bool) {
	return 0, uint64(uintptr(unsafe.Pointer(m))), true
}
