package qcow2

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/internal/oracle"
	"github.com/qimg/qimg/storage"
)

// The tests in this file stop an image's storage at every change a
// scenario makes (the N-th write and all after it fail, as when the disk
// goes away or the process dies) and then look at what a crash at that
// point could leave on disk: only the data synced so far, everything
// written, or a random part of what was written since the last sync. The
// crashed image must open; qimg's check (and the real qemu-img check, on a
// sample) must find at most leaked clusters; check -r all must repair it;
// and every byte a successful flush acknowledged before the crash must
// read back intact.

// faultOpKind is what a scenario step does.
type faultOpKind int

const (
	fWrite     faultOpKind = iota
	fZero                  // WriteZeroes, keeping the clusters
	fZeroUnmap             // WriteZeroes with MayUnmap
	fDiscard
	fCompress // WriteCompressed of one cluster
	fFlush
	fResize // grow to off bytes
	fSnapshot
	fDeleteSnapshot
)

// faultStep is one step of a scenario.
type faultStep struct {
	op     faultOpKind
	off, n int64
}

// faultScenario is a sequence of operations on a new image, written as
// data. prepare runs before faults are injected.
type faultScenario struct {
	name    string
	opts    string
	size    int64
	prepare []faultStep
	steps   []faultStep
	// open holds runtime options.
	open map[string]string
	// after checks the image a run without faults left.
	after func(t *testing.T, i *Image)
	// copiedMayLag is set when a crash may leave a COPIED flag behind a
	// refcount raised for a reference not yet written (snapshot
	// creation, as in QEMU): a check counts it as a corruption, which
	// -r leaks repairs with the leak.
	copiedMayLag bool
}

func w(off, n int64) faultStep { return faultStep{op: fWrite, off: off, n: n} }
func flush() faultStep         { return faultStep{op: fFlush} }

const (
	kb = 1 << 10
	mb = 1 << 20
)

