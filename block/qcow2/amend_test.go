package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/internal/oracle"
)

// amend amends an open image with an option list.
func amend(t testing.TB, n *block.Node, list string, progress func(done, total int64)) error {
	t.Helper()
	am := n.Image.(block.Amender)
	opts := block.NewOptions(am.AmendSpecs())
	if err := opts.Parse(list); err != nil {
		t.Fatalf("options %q: %v", list, err)
	}
	return am.Amend(opts, false, progress)
}

// TestAmendRefcountWidths changes the refcount width through every value
// and back, with snapshots sharing clusters, and checks content and
// refcounts after each change.
func TestAmendRefcountWidths(t *testing.T) {
	const size = 4 << 20
	_, n := memCreate(t, "cluster_size=512", size)
	defer n.Close()
	ops := &imageOps{t: t, img: n, m: &model{data: make([]byte, size)}, rng: rand.New(rand.NewPCG(7, 8))}
	ops.write(0, 300000)
	ops.compressed(1<<20, 512)
	ops.zero(2<<20, 4096, 0)
	if err := snapshotter(n).CreateSnapshot(block.SnapshotInfo{Name: "s"}); err != nil {
		t.Fatal(err)
	}
	ops.write(100, 5000)
	for _, bits := range []int{1 << 6, 1 << 5, 1 << 3, 1 << 1, 1 << 2, 1 << 4} {
		var last, total int64
		err := amend(t, n, fmt.Sprintf("refcount_bits=%d", bits), func(done, tot int64) { last, total = done, tot })
		if err != nil {
			t.Fatalf("refcount_bits=%d: %v", bits, err)
		}
		if last != total || total == 0 {
			t.Errorf("refcount_bits=%d: progress ended at %d of %d", bits, last, total)
		}
		if got := n.Image.(*Image).hdr.RefcountOrder; 1<<got != bits {
			t.Fatalf("refcount order %d after refcount_bits=%d", got, bits)
		}
		checkConsistent(t, n)
		ops.verify()
		ops.write(int64(bits)*1000, 3000)
	}
	// Width 1 cannot count a shared cluster.
	err := amend(t, n, "refcount_bits=1", nil)
	if err == nil || !errors.Is(err, syscall.EINVAL) ||
		!bytes.HasPrefix([]byte(err.Error()), []byte("Cannot decrease refcount entry width to 1 bits: Cluster at offset 0x")) {
		t.Fatalf("refcount_bits=1 with shared clusters: %v", err)
	}
	checkConsistent(t, n)
	ops.verify()
}

// TestAmendVersions downgrades and upgrades an image with zero clusters and
// snapshots, and turns lazy refcounts on and off.
func TestAmendVersions(t *testing.T) {
	const size = 2 << 20
	_, n := memCreate(t, "cluster_size=4k", size)
	defer n.Close()
	ops := &imageOps{t: t, img: n, m: &model{data: make([]byte, size)}, rng: rand.New(rand.NewPCG(9, 10))}
	ops.write(0, 20000)
	ops.zero(8192, 8192, 0)
	ops.zero(1<<20, 64<<10, 0)
	if err := snapshotter(n).CreateSnapshot(block.SnapshotInfo{Name: "s"}); err != nil {
		t.Fatal(err)
	}
	ops.zero(0, 4096, 0)
	img := n.Image.(*Image)
	if err := amend(t, n, "compat=0.10", nil); err != nil {
		t.Fatal(err)
	}
	if img.hdr.Version != 2 {
		t.Fatalf("version %d after downgrade", img.hdr.Version)
	}
	checkConsistent(t, n)
	ops.verify()
	for _, e := range []string{"lazy_refcounts=on", "refcount_bits=8"} {
		if err := amend(t, n, e, nil); !errors.Is(err, syscall.EINVAL) {
			t.Errorf("%s on a version 2 image: %v", e, err)
		}
	}
	if err := amend(t, n, "compat=1.1,lazy_refcounts=on", nil); err != nil {
		t.Fatal(err)
	}
	if img.hdr.Version != 3 || img.compat&compatLazyRefcounts == 0 || !img.lazyRefcounts {
		t.Fatal("not upgraded with lazy refcounts")
	}
	ops.write(50000, 1000) // marks the image dirty
	if img.incompat&incompatDirty == 0 {
		t.Fatal("a lazy refcounts write left the image clean")
	}
	if err := amend(t, n, "lazy_refcounts=off", nil); err != nil {
		t.Fatal(err)
	}
	if img.incompat&incompatDirty != 0 || img.compat&compatLazyRefcounts != 0 {
		t.Fatal("lazy refcounts off left the image dirty or lazy")
	}
	checkConsistent(t, n)
	ops.verify()
}

