package qcow2

import (
	"container/list"
	"fmt"
	"time"

	"github.com/qimg/qimg/storage"
)

// metaCache caches fixed-size metadata tables (L2 table slices or refcount
// blocks) read from the image file, as QEMU's Qcow2Cache does: a bounded
// number of entries replaced least recently used first, dirty entries
// written back on eviction and flush, and write-back ordering between
// caches ("dependencies").
//
// All methods run with the image's metadata lock held.
type metaCache struct {
	img *Image
	// kind is the overlap check bit that writes of this cache's entries
	// are allowed to hit (their own kind of table).
	kind int
	// entrySize is the size of an entry in bytes.
	entrySize int
	// capacity is the maximum number of entries.
	capacity int

	entries map[int64]*cacheEntry
	lru     list.List // of *cacheEntry, most recently used at the front
	free    [][]byte  // buffers of evicted entries, for reuse

	// depends is a cache whose entries must be written (and flushed)
	// before any of this cache's entries is written.
	depends *metaCache
	// dependsOnFlush means the file must be flushed before any of this
	// cache's entries is written (data before the metadata pointing to
	// it).
	dependsOnFlush bool

	// lastClean is when unused entries were last dropped.
	lastClean time.Time
}

// cacheEntry is one cached table.
type cacheEntry struct {
	offset int64
	data   []byte
	dirty  bool
	// refs counts the users holding the entry; held entries are not
	// evicted.
	refs int
	// used is set when the entry was accessed since the last clean.
	used bool
	elem *list.Element
}

func newMetaCache(img *Image, kind, entrySize, capacity int) *metaCache {
	c := &metaCache{img: img, kind: kind, entrySize: entrySize, capacity: capacity,
		entries: make(map[int64]*cacheEntry), lastClean: time.Now()}
	return c
}

// get returns the entry for the table at offset, reading it from the file
// on a miss. The caller must put it back.
func (c *metaCache) get(offset int64) (*cacheEntry, error) {
	return c.doGet(offset, true)
}

// getEmpty returns an entry for the table at offset without reading it;
// its content is undefined until the caller fills it.
func (c *metaCache) getEmpty(offset int64) (*cacheEntry, error) {
	return c.doGet(offset, false)
}

func (c *metaCache) doGet(offset int64, read bool) (*cacheEntry, error) {
	if offset == 0 {
		return nil, fmt.Errorf("metadata table at offset 0: %w", errCorrupt)
	}
	c.maybeClean()
	if e, ok := c.entries[offset]; ok {
		c.lru.MoveToFront(e.elem)
		e.refs++
		e.used = true
		return e, nil
	}
	buf, err := c.makeRoom()
	if err != nil {
		return nil, err
	}
	if read {
		if err := storage.ReadFull(c.img.f, buf, offset); err != nil {
			c.free = append(c.free, buf)
			return nil, err
		}
	}
	e := &cacheEntry{offset: offset, data: buf, refs: 1, used: true}
	e.elem = c.lru.PushFront(e)
	c.entries[offset] = e
	return e, nil
}

// makeRoom returns a buffer for a new entry, evicting the least recently
// used entry that nobody holds when the cache is full.
func (c *metaCache) makeRoom() ([]byte, error) {
	if len(c.entries) < c.capacity {
		if n := len(c.free); n > 0 {
			b := c.free[n-1]
			c.free = c.free[:n-1]
			return b, nil
		}
		return make([]byte, c.entrySize), nil
	}
	for el := c.lru.Back(); el != nil; el = el.Prev() {
		e := el.Value.(*cacheEntry)
		if e.refs > 0 {
			continue
		}
		if err := c.writeEntry(e); err != nil {
			return nil, err
		}
		c.remove(e)
		b := c.free[len(c.free)-1]
		c.free = c.free[:len(c.free)-1]
		return b, nil
	}
	return nil, fmt.Errorf("metadata cache full: %w", errCorrupt)
}

