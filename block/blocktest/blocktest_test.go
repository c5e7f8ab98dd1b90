package blocktest

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/qimg/qimg/block"
)

// sliceImage is a tiny correct image over a byte slice; lie makes
// BlockStatus report everything as zeroes, corrupt flips a byte on reads.
type sliceImage struct {
	b       []byte
	lie     bool
	corrupt int64
}

func (s *sliceImage) Format() string { return "slice" }
func (s *sliceImage) Size() int64    { return int64(len(s.b)) }
func (s *sliceImage) ReadAt(p []byte, off int64) (int, error) {
	if err := block.CheckRange(s.Size(), off, int64(len(p))); err != nil {
		return 0, err
	}
	copy(p, s.b[off:])
	if c := s.corrupt - off; c >= 0 && c < int64(len(p)) {
		p[c] ^= 1
	}
	return len(p), nil
}
func (s *sliceImage) WriteAt(p []byte, off int64) (int, error) {
	if err := block.CheckRange(s.Size(), off, int64(len(p))); err != nil {
		return 0, err
	}
	return copy(s.b[off:], p), nil
}
func (s *sliceImage) WriteZeroes(off, n int64, _ block.ZeroFlags) error {
	clear(s.b[off : off+n])
	return nil
}
func (s *sliceImage) Discard(off, n int64) error { return nil }
func (s *sliceImage) Flush() error               { return nil }
func (s *sliceImage) Close() error               { return nil }
func (s *sliceImage) BlockStatus(off, n int64) (block.Extent, error) {
	if err := block.CheckRange(s.Size(), off, n); err != nil {
		return block.Extent{}, err
	}
	st := block.Allocated | block.Data
	if s.lie {
		st = block.Allocated | block.Zero
	}
	return block.Extent{Offset: off, Length: n, Status: st}, nil
}

func TestModel(t *testing.T) {
	m := NewModel(10 * modelChunk)
	m.Write([]byte("hello"), modelChunk-2)
	if got := m.Bytes(modelChunk-3, 7); string(got) != "\x00hello\x00" {
		t.Errorf("Bytes = %q", got)
	}
	if pos := m.FirstNonZero(0, 10*modelChunk); pos != modelChunk-2 {
		t.Errorf("FirstNonZero = %d", pos)
	}
	if pos := m.FirstNonZero(modelChunk+3, 100); pos != -1 {
		t.Errorf("FirstNonZero after the data = %d", pos)
	}
	c := m.Clone()
	m.Zero(modelChunk-1, 2)
	if got := m.Bytes(modelChunk-2, 5); string(got) != "h\x00\x00lo" {
		t.Errorf("after Zero: %q", got)
	}
	if m.Equal(c) || !c.Equal(c.Clone()) {
		t.Error("Equal is wrong")
	}
	// Zeroing whole chunks frees them; equality ignores how zeroes are
	// stored.
	m.Zero(0, 10*modelChunk)
	if len(m.chunks) != 0 || !m.Equal(NewModel(10*modelChunk)) {
		t.Errorf("%d chunks left after zeroing everything", len(m.chunks))
	}
	z := NewModel(10 * modelChunk)
	z.Write(make([]byte, 100), 5)
	if !z.Equal(NewModel(10*modelChunk)) || z.Equal(NewModel(5)) {
		t.Error("Equal compares storage, not content")
	}
}

func TestModelConstantRuns(t *testing.T) {
	m := NewModel(3*modelChunk + 100)
	m.Write(bytes.Repeat([]byte{7}, 10), 5)
	m.Write(bytes.Repeat([]byte{7}, modelChunk), modelChunk)
	m.Write([]byte{0}, modelChunk+10) // a zero inside the 7s
	runs, ok := m.ConstantRuns(100)
	want := []ConstantRun{
		{0, 5, 0}, {5, 10, 7}, {15, modelChunk - 15, 0}, {modelChunk, 10, 7}, {modelChunk + 10, 1, 0},
		{modelChunk + 11, modelChunk - 11, 7}, {2 * modelChunk, modelChunk + 100, 0},
	}
	if !ok || len(runs) != len(want) {
		t.Fatalf("ConstantRuns = %v, %v", runs, ok)
	}
	for i := range want {
		if runs[i] != want[i] {
			t.Errorf("run %d = %+v, want %+v", i, runs[i], want[i])
		}
	}
	if _, ok := m.ConstantRuns(3); ok {
		t.Error("limit not honoured")
	}
	cmds, ok := m.QemuIOReads(100)
	if !ok || len(cmds) != len(want) || cmds[1] != "read -P 7 5 10" {
		t.Errorf("QemuIOReads = %q", cmds)
	}
	big := NewModel(4 << 30)
	big.Write([]byte{1}, 0)
	if cmds, _ := big.QemuIOReads(10); len(cmds) != 3 || cmds[2] != fmt.Sprintf("read -P 0 %d %d", 4<<30-1<<20, 1<<20) {
		t.Errorf("QemuIOReads of a big zero run = %q", cmds)
	}
	// Random data makes runs that ConstantRuns gives up on.
	r := NewModel(1 << 20)
	r.Write(pattern(1, 1<<20), 0)
	if _, ok := r.ConstantRuns(1000); ok {
		t.Error("random data described in 1000 runs")
	}
}

