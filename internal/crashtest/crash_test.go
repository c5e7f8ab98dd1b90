package crashtest

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/internal/drivers"
	"github.com/qimg/qimg/internal/oracle"
)

// workloadEnv names the environment variable that makes the test binary
// run the write workload instead of the tests.
const workloadEnv = "QIMG_CRASHTEST_WORKLOAD"

func TestMain(m *testing.M) {
	if spec := os.Getenv(workloadEnv); spec != "" {
		if err := runWorkload(spec); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

const (
	kb = 1 << 10
	mb = 1 << 20
	// imageSize is the virtual size of every image here.
	imageSize = 32 * mb
	// chunk is the unit data is compared in.
	chunk = 64 * kb
)

// kills returns how many times each operation is killed.
func kills() int {
	if testing.Short() {
		return 3
	}
	return 16
}

// sourceData is half text (compressible) and half random, chunk by chunk,
// with every fourth chunk zero.
func sourceData() []byte {
	b := oracle.RandomBytes(1, imageSize)
	for off := 0; off < imageSize; off += chunk {
		switch (off / chunk) % 4 {
		case 0:
			clear(b[off : off+chunk])
		case 1:
			copy(b[off:off+chunk], bytes.Repeat([]byte(fmt.Sprintf("chunk %d of the source ", off/chunk)), chunk/16))
		}
	}
	return b
}

// runKilled starts cmd, kills it with SIGKILL after delay (if it is still
// running) and reports whether it was killed.
func runKilled(t *testing.T, cmd *exec.Cmd, delay time.Duration) bool {
	t.Helper()
	var out bytes.Buffer
	if cmd.Stdout == nil {
		cmd.Stdout = &out
	}
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%v: %v\n%s", cmd.Args, err, out.Bytes())
		}
		return false
	case <-time.After(delay):
		_ = cmd.Process.Signal(syscall.SIGKILL)
		err := <-done
		if err == nil {
			return false // it finished first
		}
		return true
	}
}

// timed runs cmd to completion and returns how long it took.
func timed(t *testing.T, cmd *exec.Cmd) time.Duration {
	t.Helper()
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", cmd.Args, err, out)
	}
	return time.Since(start)
}

// qimgCmd returns a command running the qimg binary (as qemu-img) in dir.
func qimgCmd(t *testing.T, dir string, args ...string) *exec.Cmd {
	cmd := exec.Command(oracle.QemuImgLink(t), args...)
	cmd.Dir = dir
	return cmd
}

// checkKilled checks an image left by a killed process: the real qemu-img
// finds at most leaks (a dirty image with lazy refcounts may need its
// refcounts rebuilt), qimg's check -r all repairs it, and then qemu-img
// finds nothing.
func checkKilled(t *testing.T, where, path string) {
	t.Helper()
	r := oracle.QemuImg(t, "check", path)
	dirty := strings.Contains(oracle.QemuImg(t, "info", "-U", path).Stdout, "cleanly shut down: no") || isDirty(t, path)
	if r.Code != 0 && r.Code != 3 && !(r.Code == 2 && dirty) {
		t.Fatalf("%s: qemu-img check: %s", where, r)
	}
	fix := oracle.RunQimg(t, filepath.Dir(path), "check", "-r", "all", filepath.Base(path))
	if fix.Code != 0 {
		t.Fatalf("%s: qimg check -r all: %s", where, fix)
	}
	if r := oracle.QemuImg(t, "check", path); r.Code != 0 {
		t.Fatalf("%s: qemu-img check after the repair: %s", where, r)
	}
}

// isDirty reads the dirty bit of a qcow2 version 3 header.
func isDirty(t *testing.T, path string) bool {
	b := make([]byte, 80)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.ReadAt(b, 0); err != nil {
		return false
	}
	return b[7] == 3 && b[79]&1 != 0
}

// openImage opens an image read-only with qimg's library.
func openImage(t *testing.T, path string) *block.Node {
	t.Helper()
	env := &block.Env{Registry: drivers.Registry()}
	n, err := env.Open(path, block.OpenOptions{ForceShare: true})
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	return n
}

// compareClusters reads the image; allowed says whether each 4 KiB
// cluster's content is right.
func compareClusters(t *testing.T, where, path string, allowed func(off int64, got []byte) bool) {
	t.Helper()
	n := openImage(t, path)
	defer n.Close()
	got := make([]byte, chunk)
	for off := int64(0); off < n.Size(); off += chunk {
		if _, err := n.ReadAt(got, off); err != nil {
			t.Fatalf("%s: read at %d: %v", where, off, err)
		}
		for c := int64(0); c < chunk; c += 4 * kb {
			if !allowed(off+c, got[c:c+4*kb]) {
				t.Fatalf("%s: the cluster at %d holds data it never should", where, off+c)
			}
		}
	}
}

func isZero(b []byte) bool { return bytes.Count(b, []byte{0}) == len(b) }

