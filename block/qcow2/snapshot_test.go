package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/internal/oracle"
	"github.com/qimg/qimg/storage"
)

// checkConsistent verifies, without QEMU, that every cluster's refcount
// equals the references the image's structures hold and that the active
// L1 and L2 entries carry COPIED exactly where the refcount is 1.
func checkConsistent(t testing.TB, n *block.Node) {
	t.Helper()
	i := n.Image.(*Image)
	i.mu.Lock()
	defer i.mu.Unlock()
	c, err := i.countAll()
	if err != nil || c.errs > 0 {
		t.Fatalf("count references: %v (%d errors)", err, c.errs)
	}
	fileSize, err := i.f.Size()
	if err != nil {
		t.Fatal(err)
	}
	for k := int64(0); k < max(int64(len(c.counts)), i.sizeToClusters(fileSize)); k++ {
		var want uint64
		if k < int64(len(c.counts)) {
			want = uint64(c.counts[k])
		}
		have, err := i.getRefcount(k)
		if err != nil {
			t.Fatal(err)
		}
		if have != want {
			t.Fatalf("cluster %d: refcount %d, %d references", k, have, want)
		}
	}
	copied := func(what string, entry uint64, off int64) {
		t.Helper()
		rc, err := i.getRefcount(off >> i.clusterBits)
		if err != nil {
			t.Fatal(err)
		}
		if (rc == 1) != (entry&oflagCopied != 0) {
			t.Fatalf("%s %#x: COPIED is %v with refcount %d", what, entry, entry&oflagCopied != 0, rc)
		}
	}
	for _, e := range i.l1 {
		l2 := int64(e & l1OffsetMask)
		if l2 == 0 {
			continue
		}
		copied("L1 entry", e, l2)
		if err := i.forEachL2Entry(l2, func(_ int, entry, _ uint64, _ []byte) (bool, error) {
			if typ := i.layout.classify(entry); typ == clusterNormal || typ == clusterZeroAlloc {
				copied("L2 entry", entry, int64(entry&l2OffsetMask))
			}
			return false, nil
		}); err != nil {
			t.Fatal(err)
		}
	}
}

// snapshotter returns the image's snapshot interface.
func snapshotter(n *block.Node) block.Snapshotter { return n.Image.(block.Snapshotter) }

