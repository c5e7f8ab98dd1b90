package raw_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/block/blocktest"
	"github.com/qimg/qimg/block/raw"
	"github.com/qimg/qimg/internal/oracle"
)

func hostEnv() *block.Env {
	return &block.Env{Registry: block.NewRegistry(raw.New(), qcow2Prober{})}
}

// stat returns a file's size and allocated bytes (st_blocks*512).
func stat(t *testing.T, name string) (size, allocated int64) {
	t.Helper()
	fi, err := os.Stat(name)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size(), fi.Sys().(*syscall.Stat_t).Blocks * 512
}

// TestInteropCreate creates the same images with qimg and qemu-img and
// compares their sizes and the storage they take (qemu-img info's "disk
// size").
func TestInteropCreate(t *testing.T) {
	oracle.QemuImgPath(t)
	sizes := []string{"0", "1", "511", "512", "1000", "4096", "65537", "1M", "1.5G", "1T"}
	for _, prealloc := range []string{"off", "falloc", "full"} {
		for _, size := range sizes {
			if prealloc != "off" && (size == "1.5G" || size == "1T") {
				continue
			}
			t.Run(prealloc+"/"+size, func(t *testing.T) {
				t.Parallel()
				dir := t.TempDir()
				ours, theirs := filepath.Join(dir, "ours"), filepath.Join(dir, "theirs")
				oracle.MustQemuImg(t, "create", "-q", "-f", "raw", "-o", "preallocation="+prealloc, theirs, size)
				n, err := parseSize(size)
				if err != nil {
					t.Fatal(err)
				}
				if err := hostEnv().Create(block.CreateParams{Filename: ours, Format: "raw", Size: n, Options: "preallocation=" + prealloc}); err != nil {
					t.Fatal(err)
				}
				os1, oa := stat(t, ours)
				ts, ta := stat(t, theirs)
				if os1 != ts || oa != ta {
					t.Errorf("qimg: size %d allocated %d; qemu-img: size %d allocated %d", os1, oa, ts, ta)
				}
				if err := oracle.SameFile(ours, theirs); err != nil {
					t.Error(err)
				}
			})
		}
	}
}

func parseSize(s string) (int64, error) {
	mul := int64(1)
	switch {
	case strings.HasSuffix(s, "M"):
		mul, s = 1<<20, s[:len(s)-1]
	case strings.HasSuffix(s, "G"):
		mul, s = 1<<30, s[:len(s)-1]
	case strings.HasSuffix(s, "T"):
		mul, s = 1<<40, s[:len(s)-1]
	}
	var f float64
	if _, err := fmt.Sscan(s, &f); err != nil {
		return 0, err
	}
	return int64(f * float64(mul)), nil
}

// qemuIOCommands runs qemu-io on file with one -c per command, in batches.
func qemuIOCommands(t *testing.T, file string, probe bool, cmds []string) {
	t.Helper()
	for len(cmds) > 0 {
		n := min(len(cmds), 200)
		args := []string{}
		if !probe {
			args = append(args, "-f", "raw")
		}
		for _, c := range cmds[:n] {
			args = append(args, "-c", c)
		}
		out := oracle.MustQemuIO(t, append(args, file)...)
		if strings.Contains(out, "Pattern verification failed") {
			t.Fatalf("qemu-io: %s", out)
		}
		cmds = cmds[n:]
	}
}

var interopLayouts = []struct {
	name string
	size int64
	opts blocktest.RandomOptions
}{
	{"bytes", 4<<20 + 1536, blocktest.RandomOptions{Patterned: true, MaxRun: 100 << 10}},
	{"sectors", 4<<20 + 1536, blocktest.RandomOptions{Patterned: true, Align: 512}},
	{"blocks", 16 << 20, blocktest.RandomOptions{Patterned: true, Align: 4096, Runs: 64}},
	{"sparse terabyte", 1 << 40, blocktest.RandomOptions{Patterned: true, Align: 4096, Runs: 24}},
}

// TestInteropQemuWrites lets qemu-io write a layout and reads it with qimg.
func TestInteropQemuWrites(t *testing.T) {
	oracle.QemuIOPath(t)
	for i, l := range interopLayouts {
		t.Run(l.name, func(t *testing.T) {
			t.Parallel()
			file := filepath.Join(t.TempDir(), "img.raw")
			oracle.MustQemuImg(t, "create", "-q", "-f", "raw", file, fmt.Sprint(l.size))
			ops := blocktest.RandomOps(l.size, uint64(100+i), l.opts)
			model := blocktest.NewModel(l.size)
			var cmds []string
			for _, op := range ops {
				cmds = append(cmds, op.QemuIO())
				model.Apply(op)
			}
			qemuIOCommands(t, file, false, cmds)
			n, err := hostEnv().Open(file, block.OpenOptions{Format: "raw"})
			if err != nil {
				t.Fatal(err)
			}
			defer n.Close()
			if err := blocktest.Verify(n, model); err != nil {
				t.Fatal(err)
			}
			compareMap(t, n, file)
		})
	}
}

