package cli

import "github.com/qimg/qimg/block"

// Cache modes qemu-img uses when -t or -T is not given.
const (
	// defaultCache is BDRV_DEFAULT_CACHE, the default of -t and -T.
	defaultCache = "writeback"
	// defaultConvertCache is convert's default for -t.
	defaultConvertCache = "unsafe"
)

// parseCache parses the value of -t (or, with source, a source cache -T)
// as qemu-img does after reading its options, printing "Invalid cache
// option: x" or "Invalid source cache option: x" when it is not a cache
// mode. The mode is then honoured by the block layer: O_DIRECT for none and
// directsync, a flush after every write for writethrough and directsync,
// and no flushes at all for unsafe.
func (a *App) parseCache(mode string, source bool) (block.CacheMode, bool) {
	c, err := block.ParseCacheMode(mode)
	if err != nil {
		if source {
			a.errorf("Invalid source cache option: %s", mode)
		} else {
			a.errorf("Invalid cache option: %s", mode)
		}
		return 0, false
	}
	return c, true
}