var faultScenarios = []faultScenario{
	// With 1 KiB clusters an L2 table covers 128 KiB.
	{name: "allocations across L2 boundaries", opts: "cluster_size=1k", size: 512 * kb, steps: []faultStep{
		w(128*kb-6*kb, 12*kb), flush(), w(256*kb-2*kb, 140*kb), w(512*kb-10*kb, 10*kb), flush(),
		w(128*kb-5*kb, 3*kb), w(128*kb+kb, 2*kb), flush(),
	}},
	{name: "extended L2 subclusters", opts: "extended_l2=on,cluster_size=16k", size: 1 * mb, steps: []faultStep{
		w(1*kb, 3*kb), w(20*kb, 5*kb), flush(), w(30*kb, 40*kb), {op: fZero, off: 512 * kb, n: 6 * kb}, flush(),
	}},
	{name: "compressed", opts: "cluster_size=4k", size: 512 * kb, steps: []faultStep{
		{op: fCompress, off: 0}, {op: fCompress, off: 4 * kb}, {op: fCompress, off: 8 * kb}, flush(),
		w(5*kb, kb), {op: fCompress, off: 64 * kb}, flush(), {op: fDiscard, off: 8 * kb, n: 4 * kb}, flush(),
	}},
	{name: "lazy refcounts", opts: "cluster_size=1k,lazy_refcounts=on", size: 512 * kb, steps: []faultStep{
		w(0, 20*kb), w(128*kb-kb, 8*kb), flush(), w(8*kb, 30*kb), {op: fDiscard, off: 0, n: 8 * kb}, flush(),
	}},
	{name: "no lazy refcounts", opts: "cluster_size=1k,lazy_refcounts=off", size: 512 * kb, steps: []faultStep{
		w(0, 20*kb), w(128*kb-kb, 8*kb), flush(), w(8*kb, 30*kb), {op: fDiscard, off: 0, n: 8 * kb}, flush(),
	}},
	// The first refcount table covers 2 MiB of file; preallocating the
	// metadata of a 2 MiB disk fills them (sparsely) before the disk
	// grows and gets written beyond.
	{name: "refcount table growth", opts: "cluster_size=512,refcount_bits=64,preallocation=metadata", size: 2 * mb,
		prepare: []faultStep{{op: fResize, off: 4 * mb}, flush()},
		steps:   []faultStep{w(3*mb, 64*kb), flush(), w(3*mb+512*kb, 8*kb), flush()},
		after: func(t *testing.T, i *Image) {
			if size, _ := i.f.Size(); i.reftableOff == 512 {
				t.Errorf("the refcount table did not move: %d entries, file size %d", len(i.reftable), size)
			}
		}},
	{name: "discard and zero writes", opts: "cluster_size=4k", size: 512 * kb,
		prepare: []faultStep{w(0, 256*kb), flush()},
		steps: []faultStep{
			{op: fDiscard, off: 16 * kb, n: 24 * kb}, {op: fZero, off: 64 * kb, n: 6 * kb},
			{op: fZeroUnmap, off: 100 * kb, n: 40 * kb}, flush(), w(20*kb, 20*kb), flush(),
		}},
	// Freed clusters keep their old data (no discard passthrough) and
	// are reused: new data must reach the disk before the L2 entry.
	{name: "cluster reuse", opts: "cluster_size=4k", size: 2 * mb, open: map[string]string{"pass-discard-request": "off"},
		prepare: []faultStep{w(0, 64*kb), flush()},
		steps:   []faultStep{{op: fDiscard, off: 0, n: 64 * kb}, flush(), w(1*mb, 16*kb), flush(), w(1*mb+32*kb, 8*kb), flush()},
		after:   reusedCluster},
	{name: "cluster reuse with lazy refcounts", opts: "cluster_size=4k,lazy_refcounts=on", size: 2 * mb,
		open:    map[string]string{"pass-discard-request": "off"},
		prepare: []faultStep{w(0, 64*kb), flush()},
		steps:   []faultStep{{op: fDiscard, off: 0, n: 64 * kb}, flush(), w(1*mb, 16*kb), flush(), w(1*mb+32*kb, 8*kb), flush()},
		after:   reusedCluster},
	// With 1 KiB clusters an L1 entry covers 128 KiB.
	{name: "resize", opts: "cluster_size=1k", size: 256 * kb, steps: []faultStep{
		w(0, 8*kb), flush(), {op: fResize, off: 1 * mb}, w(900*kb, 8*kb), flush(),
	}, after: func(t *testing.T, i *Image) {
		if len(i.l1) < 3 {
			t.Error("the L1 table did not grow")
		}
	}},
	{name: "version 2", opts: "compat=0.10,cluster_size=4k", size: 512 * kb, steps: []faultStep{
		w(0, 12*kb), flush(), {op: fDiscard, off: 0, n: 4 * kb}, w(100*kb, 4*kb), flush(),
	}},
	{name: "snapshots", opts: "cluster_size=4k", size: 512 * kb, copiedMayLag: true,
		prepare: []faultStep{w(0, 64*kb), flush()},
		steps: []faultStep{
			{op: fSnapshot}, w(4*kb, 8*kb), flush(), {op: fDeleteSnapshot}, w(32*kb, 4*kb), flush(),
		}},
}

// reusedCluster checks that the write at 1 MiB took a cluster freed by
// the discard at 0.
func reusedCluster(t *testing.T, i *Image) {
	i.mu.Lock()
	m, err := i.getHostOffset(1*mb, 4*kb)
	i.mu.Unlock()
	if err != nil || m.host >= 64*kb+6*4*kb {
		t.Errorf("the write at 1 MiB went to %#x (%v), not to a cluster the discard freed", m.host, err)
	}
}

// faultModel is what the guest may read after a crash: the content and
// size acknowledged by the last successful flush, and what changed since.
type faultModel struct {
	acked     []byte
	ackedSize int64
	cur       []byte
	size      int64
	// since lists the changes since the last acknowledged flush.
	since []faultTouch
	sizes []int64
}

