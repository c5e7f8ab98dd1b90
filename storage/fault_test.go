package storage

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

func faultMem(t *testing.T) (*MemFile, *FaultFile) {
	t.Helper()
	m := NewMemFile("f")
	if _, err := m.WriteAt([]byte("durable!"), 0); err != nil {
		t.Fatal(err)
	}
	f, err := NewFaultFile(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	return m, f
}

func content(t *testing.T, f File) string {
	t.Helper()
	size, err := f.Size()
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, size)
	if err := ReadFull(f, b, 0); err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestFaultFailAt(t *testing.T) {
	for _, tc := range []struct {
		name string
		stop bool
		want string
		errs []bool // per write
	}{
		{name: "once", want: "AbCD", errs: []bool{false, true, false, false}},
		{name: "stop", stop: true, want: "Abcd", errs: []bool{false, true, true, true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMemFile("f")
			m.WriteAt([]byte("abcd"), 0)
			f, err := NewFaultFile(m, nil)
			if err != nil {
				t.Fatal(err)
			}
			f.Injector().FailAt(2, nil, tc.stop)
			for k, c := range "ABCD" {
				_, err := f.WriteAt([]byte{byte(c)}, int64(k))
				if (err != nil) != tc.errs[k] {
					t.Fatalf("write %d: %v", k+1, err)
				}
				if err != nil && !errors.Is(err, ErrInjected) {
					t.Fatalf("write %d: %v, want the injected error", k+1, err)
				}
			}
			if got := content(t, m); got != tc.want {
				t.Errorf("content %q, want %q", got, tc.want)
			}
			if err := f.Sync(); (err != nil) != tc.stop {
				t.Errorf("sync after the fault: %v", err)
			}
			if f.Injector().Changes() != 4 || !f.Injector().Tripped() {
				t.Errorf("changes %d, tripped %v", f.Injector().Changes(), f.Injector().Tripped())
			}
		})
	}
}

func TestFaultOtherChangesCount(t *testing.T) {
	_, f := faultMem(t)
	f.Injector().FailAt(3, errors.New("boom"), false)
	if err := f.Truncate(100); err != nil {
		t.Fatal(err)
	}
	if err := f.PunchHole(0, 4); err != nil {
		t.Fatal(err)
	}
	if err := f.ZeroRange(0, 4); err == nil || err.Error() != "boom" {
		t.Fatalf("third change: %v", err)
	}
	if err := f.Preallocate(0, 200); err != nil {
		t.Fatal(err)
	}
	if n, _ := f.Size(); n != 200 {
		t.Errorf("size %d", n)
	}
}

func TestFaultCrash(t *testing.T) {
	_, f := faultMem(t)
	f.WriteAt([]byte("synced"), 0)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("1"), 0)
	f.WriteAt([]byte("2"), 1)
	f.WriteAt([]byte("3"), 2)
	f.Truncate(4)
	if f.Pending() != 4 {
		t.Fatalf("pending %d", f.Pending())
	}
	for _, tc := range []struct {
		o    CrashOptions
		want string
	}{
		{CrashOptions{Mode: CrashSynced}, "syncede!"},
		{CrashOptions{Mode: CrashAll}, "123c"},
		{CrashOptions{Mode: CrashPrefix, Keep: 2}, "12ncede!"},
		{CrashOptions{Mode: CrashPrefix, Keep: 0}, "syncede!"},
		{CrashOptions{Mode: CrashPrefix, Keep: 9}, "123c"},
		{CrashOptions{Mode: CrashAllBut, Skip: 1}, "1y3c"},
		{CrashOptions{Mode: CrashAllBut, Skip: 3}, "123cede!"},
	} {
		m, err := f.Crash(tc.o)
		if err != nil {
			t.Fatal(err)
		}
		if got := content(t, m); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.o, got, tc.want)
		}
	}
	// A random crash keeps each change or not, reproducibly.
	seen := map[string]bool{}
	for seed := uint64(0); seed < 64; seed++ {
		m, err := f.Crash(CrashOptions{Mode: CrashRandom, Rand: rand.New(rand.NewPCG(seed, 1))})
		if err != nil {
			t.Fatal(err)
		}
		again, _ := f.Crash(CrashOptions{Mode: CrashRandom, Rand: rand.New(rand.NewPCG(seed, 1))})
		got := content(t, m)
		if got != content(t, again) {
			t.Fatal("random crash not reproducible")
		}
		for k, c := range got[:min(3, len(got))] {
			if c != rune("syn"[k]) && c != rune("123"[k]) {
				t.Fatalf("crash %q: byte %d is neither old nor new", got, k)
			}
		}
		seen[got] = true
	}
	if len(seen) < 8 {
		t.Errorf("only %d different crash images from 64 seeds", len(seen))
	}
	if _, err := f.Crash(CrashOptions{Mode: CrashRandom}); err == nil {
		t.Error("random crash without a source")
	}
}

