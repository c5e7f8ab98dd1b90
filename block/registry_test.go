package block

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"testing"

	"github.com/qimg/qimg/storage"
)

// probeDriver scores a fixed amount when the header starts with its magic.
type probeDriver struct {
	name  string
	magic string
	score int
	seen  *[]int // header lengths it was probed with
}

func (d probeDriver) Name() string { return d.name }

func (d probeDriver) Probe(p *ProbeInput) int {
	if d.seen != nil {
		*d.seen = append(*d.seen, len(p.Header))
	}
	if bytes.HasPrefix(p.Header, []byte(d.magic)) {
		return d.score
	}
	return 0
}

func (d probeDriver) Open(storage.File, *DriverOptions) (Image, error) { return nil, ErrUnsupported }

func memFile(content []byte) storage.File {
	f := storage.NewMemFile("m")
	f.WriteAt(content, 0)
	return f
}

func TestRegistryLookup(t *testing.T) {
	r := NewRegistry(probeDriver{name: "vpc"}, probeDriver{name: "raw"})
	r.Register(probeDriver{name: "qcow2"})
	if got := r.Names(); !reflect.DeepEqual(got, []string{"qcow2", "raw", "vpc"}) {
		t.Errorf("Names = %v", got)
	}
	if d, ok := r.Lookup("qcow2"); !ok || d.Name() != "qcow2" {
		t.Error("Lookup(qcow2) failed")
	}
	if _, ok := r.Lookup("QCOW2"); ok {
		t.Error("Lookup is case-insensitive")
	}
	if got := NewRegistry().Names(); len(got) != 0 {
		t.Errorf("empty registry names %v", got)
	}
	// The registry keeps its own list.
	list := []Driver{probeDriver{name: "a"}}
	r2 := NewRegistry(list...)
	list[0] = probeDriver{name: "b"}
	if _, ok := r2.Lookup("a"); !ok {
		t.Error("NewRegistry aliases its argument")
	}
}

func TestRegistryProbe(t *testing.T) {
	raw := probeDriver{name: "raw", score: 1}
	a := probeDriver{name: "a", magic: "QFI", score: 100}
	b := probeDriver{name: "b", magic: "QFI", score: 100}
	c := probeDriver{name: "c", magic: "QF", score: 50}
	tests := []struct {
		drivers []Driver
		header  string
		want    string
	}{
		{[]Driver{raw, a, b, c}, "QFI\xfb", "a"}, // tie: the first listed wins
		{[]Driver{raw, b, a, c}, "QFI\xfb", "b"},
		{[]Driver{raw, c, a}, "QFI", "a"}, // the higher score wins whatever the order
		{[]Driver{raw, a, c}, "QFX", "c"},
		{[]Driver{raw, a, c}, "hello", "raw"}, // raw is the fallback
		{[]Driver{a, c}, "hello", ""},         // nothing matches
	}
	for _, tc := range tests {
		d := NewRegistry(tc.drivers...).Probe(&ProbeInput{Header: []byte(tc.header), Size: int64(len(tc.header))})
		got := ""
		if d != nil {
			got = d.Name()
		}
		if got != tc.want {
			t.Errorf("Probe(%q) over %v = %q, want %q", tc.header, tc.drivers, got, tc.want)
		}
	}
}

