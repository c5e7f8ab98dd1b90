package block_test

import (
	"testing"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/block/raw"
	"github.com/qimg/qimg/storage"
)

// TestNodeHonoursCacheMode checks what each cache mode does to writes and
// flushes of an opened image: writethrough and directsync flush after every
// write, unsafe never flushes (not even on close), writeback and none flush
// when asked.
func TestNodeHonoursCacheMode(t *testing.T) {
	tests := []struct {
		mode block.CacheMode
		// syncs after two writes, after a flush, and after close
		afterWrites, afterFlush, afterClose int
	}{
		{block.CacheWriteback, 0, 1, 2},
		{block.CacheNone, 0, 1, 2},
		{block.CacheWritethrough, 3, 4, 5}, // a write and a WriteZeroes and a write
		{block.CacheDirectSync, 3, 4, 5},
		{block.CacheUnsafe, 0, 0, 0},
	}
	for _, tc := range tests {
		fs := storage.NewMemFS()
		f := storage.NewMemFile("x")
		f.Truncate(1 << 20)
		fs.Put("x", f)
		env := &block.Env{Registry: block.NewRegistry(raw.New()), Files: fs}
		n, err := env.Open("x", block.OpenOptions{Format: "raw", Write: true, Cache: tc.mode})
		if err != nil {
			t.Fatal(err)
		}
		n.WriteAt([]byte("a"), 0)
		n.WriteZeroes(4096, 4096, 0)
		n.WriteAt([]byte("b"), 1)
		if got := f.Syncs(); got != tc.afterWrites {
			t.Errorf("%v: %d syncs after writes, want %d", tc.mode, got, tc.afterWrites)
		}
		if err := n.Flush(); err != nil {
			t.Fatal(err)
		}
		if got := f.Syncs(); got != tc.afterFlush {
			t.Errorf("%v: %d syncs after a flush, want %d", tc.mode, got, tc.afterFlush)
		}
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
		if got := f.Syncs(); got != tc.afterClose {
			t.Errorf("%v: %d syncs after close, want %d", tc.mode, got, tc.afterClose)
		}
	}
}

// TestNodeDirectIO opens a host file with cache=none: the file is opened
// with O_DIRECT, and unaligned writes still land (through bounce buffers).
func TestNodeDirectIO(t *testing.T) {
	name := t.TempDir() + "/x.raw"
	env := &block.Env{Registry: block.NewRegistry(raw.New())}
	if err := env.Create(block.CreateParams{Filename: name, Format: "raw", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	n, err := env.Open(name, block.OpenOptions{Format: "raw", Write: true, Cache: block.CacheNone})
	if err != nil {
		t.Skipf("cache=none open failed (file system without O_DIRECT?): %v", err)
	}
	defer n.Close()
	if _, err := n.WriteAt([]byte("unaligned"), 1000); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 9)
	if _, err := n.ReadAt(buf, 1000); err != nil || string(buf) != "unaligned" {
		t.Fatalf("read back %q, %v", buf, err)
	}
	if !isDirect(n.File) {
		t.Error("cache=none did not open the file with O_DIRECT")
	}
}