// readView reads a whole image.
func readView(t testing.TB, img block.Image) []byte {
	t.Helper()
	b := make([]byte, img.Size())
	if _, err := img.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSnapshotLifecycle creates, reads, applies and deletes snapshots in
// memory, with writes between, and checks content and refcounts after
// each step.
func TestSnapshotLifecycle(t *testing.T) {
	for _, opts := range []string{"", "cluster_size=512", "extended_l2=on", "compat=0.10", "refcount_bits=4,cluster_size=4k", "lazy_refcounts=on"} {
		t.Run(opts, func(t *testing.T) {
			const size = 4 << 20
			_, n := memCreate(t, opts, size)
			defer n.Close()
			cs := n.Image.(*Image).clusterSize
			ops := &imageOps{t: t, img: n, m: &model{data: make([]byte, size)}, rng: rand.New(rand.NewPCG(5, 6))}
			ops.write(0, 100000)
			ops.write(3<<20, 5000)
			if opts != "compat=0.10" {
				ops.compressed(2<<20, int(cs))
			}
			ops.zero(1<<20, 2*cs, 0)
			sn := snapshotter(n)
			if err := sn.CreateSnapshot(block.SnapshotInfo{Name: "one", DateSec: 1, ICount: -1}); err != nil {
				t.Fatal(err)
			}
			checkConsistent(t, n)
			one := append([]byte(nil), ops.m.data...)
			ops.write(50, 70000)
			ops.discard(3<<20, 1<<20, cs)
			ops.zero(2<<20, cs, block.MayUnmap)
			ops.verify()
			checkConsistent(t, n)
			if err := sn.CreateSnapshot(block.SnapshotInfo{Name: "two"}); err != nil {
				t.Fatal(err)
			}
			two := append([]byte(nil), ops.m.data...)
			ops.write(1<<20, 3000)
			v, err := sn.OpenSnapshot("", "one")
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(readView(t, v), one) {
				t.Fatal("snapshot 'one' reads other content")
			}
			if _, err := v.WriteAt([]byte{1}, 0); !errors.Is(err, block.ErrReadOnly) {
				t.Fatalf("write to a snapshot view: %v", err)
			}
			v.Close()
			list, err := sn.Snapshots()
			if err != nil || len(list) != 2 || list[0].ID != "1" || list[1].ID != "2" || list[0].ICount != -1 || list[1].ICount != 0 {
				t.Fatalf("snapshots %+v, %v", list, err)
			}
			if err := sn.ApplySnapshot("one"); err != nil {
				t.Fatal(err)
			}
			ops.m.data = one
			ops.verify()
			checkConsistent(t, n)
			if err := sn.ApplySnapshot("2"); err != nil {
				t.Fatal(err)
			}
			ops.m.data = two
			ops.verify()
			if err := sn.DeleteSnapshot("", "two"); err != nil {
				t.Fatal(err)
			}
			checkConsistent(t, n)
			ops.verify()
			ops.write(100, 10)
			if err := sn.DeleteSnapshot("1", ""); err != nil {
				t.Fatal(err)
			}
			checkConsistent(t, n)
			ops.verify()
			if list, _ := sn.Snapshots(); len(list) != 0 {
				t.Fatalf("snapshots left: %+v", list)
			}
		})
	}
}

// TestSnapshotApplyResizes applies a snapshot taken at another size: the
// image takes the snapshot's size back.
func TestSnapshotApplyResizes(t *testing.T) {
	_, n := memCreate(t, "cluster_size=4k", 1<<20)
	defer n.Close()
	p := bytes.Repeat([]byte{7}, 8192)
	if _, err := n.WriteAt(p, 1<<20-8192); err != nil {
		t.Fatal(err)
	}
	sn := snapshotter(n)
	if err := sn.CreateSnapshot(block.SnapshotInfo{Name: "small"}); err != nil {
		t.Fatal(err)
	}
	if err := n.Image.(block.Resizer).Resize(3<<20, block.PreallocOff); err != nil {
		t.Fatal(err)
	}
	if _, err := n.WriteAt(p, 2<<20); err != nil {
		t.Fatal(err)
	}
	if err := sn.ApplySnapshot("small"); err != nil {
		t.Fatal(err)
	}
	if n.Size() != 1<<20 {
		t.Fatalf("size %d after applying", n.Size())
	}
	got := make([]byte, 8192)
	if _, err := n.ReadAt(got, 1<<20-8192); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("content after applying: %v", err)
	}
	checkConsistent(t, n)
}