func TestFaultCrashTorn(t *testing.T) {
	m := NewMemFile("f")
	f, _ := NewFaultFile(m, nil)
	data := bytes.Repeat([]byte{1}, 8*512)
	f.WriteAt(data, 0)
	torn := false
	for seed := uint64(0); seed < 16; seed++ {
		c, err := f.Crash(CrashOptions{Mode: CrashTorn, Rand: rand.New(rand.NewPCG(seed, 2))})
		if err != nil {
			t.Fatal(err)
		}
		b := []byte(content(t, c))
		ones := 0
		for s := 0; s < len(b); s += 512 {
			sec := b[s:min(s+512, len(b))]
			if !bytes.Equal(sec, data[:len(sec)]) && !bytes.Equal(sec, make([]byte, len(sec))) {
				t.Fatalf("sector %d mixes old and new", s/512)
			}
			if sec[0] == 1 {
				ones++
			}
		}
		if ones > 0 && ones < 8 {
			torn = true
		}
	}
	if !torn {
		t.Error("no torn write in 16 crashes")
	}
}

func TestFaultFS(t *testing.T) {
	mem := NewMemFS()
	h, _ := mem.Create("a", OpenOptions{})
	h.WriteAt([]byte("aaaa"), 0)
	fs := NewFaultFS(mem)
	a, err := fs.Open("a", OpenOptions{Write: true})
	if err != nil {
		t.Fatal(err)
	}
	b, err := fs.Create("b", OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a2, _ := fs.Open("a", OpenOptions{Write: true})
	a.WriteAt([]byte("1"), 0)  // change 2 (create was 1)
	b.WriteAt([]byte("2"), 0)  // 3
	a2.WriteAt([]byte("3"), 1) // 4
	if err := b.Sync(); err != nil {
		t.Fatal(err)
	}
	b.WriteAt([]byte("4"), 1) // 5
	if fs.In.Changes() != 5 {
		t.Fatalf("changes %d", fs.In.Changes())
	}
	for _, tc := range []struct {
		keep int
		a, b string
	}{{0, "aaaa", "2"}, {1, "1aaa", "2"}, {2, "13aa", "2"}, {3, "13aa", "24"}} {
		if fs.Pending() != 3 {
			t.Fatalf("pending %d", fs.Pending())
		}
		c, err := fs.Crash(CrashOptions{Mode: CrashPrefix, Keep: tc.keep})
		if err != nil {
			t.Fatal(err)
		}
		if got := content(t, c.File("a")); got != tc.a {
			t.Errorf("keep %d: a is %q, want %q", tc.keep, got, tc.a)
		}
		if got := content(t, c.File("b")); got != tc.b {
			t.Errorf("keep %d: b is %q, want %q", tc.keep, got, tc.b)
		}
	}
	// A read-only handle stays read-only.
	r, _ := fs.Open("a", OpenOptions{})
	if _, err := r.WriteAt([]byte("x"), 0); !errors.Is(err, ErrReadOnly) {
		t.Errorf("write through a read-only handle: %v", err)
	}
	fs.In.FailAt(fs.In.Changes()+1, nil, true)
	if _, err := fs.Create("c", OpenOptions{}); err == nil {
		t.Error("create after the stop")
	}
	if err := fs.Remove("a"); err == nil {
		t.Error("remove after the stop")
	}
	if !fs.Exists("a") || fs.Exists("c") {
		t.Error("the stop changed the names")
	}
}

func TestFaultFileOverHostFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte("host"), 0o644); err != nil {
		t.Fatal(err)
	}
	lf, err := OpenLocal(p, LocalOptions{Write: true})
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	if err := lf.Truncate(3 << 20); err != nil {
		t.Fatal(err)
	}
	lf.WriteAt([]byte("tail"), 2<<20)
	f, err := NewFaultFile(lf, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("H"), 0)
	c, err := f.Crash(CrashOptions{Mode: CrashSynced})
	if err != nil {
		t.Fatal(err)
	}
	got := content(t, c)
	if len(got) != 3<<20 || got[:4] != "host" || got[2<<20:2<<20+4] != "tail" {
		t.Errorf("durable copy of the host file is wrong")
	}
	if got := content(t, lf)[:4]; got != "Host" {
		t.Errorf("host file %q", got)
	}
}

func TestFaultPunchAndZeroRange(t *testing.T) {
	m := NewMemFile("f")
	m.WriteAt([]byte("abcdefgh"), 0)
	f, _ := NewFaultFile(m, nil)
	f.PunchHole(6, 10)
	f.ZeroRange(0, 2)
	f.ZeroRange(7, 3)
	c, err := f.Crash(CrashOptions{Mode: CrashAll})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := content(t, c), "\x00\x00cdef\x00\x00\x00\x00"; got != want || got != content(t, m) {
		t.Errorf("crash %q, file %q, want %q", got, content(t, m), want)
	}
}

func TestFaultCountSyncs(t *testing.T) {
	_, f := faultMem(t)
	f.Injector().CountSyncs(true)
	f.Injector().FailAt(2, nil, true)
	if _, err := f.WriteAt([]byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err == nil {
		t.Fatal("the second operation, a sync, did not fail")
	}
	c, _ := f.Crash(CrashOptions{Mode: CrashSynced})
	if got := content(t, c); got != "durable!" {
		t.Errorf("the failed sync made %q durable", got)
	}
	if f.Pending() != 1 || f.Injector().Changes() != 2 {
		t.Errorf("pending %d, changes %d", f.Pending(), f.Injector().Changes())
	}
}