// remove drops an entry, keeping its buffer for reuse.
func (c *metaCache) remove(e *cacheEntry) {
	c.lru.Remove(e.elem)
	delete(c.entries, e.offset)
	c.free = append(c.free, e.data)
	e.data = nil
}

// put releases an entry obtained from get or getEmpty.
func (c *metaCache) put(e *cacheEntry) {
	e.refs--
}

// markDirty records that an entry must be written back.
func (c *metaCache) markDirty(e *cacheEntry) {
	e.dirty = true
}

// lookup returns the cached entry for offset, if any, without touching the
// LRU order.
func (c *metaCache) lookup(offset int64) *cacheEntry {
	return c.entries[offset]
}

// discard drops the entry for offset without writing it (its cluster was
// freed).
func (c *metaCache) discard(offset int64) {
	if e, ok := c.entries[offset]; ok && e.refs == 0 {
		c.remove(e)
	} else if ok {
		e.dirty = false
	}
}

// writeEntry writes one dirty entry back, first honouring the cache's
// dependencies, after checking it does not overlap other metadata.
func (c *metaCache) writeEntry(e *cacheEntry) error {
	if !e.dirty {
		return nil
	}
	switch {
	case c.depends != nil:
		if err := c.flushDependency(); err != nil {
			return err
		}
	case c.dependsOnFlush:
		if err := c.img.syncFile(); err != nil {
			return err
		}
		c.dependsOnFlush = false
	}
	if err := c.img.overlapCheck(c.kind, e.offset, int64(c.entrySize)); err != nil {
		return err
	}
	if _, err := c.img.f.WriteAt(e.data, e.offset); err != nil {
		return err
	}
	e.dirty = false
	return nil
}

// flushDependency writes back and flushes the cache this one depends on.
func (c *metaCache) flushDependency() error {
	if err := c.depends.flush(); err != nil {
		return err
	}
	c.depends = nil
	c.dependsOnFlush = false
	return nil
}

// write writes every dirty entry back.
func (c *metaCache) write() error {
	var first error
	for el := c.lru.Back(); el != nil; el = el.Prev() {
		if err := c.writeEntry(el.Value.(*cacheEntry)); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// flush writes every dirty entry back and flushes the file.
func (c *metaCache) flush() error {
	if err := c.write(); err != nil {
		return err
	}
	return c.img.syncFile()
}

// setDependency makes this cache's write-back wait for dependency's, as
// QEMU's qcow2_cache_set_dependency.
func (c *metaCache) setDependency(dependency *metaCache) error {
	if dependency.depends != nil {
		if err := dependency.flushDependency(); err != nil {
			return err
		}
	}
	if c.depends != nil && c.depends != dependency {
		if err := c.flushDependency(); err != nil {
			return err
		}
	}
	c.depends = dependency
	return nil
}

// dependOnFlush makes the next write-back flush the file first.
func (c *metaCache) dependOnFlush() {
	c.dependsOnFlush = true
}

// empty writes everything back and drops all entries.
func (c *metaCache) empty() error {
	if err := c.flush(); err != nil {
		return err
	}
	c.dropAll()
	return nil
}

// dropAll forgets every entry, dirty or not.
func (c *metaCache) dropAll() {
	for el := c.lru.Front(); el != nil; {
		next := el.Next()
		c.remove(el.Value.(*cacheEntry))
		el = next
	}
	c.free = nil
}

// maybeClean drops clean entries unused since the last clean when the
// cache-clean-interval has passed, so that an idle image gives its memory
// back.
func (c *metaCache) maybeClean() {
	interval := c.img.cacheCleanInterval
	if interval <= 0 {
		return
	}
	now := time.Now()
	if now.Sub(c.lastClean) < interval {
		return
	}
	c.lastClean = now
	for el := c.lru.Front(); el != nil; {
		next := el.Next()
		e := el.Value.(*cacheEntry)
		if !e.used && !e.dirty && e.refs == 0 {
			c.remove(e)
		}
		e.used = false
		el = next
	}
	c.free = nil
}