// faultTouch is a range changed since the last flush and the values it may
// now read as (any value, for discarded ranges).
type faultTouch struct {
	off, n int64
	vals   []byte
	any    bool
}

func newFaultModel(size int64) *faultModel {
	return &faultModel{acked: make([]byte, size), cur: make([]byte, size), ackedSize: size, size: size}
}

func (m *faultModel) clone() *faultModel {
	c := *m
	c.acked = append([]byte(nil), m.acked...)
	c.cur = append([]byte(nil), m.cur...)
	c.since = append([]faultTouch(nil), m.since...)
	c.sizes = append([]int64(nil), m.sizes...)
	return &c
}

// allowed reports whether byte b may read as v.
func (m *faultModel) allowed(b int64, v byte) bool {
	if b < m.ackedSize && m.acked[b] == v {
		return true
	}
	if b >= m.ackedSize && v == 0 {
		return true
	}
	for _, t := range m.since {
		if b >= t.off && b < t.off+t.n && (t.any || bytes.IndexByte(t.vals, v) >= 0) {
			return true
		}
	}
	return false
}

// stepPattern is the byte a step writes.
func stepPattern(k int) byte { return byte(k*7 + 1) }

// runFaultSteps runs steps on an open image, recording in m what each may
// have changed before it runs; it stops at the first error.
func runFaultSteps(img block.Image, steps []faultStep, m *faultModel, cs int64, first int) error {
	for j, st := range steps {
		k := first + j
		pat := stepPattern(k)
		var err error
		switch st.op {
		case fWrite:
			m.since = append(m.since, faultTouch{off: st.off, n: st.n, vals: []byte{pat}})
			_, err = img.WriteAt(bytes.Repeat([]byte{pat}, int(st.n)), st.off)
			fill(m.cur[st.off:st.off+st.n], pat)
		case fZero, fZeroUnmap:
			m.since = append(m.since, faultTouch{off: st.off, n: st.n, vals: []byte{0}})
			flags := block.ZeroFlags(0)
			if st.op == fZeroUnmap {
				flags = block.MayUnmap
			}
			err = img.WriteZeroes(st.off, st.n, flags)
			clear(m.cur[st.off : st.off+st.n])
		case fDiscard:
			m.since = append(m.since, faultTouch{off: st.off, n: st.n, any: true})
			err = img.Discard(st.off, st.n)
			if start, end := (st.off+cs-1)/cs*cs, (st.off+st.n)/cs*cs; start < end {
				clear(m.cur[start:end])
			}
		case fCompress:
			m.since = append(m.since, faultTouch{off: st.off, n: cs, vals: []byte{pat, 0}})
			p := bytes.Repeat([]byte{pat, 0}, int(cs/2))
			err = img.(block.Compressor).WriteCompressed(p, st.off)
			copy(m.cur[st.off:], p)
		case fResize:
			m.sizes = append(m.sizes, st.off)
			err = img.(block.Resizer).Resize(st.off, block.PreallocOff)
			m.cur = append(m.cur, make([]byte, st.off-m.size)...)
			m.size = st.off
		case fSnapshot:
			err = img.(block.Snapshotter).CreateSnapshot(block.SnapshotInfo{Name: "s"})
		case fDeleteSnapshot:
			err = img.(block.Snapshotter).DeleteSnapshot("", "s")
		case fFlush:
			if err = img.Flush(); err == nil {
				m.acked = append(m.acked[:0], m.cur...)
				m.ackedSize, m.since, m.sizes = m.size, nil, nil
			}
		}
		if err != nil {
			return fmt.Errorf("step %d: %w", k, err)
		}
	}
	return nil
}

func fill(b []byte, v byte) {
	for k := range b {
		b[k] = v
	}
}

