package block

import "fmt"

// CacheMode is a QEMU cache mode (-t / -T).
type CacheMode int

// Cache modes.
const (
	// CacheWriteback uses the host page cache and honours flushes.
	CacheWriteback CacheMode = iota
	// CacheWritethrough flushes after every write.
	CacheWritethrough
	// CacheNone bypasses the host page cache (O_DIRECT) and honours
	// flushes.
	CacheNone
	// CacheDirectSync bypasses the host page cache and flushes after
	// every write.
	CacheDirectSync
	// CacheUnsafe uses the host page cache and ignores flushes.
	CacheUnsafe
)

// ParseCacheMode parses a cache mode name as QEMU's bdrv_parse_cache_mode
// does ("off" is an old name for "none").
func ParseCacheMode(s string) (CacheMode, error) {
	switch s {
	case "writeback":
		return CacheWriteback, nil
	case "writethrough":
		return CacheWritethrough, nil
	case "none", "off":
		return CacheNone, nil
	case "directsync":
		return CacheDirectSync, nil
	case "unsafe":
		return CacheUnsafe, nil
	}
	return 0, fmt.Errorf("Invalid cache option: %s", s)
}

// Direct reports whether the mode bypasses the host page cache.
func (c CacheMode) Direct() bool { return c == CacheNone || c == CacheDirectSync }

// WriteThrough reports whether every write is flushed.
func (c CacheMode) WriteThrough() bool { return c == CacheWritethrough || c == CacheDirectSync }

// IgnoreFlush reports whether flushes are skipped.
func (c CacheMode) IgnoreFlush() bool { return c == CacheUnsafe }

func (c CacheMode) String() string {
	return [...]string{"writeback", "writethrough", "none", "directsync", "unsafe"}[c]
}
