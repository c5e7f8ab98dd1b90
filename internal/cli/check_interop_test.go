package cli

import (
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qimg/qimg/internal/oracle"
)

// qcow2Patch edits a qcow2 file's bytes, to build damaged images for check
// tests. It knows just enough of the format to find the tables.
type qcow2Patch struct {
	t            *testing.T
	b            []byte
	clusterBits  uint
	l1Off, rtOff int64
	snOff        int64
	order        uint
	// entryBytes is the size of an L2 entry (16 with extended L2).
	entryBytes int64
}

func loadQcow2Patch(t *testing.T, path string) *qcow2Patch {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	be := binary.BigEndian
	p := &qcow2Patch{t: t, b: b, clusterBits: uint(be.Uint32(b[20:])),
		l1Off: int64(be.Uint64(b[40:])), rtOff: int64(be.Uint64(b[48:])), snOff: int64(be.Uint64(b[64:])),
		order: 4, entryBytes: 8}
	if be.Uint32(b[4:]) >= 3 {
		p.order = uint(be.Uint32(b[96:]))
		if be.Uint64(b[72:])&(1<<4) != 0 {
			p.entryBytes = 16
		}
	}
	return p
}

func (p *qcow2Patch) grow(n int64) {
	if n > int64(len(p.b)) {
		p.b = append(p.b, make([]byte, n-int64(len(p.b)))...)
	}
}

func (p *qcow2Patch) u64(off int64) uint64 { return binary.BigEndian.Uint64(p.b[off:]) }

func (p *qcow2Patch) put64(off int64, v uint64) {
	p.grow(off + 8)
	binary.BigEndian.PutUint64(p.b[off:], v)
}

func (p *qcow2Patch) put32(off int64, v uint32) {
	p.grow(off + 4)
	binary.BigEndian.PutUint32(p.b[off:], v)
}

func (p *qcow2Patch) l1(i int64) uint64          { return p.u64(p.l1Off + 8*i) }
func (p *qcow2Patch) setL1(i int64, v uint64)    { p.put64(p.l1Off+8*i, v) }
func (p *qcow2Patch) l2Off(i int64) int64        { return int64(p.l1(i) & 0x00fffffffffffe00) }
func (p *qcow2Patch) l2At(i, j int64) int64      { return p.l2Off(i) + p.entryBytes*j }
func (p *qcow2Patch) l2(i, j int64) uint64       { return p.u64(p.l2At(i, j)) }
func (p *qcow2Patch) setL2(i, j int64, v uint64) { p.put64(p.l2At(i, j), v) }
func (p *qcow2Patch) setL2Bitmap(i, j int64, v uint64) {
	p.put64(p.l2At(i, j)+8, v)
}
func (p *qcow2Patch) rt(i int64) uint64       { return p.u64(p.rtOff + 8*i) }
func (p *qcow2Patch) setRt(i int64, v uint64) { p.put64(p.rtOff+8*i, v) }

// setRefcount stores the refcount of a cluster in its refcount block.
func (p *qcow2Patch) setRefcount(cluster int64, v uint64) {
	perBlock := int64(8) << p.clusterBits >> p.order
	block := int64(p.rt(cluster/perBlock) &^ 0x1ff)
	if block == 0 {
		p.t.Fatalf("cluster %d has no refcount block", cluster)
	}
	bits := int64(1) << p.order
	idx := cluster % perBlock
	switch {
	case bits < 8:
		off := block + idx*bits/8
		shift := uint(idx * bits % 8)
		mask := byte((1<<bits - 1) << shift)
		p.b[off] = p.b[off]&^mask | byte(v<<shift)&mask
	default:
		var buf [8]byte
		binary.BigEndian.PutUint64(buf[:], v)
		copy(p.b[block+idx*bits/8:], buf[8-bits/8:])
	}
}

func (p *qcow2Patch) save(path string) {
	p.t.Helper()
	if err := os.WriteFile(path, p.b, 0o644); err != nil {
		p.t.Fatal(err)
	}
}