// faultBase creates the scenario's image and runs its preparation.
func faultBase(t *testing.T, sc *faultScenario) (*storage.MemFS, *faultModel, int64) {
	t.Helper()
	env, fs := testEnv(t)
	if err := env.Create(block.CreateParams{Filename: "f.qcow2", Format: "qcow2", Size: sc.size, Options: sc.opts}); err != nil {
		t.Fatal(err)
	}
	n, err := env.Open("f.qcow2", block.OpenOptions{Format: "qcow2", Write: true})
	if err != nil {
		t.Fatal(err)
	}
	cs := n.Image.(*Image).clusterSize
	m := newFaultModel(sc.size)
	if err := runFaultSteps(n.Image, sc.prepare, m, cs, 100); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	base := storage.NewMemFS()
	base.Put("f.qcow2", fs.File("f.qcow2").Clone())
	return base, m, cs
}

// runFaulted runs the scenario on a copy of base whose storage stops at
// change stopAt (0: never); it returns the fault file system and the model.
func runFaulted(sc *faultScenario, base *storage.MemFS, m0 *faultModel, cs int64, stopAt int) (*storage.FaultFS, *faultModel, *Image, error) {
	mem := storage.NewMemFS()
	mem.Put("f.qcow2", base.File("f.qcow2").Clone())
	ffs := storage.NewFaultFS(mem)
	// Stop points include the moment before each sync, when the most
	// writes are waiting to become durable.
	ffs.In.CountSyncs(true)
	if stopAt > 0 {
		ffs.In.FailAt(stopAt, nil, true)
	}
	env := &block.Env{Registry: block.NewRegistry(New()), Files: ffs}
	m := m0.clone()
	n, err := env.Open("f.qcow2", block.OpenOptions{Format: "qcow2", Write: true, DriverOptions: sc.open})
	if err != nil {
		return ffs, m, nil, err
	}
	// No Close: the process dies here.
	return ffs, m, n.Image.(*Image), runFaultSteps(n.Image, sc.steps, m, cs, 0)
}

func TestCrashAtEveryWrite(t *testing.T) {
	for k := range faultScenarios {
		sc := &faultScenarios[k]
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			base, m0, cs := faultBase(t, sc)
			ffs, _, img, err := runFaulted(sc, base, m0, cs, 0)
			if err != nil {
				t.Fatalf("scenario without faults: %v", err)
			}
			if sc.after != nil {
				sc.after(t, img)
			}
			total := ffs.In.Changes()
			qemuEvery := max(1, total/5)
			rng := rand.New(rand.NewPCG(uint64(k), 7))
			for stop := 1; stop <= total+1; stop++ {
				ffs, m, _, err := runFaulted(sc, base, m0, cs, stop)
				if stop <= total && err == nil {
					t.Fatalf("stop at change %d of %d: the scenario did not fail", stop, total)
				}
				// With nothing written since the last sync every crash
				// leaves the same; with one change, it is there or not.
				crashes := []storage.CrashOptions{{Mode: storage.CrashSynced}}
				if pending := ffs.Pending(); pending > 0 {
					crashes = append(crashes, storage.CrashOptions{Mode: storage.CrashAll})
					if pending > 1 {
						crashes = append(crashes, storage.CrashOptions{Mode: storage.CrashRandom, Rand: rng})
						// Each change since the last sync missing in
						// turn.
						for skip := range pending {
							crashes = append(crashes, storage.CrashOptions{Mode: storage.CrashAllBut, Skip: skip})
						}
					}
					if stop%4 == 0 {
						crashes = append(crashes, storage.CrashOptions{Mode: storage.CrashTorn, Rand: rng})
					}
				}
				for _, o := range crashes {
					crashed, err := ffs.Crash(o)
					if err != nil {
						t.Fatal(err)
					}
					where := fmt.Sprintf("stop at change %d of %d, crash mode %d (skip %d)", stop, total, o.Mode, o.Skip)
					// The real qemu-img and -r leaks on some.
					full := o.Mode == storage.CrashSynced || o.Mode == storage.CrashAll
					verifyCrash(t, where, sc, crashed.File("f.qcow2"), m, full && stop%qemuEvery == 0, full)
				}
			}
		})
	}
}