// TestInteropQimgWrites writes a layout with qimg and checks it with
// qemu-io read -P.
func TestInteropQimgWrites(t *testing.T) {
	oracle.QemuIOPath(t)
	for i, l := range interopLayouts {
		t.Run(l.name, func(t *testing.T) {
			t.Parallel()
			file := filepath.Join(t.TempDir(), "img.raw")
			env := hostEnv()
			if err := env.Create(block.CreateParams{Filename: file, Format: "raw", Size: l.size}); err != nil {
				t.Fatal(err)
			}
			n, err := env.Open(file, block.OpenOptions{Format: "raw", Write: true})
			if err != nil {
				t.Fatal(err)
			}
			model, err := blocktest.RandomImage(n, uint64(200+i), l.opts)
			if cerr := n.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				t.Fatal(err)
			}
			cmds, ok := model.QemuIOReads(5000)
			if !ok {
				t.Fatal("layout has too many runs")
			}
			qemuIOCommands(t, file, false, cmds)
			n, err = env.Open(file, block.OpenOptions{Format: "raw"})
			if err != nil {
				t.Fatal(err)
			}
			defer n.Close()
			compareMap(t, n, file)
		})
	}
}

// mapEntry is one entry of `qemu-img map --output=json`.
type mapEntry struct {
	Start   int64 `json:"start"`
	Length  int64 `json:"length"`
	Depth   int   `json:"depth"`
	Present bool  `json:"present"`
	Zero    bool  `json:"zero"`
	Data    bool  `json:"data"`
	Offset  int64 `json:"offset"`
}

// compareMap checks that BlockStatus reports the same data and holes as
// `qemu-img map` does for the file.
func compareMap(t *testing.T, img block.Image, file string) {
	t.Helper()
	var want []mapEntry
	out := oracle.MustQemuImg(t, "map", "--output=json", "-f", "raw", file)
	if err := json.Unmarshal([]byte(out), &want); err != nil {
		t.Fatalf("qemu-img map output: %v\n%s", err, out)
	}
	var got []mapEntry
	for off := int64(0); off < img.Size(); {
		ext, err := img.BlockStatus(off, img.Size()-off)
		if err != nil {
			t.Fatal(err)
		}
		e := mapEntry{Start: off, Length: ext.Length, Present: ext.Has(block.Allocated), Zero: ext.Has(block.Zero),
			Data: ext.Has(block.Data), Offset: ext.HostOffset}
		if k := len(got) - 1; k >= 0 && got[k].Zero == e.Zero && got[k].Data == e.Data && got[k].Present == e.Present &&
			got[k].Offset+got[k].Length == e.Offset {
			got[k].Length += e.Length
		} else {
			got = append(got, e)
		}
		off += ext.Length
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("BlockStatus differs from qemu-img map\nqimg:     %v\nqemu-img: %v", got, want)
	}
}

// TestInteropProbedRawWrite compares the probed-raw restriction with
// qemu-io's: a write that makes sector 0 look like qcow2 fails with EPERM,
// and opening read-write prints the same warning.
func TestInteropProbedRawWrite(t *testing.T) {
	oracle.QemuIOPath(t)
	dir := t.TempDir()
	t.Chdir(dir)
	if err := os.WriteFile("magic", qcow2Magic, 0o644); err != nil {
		t.Fatal(err)
	}
	oracle.MustQemuImg(t, "create", "-q", "-f", "raw", "p.raw", "1M")
	r := oracle.QemuIO(t, "-c", "write -s magic 0 512", "p.raw")
	if !strings.Contains(r.Stdout, "write failed: Operation not permitted") {
		t.Fatalf("qemu-io did not refuse the write: %s", r)
	}
	// Our warning is byte-identical to qemu-io's.
	env := hostEnv()
	var stderr strings.Builder
	env.Stderr = &stderr
	n, err := env.Open("p.raw", block.OpenOptions{Write: true})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if stderr.String() != r.Stderr {
		t.Errorf("warning differs\nqimg:\n%s\nqemu-io:\n%s", stderr.String(), r.Stderr)
	}
	sector := make([]byte, 512)
	for i := range sector {
		sector[i] = qcow2Magic[i%len(qcow2Magic)]
	}
	_, err = n.WriteAt(sector, 0)
	if err == nil || "write failed: "+err.Error() != "write failed: Operation not permitted" {
		t.Errorf("qimg's write: %v", err)
	}
	// Both still see a raw image of zeroes.
	oracle.ReadPattern(t, "p.raw", "raw", 0, 0, 512)
	// Beyond sector 0 both write.
	oracle.MustQemuIO(t, "-c", "write -s magic 512 512", "p.raw")
	if _, err := n.WriteAt(sector, 1024); err != nil {
		t.Errorf("qimg's write at 1024: %v", err)
	}
}