// checkCase is a (possibly damaged) image that qimg and qemu-img must
// check and repair alike.
type checkCase struct {
	name string
	// build makes t.qcow2 (and any files it needs) in dir.
	build func(t *testing.T, dir string)
	patch func(p *qcow2Patch)
	// modes are the -r values to try; nil means none, leaks and all.
	modes []string
	// json also compares --output=json.
	json bool
	// filesMayDiffer is set when qemu-img changes the file on close in
	// ways a check does not (it stores persistent bitmaps anew).
	filesMayDiffer bool
	// keepsData is set when a repair must leave every guest byte as it
	// was.
	keepsData bool
}

// qemuCmds returns a build step running qemu-img and qemu-io commands in
// dir; arguments are separated by spaces.
func qemuCmds(cmds ...string) func(*testing.T, string) {
	return func(t *testing.T, dir string) {
		t.Helper()
		for _, c := range cmds {
			args := strings.Fields(c)
			for k := 1; k < len(args); k++ {
				if args[k-1] == "-c" {
					args[k] = strings.ReplaceAll(args[k], "_", " ")
				}
			}
			cmd := exec.Command(args[0], args[1:]...)
			cmd.Dir = dir
			out, err := cmd.CombinedOutput()
			if err != nil && !strings.Contains(c, "sigraise") {
				t.Fatalf("%s: %v\n%s", c, err, out)
			}
		}
	}
}

// standard is a 64 MiB image with three written ranges: clusters 5 and 6
// at guest 0, 7 at 1 MiB, 8 at 10 MiB (with 64 KiB clusters; the L2
// table is cluster 4, the refcount block cluster 2).
func standard(opts string) func(*testing.T, string) {
	create := "qemu-img create -q -f qcow2 t.qcow2 64M"
	if opts != "" {
		create = "qemu-img create -q -f qcow2 -o " + opts + " t.qcow2 64M"
	}
	return qemuCmds(create, "qemu-io -c write_-P_1_0_128k -c write_-P_3_1M_64k -c write_-P_2_10M_64k t.qcow2")
}