// verifyCrash checks what a crash left: it opens; a check finds at most
// leaks (a dirty lazy-refcounts image may have any refcount wrong); check
// -r all (and with withLeaks -r leaks) repairs it; the acknowledged data
// reads back; with withQemu, the real qemu-img agrees.
func verifyCrash(t *testing.T, where string, sc *faultScenario, f *storage.MemFile, m *faultModel, withQemu, withLeaks bool) {
	t.Helper()
	fs := storage.NewMemFS()
	fs.Put("c.qcow2", f)
	env := &block.Env{Registry: block.NewRegistry(New()), Files: fs, Prog: "qemu-img"}
	n, err := env.Open("c.qcow2", block.OpenOptions{Format: "qcow2"})
	if err != nil {
		t.Fatalf("%s: the crashed image does not open: %v", where, err)
	}
	info, _ := n.Image.(block.Infoer).Info()
	verifyData(t, where+", crashed", n, m)
	var lines []string
	res, err := n.Image.(block.Checker).Check(block.FixNone, func(l string) { lines = append(lines, l) })
	n.Close()
	if err != nil || res.CheckErrors != 0 || (res.Corruptions != 0 && !info.Dirty && !sc.copiedMayLag) {
		t.Fatalf("%s: check found %+v (%v)\n%s", where, res, err, strings.Join(lines, "\n"))
	}
	if withQemu {
		code := qemuCheckCode(t, f)
		if code != 0 && code != 3 && !(code == 2 && (info.Dirty || sc.copiedMayLag)) {
			t.Fatalf("%s: qemu-img check exit %d", where, code)
		}
	}
	// -r leaks is enough unless refcounts are too low (a dirty image).
	fixes := []block.FixMode{block.FixAll}
	if !info.Dirty && withLeaks {
		fixes = append(fixes, block.FixLeaks)
	}
	for _, fix := range fixes {
		fs.Put("r.qcow2", f.Clone())
		n, err := env.Open("r.qcow2", block.OpenOptions{Format: "qcow2", Write: true, ForCheck: true})
		if err != nil {
			t.Fatalf("%s: open for repair: %v", where, err)
		}
		lines = nil
		_, err = n.Image.(block.Checker).Check(fix, func(l string) { lines = append(lines, l) })
		if err == nil {
			res, err = n.Image.(block.Checker).Check(block.FixNone, func(l string) { lines = append(lines, l) })
		}
		if cerr := n.Close(); err == nil {
			err = cerr
		}
		if err != nil || res.Corruptions != 0 || res.Leaks != 0 || res.CheckErrors != 0 {
			t.Fatalf("%s: check -r %d left %+v (%v)\n%s", where, fix, res, err, strings.Join(lines, "\n"))
		}
		if fix != block.FixAll {
			continue
		}
		n, err = env.Open("r.qcow2", block.OpenOptions{Format: "qcow2"})
		if err != nil {
			t.Fatalf("%s: the repaired image does not open: %v", where, err)
		}
		verifyData(t, where+", repaired", n, m)
		n.Close()
		if withQemu {
			if code := qemuCheckCode(t, fs.File("r.qcow2")); code != 0 {
				t.Fatalf("%s: qemu-img check of the repaired image: exit %d", where, code)
			}
		}
	}
}