// TestAmendErrors checks the refusals callers word QEMU's messages from.
func TestAmendErrors(t *testing.T) {
	_, n := memCreate(t, "extended_l2=on", 1<<20)
	defer n.Close()
	for _, c := range []struct{ opts, msg string }{
		{"compat=2", "Unknown compatibility level 2"},
		{"refcount_bits=3", "Refcount width must be a power of two and may not exceed 64 bits"},
		{"refcount_bits=128", "Refcount width must be a power of two and may not exceed 64 bits"},
		{"data_file=x", "data-file can only be set for images that use an external data file"},
		{"data_file_raw=on", "data-file-raw cannot be set on existing images"},
		{"encrypt.state=active", "Can't amend encryption options - encryption not present"},
		{"backing_file=x", "Cannot amend the backing file"},
		{"backing_fmt=raw", "Cannot amend the backing file"},
		{"compat=0.10", "Cannot downgrade an image with incompatible features 0x10 set"},
		{"compat=0.10,lazy_refcounts=on", "Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)"},
		{"compat=0.10,refcount_bits=8", "Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)"},
	} {
		if err := amend(t, n, c.opts, nil); err == nil || err.Error() != c.msg {
			t.Errorf("%s: %v, want %q", c.opts, err, c.msg)
		}
	}
	_, n2 := memCreate(t, "refcount_bits=8", 1<<20)
	defer n2.Close()
	if err := amend(t, n2, "compat=0.10", nil); err == nil || err.Error() != "compat=0.10 requires refcount_bits=16" {
		t.Errorf("downgrade with 8-bit refcounts: %v", err)
	}
	env, _ := testEnv(t)
	ro, err := env.Open("v3-512.qcow2", block.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if err := amend(t, ro, "compat=0.10", nil); !errors.Is(err, block.ErrReadOnly) {
		t.Errorf("amend of a read-only image: %v", err)
	}
}

// stripSnapshotExtraData rewrites an image's snapshot table in place
// without extra data, as programs before QEMU 1.1 wrote it.
func stripSnapshotExtraData(t testing.TB, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	nb := int(binary.BigEndian.Uint32(b[60:]))
	off := binary.BigEndian.Uint64(b[64:])
	sns, size, err := decodeSnapshots(bytesSource(b[off:]), nb, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	for _, sn := range sns {
		for len(out)%8 != 0 {
			out = append(out, 0)
		}
		var h [snapshotHeaderSize]byte
		binary.BigEndian.PutUint64(h[0:], sn.L1TableOffset)
		binary.BigEndian.PutUint32(h[8:], sn.L1Size)
		binary.BigEndian.PutUint16(h[12:], uint16(len(sn.ID)))
		binary.BigEndian.PutUint16(h[14:], uint16(len(sn.Name)))
		binary.BigEndian.PutUint32(h[16:], sn.DateSec)
		binary.BigEndian.PutUint32(h[20:], sn.DateNsec)
		binary.BigEndian.PutUint64(h[24:], sn.VMClockNsec)
		binary.BigEndian.PutUint32(h[32:], uint32(sn.VMStateSize))
		out = append(append(append(out, h[:]...), sn.ID...), sn.Name...)
	}
	copy(b[off:off+uint64(size)], append(out, make([]byte, size-len(out))...))
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestInteropAmendIdentical amends copies of images QEMU wrote with qimg and
// with qemu-img and expects the same files.
func TestInteropAmendIdentical(t *testing.T) {
	oracle.QemuImgPath(t)
	for _, c := range []struct {
		name, create, opts                 string
		backing, oldSnapshots, noSnapshots bool
	}{
		{name: "downgrade", create: "cluster_size=4k", opts: "compat=0.10"},
		{name: "downgrade over backing", create: "cluster_size=4k", opts: "compat=0.10", backing: true},
		{name: "upgrade", create: "compat=0.10", opts: "compat=1.1"},
		{name: "upgrade old snapshot table", create: "compat=0.10", opts: "compat=1.1", oldSnapshots: true},
		{name: "refcount 1", create: "cluster_size=512", opts: "refcount_bits=1", noSnapshots: true},
		{name: "refcount 64", create: "cluster_size=512,refcount_bits=1", opts: "refcount_bits=64", noSnapshots: true},
		{name: "refcount 4 with snapshots", create: "cluster_size=4k", opts: "refcount_bits=4"},
		{name: "lazy refcounts", create: "", opts: "lazy_refcounts=on"},
		{name: "shrink", create: "cluster_size=4k", opts: "size=1M"},
		{name: "upgrade, refcounts and size", create: "compat=0.10", opts: "compat=1.1,refcount_bits=2,size=9M"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			ours, theirs := filepath.Join(dir, "ours.qcow2"), filepath.Join(dir, "theirs.qcow2")
			args := []string{"create", "-q", "-f", "qcow2"}
			if c.backing {
				base := filepath.Join(dir, "base.qcow2")
				oracle.MustQemuImg(t, "create", "-q", "-f", "qcow2", base, "4M")
				oracle.Write(t, base, "qcow2", 9, 0, 4<<20)
				args = append(args, "-b", base, "-F", "qcow2")
			}
			if c.create != "" {
				args = append(args, "-o", c.create)
			}
			oracle.MustQemuImg(t, append(args, theirs, "4M")...)
			writes := []string{"-c", "write -P 1 0 100k", "-c", "write -P 2 1M 64k"}
			if c.create != "compat=0.10" {
				writes = append(writes, "-c", "write -z 2M 64k", "-c", "write -z 3M 4k")
			}
			oracle.MustQemuIO(t, append(append([]string{"-f", "qcow2"}, writes...), theirs)...)
			if !c.noSnapshots {
				oracle.MustQemuImg(t, "snapshot", "-c", "s1", theirs)
				oracle.MustQemuIO(t, "-f", "qcow2", "-c", "write -P 3 1M 8k", theirs)
				oracle.MustQemuImg(t, "snapshot", "-c", "s2", theirs)
			}
			if c.oldSnapshots {
				stripSnapshotExtraData(t, theirs)
			}
			oracle.CopyFile(t, theirs, ours)
			oracle.MustQemuImg(t, "amend", "-o", c.opts, theirs)
			n, err := hostEnv().Open(ours, hostWrite())
			if err != nil {
				t.Fatal(err)
			}
			if err := amend(t, n, c.opts, nil); err != nil {
				t.Fatal(err)
			}
			if err := n.Close(); err != nil {
				t.Fatal(err)
			}
			oracle.Check(t, ours, "qcow2")
			if err := oracle.SameFile(ours, theirs); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestInteropDowngradeSharedZeroCluster downgrades an image whose active
// layer zeroed (keeping the allocation) a cluster a snapshot still holds as
// data: unlike QEMU 7.2, which zeroes the shared cluster, qimg gives the
// zero cluster its own, so that the snapshot keeps its data and qemu-img
// check passes.
func TestInteropDowngradeSharedZeroCluster(t *testing.T) {
	oracle.QemuImgPath(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "z.qcow2")
	oracle.MustQemuImg(t, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", img, "2M")
	oracle.Write(t, img, "qcow2", 1, 0, 20000)
	oracle.MustQemuImg(t, "snapshot", "-c", "s", img)
	oracle.MustQemuIO(t, "-f", "qcow2", "-c", "write -z 0 4096", img)
	n, err := hostEnv().Open(img, hostWrite())
	if err != nil {
		t.Fatal(err)
	}
	if err := amend(t, n, "compat=0.10", nil); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	oracle.Check(t, img, "qcow2")
	oracle.ReadPattern(t, img, "qcow2", 0, 0, 4096)
	oracle.ReadPattern(t, img, "qcow2", 1, 4096, 20000-4096)
	snap := filepath.Join(dir, "s.raw")
	oracle.MustQemuImg(t, "convert", "-l", "s", "-O", "raw", img, snap)
	b, err := os.ReadFile(snap)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b[:20000], bytes.Repeat([]byte{1}, 20000)) {
		t.Fatal("the snapshot lost its data")
	}
}