func TestVerifyCatchesBadImages(t *testing.T) {
	const size = 3 << 20
	m := NewModel(size)
	good := &sliceImage{b: make([]byte, size), corrupt: -1}
	if err := Apply(good, RandomOps(size, 1, RandomOptions{}), m); err != nil {
		t.Fatal(err)
	}
	if err := Verify(good, m); err != nil {
		t.Fatalf("a correct image fails: %v", err)
	}
	liar := &sliceImage{b: good.b, lie: true, corrupt: -1}
	if err := Verify(liar, m); err == nil || !strings.Contains(err.Error(), "reads as zeroes") {
		t.Errorf("an image reporting data as zeroes: %v", err)
	}
	pos := m.FirstNonZero(0, size) + 3
	bad := &sliceImage{b: good.b, corrupt: pos}
	if err := Verify(bad, m); err == nil || !strings.Contains(err.Error(), "reads") {
		t.Errorf("a corrupt image: %v", err)
	}
	short := &sliceImage{b: good.b[:size-512], corrupt: -1}
	if err := Verify(short, m); err == nil {
		t.Error("a size mismatch passes")
	}
}

func TestRandomOps(t *testing.T) {
	const size = 8 << 20
	a := RandomOps(size, 5, RandomOptions{Align: 4096, Runs: 40})
	b := RandomOps(size, 5, RandomOptions{Align: 4096, Runs: 40})
	c := RandomOps(size, 6, RandomOptions{Align: 4096, Runs: 40})
	if len(a) == 0 || len(a) != len(b) {
		t.Fatalf("%d and %d ops", len(a), len(b))
	}
	kinds := map[OpKind]int{}
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("op %d differs for the same seed: %v %v", i, a[i], b[i])
		}
		op := a[i]
		kinds[op.Kind]++
		if op.Offset%4096 != 0 || op.Length%4096 != 0 || op.Length <= 0 || op.Offset+op.Length > size {
			t.Errorf("op %v is not aligned or not inside the image", op)
		}
		if op.Kind == OpWrite && (!op.Random || op.QemuIO() != "") {
			t.Errorf("random data op %v", op)
		}
	}
	if kinds[OpWrite] == 0 || kinds[OpZero] == 0 {
		t.Errorf("layout lacks a kind: %v", kinds)
	}
	if len(c) == len(a) && c[0] == a[0] {
		t.Error("different seeds gave the same layout")
	}
	for _, op := range RandomOps(size, 5, RandomOptions{Patterned: true}) {
		if op.Kind == OpWrite && (op.Random || op.Pattern == 0 || !bytes.Equal(op.Data(), bytes.Repeat([]byte{op.Pattern}, int(op.Length)))) {
			t.Errorf("patterned op %v", op)
		}
	}
	// A tiny image still gets a valid layout.
	for _, op := range RandomOps(3, 1, RandomOptions{}) {
		if op.Offset+op.Length > 3 || op.Length <= 0 {
			t.Errorf("op %v outside a 3-byte image", op)
		}
	}
	if ops := RandomOps(0, 1, RandomOptions{}); len(ops) != 0 {
		t.Errorf("ops for an empty image: %v", ops)
	}
}

func TestOpQemuIO(t *testing.T) {
	tests := []struct {
		op   Op
		want string
	}{
		{Op{Kind: OpWrite, Offset: 512, Length: 1024, Pattern: 0xab}, "write -P 171 512 1024"},
		{Op{Kind: OpZero, Offset: 0, Length: 4096}, "write -z 0 4096"},
		{Op{Kind: OpZero, Offset: 7, Length: 9, Unmap: true}, "write -z -u 7 9"},
		{Op{Kind: OpWrite, Offset: 0, Length: 5, Random: true}, ""},
	}
	for _, tc := range tests {
		if got := tc.op.QemuIO(); got != tc.want {
			t.Errorf("%v.QemuIO() = %q, want %q", tc.op, got, tc.want)
		}
	}
}