// verifyData reads the whole image, a cluster at a time, and compares
// every byte with what the model allows.
func verifyData(t *testing.T, where string, n *block.Node, m *faultModel) {
	t.Helper()
	size := n.Size()
	okSize := size == m.ackedSize
	for _, s := range m.sizes {
		okSize = okSize || size == s
	}
	if !okSize {
		t.Fatalf("%s: size %d, acknowledged %d, set since %v", where, size, m.ackedSize, m.sizes)
	}
	// Read big chunks; look closer only where they differ from what was
	// acknowledged.
	const chunk = 256 * kb
	buf := make([]byte, chunk)
	for off := int64(0); off < size; {
		length := min(chunk, size-off)
		// Runs that read as zeroes need no reading where the model
		// says zero too.
		if e, err := n.BlockStatus(off, length); err == nil && e.Has(block.Zero) && m.zero(off, e.Length) {
			off += e.Length
			continue
		}
		p := buf[:length]
		if _, err := n.ReadAt(p, off); err != nil || !m.same(p, off) {
			verifyClusters(t, where, n, m, off, length)
		}
		off += length
	}
}

// zero reports whether the acknowledged content and the last written are
// both zero over [off, off+n).
func (m *faultModel) zero(off, n int64) bool {
	end := off + n
	isZero := func(b []byte) bool { return bytes.Count(b, []byte{0}) == len(b) }
	return end <= m.ackedSize && end <= m.size && isZero(m.acked[off:end]) && isZero(m.cur[off:end])
}

// verifyClusters reads [off, off+length) a cluster at a time and compares
// every byte with what the model allows.
func verifyClusters(t *testing.T, where string, n *block.Node, m *faultModel, off, length int64) {
	t.Helper()
	cs := n.Image.(*Image).clusterSize
	buf := make([]byte, cs)
	for end := off + length; off < end; off += cs {
		p := buf[:min(cs, end-off)]
		if _, err := n.ReadAt(p, off); err != nil {
			// Only a cluster changed since the flush may fail to
			// read (compressed data overwritten after being freed).
			for b := off; b < off+int64(len(p)); b++ {
				if !m.touched(b) {
					t.Fatalf("%s: read at %d: %v", where, off, err)
				}
			}
			continue
		}
		if m.same(p, off) {
			continue
		}
		for k, v := range p {
			if b := off + int64(k); !m.allowed(b, v) {
				t.Fatalf("%s: byte %d reads %#x; acknowledged %#x", where, b, v, m.ackedAt(b))
			}
		}
	}
}

// same reports whether p, read at off, is what the last flush
// acknowledged or what the program wrote last: both are allowed.
func (m *faultModel) same(p []byte, off int64) bool {
	end := off + int64(len(p))
	return (end <= m.ackedSize && bytes.Equal(p, m.acked[off:end])) ||
		(end <= m.size && bytes.Equal(p, m.cur[off:end]))
}

// touched reports whether byte b changed since the last flush.
func (m *faultModel) touched(b int64) bool {
	for _, t := range m.since {
		if b >= t.off && b < t.off+t.n {
			return true
		}
	}
	return false
}

func (m *faultModel) ackedAt(b int64) byte {
	if b < m.ackedSize {
		return m.acked[b]
	}
	return 0
}

// haveQemuImg reports whether the real qemu-img can be run (under CI it
// must be).
func haveQemuImg() bool {
	_, err := exec.LookPath("qemu-img")
	return err == nil || oracle.InCI()
}

