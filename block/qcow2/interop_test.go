package qcow2

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/block/raw"
	"github.com/qimg/qimg/internal/oracle"
)

// hostEnv returns an environment over host files.
func hostEnv() *block.Env {
	return &block.Env{Registry: block.NewRegistry(New(), raw.New())}
}

// readAll reads a whole image with qimg.
func readAll(t testing.TB, env *block.Env, path string) []byte {
	t.Helper()
	n, err := env.Open(path, block.OpenOptions{})
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	defer n.Close()
	b := make([]byte, n.Size())
	const chunk = 1<<20 + 4096 + 17 // odd, to cross boundaries
	for off := int64(0); off < int64(len(b)); off += chunk {
		end := min(off+chunk, int64(len(b)))
		if _, err := n.ReadAt(b[off:end], off); err != nil {
			t.Fatalf("read %s at %d: %v", path, off, err)
		}
	}
	return b
}

// qemuWrites is a set of qemu-io commands exercising every kind of cluster
// for a cluster size.
func qemuWrites(cs int, compressed bool) []string {
	cmds := []string{
		fmt.Sprintf("write -P 0x11 0 %d", cs/2),
		fmt.Sprintf("write -P 0x22 %d %d", cs+cs/4, 3*cs),
		fmt.Sprintf("write -z %d %d", 2*cs, cs),
		fmt.Sprintf("write -P 0x33 %d 1000", 10*cs+100),
		fmt.Sprintf("discard %d %d", 3*cs, cs),
		"write -P 0x44 1M 64k",
		"write -z 1M 4k",
	}
	if compressed {
		cmds = append(cmds,
			fmt.Sprintf("write -c -P 0x55 %d %d", 20*cs, cs),
			fmt.Sprintf("write -c -P 0x56 %d %d", 21*cs, cs))
	}
	return cmds
}

// TestInteropReadQEMUImages has QEMU write images with every option
// combination and expects qimg to read what QEMU reads.
func TestInteropReadQEMUImages(t *testing.T) {
	oracle.QemuIOPath(t)
	type tc struct {
		name, opts string
		cs         int
		compressed bool
		backing    bool
		snapshot   bool
	}
	var cases []tc
	for _, cs := range []int{512, 4096, 65536, 2 << 20} {
		cases = append(cases,
			tc{name: fmt.Sprintf("v3-%d", cs), opts: fmt.Sprintf("cluster_size=%d", cs), cs: cs, compressed: true},
			tc{name: fmt.Sprintf("v2-%d", cs), opts: fmt.Sprintf("cluster_size=%d,compat=0.10", cs), cs: cs, compressed: true, backing: true},
			tc{name: fmt.Sprintf("zstd-%d", cs), opts: fmt.Sprintf("cluster_size=%d,compression_type=zstd", cs), cs: cs, compressed: true},
		)
		if cs >= 16384 {
			cases = append(cases, tc{name: fmt.Sprintf("extl2-%d", cs), opts: fmt.Sprintf("cluster_size=%d,extended_l2=on", cs), cs: cs, compressed: true, backing: true})
		}
	}
	for _, bits := range []int{1, 2, 4, 8, 32, 64} {
		cases = append(cases, tc{name: fmt.Sprintf("refcount%d", bits), opts: fmt.Sprintf("cluster_size=4096,refcount_bits=%d", bits), cs: 4096})
	}
	cases = append(cases,
		tc{name: "backing", opts: "cluster_size=4096", cs: 4096, backing: true, compressed: true},
		tc{name: "snapshots", opts: "cluster_size=4096", cs: 4096, snapshot: true},
		tc{name: "lazy", opts: "lazy_refcounts=on", cs: 65536},
		tc{name: "datafile", opts: "data_file=data.raw", cs: 65536},
		tc{name: "datafile-raw", opts: "data_file=data.raw,data_file_raw=on", cs: 65536},
		tc{name: "prealloc-metadata", opts: "preallocation=metadata,cluster_size=4096", cs: 4096},
		tc{name: "prealloc-falloc", opts: "preallocation=falloc", cs: 65536},
	)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			if testing.Short() && c.cs > 65536 {
				t.Skip("large clusters in -short")
			}
			dir := t.TempDir()
			img := filepath.Join(dir, "img.qcow2")
			args := []string{"create", "-q", "-f", "qcow2", "-o", c.opts}
			if c.backing {
				base := filepath.Join(dir, "base.qcow2")
				oracle.MustQemuImg(t, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", base, "3M")
				oracle.MustQemuIO(t, "-f", "qcow2", "-c", "write -P 0x99 0 3M", base)
				args = append(args, "-b", "base.qcow2", "-F", "qcow2")
			}
			if strings.Contains(c.opts, "data_file=") {
				args[5] = strings.Replace(c.opts, "data.raw", filepath.Join(dir, "data.raw"), 1)
			}
			oracle.MustQemuImg(t, append(args, img, fmt.Sprint(max(4<<20, 24*c.cs)))...)
			ioArgs := []string{"-f", "qcow2"}
			if c.snapshot {
				oracle.MustQemuIO(t, "-f", "qcow2", "-c", "write -P 0x77 0 64k", img)
				oracle.MustQemuImg(t, "snapshot", "-c", "snap1", img)
			}
			compressed := c.compressed && !strings.Contains(c.opts, "data_file")
			for _, cmd := range qemuWrites(c.cs, compressed) {
				ioArgs = append(ioArgs, "-c", cmd)
			}
			oracle.MustQemuIO(t, append(ioArgs, img)...)
			want := oracle.ConvertToRaw(t, img, "qcow2")
			got := readAll(t, hostEnv(), img)
			if !bytes.Equal(got, want) {
				for j := range got {
					if got[j] != want[j] {
						t.Fatalf("content differs at %d: %#x, QEMU %#x", j, got[j], want[j])
					}
				}
			}
		})
	}
}