// TestSnapshotErrors checks the errors callers word QEMU's messages from.
func TestSnapshotErrors(t *testing.T) {
	_, n := memCreate(t, "", 1<<20)
	defer n.Close()
	sn := snapshotter(n)
	if err := sn.CreateSnapshot(block.SnapshotInfo{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	// Duplicate names are allowed, as in QEMU; the IDs differ.
	if err := sn.CreateSnapshot(block.SnapshotInfo{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		err   error
		text  string
		errno syscall.Errno
	}{
		{"apply missing", sn.ApplySnapshot("nope"), "Failed to load snapshot: No such file or directory", syscall.ENOENT},
		{"delete missing", sn.DeleteSnapshot("", "nope"), "Can't find the snapshot", syscall.ENOENT},
		{"delete wrong pair", sn.DeleteSnapshot("1", "b"), "Can't find the snapshot", syscall.ENOENT},
		{"delete nothing", sn.DeleteSnapshot("", ""), "snapshot_id and name are both NULL", syscall.EINVAL},
		{"create huge name", sn.CreateSnapshot(block.SnapshotInfo{Name: string(make([]byte, 70000))}), "", syscall.EINVAL},
		{"open missing", func() error { _, err := sn.OpenSnapshot("9", ""); return err }(), "Can't find snapshot", syscall.ENOENT},
	} {
		if !errors.Is(c.err, c.errno) || (c.text != "" && !bytes.HasPrefix([]byte(c.err.Error()), []byte(c.text))) {
			t.Errorf("%s: %v, want %q (%v)", c.name, c.err, c.text, c.errno)
		}
	}
	if list, _ := sn.Snapshots(); len(list) != 2 || list[1].ID != "2" {
		t.Fatalf("snapshots %+v", list)
	}
}

// TestSnapshotReadOnlyAndDataFile refuses changes to read-only images and
// snapshots of images with an external data file.
func TestSnapshotReadOnlyAndDataFile(t *testing.T) {
	env, fs := testEnv(t)
	ro, err := env.Open("snap.qcow2", block.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if err := snapshotter(ro).CreateSnapshot(block.SnapshotInfo{Name: "x"}); !errors.Is(err, block.ErrReadOnly) {
		t.Errorf("create on a read-only image: %v", err)
	}
	if err := snapshotter(ro).DeleteSnapshot("1", ""); !errors.Is(err, block.ErrReadOnly) {
		t.Errorf("delete on a read-only image: %v", err)
	}
	_ = fs
	df, err := env.Open("datafile.qcow2", block.OpenOptions{Write: true})
	if err != nil {
		t.Fatal(err)
	}
	defer df.Close()
	if err := snapshotter(df).CreateSnapshot(block.SnapshotInfo{Name: "x"}); !errors.Is(err, syscall.ENOTSUP) {
		t.Errorf("create with a data file: %v", err)
	}
	if err := snapshotter(df).ApplySnapshot("x"); err == nil || err.Error() != "Failed to load snapshot: Operation not supported" {
		t.Errorf("apply with a data file: %v", err)
	}
	if _, err := snapshotter(df).Snapshots(); err == nil {
		t.Error("snapshots of an image with a data file listed")
	}
}

// TestSnapshotBadL1Pointer refuses snapshots whose L1 table pointer is
// invalid, with QEMU's messages.
func TestSnapshotBadL1Pointer(t *testing.T) {
	env, fs := testEnv(t)
	img := testImage(t, "snap.qcow2")
	h, err := DecodeHeader(firstCluster(t, img))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		offset uint64
		size   uint32
		text   string
		errno  syscall.Errno
	}{
		{"unaligned", 4097, 1, "Snapshot L1 table offset invalid", syscall.EINVAL},
		{"too large", 1 << 16, 1 << 23, "Snapshot L1 table too large", syscall.EFBIG},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := append([]byte(nil), img...)
			binary.BigEndian.PutUint64(b[h.SnapshotsOffset:], c.offset)
			binary.BigEndian.PutUint32(b[h.SnapshotsOffset+8:], c.size)
			f, err := fs.Create("bad.qcow2", storage.OpenOptions{Write: true})
			if err != nil {
				t.Fatal(err)
			}
			f.WriteAt(b, 0)
			f.Close()
			n, err := env.Open("bad.qcow2", block.OpenOptions{Write: true})
			if err != nil {
				t.Fatal(err)
			}
			defer n.Close()
			sn := snapshotter(n)
			if _, err := sn.OpenSnapshot("1", ""); err == nil || err.Error() != c.text || !errors.Is(err, c.errno) {
				t.Errorf("open: %v", err)
			}
			if err := sn.DeleteSnapshot("1", ""); err == nil || err.Error() != c.text {
				t.Errorf("delete: %v", err)
			}
			if err := sn.ApplySnapshot("1"); err == nil || err.Error() != "Failed to load snapshot: "+storage.Strerror(c.errno) {
				t.Errorf("apply: %v", err)
			}
		})
	}
}

// TestSnapshotRefcountOverflow fails a snapshot that would take refcounts
// beyond their width, as QEMU does (EINVAL), leaving the data readable.
func TestSnapshotRefcountOverflow(t *testing.T) {
	_, n := memCreate(t, "refcount_bits=2,cluster_size=4k", 1<<20)
	defer n.Close()
	p := bytes.Repeat([]byte{9}, 10000)
	if _, err := n.WriteAt(p, 0); err != nil {
		t.Fatal(err)
	}
	sn := snapshotter(n)
	for _, name := range []string{"a", "b"} {
		if err := sn.CreateSnapshot(block.SnapshotInfo{Name: name}); err != nil {
			t.Fatal(err)
		}
	}
	if err := sn.CreateSnapshot(block.SnapshotInfo{Name: "c"}); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("third snapshot with 2-bit refcounts: %v", err)
	}
	got := make([]byte, len(p))
	if _, err := n.ReadAt(got, 0); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("content after a failed snapshot: %v", err)
	}
	if list, _ := sn.Snapshots(); len(list) != 2 {
		t.Fatalf("snapshots %+v", list)
	}
}

func TestParseSnapshotID(t *testing.T) {
	for _, c := range []struct {
		in   string
		want uint64
	}{
		{"1", 1}, {"42abc", 42}, {"  7", 7}, {"+3", 3}, {"-1", ^uint64(0)}, {"x", 0}, {"", 0},
		{"99999999999999999999999", ^uint64(0)}, {"18446744073709551615", ^uint64(0)},
	} {
		if got := parseSnapshotID(c.in); got != c.want {
			t.Errorf("parseSnapshotID(%q) = %d, want %d", c.in, got, c.want)
		}
	}
}