func TestInteropCheck(t *testing.T) {
	oracle.QemuImgPath(t)
	oracle.QemuIOPath(t)
	const copied = uint64(1) << 63
	withSnapshots := qemuCmds("qemu-img create -q -f qcow2 t.qcow2 64M",
		"qemu-io -c write_-P_1_0_128k t.qcow2", "qemu-img snapshot -c s1 t.qcow2",
		"qemu-io -c write_-P_2_0_64k -c write_-P_3_1M_64k t.qcow2", "qemu-img snapshot -c snap2 t.qcow2")
	compressed := qemuCmds("qemu-img create -q -f qcow2 src.qcow2 4M",
		"qemu-io -c write_-P_1_0_1M -c write_-P_7_2M_64k src.qcow2",
		"qemu-img convert -c -O qcow2 src.qcow2 t.qcow2")
	extended := qemuCmds("qemu-img create -q -f qcow2 -o extended_l2=on t.qcow2 64M",
		"qemu-io -c write_-P_1_0_4k -c write_-P_2_64k_64k -c write_-z_200k_8k t.qcow2")
	bitmaps := qemuCmds("qemu-img create -q -f qcow2 t.qcow2 64M", "qemu-io -c write_-P_1_0_128k t.qcow2",
		"qemu-img bitmap --add t.qcow2 b1", "qemu-io -c write_-P_2_1M_64k t.qcow2")
	cases := []checkCase{
		{name: "clean", build: standard(""), json: true},
		{name: "leak", build: standard(""), patch: func(p *qcow2Patch) { p.setL2(0, 1, 0) }, json: true},
		{name: "refcount zero", build: standard(""), patch: func(p *qcow2Patch) { p.setRefcount(5, 0) }, json: true, keepsData: true},
		{name: "refcount too high", build: standard(""), patch: func(p *qcow2Patch) { p.setRefcount(5, 2) }, keepsData: true},
		{name: "copied flag missing", build: standard(""), patch: func(p *qcow2Patch) { p.setL2(0, 0, p.l2(0, 0)&^copied) }, keepsData: true},
		{name: "copied flag on L1 missing", build: standard(""), patch: func(p *qcow2Patch) { p.setL1(0, p.l1(0)&^copied) }, keepsData: true},
		{name: "L2 entry unaligned", build: standard(""), patch: func(p *qcow2Patch) { p.setL2(0, 0, p.l2(0, 0)+0x200) }},
		{name: "L2 entry beyond the end", build: standard(""), patch: func(p *qcow2Patch) { p.setL2(0, 1, copied|0x10000000) }},
		{name: "cluster used twice", build: standard(""), patch: func(p *qcow2Patch) { p.setL2(0, 1, p.l2(0, 0)) }, json: true},
		{name: "L1 entry unaligned", build: standard(""), patch: func(p *qcow2Patch) { p.setL1(0, p.l1(0)+0x200) }},
		{name: "L1 reserved bits", build: standard(""), patch: func(p *qcow2Patch) { p.setL1(0, p.l1(0)|1<<60) }},
		{name: "L1 entry without offset", build: standard(""), patch: func(p *qcow2Patch) { p.setL1(0, copied) }},
		{name: "L2 reserved bits", build: standard(""), patch: func(p *qcow2Patch) { p.setL2(0, 0, p.l2(0, 0)|1<<59) }},
		{name: "refcount block beyond the end", build: standard(""), patch: func(p *qcow2Patch) { p.setRt(3, 0x100000000) }},
		{name: "refcount block far beyond the end", build: standard(""), patch: func(p *qcow2Patch) { p.setRt(3, 0x7fffffffffff0000) }},
		{name: "refcount block unaligned", build: standard(""), patch: func(p *qcow2Patch) { p.setRt(3, 0x30200) }},
		{name: "refcount table reserved bits", build: standard(""), patch: func(p *qcow2Patch) { p.setRt(0, p.rt(0)|1) }},
		{name: "refcount block refcount zero", build: standard(""), patch: func(p *qcow2Patch) { p.setRefcount(2, 0) }, keepsData: true},
		{name: "refcount block refcount two", build: standard(""), patch: func(p *qcow2Patch) { p.setRefcount(2, 2) }, keepsData: true},
		{name: "preallocated zero cluster unaligned", build: standard(""), patch: func(p *qcow2Patch) { p.setL2(0, 1, p.l2(0, 1)|1|0x200) }},
		{name: "no refcount table", build: standard(""), patch: func(p *qcow2Patch) { p.put32(56, 0) }},
		{name: "corrupt bit", build: standard(""), patch: func(p *qcow2Patch) { p.b[79] |= 2 }, keepsData: true},
		{name: "refcount table does not cover the file", build: standard("cluster_size=512,refcount_bits=64"),
			patch: func(p *qcow2Patch) { p.grow(4 << 20); p.setL2(0, 3, copied|3<<20) }},
		{name: "refcount overflow", build: standard("cluster_size=512,refcount_bits=1"), patch: func(p *qcow2Patch) { p.setL2(0, 3, p.l2(0, 0)) }},
		{name: "wide refcounts leaks", build: standard("cluster_size=4k,refcount_bits=64"),
			patch: func(p *qcow2Patch) { p.setL2(0, 3, 0); p.setL2(0, 4, 0) }},
		{name: "narrow refcounts leak", build: standard("refcount_bits=2"), patch: func(p *qcow2Patch) { p.setL2(0, 1, 0) }},
		{name: "version 2 refcount zero", build: standard("compat=0.10"), patch: func(p *qcow2Patch) { p.setRefcount(5, 0) }, keepsData: true},
		{name: "compressed clean", build: compressed, json: true},
		{name: "compressed copied flag", build: compressed, patch: func(p *qcow2Patch) { p.setL2(0, 1, p.l2(0, 1)|copied) }},
		{name: "compressed beyond the end", build: compressed, patch: func(p *qcow2Patch) {
			p.setL2(0, 1, p.l2(0, 1)&^(1<<54-1)|0x3000000)
		}},
		{name: "compressed shared", build: compressed, patch: func(p *qcow2Patch) { p.setL2(0, 2, p.l2(0, 1)) }},
		{name: "extended clean", build: extended, json: true},
		{name: "extended bad bitmap", build: extended, patch: func(p *qcow2Patch) { p.setL2Bitmap(0, 0, 0x100000001) }},
		{name: "extended unallocated with allocated bits", build: extended, patch: func(p *qcow2Patch) { p.setL2Bitmap(0, 5, 3) }},
		{name: "extended compressed with bitmap", build: extended, patch: func(p *qcow2Patch) {
			p.setL2(0, 1, 1<<62|0x70000)
			p.setL2Bitmap(0, 1, 1)
		}},
		{name: "extended unaligned zero cluster", build: extended, patch: func(p *qcow2Patch) {
			p.setL2(0, 1, p.l2(0, 1)+0x200)
			p.setL2Bitmap(0, 1, 0xffff000000000000)
		}},
		{name: "extended unaligned data cluster", build: extended, patch: func(p *qcow2Patch) { p.setL2(0, 1, p.l2(0, 1)+0x200) }},
		{name: "snapshots clean", build: withSnapshots, json: true},
		{name: "snapshot L1 unaligned", build: withSnapshots, patch: func(p *qcow2Patch) { p.put64(p.snOff, p.u64(p.snOff)+0x200) }},
		{name: "snapshot L1 too big", build: withSnapshots, patch: func(p *qcow2Patch) { p.put32(p.snOff+8, 0xffffff) }},
		{name: "snapshot entry incomplete", build: withSnapshots, patch: func(p *qcow2Patch) { p.put32(p.snOff+36, 8) }},
		{name: "snapshot extra data too big", build: withSnapshots, patch: func(p *qcow2Patch) { p.put32(p.snOff+36, 4096) }},
		{name: "snapshot table offset unaligned", build: withSnapshots, patch: func(p *qcow2Patch) { p.put64(64, uint64(p.snOff)+0x200) }},
		{name: "bitmaps clean", build: bitmaps, filesMayDiffer: true},
		{name: "bitmap table leak", build: bitmaps, filesMayDiffer: true, patch: func(p *qcow2Patch) { p.setBitmapTable(0, 0) }},
		// After -r all, qemu-img stores the bitmaps anew on close and
		// frees the shared cluster, breaking its own repair.
		{name: "bitmap data shared", build: bitmaps, filesMayDiffer: true, modes: []string{"", "leaks"}, patch: func(p *qcow2Patch) { p.setBitmapTable(0, 0x50000) }},
		{name: "data file", build: qemuCmds("qemu-img create -q -f qcow2 -o data_file=t.raw t.qcow2 64M",
			"qemu-io -c write_-P_1_0_128k -c write_-P_2_1M_64k t.qcow2"),
			patch: func(p *qcow2Patch) { p.setL2(0, 5, 1<<62|0x60000); p.setL2(0, 1, p.l2(0, 1)|0x200) }},
		{name: "lazy refcounts dirty", build: qemuCmds("qemu-img create -q -f qcow2 -o lazy_refcounts=on t.qcow2 64M",
			"qemu-io -c write_-P_1_0_128k -c write_-P_2_1M_64k -c sigraise_9 t.qcow2"), keepsData: true},
	}
	for _, tc := range cases {
		base := t.TempDir()
		tc.build(t, base)
		if tc.patch != nil {
			p := loadQcow2Patch(t, filepath.Join(base, "t.qcow2"))
			tc.patch(p)
			p.save(filepath.Join(base, "t.qcow2"))
		}
		modes := tc.modes
		if modes == nil {
			modes = []string{"", "leaks", "all"}
		}
		for _, mode := range modes {
			outputs := []string{"human"}
			if tc.json {
				outputs = append(outputs, "json")
			}
			for _, out := range outputs {
				name := tc.name + "/" + out
				if mode != "" {
					name += "/-r " + mode
				}
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					runCheckCase(t, tc, base, mode, out)
				})
			}
		}
	}
}