// qemuCheckCode runs the real qemu-img check on an in-memory image and
// returns its exit code; 0 when QEMU is not installed (outside CI).
func qemuCheckCode(t *testing.T, f *storage.MemFile) int {
	t.Helper()
	if !haveQemuImg() {
		return 0
	}
	p := filepath.Join(t.TempDir(), "crash.qcow2")
	if err := os.WriteFile(p, f.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	r := oracle.QemuImg(t, "check", p)
	if r.Code != 0 && r.Code != 2 && r.Code != 3 {
		t.Fatalf("qemu-img check: %s", r)
	}
	return r.Code
}

// TestWriteErrorAtEveryWrite makes one change of each scenario fail (an
// I/O error the program sees and goes on from) and closes the image
// normally: it must then check with at most leaks, and every byte outside
// the operation that failed must hold what was written last.
func TestWriteErrorAtEveryWrite(t *testing.T) {
	for k := range faultScenarios {
		sc := &faultScenarios[k]
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			base, m0, cs := faultBase(t, sc)
			ffs, _, _, err := runFaulted(sc, base, m0, cs, 0)
			if err != nil {
				t.Fatalf("scenario without faults: %v", err)
			}
			// The run counted syncs; this one does not.
			total := ffs.In.Changes()
			for fail := 1; fail <= total; fail++ {
				mem := storage.NewMemFS()
				mem.Put("f.qcow2", base.File("f.qcow2").Clone())
				// A failed sync leaves unknown what reached the disk
				// (QEMU does not recover from it either): only writes
				// fail here.
				ffs := storage.NewFaultFS(mem)
				ffs.In.FailAt(fail, nil, false)
				env := &block.Env{Registry: block.NewRegistry(New()), Files: ffs}
				where := fmt.Sprintf("change %d of %d failed", fail, total)
				n, err := env.Open("f.qcow2", block.OpenOptions{Format: "qcow2", Write: true, DriverOptions: sc.open})
				if err != nil {
					continue // opening failed: nothing was written
				}
				m := m0.clone()
				var uncertain []faultTouch
				for j, st := range sc.steps {
					before := len(m.since)
					if err := runFaultSteps(n.Image, []faultStep{st}, m, cs, j); err != nil {
						for _, u := range m.since[before:] {
							u.any = true
							uncertain = append(uncertain, u)
						}
						if st.op == fResize {
							uncertain = append(uncertain, faultTouch{off: 0, n: st.off, any: true})
						}
					}
				}
				if err := n.Close(); err != nil && !ffs.In.Tripped() {
					t.Fatalf("%s: close: %v", where, err)
				}
				verifyAfterError(t, where, sc, mem.File("f.qcow2"), m, uncertain)
			}
		})
	}
}

// verifyAfterError checks an image closed after an I/O error: at most
// leaks (and, where the scenario allows, COPIED flags that -r leaks sets
// right), and the last written content outside the uncertain ranges.
func verifyAfterError(t *testing.T, where string, sc *faultScenario, f *storage.MemFile, m *faultModel, uncertain []faultTouch) {
	t.Helper()
	fs := storage.NewMemFS()
	fs.Put("c.qcow2", f)
	env := &block.Env{Registry: block.NewRegistry(New()), Files: fs}
	n, err := env.Open("c.qcow2", block.OpenOptions{Format: "qcow2"})
	if err != nil {
		t.Fatalf("%s: the image does not open: %v", where, err)
	}
	defer n.Close()
	info, _ := n.Image.(block.Infoer).Info()
	var lines []string
	res, err := n.Image.(block.Checker).Check(block.FixNone, func(l string) { lines = append(lines, l) })
	if err != nil || res.CheckErrors != 0 || (res.Corruptions != 0 && !info.Dirty && !sc.copiedMayLag) {
		t.Fatalf("%s: check found %+v (%v)\n%s", where, res, err, strings.Join(lines, "\n"))
	}
	if res.Corruptions != 0 && !info.Dirty {
		fs.Put("r.qcow2", f.Clone())
		r, err := env.Open("r.qcow2", block.OpenOptions{Format: "qcow2", Write: true, ForCheck: true})
		if err != nil {
			t.Fatal(err)
		}
		_, err = r.Image.(block.Checker).Check(block.FixLeaks, nil)
		if err == nil {
			res, err = r.Image.(block.Checker).Check(block.FixNone, nil)
		}
		r.Close()
		if err != nil || res.Corruptions != 0 || res.Leaks != 0 {
			t.Fatalf("%s: check -r leaks left %+v (%v)", where, res, err)
		}
	}
	cur := &faultModel{acked: m.cur, ackedSize: m.size, cur: m.cur, size: m.size, since: uncertain}
	for _, s := range uncertain {
		if s.any && s.off == 0 {
			cur.sizes = append(cur.sizes, n.Size())
		}
	}
	verifyData(t, where, n, cur)
}