// TestEncodeSnapshotsRoundTrip decodes what encodeSnapshots writes back to
// the same snapshots.
func TestEncodeSnapshotsRoundTrip(t *testing.T) {
	sns := []snapshot{
		{L1TableOffset: 1 << 16, L1Size: 3, ID: "1", Name: "first", DiskSize: 1 << 30, VMStateSize: 5,
			DateSec: 7, DateNsec: 8, VMClockNsec: 9, ICount: ^uint64(0), ExtraDataSize: 24},
		{L1TableOffset: 1 << 17, L1Size: 0, ID: "22", Name: "with unknown extra", DiskSize: 512, VMStateSize: 1 << 40,
			ICount: 3, ExtraDataSize: 30, UnknownExtraData: []byte{1, 2, 3, 4, 5, 6}},
		{ID: "3", Name: "", ExtraDataSize: 24},
	}
	size, err := snapshotTableSize(sns)
	if err != nil {
		t.Fatal(err)
	}
	b := encodeSnapshots(sns, size)
	got, n, err := decodeSnapshots(bytesSource(b), len(sns), 0)
	if err != nil || int64(n) != size {
		t.Fatalf("decode: %v (%d of %d bytes)", err, n, size)
	}
	if fmt.Sprint(got) != fmt.Sprint(sns) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, sns)
	}
	if binary.BigEndian.Uint32(b[size-int64(len("3"))-40-24+32:]) != 0 {
		t.Error("vm_state_size of a snapshot without one")
	}
}

// snapshotOp is one snapshot operation done by qimg and by qemu-img.
type snapshotOp struct {
	op, name string
}

// run does the operation with qimg's library.
func (o snapshotOp) run(t testing.TB, path string) {
	t.Helper()
	n, err := hostEnv().Open(path, hostWrite())
	if err != nil {
		t.Fatal(err)
	}
	sn := snapshotter(n)
	switch o.op {
	case "-c":
		err = sn.CreateSnapshot(block.SnapshotInfo{Name: o.name})
	case "-a":
		err = sn.ApplySnapshot(o.name)
	case "-d":
		err = sn.DeleteSnapshot("", o.name)
	}
	if cerr := n.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("%s %s: %v", o.op, o.name, err)
	}
}