// setBitmapTable sets entry i of the first bitmap's table.
func (p *qcow2Patch) setBitmapTable(i int64, v uint64) {
	be := binary.BigEndian
	for off := 112; off+8 <= len(p.b); {
		magic, n := be.Uint32(p.b[off:]), int(be.Uint32(p.b[off+4:]))
		if magic == 0 {
			break
		}
		if magic == 0x23852875 {
			dir := int64(be.Uint64(p.b[off+24:]))
			p.put64(int64(p.u64(dir))+8*i, v)
			return
		}
		off += 8 + (n+7)&^7
	}
	p.t.Fatal("no bitmaps extension")
}

func runCheckCase(t *testing.T, tc checkCase, base, mode, out string) {
	ours, theirs := t.TempDir(), t.TempDir()
	for _, dir := range []string{ours, theirs} {
		copyDir(t, base, dir)
	}
	args := []string{"check", "--output=" + out}
	if mode != "" {
		args = append(args, "-r", mode)
	}
	args = append(args, "t.qcow2")
	got := oracle.RunQimg(t, ours, args...)
	want := oracle.QemuImgIn(t, theirs, args...)
	if got.Code != want.Code || got.Stdout != want.Stdout || got.Stderr != want.Stderr {
		t.Fatalf("qimg %s\nqemu-img %s", got, want)
	}
	if mode == "" {
		return
	}
	if !tc.filesMayDiffer {
		if err := oracle.SameFile(filepath.Join(ours, "t.qcow2"), filepath.Join(theirs, "t.qcow2")); err != nil {
			t.Errorf("repaired files differ: %v", err)
		}
	}
	// Both repaired images check alike; where they can be read, they
	// read alike, and a repair that must keep the data did.
	a := oracle.QemuImgIn(t, ours, "check", "t.qcow2")
	b := oracle.QemuImgIn(t, theirs, "check", "t.qcow2")
	if a.Code != b.Code || (a.Stdout != b.Stdout && !tc.filesMayDiffer) {
		t.Errorf("qemu-img check after repair\nof qimg's: %s\nof qemu-img's: %s", a, b)
	}
	if a.Code != 0 && a.Code != 3 {
		return
	}
	if r := oracle.QemuImg(t, "compare", filepath.Join(ours, "t.qcow2"), filepath.Join(theirs, "t.qcow2")); r.Code != 0 {
		t.Errorf("repaired images read differently: %s", r)
	}
	if tc.keepsData {
		orig := filepath.Join(t.TempDir(), "orig.qcow2")
		copyFile(t, filepath.Join(base, "t.qcow2"), orig)
		if r := oracle.QemuImg(t, "compare", "-U", orig, filepath.Join(ours, "t.qcow2")); r.Code != 0 {
			t.Errorf("repair changed the data: %s", r)
		}
	}
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	ents, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		copyFile(t, filepath.Join(from, e.Name()), filepath.Join(to, e.Name()))
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestInteropDirtyRepairOnOpen opens an image left dirty by lazy refcounts
// for writing: qimg repairs it as qemu-img does, printing the same lines,
// and leaves the same bytes.
func TestInteropDirtyRepairOnOpen(t *testing.T) {
	oracle.QemuIOPath(t)
	dirty := "qemu-img create -q -f qcow2 -o lazy_refcounts=on t.qcow2 64M && " +
		"(qemu-io -c 'write -P 1 0 128k' -c 'write -P 2 1M 64k' -c 'sigraise 9' t.qcow2 >/dev/null 2>&1; true)"
	c := func(args ...string) []string { return args }
	runDiffCases(t, []diffCase{
		{name: "rebase -u", shell: dirty, args: c("rebase", "-u", "-b", "", "t.qcow2"), files: c("t.qcow2")},
		{name: "convert -n", shell: dirty + " && qemu-img create -q -f raw src 64M",
			args: c("convert", "-n", "-O", "qcow2", "src", "t.qcow2"), checkOf: c("t.qcow2")},
		{name: "check read-only", shell: dirty, args: c("check", "t.qcow2"), files: c("t.qcow2")},
	})
}
