package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/storage"
)

// refCounts are the references to each host cluster an image's structures
// hold, for tests that compare them with refcounts.
type refCounts struct {
	counts []uint32
	// errs counts references that could not be counted (a check would
	// call them corruptions).
	errs int
}

// countAll counts the references to each host cluster as a check does,
// without reporting (the caller holds the lock).
func (i *Image) countAll() (*refCounts, error) {
	var res block.CheckResult
	c := &checker{i: i, report: func(string) {}, prog: i.prog, buf: make([]byte, i.clusterSize), length: -1}
	if i.write {
		if err := i.l2Cache.write(); err != nil {
			return nil, err
		}
	}
	size, err := i.f.Size()
	if err != nil {
		return nil, err
	}
	c.imrt = newRefcountArray(uint(i.hdr.RefcountOrder), i.clusterSize)
	if err := c.imrt.resize(i.sizeToClusters(size)); err != nil {
		return nil, err
	}
	rebuild := false
	if err := c.calculateRefcounts(&res, 0, &rebuild); err != nil {
		return nil, err
	}
	out := &refCounts{counts: make([]uint32, c.imrt.size), errs: int(res.Corruptions)}
	for k := range out.counts {
		out.counts[k] = uint32(c.imrt.get(int64(k)))
	}
	return out, nil
}