// TestKillConvert kills qimg convert (into a new image, compressed, and
// into an existing image with lazy refcounts) at seeded random moments:
// the target checks as above, and every chunk holds the source's data or
// nothing yet.
func TestKillConvert(t *testing.T) {
	oracle.QemuImgPath(t)
	dir := t.TempDir()
	src := sourceData()
	if err := os.WriteFile(filepath.Join(dir, "src.raw"), src, 0o644); err != nil {
		t.Fatal(err)
	}
	// A new empty image: a file no longer than this may be one whose
	// creation was killed.
	timed(t, qimgCmd(t, dir, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", "empty.qcow2", strconv.Itoa(imageSize)))
	st, err := os.Stat(filepath.Join(dir, "empty.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	created := st.Size()
	cases := []struct {
		name   string
		target []string // create arguments for -n
		args   []string
	}{
		{name: "convert", args: []string{"convert", "-t", "writethrough", "-O", "qcow2", "-o", "cluster_size=4k", "src.raw", "t.qcow2"}},
		{name: "convert -c", args: []string{"convert", "-c", "-O", "qcow2", "-o", "cluster_size=4k", "src.raw", "t.qcow2"}},
		{name: "convert -n lazy refcounts", target: []string{"create", "-q", "-f", "qcow2", "-o", "cluster_size=4k,lazy_refcounts=on", "t.qcow2", strconv.Itoa(imageSize)},
			args: []string{"convert", "-n", "-t", "writeback", "-O", "qcow2", "src.raw", "t.qcow2"}},
	}
	rng := rand.New(rand.NewPCG(crashSeed(), 1))
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			prepare := func() {
				os.Remove(filepath.Join(dir, "t.qcow2"))
				if tc.target != nil {
					timed(t, qimgCmd(t, dir, tc.target...))
				}
			}
			prepare()
			full := timed(t, qimgCmd(t, dir, tc.args...))
			killed, creating := 0, 0
			for k := 0; k < kills(); k++ {
				prepare()
				delay := time.Duration(rng.Float64() * 1.2 * float64(full))
				if !runKilled(t, qimgCmd(t, dir, tc.args...), delay) {
					continue
				}
				killed++
				path := filepath.Join(dir, "t.qcow2")
				where := fmt.Sprintf("killed after %v of %v", delay, full)
				if st, err := os.Stat(path); tc.target == nil && (err != nil || st.Size() <= created) {
					// Killed while creating the image (before any
					// data): it may be anything.
					creating++
					continue
				}
				checkKilled(t, where, path)
				// Each cluster holds the source's data or nothing.
				compareClusters(t, where, path, func(off int64, got []byte) bool {
					return isZero(got) || bytes.Equal(got, src[off:off+int64(len(got))])
				})
			}
			t.Logf("%d of %d runs killed (%d while creating the image); a full run takes %v", killed, kills(), creating, full)
		})
	}
}

// TestKillCommit kills qimg commit at seeded random moments: base and top
// check as above, every chunk of the base holds its old data or the top's,
// and the top still reads as before.
func TestKillCommit(t *testing.T) {
	oracle.QemuImgPath(t)
	dir := t.TempDir()
	base, top := sourceData(), oracle.RandomBytes(2, imageSize)
	for off := 0; off < imageSize; off += chunk {
		if (off/chunk)%3 == 0 {
			// Not in the top: the same as the base, which convert
			// -B then leaves out.
			copy(top[off:off+chunk], base[off:off+chunk])
		}
	}
	for name, b := range map[string][]byte{"base.raw": base, "top.raw": top} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	prepare := func() {
		os.Remove(filepath.Join(dir, "base.qcow2"))
		os.Remove(filepath.Join(dir, "top.qcow2"))
		timed(t, qimgCmd(t, dir, "convert", "-O", "qcow2", "-o", "cluster_size=4k", "base.raw", "base.qcow2"))
		timed(t, qimgCmd(t, dir, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "-o", "cluster_size=4k", "top.qcow2"))
		// The top's data, but not its zero chunks, which read through.
		timed(t, qimgCmd(t, dir, "convert", "-n", "-B", "base.qcow2", "-O", "qcow2", "top.raw", "top.qcow2"))
	}
	prepare()
	inTop := func(off int64) bool { return (off/chunk)%3 != 0 }
	args := []string{"commit", "-t", "writethrough", "-d", "top.qcow2"}
	full := timed(t, qimgCmd(t, dir, args...))
	rng := rand.New(rand.NewPCG(crashSeed(), 2))
	killed := 0
	for k := 0; k < kills(); k++ {
		prepare()
		delay := time.Duration(rng.Float64() * 1.2 * float64(full))
		if !runKilled(t, qimgCmd(t, dir, args...), delay) {
			continue
		}
		killed++
		where := fmt.Sprintf("killed after %v of %v", delay, full)
		for _, f := range []string{"base.qcow2", "top.qcow2"} {
			checkKilled(t, where+", "+f, filepath.Join(dir, f))
		}
		end := func(off int64, got []byte) int64 { return off + int64(len(got)) }
		compareClusters(t, where+", base", filepath.Join(dir, "base.qcow2"), func(off int64, got []byte) bool {
			return bytes.Equal(got, base[off:end(off, got)]) || (inTop(off) && bytes.Equal(got, top[off:end(off, got)]))
		})
		compareClusters(t, where+", top", filepath.Join(dir, "top.qcow2"), func(off int64, got []byte) bool {
			return bytes.Equal(got, top[off:end(off, got)])
		})
	}
	t.Logf("%d of %d runs killed; a full run takes %v", killed, kills(), full)
}

// crashSeed is the seed of the kill times: QIMG_CRASH_SEED, or 13.
func crashSeed() uint64 {
	if s, err := strconv.ParseUint(os.Getenv("QIMG_CRASH_SEED"), 10, 64); err == nil {
		return s
	}
	return 13
}