// TestInteropHostileHeaderMessages compares open errors with qemu-img's.
func TestInteropHostileHeaderMessages(t *testing.T) {
	oracle.QemuImgPath(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.qcow2")
	oracle.MustQemuImg(t, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", base, "1M")
	orig, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	be := func(b []byte, off int, v uint64, n int) {
		for k := 0; k < n; k++ {
			b[off+k] = byte(v >> (8 * (n - 1 - k)))
		}
	}
	mods := map[string]func(b []byte){
		"version":        func(b []byte) { be(b, 4, 5, 4) },
		"cluster bits":   func(b []byte) { be(b, 20, 30, 4) },
		"header length":  func(b []byte) { be(b, 100, 90, 4) },
		"refcount order": func(b []byte) { be(b, 96, 9, 4) },
		"l1 size":        func(b []byte) { be(b, 36, 1<<25, 4) },
		"l1 offset":      func(b []byte) { be(b, 40, 4097, 8) },
		"reftable":       func(b []byte) { be(b, 56, 0, 4) },
		"snapshots":      func(b []byte) { be(b, 60, 1<<20, 4) },
		"incompatible":   func(b []byte) { be(b, 72, 1<<33|1<<5, 8) },
		"compression":    func(b []byte) { b[104] = 7 },
		"backing offset": func(b []byte) { be(b, 8, 5000, 8) },
		"extension":      func(b []byte) { be(b, 112, 0x1234, 4); be(b, 116, 99999, 4) },
	}
	for name, mod := range mods {
		t.Run(name, func(t *testing.T) {
			b := append([]byte(nil), orig...)
			mod(b)
			p := filepath.Join(t.TempDir(), "x.qcow2")
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
			r := oracle.QemuImg(t, "info", p)
			if r.Code == 0 {
				t.Skip("QEMU opens it")
			}
			want := strings.TrimPrefix(strings.TrimSpace(r.Stderr), "qemu-img: Could not open '"+p+"': ")
			_, err := hostEnv().Open(p, block.OpenOptions{})
			if err == nil || err.Error() != want {
				t.Fatalf("error %v, QEMU %q", err, want)
			}
		})
	}
}

// TestInteropWriteWithSnapshots writes to an image QEMU gave internal
// snapshots: shared clusters and L2 tables are copied on write, so the
// snapshots keep their content and the refcounts stay exact.
func TestInteropWriteWithSnapshots(t *testing.T) {
	oracle.QemuImgPath(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "s.qcow2")
	oracle.MustQemuImg(t, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", img, "8M")
	oracle.MustQemuIO(t, "-f", "qcow2", "-c", "write -P 1 0 3M", "-c", "write -c -P 2 4M 4k", img)
	oracle.MustQemuImg(t, "snapshot", "-c", "s1", img)
	snap1 := oracle.ConvertToRaw(t, img, "qcow2")
	env := hostEnv()
	n, err := env.Open(img, block.OpenOptions{Write: true, Locking: block.LockOff})
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte(nil), snap1...)
	for _, w := range []struct{ off, n int64 }{{100, 5000}, {1 << 20, 8192}, {4<<20 + 512, 100}, {6 << 20, 4096}} {
		p := bytes.Repeat([]byte{0xee}, int(w.n))
		if _, err := n.WriteAt(p, w.off); err != nil {
			t.Fatal(err)
		}
		copy(want[w.off:], p)
	}
	if err := n.WriteZeroes(2<<20, 64<<10, block.MayUnmap); err != nil {
		t.Fatal(err)
	}
	clear(want[2<<20 : 2<<20+64<<10])
	if err := n.Discard(8192, 8192); err != nil {
		t.Fatal(err)
	}
	clear(want[8192:16384])
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	oracle.Check(t, img, "qcow2")
	if got := oracle.ConvertToRaw(t, img, "qcow2"); !bytes.Equal(got, want) {
		t.Fatal("active layer differs from the model")
	}
	s1 := filepath.Join(dir, "s1.raw")
	oracle.MustQemuImg(t, "convert", "-l", "snapshot.name=s1", "-O", "raw", img, s1)
	if got, _ := os.ReadFile(s1); !bytes.Equal(got, snap1) {
		t.Fatal("snapshot content changed")
	}
}

// TestInteropResizeIdentical grows images with qimg and with qemu-img
// resize and expects identical files.
func TestInteropResizeIdentical(t *testing.T) {
	oracle.QemuImgPath(t)
	for _, c := range []struct{ opts, prealloc, from, to string }{
		{"cluster_size=64k", "off", "1M", "10G"},
		{"cluster_size=512", "metadata", "64k", "5M"},
		{"cluster_size=4k", "metadata", "1M", "300M"},
		{"cluster_size=64k", "falloc", "1M", "20M"},
		{"cluster_size=4k,refcount_bits=1", "full", "1M", "3M"},
		{"extended_l2=on", "metadata", "1M", "100M"},
	} {
		t.Run(fmt.Sprint(c), func(t *testing.T) {
			dir := t.TempDir()
			ours, theirs := filepath.Join(dir, "ours.qcow2"), filepath.Join(dir, "theirs.qcow2")
			for _, p := range []string{ours, theirs} {
				oracle.MustQemuImg(t, "create", "-q", "-f", "qcow2", "-o", c.opts, p, c.from)
			}
			oracle.MustQemuImg(t, "resize", "-q", "--preallocation="+c.prealloc, theirs, c.to)
			n, err := hostEnv().Open(ours, block.OpenOptions{Write: true, Locking: block.LockOff})
			if err != nil {
				t.Fatal(err)
			}
			size := parseSize(t, c.to)
			if err := n.Image.(block.Resizer).Resize(size, c.prealloc); err != nil {
				t.Fatal(err)
			}
			if err := n.Close(); err != nil {
				t.Fatal(err)
			}
			if err := oracle.SameFile(ours, theirs); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestInteropBitmapsMarkedInUse opens an image with persistent bitmaps for
// writing: nothing changes until the first write, which marks the bitmaps
// in use (qimg does not track writes in them), as QEMU then reports.
func TestInteropBitmapsMarkedInUse(t *testing.T) {
	oracle.QemuImgPath(t)
	img := filepath.Join(t.TempDir(), "b.qcow2")
	oracle.MustQemuImg(t, "create", "-q", "-f", "qcow2", img, "4M")
	oracle.MustQemuImg(t, "bitmap", "--add", img, "b0")
	before, _ := os.ReadFile(img)
	n, err := hostEnv().Open(img, block.OpenOptions{Write: true, Locking: block.LockOff})
	if err != nil {
		t.Fatal(err)
	}
	n.Close()
	if after, _ := os.ReadFile(img); !bytes.Equal(before, after) {
		t.Fatal("opening for writing changed the image")
	}
	n, err = hostEnv().Open(img, block.OpenOptions{Write: true, Locking: block.LockOff})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.WriteAt(make([]byte, 512), 0); err != nil {
		t.Fatal(err)
	}
	n.Close()
	oracle.Check(t, img, "qcow2")
	if out := oracle.MustQemuImg(t, "info", img); !strings.Contains(out, "[0]: in-use") {
		t.Fatalf("bitmap not in use after a write:\n%s", out)
	}
}

// TestInteropReadAES reads an image QEMU encrypted with the legacy AES
// method, with the key from a secret; without it, opening for I/O fails as
// in QEMU, and writes are refused.
func TestInteropReadAES(t *testing.T) {
	oracle.QemuIOPath(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "aes.qcow2")
	oracle.MustQemuImg(t, "create", "-q", "--object", "secret,id=s0,data=passphrase-longer-than-16", "-f", "qcow2",
		"-o", "encrypt.format=aes,encrypt.key-secret=s0,cluster_size=4k", img, "1M")
	oracle.MustQemuIO(t, "--object", "secret,id=s0,data=passphrase-longer-than-16", "--image-opts",
		"-c", "write -P 7 0 4k", "-c", "write -P 8 70000 5000", "-c", "write -z 200k 8k",
		"driver=qcow2,file.filename="+img+",encrypt.key-secret=s0")
	raw := filepath.Join(dir, "want.raw")
	oracle.MustQemuImg(t, "convert", "--object", "secret,id=s0,data=passphrase-longer-than-16", "--image-opts", "-O", "raw",
		"driver=qcow2,file.filename="+img+",encrypt.key-secret=s0", raw)
	want, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	env := hostEnv()
	if _, err := env.Open(img, block.OpenOptions{}); err == nil || err.Error() != "Parameter 'encrypt.key-secret' is required for cipher" {
		t.Fatalf("open without key: %v", err)
	}
	n, err := env.Open(img, block.OpenOptions{NoIO: true})
	if err != nil {
		t.Fatalf("open for info: %v", err)
	}
	n.Close()
	env.Secrets = map[string][]byte{"s0": []byte("passphrase-longer-than-16")}
	n, err = env.Open(img, block.OpenOptions{DriverOptions: map[string]string{"encrypt.key-secret": "s0"}})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	got := make([]byte, len(want))
	for off := 0; off < len(got); off += 3000 {
		end := min(off+3000, len(got))
		if _, err := n.ReadAt(got[off:end], int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatal("decrypted content differs from QEMU's")
	}
	w, err := env.Open(img, block.OpenOptions{Write: true, Locking: block.LockOff, DriverOptions: map[string]string{"encrypt.key-secret": "s0"}})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.WriteAt([]byte{1}, 0); !errors.Is(err, block.ErrUnsupported) {
		t.Fatalf("write to an AES image: %v", err)
	}
}

// TestInteropSameMapAsQEMU applies the same writes, zero writes and
// discards with qimg and with qemu-io, and expects qemu-img map to
// describe both images alike.
func TestInteropSameMapAsQEMU(t *testing.T) {
	oracle.QemuIOPath(t)
	type op struct {
		kind      string // "write", "zero", "zero-unmap", "discard"
		off, size int64
	}
	ops := []op{
		{"write", 0, 200 << 10}, {"zero", 64 << 10, 64 << 10}, {"zero-unmap", 128 << 10, 70 << 10},
		{"zero", 300<<10 + 512, 4096}, {"zero", 400 << 10, 512}, {"write", 500 << 10, 100},
		{"zero", 500<<10 + 4096, 512}, {"discard", 0, 64 << 10}, {"discard", 600 << 10, 1000},
		{"zero-unmap", 700 << 10, 1 << 20}, {"write", 2 << 20, 1 << 20}, {"discard", 2<<20 + 4096, 128 << 10},
	}
	for _, opts := range []string{"cluster_size=64k", "cluster_size=4k", "extended_l2=on", "compat=0.10,cluster_size=4k"} {
		t.Run(opts, func(t *testing.T) {
			dir := t.TempDir()
			ours, theirs := filepath.Join(dir, "ours.qcow2"), filepath.Join(dir, "theirs.qcow2")
			for _, p := range []string{ours, theirs} {
				oracle.MustQemuImg(t, "create", "-q", "-f", "qcow2", "-o", opts, p, "4M")
			}
			n, err := hostEnv().Open(ours, block.OpenOptions{Write: true, Locking: block.LockOff})
			if err != nil {
				t.Fatal(err)
			}
			args := []string{"-f", "qcow2"}
			for _, o := range ops {
				switch o.kind {
				case "write":
					_, err = n.WriteAt(bytes.Repeat([]byte{9}, int(o.size)), o.off)
					args = append(args, "-c", fmt.Sprintf("write -P 9 %d %d", o.off, o.size))
				case "zero":
					err = n.WriteZeroes(o.off, o.size, 0)
					args = append(args, "-c", fmt.Sprintf("write -z %d %d", o.off, o.size))
				case "zero-unmap":
					err = n.WriteZeroes(o.off, o.size, block.MayUnmap)
					args = append(args, "-c", fmt.Sprintf("write -z -u %d %d", o.off, o.size))
				case "discard":
					err = n.Discard(o.off, o.size)
					args = append(args, "-c", fmt.Sprintf("discard %d %d", o.off, o.size))
				}
				if err != nil {
					t.Fatalf("%v: %v", o, err)
				}
			}
			if err := n.Close(); err != nil {
				t.Fatal(err)
			}
			oracle.MustQemuIO(t, append(args, theirs)...)
			oracle.Check(t, ours, "qcow2")
			strip := func(s string) string {
				// Host offsets may differ; compare the shape.
				var out []string
				for _, l := range strings.Split(s, "\n") {
					if i := strings.Index(l, `, "offset"`); i >= 0 {
						l = l[:i] + "}"
					}
					out = append(out, strings.TrimSuffix(strings.TrimSuffix(l, ","), "]"))
				}
				return strings.Join(out, "\n")
			}
			a := strip(oracle.MustQemuImg(t, "map", "--output=json", ours))
			b := strip(oracle.MustQemuImg(t, "map", "--output=json", theirs))
			if a != b {
				t.Fatalf("map differs\nqimg:\n%s\nqemu-io:\n%s", a, b)
			}
			oracle.Compare(t, ours, "qcow2", theirs, "qcow2")
		})
	}
}
