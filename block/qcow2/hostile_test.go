package qcow2

import (
	"runtime"
	"testing"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/internal/mutate"
	"github.com/qimg/qimg/storage"
)

// TestOpenLargeTablesMemory opens images whose L1 table (32 MiB) and
// refcount table (8 MiB) are as large as QEMU allows: loading a table
// allocates about its own size, not twice it (found by the hostile corpus:
// in a chain of such images the transient copies took untrusted mode near
// its 1 GiB limit).
func TestOpenLargeTablesMemory(t *testing.T) {
	cases, err := mutate.NewRegistry().GenerateFormat("qcow2", mutate.Target{Secret: "/x", NetAddr: "127.0.0.1:1", Sample: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{"qcow2/v3/huge-l1-32MiB-8TiB": 32 << 20, "qcow2/v3/huge-reftable-8MiB": 8 << 20}
	for i := range cases {
		c := &cases[i]
		table, ok := want[c.Name]
		if !ok {
			continue
		}
		delete(want, c.Name)
		mf := storage.NewMemFile(c.Main)
		f := c.Files[c.Main]
		mf.WriteAt(f.Data, 0)
		for _, ch := range f.Chunks {
			mf.WriteAt(ch.Data, ch.Off)
		}
		mf.Truncate(max(f.Size, int64(len(f.Data))))
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		img, err := New().Open(mf, &block.DriverOptions{Filename: c.Main, Options: block.NewOptions(New().OpenSpecs())})
		runtime.ReadMemStats(&after)
		if err != nil {
			t.Fatalf("%s: %v", c.Name, err)
		}
		img.Close()
		if got := after.TotalAlloc - before.TotalAlloc; got > table+table/4+(1<<20) {
			t.Errorf("%s: opening allocated %d MiB for a %d MiB table", c.Name, got>>20, table>>20)
		}
	}
	if len(want) != 0 {
		t.Fatalf("cases not generated: %v", want)
	}
}