// TestInteropSnapshotIdentical does snapshot operations with qimg and with
// qemu-img on copies of images QEMU wrote and expects the same files (but
// for the snapshot dates), which qemu-img checks and reads as expected.
func TestInteropSnapshotIdentical(t *testing.T) {
	oracle.QemuImgPath(t)
	layouts := []struct{ opts, size, compressed string }{
		{"cluster_size=64k", "4M", "64k"},
		{"cluster_size=512", "3M", "512"},
		{"cluster_size=32k,extended_l2=on", "8M", "32k"},
		{"compat=0.10,cluster_size=4k", "4M", ""},
		{"refcount_bits=8,cluster_size=2M", "16M", "2M"},
		{"lazy_refcounts=on", "4M", "64k"},
	}
	steps := [][]snapshotOp{
		{{"-c", "s1"}},
		{{"-c", "s1"}, {"-c", "s2"}, {"-d", "s1"}},
		{{"-c", "s1"}, {"-a", "s1"}},
		{{"-c", "s1"}, {"-c", "s2"}, {"-a", "s1"}, {"-d", "s2"}, {"-d", "s1"}},
	}
	for _, l := range layouts {
		for k, ops := range steps {
			t.Run(fmt.Sprintf("%s/%d", l.opts, k), func(t *testing.T) {
				t.Parallel()
				dir := t.TempDir()
				ours, theirs := filepath.Join(dir, "ours.qcow2"), filepath.Join(dir, "theirs.qcow2")
				oracle.MustQemuImg(t, "create", "-q", "-f", "qcow2", "-o", l.opts, theirs, l.size)
				writes := []string{"-c", "write -P 1 0 100k", "-c", "write -z 300k 8k", "-c", "write -P 2 1M 20k"}
				if l.compressed != "" {
					writes = append(writes, "-c", "write -c -P 3 2M "+l.compressed)
				}
				oracle.MustQemuIO(t, append(append([]string{"-f", "qcow2"}, writes...), theirs)...)
				between := []string{"write -P 4 4k 8k", "write -P 5 900k 200k", "discard 1M 64k"}
				oracle.CopyFile(t, theirs, ours)
				for s, o := range ops {
					o.run(t, ours)
					oracle.MustQemuImg(t, "snapshot", o.op, o.name, theirs)
					oracle.MustQemuIO(t, "-f", "qcow2", "-c", between[s%len(between)], ours)
					oracle.MustQemuIO(t, "-f", "qcow2", "-c", between[s%len(between)], theirs)
				}
				oracle.ZeroSnapshotDates(t, ours)
				oracle.ZeroSnapshotDates(t, theirs)
				oracle.Check(t, ours, "qcow2")
				if err := oracle.SameFile(ours, theirs); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

// TestInteropSnapshotsBothWays has QEMU take snapshots that qimg applies,
// reads and deletes, and qimg take snapshots that QEMU applies and reads.
func TestInteropSnapshotsBothWays(t *testing.T) {
	oracle.QemuImgPath(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "a.qcow2")
	oracle.MustQemuImg(t, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", img, "2M")
	oracle.Write(t, img, "qcow2", 0x11, 0, 64<<10)
	oracle.MustQemuImg(t, "snapshot", "-c", "theirs", img)
	oracle.Write(t, img, "qcow2", 0x22, 4096, 8192)
	snapOps := func(op, name string) { snapshotOp{op, name}.run(t, img) }

	// qimg reads and applies QEMU's snapshot.
	n, err := hostEnv().Open(img, block.OpenOptions{Locking: block.LockOff})
	if err != nil {
		t.Fatal(err)
	}
	v, err := snapshotter(n).OpenSnapshot("", "theirs")
	if err != nil {
		t.Fatal(err)
	}
	got := readView(t, v)
	v.Close()
	n.Close()
	if !bytes.Equal(got[:64<<10], bytes.Repeat([]byte{0x11}, 64<<10)) {
		t.Fatal("QEMU's snapshot reads other content")
	}
	snapOps("-c", "ours")
	oracle.Check(t, img, "qcow2")
	snapOps("-a", "theirs")
	oracle.Check(t, img, "qcow2")
	oracle.ReadPattern(t, img, "qcow2", 0x11, 0, 64<<10)

	// QEMU applies and deletes qimg's snapshot.
	oracle.MustQemuImg(t, "snapshot", "-a", "ours", img)
	oracle.ReadPattern(t, img, "qcow2", 0x22, 4096, 8192)
	oracle.MustQemuImg(t, "snapshot", "-d", "ours", img)
	oracle.Check(t, img, "qcow2")

	// qimg deletes QEMU's snapshot; QEMU lists none.
	snapOps("-d", "theirs")
	oracle.Check(t, img, "qcow2")
	if out := oracle.MustQemuImg(t, "snapshot", "-l", img); out != "" {
		t.Fatalf("snapshots left:\n%s", out)
	}
	oracle.ReadPattern(t, img, "qcow2", 0x22, 4096, 8192)
}

// FuzzSnapshotTable decodes arbitrary snapshot tables and expects what
// encodeSnapshots writes for them to decode to the same snapshots.
func FuzzSnapshotTable(f *testing.F) {
	img := testImage(f, "snap.qcow2")
	h, err := DecodeHeader(firstCluster(f, img))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(img[h.SnapshotsOffset:min(uint64(len(img)), h.SnapshotsOffset+4096)], uint16(h.NbSnapshots))
	sns := []snapshot{{ID: "1", Name: "n", ExtraDataSize: 30, UnknownExtraData: []byte{1, 2, 3, 4, 5, 6}, ICount: 5}}
	size, _ := snapshotTableSize(sns)
	f.Add(encodeSnapshots(sns, size), uint16(1))
	short := make([]byte, 48)
	binary.BigEndian.PutUint32(short[36:], 8) // v2-style extra data
	f.Add(short, uint16(1))
	f.Fuzz(func(t *testing.T, b []byte, n uint16) {
		sns, _, err := decodeSnapshots(bytesSource(b), int(n%64), 1<<20)
		if err != nil {
			return
		}
		size, err := snapshotTableSize(sns)
		if err != nil {
			return
		}
		again, length, err := decodeSnapshots(bytesSource(encodeSnapshots(sns, size)), len(sns), 1<<20)
		if err != nil || int64(length) != size {
			t.Fatalf("re-decode: %v (%d of %d bytes)", err, length, size)
		}
		for k := range sns {
			sns[k].ExtraDataSize = max(sns[k].ExtraDataSize, snapshotExtraSize)
		}
		if fmt.Sprint(again) != fmt.Sprint(sns) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", again, sns)
		}
	})
}