// damaged builds a 64 MiB image with qimg (64 KiB clusters unless opts
// say otherwise) holding 128 KiB of 1s at 0, 64 KiB of 3s at 1 MiB and of
// 2s at 10 MiB (clusters 5 and 6, 7 and 8; the L2 table is cluster 4, the
// refcount block cluster 2), applies a patch and returns the file system.
func damaged(t testing.TB, opts string, patch func(d *damage)) (*block.Env, *storage.MemFS) {
	t.Helper()
	env, fs := testEnv(t)
	if err := env.Create(block.CreateParams{Filename: "d.qcow2", Format: "qcow2", Size: 64 << 20, Options: opts}); err != nil {
		t.Fatal(err)
	}
	n, err := env.Open("d.qcow2", block.OpenOptions{Write: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []struct {
		b   byte
		off int64
		n   int
	}{{1, 0, 128 << 10}, {3, 1 << 20, 64 << 10}, {2, 10 << 20, 64 << 10}} {
		if _, err := n.WriteAt(pattern(w.b, w.n), w.off); err != nil {
			t.Fatal(err)
		}
	}
	img := n.Image.(*Image)
	d := &damage{f: fs.File("d.qcow2"), l1Offset: img.l1Offset, reftableOff: img.reftableOff,
		entryBytes: int64(img.l2EntryBytes), refcount: img.refcount, rbSize: img.rbSize, clusterBits: img.clusterBits}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if patch != nil {
		patch(d)
	}
	return env, fs
}

// damage patches an image's bytes.
type damage struct {
	f                     *storage.MemFile
	l1Offset, reftableOff int64
	entryBytes            int64
	refcount              refcountAccess
	rbSize                int64
	clusterBits           int
}

func (d *damage) u64(off int64) uint64 {
	var b [8]byte
	d.f.ReadAt(b[:], off)
	return binary.BigEndian.Uint64(b[:])
}

func (d *damage) put64(off int64, v uint64) {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	d.f.WriteAt(b[:], off)
}

// l2 returns the offset of entry j of the L2 table of L1 entry 0.
func (d *damage) l2(j int64) int64 {
	return int64(d.u64(d.l1Offset)&l1OffsetMask) + j*d.entryBytes
}

func (d *damage) setRefcount(cluster int64, v uint64) {
	block := int64(d.u64(d.reftableOff+8*(cluster/d.rbSize)) & reftOffsetMask)
	b := make([]byte, 1<<d.clusterBits)
	d.f.ReadAt(b, block)
	d.refcount.set(b, uint64(cluster%d.rbSize), v)
	d.f.WriteAt(b, block)
}

// checkImage opens an image for a check (for writing with a repair) and
// checks it, returning the result, the lines reported and the error.
func checkImage(t *testing.T, env *block.Env, name string, fix block.FixMode) (block.CheckResult, []string, error) {
	t.Helper()
	n, err := env.Open(name, block.OpenOptions{Format: "qcow2", ForCheck: true, Write: fix != block.FixNone})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	var lines []string
	res, err := n.Image.(block.Checker).Check(fix, func(l string) { lines = append(lines, l) })
	return res, lines, err
}

// TestCheckDamage checks and repairs damaged images: the counts and lines
// are those qemu-img gives for the same damage (TestInteropCheck in
// internal/cli compares them on QEMU's images), and after a repair a
// check finds nothing and the data reads as before.
func TestCheckDamage(t *testing.T) {
	tests := []struct {
		name  string
		opts  string
		patch func(d *damage)
		fix   block.FixMode
		want  block.CheckResult
		lines []string
		err   error
		// clean is set when a check after the repair must find
		// nothing.
		clean bool
	}{
		{name: "clean", want: block.CheckResult{ImageEndOffset: 589824}, clean: true},
		{name: "leak", patch: func(d *damage) { d.put64(d.l2(1), 0) },
			want:  block.CheckResult{Leaks: 1, ImageEndOffset: 589824},
			lines: []string{"Leaked cluster 6 refcount=1 reference=0"}},
		{name: "leak repaired", patch: func(d *damage) { d.put64(d.l2(1), 0) }, fix: block.FixLeaks,
			want:  block.CheckResult{LeaksFixed: 1, ImageEndOffset: 589824},
			lines: []string{"Leaked cluster 6 refcount=1 reference=0", "Repairing cluster 6 refcount=1 reference=0"}},
		{name: "refcount zero", patch: func(d *damage) { d.setRefcount(5, 0) },
			want: block.CheckResult{Corruptions: 2, ImageEndOffset: 589824},
			lines: []string{"ERROR cluster 5 refcount=0 reference=1",
				"ERROR OFLAG_COPIED data cluster: l2_entry=8000000000050000 refcount=0"}},
		{name: "refcount zero needs a rebuild", patch: func(d *damage) { d.setRefcount(5, 0) }, fix: block.FixLeaks,
			err:   syscall.EIO,
			lines: []string{"ERROR cluster 5 refcount=0 reference=1", "ERROR need to rebuild refcount structures"}},
		{name: "refcount zero rebuilt", patch: func(d *damage) { d.setRefcount(5, 0) }, fix: block.FixAll,
			want: block.CheckResult{CorruptionsFixed: 1, ImageEndOffset: 720896},
			lines: []string{"ERROR cluster 5 refcount=0 reference=1", "Rebuilding refcount structure",
				"Repairing cluster 1 refcount=1 reference=0", "Repairing cluster 2 refcount=1 reference=0"},
			clean: true},
		{name: "refcount too high", patch: func(d *damage) { d.setRefcount(5, 2) }, fix: block.FixAll,
			want:  block.CheckResult{LeaksFixed: 1, ImageEndOffset: 589824},
			lines: []string{"Leaked cluster 5 refcount=2 reference=1", "Repairing cluster 5 refcount=2 reference=1"},
			clean: true},
		{name: "copied flag", patch: func(d *damage) { d.put64(d.l2(0), d.u64(d.l2(0))&^copied) }, fix: block.FixLeaks,
			want:  block.CheckResult{CorruptionsFixed: 1, ImageEndOffset: 589824},
			lines: []string{"Repairing OFLAG_COPIED data cluster: l2_entry=50000 refcount=1"}, clean: true},
		{name: "cluster used twice", patch: func(d *damage) { d.put64(d.l2(1), d.u64(d.l2(0))) }, fix: block.FixAll,
			want: block.CheckResult{LeaksFixed: 1, CorruptionsFixed: 3, ImageEndOffset: 589824},
			lines: []string{"ERROR cluster 5 refcount=1 reference=2", "Leaked cluster 6 refcount=1 reference=0",
				"Repairing cluster 5 refcount=1 reference=2", "Repairing cluster 6 refcount=1 reference=0",
				"Repairing OFLAG_COPIED data cluster: l2_entry=8000000000050000 refcount=2",
				"Repairing OFLAG_COPIED data cluster: l2_entry=8000000000050000 refcount=2"},
			clean: true},
		{name: "L2 entry beyond the end", patch: func(d *damage) { d.put64(d.l2(1), copied|0x10000000) },
			want: block.CheckResult{Corruptions: 2, Leaks: 1, ImageEndOffset: 589824},
			lines: []string{"ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x10000000 size 0x10000",
				"Leaked cluster 6 refcount=1 reference=0", "ERROR OFLAG_COPIED data cluster: l2_entry=8000000010000000 refcount=0"}},
		{name: "refcount block outside the image", patch: func(d *damage) { d.put64(d.reftableOff+24, 0x100000000) }, fix: block.FixAll,
			// The file grows to hold the block, which is then seen
			// referenced with refcount 0: a rebuild follows.
			want: block.CheckResult{CorruptionsFixed: 2, ImageEndOffset: 4295098368},
			lines: []string{"Repairing refcount block 3 is outside image", "ERROR cluster 65536 refcount=0 reference=1",
				"Rebuilding refcount structure", "Repairing cluster 1 refcount=1 reference=0",
				"Repairing cluster 2 refcount=1 reference=0", "Repairing cluster 65536 refcount=1 reference=0"},
			clean: true},
		// An offset of 2^63 or more is past any file, not a negative
		// cluster index.
		{name: "refcount block at 2^63", patch: func(d *damage) { d.put64(d.reftableOff+24, 1<<63) },
			want:  block.CheckResult{Corruptions: 1, ImageEndOffset: 589824},
			lines: []string{"ERROR refcount block 3 is outside image"}},
		{name: "refcount block at 2^63 repaired", patch: func(d *damage) { d.put64(d.reftableOff+24, 1<<63) }, fix: block.FixAll,
			want: block.CheckResult{CorruptionsFixed: 1, ImageEndOffset: 720896},
			lines: []string{"Repairing refcount block 3 is outside image", "ERROR could not resize image: Invalid argument",
				"Rebuilding refcount structure", "Repairing cluster 1 refcount=1 reference=0", "Repairing cluster 2 refcount=1 reference=0"},
			clean: true},
		{name: "refcount table reserved bits", patch: func(d *damage) { d.put64(d.reftableOff, d.u64(d.reftableOff)|1) }, fix: block.FixAll,
			err: syscall.EIO},
		{name: "no refcount table", patch: func(d *damage) { d.f.WriteAt(make([]byte, 4), 56) }, fix: block.FixAll,
			want: block.CheckResult{CorruptionsFixed: 7, LeaksFixed: 0, ImageEndOffset: 589824}, clean: true},
		{name: "snapshot table pointer unaligned", patch: func(d *damage) { d.put64(64, 0x200) },
			err: syscall.EINVAL, lines: []string{"qemu-img: ERROR snapshot table offset invalid"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env, fs := damaged(t, tc.opts, tc.patch)
			env.Prog = "qemu-img"
			before := fs.File("d.qcow2").Clone()
			res, lines, err := checkImage(t, env, "d.qcow2", tc.fix)
			if !errors.Is(err, tc.err) || (err == nil && res.ImageEndOffset != tc.want.ImageEndOffset) {
				t.Fatalf("check: %+v, %v; want %+v, %v\n%s", res, err, tc.want, tc.err, strings.Join(lines, "\n"))
			}
			if err == nil {
				tc.want.TotalClusters, tc.want.AllocatedClusters, tc.want.FragmentedClusters = res.TotalClusters, res.AllocatedClusters, res.FragmentedClusters
				if tc.want.ImageEndOffset == 0 {
					tc.want.ImageEndOffset = res.ImageEndOffset
				}
				if res != tc.want {
					t.Errorf("check: %+v, want %+v\n%s", res, tc.want, strings.Join(lines, "\n"))
				}
			}
			if tc.lines != nil && !slices.Equal(lines, tc.lines) {
				t.Errorf("lines:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(tc.lines, "\n"))
			}
			if !tc.clean {
				return
			}
			res, lines, err = checkImage(t, env, "d.qcow2", block.FixNone)
			if err != nil || res.Corruptions != 0 || res.Leaks != 0 || res.CheckErrors != 0 {
				t.Fatalf("check after the repair: %+v, %v\n%s", res, err, strings.Join(lines, "\n"))
			}
			fs.Put("before.qcow2", before)
			n, err := env.Open("d.qcow2", block.OpenOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer n.Close()
			for _, r := range [][3]int{{1, 0, 128 << 10}, {3, 1 << 20, 64 << 10}, {2, 10 << 20, 64 << 10}} {
				got := make([]byte, r[2])
				if _, err := n.ReadAt(got, int64(r[1])); err != nil || !bytes.Equal(got, pattern(byte(r[0]), r[2])) {
					t.Errorf("data at %d changed by the repair (%v)", r[1], err)
				}
			}
		})
	}
}

// TestCheckMemoryBounds: a check refuses a file of more than INT_MAX
// clusters as QEMU does, and a table of references larger than its memory
// limit with an error, instead of allocating.
func TestCheckMemoryBounds(t *testing.T) {
	env, fs := damaged(t, "cluster_size=512", nil)
	if err := fs.File("d.qcow2").Truncate(1 << 40); err != nil {
		t.Fatal(err)
	}
	if _, _, err := checkImage(t, env, "d.qcow2", block.FixNone); !errors.Is(err, syscall.EFBIG) {
		t.Errorf("check of a file of 2^31 clusters: %v", err)
	}

	env, fs = damaged(t, "cluster_size=512,refcount_bits=64", func(d *damage) {
		// References spread over the file, each in a chunk of the
		// table of its own.
		for j := int64(0); j < 64; j++ {
			d.put64(d.l2(j), copied|uint64(j)<<30)
		}
	})
	if err := fs.File("d.qcow2").Truncate(64 << 30); err != nil {
		t.Fatal(err)
	}
	n, err := env.Open("d.qcow2", block.OpenOptions{ForCheck: true})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	i := n.Image.(*Image)
	var lines []string
	c := &checker{i: i, report: func(l string) { lines = append(lines, l) }, prog: "qemu-img",
		buf: make([]byte, i.clusterSize), length: -1, memLimit: 16 * minRefcountChunk}
	var res block.CheckResult
	i.mu.Lock()
	err = c.checkRefcounts(&res, 0)
	i.mu.Unlock()
	if !errors.Is(err, syscall.ENOMEM) || res.CheckErrors != 1 || len(lines) == 0 || !strings.Contains(lines[len(lines)-1], "needs more than") {
		t.Errorf("check beyond the memory limit: %v, %+v, %q", err, res, lines)
	}
	if c.imrt.used > c.imrt.limit {
		t.Errorf("table grew to %d bytes, limit %d", c.imrt.used, c.imrt.limit)
	}
}

const copied = uint64(oflagCopied)

// TestCheckSparseFile checks a sparse file of a billion clusters, which the
// walk skips where nothing is referenced (its speed is not measured here).
func TestCheckSparseFile(t *testing.T) {
	env, fs := damaged(t, "cluster_size=4k", nil)
	if err := fs.File("d.qcow2").Truncate(4 << 40); err != nil {
		t.Fatal(err)
	}
	res, lines, err := checkImage(t, env, "d.qcow2", block.FixNone)
	if err != nil || res.Corruptions != 0 || res.Leaks != 0 {
		t.Fatalf("%+v %v %q", res, err, lines)
	}
}

// FuzzCheck checks and repairs arbitrary images: no panic, and a second
// check after a repair runs.
func FuzzCheck(f *testing.F) {
	_, fs := damaged(f, "cluster_size=4k", nil)
	f.Add(fs.File("d.qcow2").Bytes()[:64<<10])
	_, fs = damaged(f, "cluster_size=512,refcount_bits=1", func(d *damage) { d.put64(d.l2(1), d.u64(d.l2(0))) })
	f.Add(fs.File("d.qcow2").Bytes()[:16<<10])
	// Offsets at 2^63 and beyond (once read as negative cluster indexes).
	_, fs = damaged(f, "cluster_size=4k", func(d *damage) {
		d.put64(d.reftableOff+8, 1<<63)
		d.put64(d.l2(2), copied|1<<62)
	})
	f.Add(fs.File("d.qcow2").Bytes()[:64<<10])
	f.Fuzz(func(t *testing.T, b []byte) {
		fs := storage.NewMemFS()
		m := storage.NewMemFile("f.qcow2")
		m.WriteAt(b, 0)
		fs.Put("f.qcow2", m)
		// A repair may grow the file to hold a refcount block far away,
		// which makes the next check walk billions of clusters; keep
		// the fuzzer to small files.
		env := &block.Env{Registry: block.NewRegistry(New()), Files: smallFS{fs}}
		for _, fix := range []block.FixMode{block.FixNone, block.FixAll, block.FixNone} {
			n, err := env.Open("f.qcow2", block.OpenOptions{Format: "qcow2", ForCheck: true, Write: fix != block.FixNone})
			if err != nil {
				return
			}
			n.Image.(block.Checker).Check(fix, nil)
			n.Close()
		}
	})
}

// smallFS opens files that refuse to grow beyond 16 MiB.
type smallFS struct{ *storage.MemFS }

func (s smallFS) Open(name string, o storage.OpenOptions) (storage.File, error) {
	f, err := s.MemFS.Open(name, o)
	if err != nil {
		return nil, err
	}
	return smallFile{f}, nil
}

type smallFile struct{ storage.File }

const smallFileMax = 16 << 20

func (f smallFile) Truncate(n int64) error {
	if n > smallFileMax {
		return syscall.EFBIG
	}
	return f.File.Truncate(n)
}

func (f smallFile) WriteAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > smallFileMax {
		return 0, syscall.EFBIG
	}
	return f.File.WriteAt(p, off)
}