func TestRegistryProbeFile(t *testing.T) {
	var seen []int
	raw := probeDriver{name: "raw", score: 1, seen: &seen}
	q := probeDriver{name: "qcow2", magic: "QFI\xfb", score: 100}
	r := NewRegistry(raw, q)

	// An empty file is raw without probing.
	d, err := r.ProbeFile(memFile(nil))
	if err != nil || d.Name() != "raw" || len(seen) != 0 {
		t.Errorf("empty file: %v, %v, probed with %v", d, err, seen)
	}
	// Probing sees at most ProbeSize bytes, fewer for a short file.
	for _, n := range []int{1, 100, ProbeSize, 4096} {
		seen = nil
		d, err := r.ProbeFile(memFile(make([]byte, n)))
		if err != nil || d.Name() != "raw" {
			t.Fatalf("%d-byte file: %v, %v", n, d, err)
		}
		if want := min(n, ProbeSize); len(seen) != 1 || seen[0] != want {
			t.Errorf("%d-byte file probed with %v bytes, want %d", n, seen, want)
		}
	}
	if d, err := r.ProbeFile(memFile([]byte("QFI\xfb\x00\x00\x00\x03"))); err != nil || d.Name() != "qcow2" {
		t.Errorf("qcow2 magic: %v, %v", d, err)
	}
	// The name never matters: only content does.
	f := storage.NewMemFile("disk.qcow2")
	f.WriteAt([]byte("plain"), 0)
	if d, _ := r.ProbeFile(f); d.Name() != "raw" {
		t.Errorf("a .qcow2 name probed as %s", d.Name())
	}
	// Without raw, an empty or unknown file has no driver.
	r2 := NewRegistry(q)
	if _, err := r2.ProbeFile(memFile([]byte("hello"))); err == nil ||
		err.Error() != "Could not determine image format: No compatible driver found" {
		t.Errorf("no match: %v", err)
	}
	if _, err := r2.ProbeFile(memFile(nil)); err == nil {
		t.Error("empty file without raw found a driver")
	}
	// A read error is reported as QEMU reports it.
	_, err = r.ProbeFile(&failingFile{MemFile: storage.NewMemFile("bad"), err: errors.New("Input/output error")})
	if err == nil || err.Error() != "Could not read image for determining its format: Input/output error" {
		t.Errorf("read error: %v", err)
	}
}

// failingFile reports a size but fails every read.
type failingFile struct {
	*storage.MemFile
	err error
}

func (f *failingFile) Size() (int64, error)                    { return 4096, nil }
func (f *failingFile) ReadAt(p []byte, off int64) (int, error) { return 0, f.err }

func TestDict(t *testing.T) {
	d := NewDict()
	if d.Len() != 0 || len(d.Keys()) != 0 {
		t.Fatal("new dict not empty")
	}
	d.Set("compat", "1.1").Set("lazy-refcounts", false).Set("refcount-bits", int64(16))
	d.Set("compat", "0.10") // replaced in place
	if got := d.Keys(); !reflect.DeepEqual(got, []string{"compat", "lazy-refcounts", "refcount-bits"}) {
		t.Errorf("Keys = %v", got)
	}
	if v, ok := d.Get("compat"); !ok || v != "0.10" {
		t.Errorf("Get(compat) = %v, %v", v, ok)
	}
	if _, ok := d.Get("nothing"); ok {
		t.Error("Get of a missing key succeeded")
	}
	var seen []string
	d.Each(func(k string, v any) { seen = append(seen, fmt.Sprintf("%s=%v", k, v)) })
	if want := []string{"compat=0.10", "lazy-refcounts=false", "refcount-bits=16"}; !reflect.DeepEqual(seen, want) {
		t.Errorf("Each saw %v", seen)
	}
	keys := d.Keys()
	keys[0] = "changed"
	if d.Keys()[0] != "compat" {
		t.Error("Keys aliases the dict")
	}
}

func TestCacheModes(t *testing.T) {
	tests := []struct {
		name                              string
		mode                              CacheMode
		direct, writeThrough, ignoreFlush bool
	}{
		{"writeback", CacheWriteback, false, false, false},
		{"writethrough", CacheWritethrough, false, true, false},
		{"none", CacheNone, true, false, false},
		{"off", CacheNone, true, false, false},
		{"directsync", CacheDirectSync, true, true, false},
		{"unsafe", CacheUnsafe, false, false, true},
	}
	for _, tc := range tests {
		m, err := ParseCacheMode(tc.name)
		if err != nil || m != tc.mode {
			t.Errorf("ParseCacheMode(%q) = %v, %v", tc.name, m, err)
			continue
		}
		if m.Direct() != tc.direct || m.WriteThrough() != tc.writeThrough || m.IgnoreFlush() != tc.ignoreFlush {
			t.Errorf("%s: direct %v writethrough %v ignore-flush %v", tc.name, m.Direct(), m.WriteThrough(), m.IgnoreFlush())
		}
		if tc.name != "off" && m.String() != tc.name {
			t.Errorf("String() = %q, want %q", m.String(), tc.name)
		}
	}
	for _, bad := range []string{"", "None", "write-back", "direct"} {
		if _, err := ParseCacheMode(bad); err == nil || err.Error() != "Invalid cache option: "+bad {
			t.Errorf("ParseCacheMode(%q): %v", bad, err)
		}
	}
}
