package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/qimg/qimg/internal/drivers"
	"github.com/qimg/qimg/internal/oracle"
)

// sparseRawSetup writes a 64 MiB raw image "src.raw" with data runs, holes,
// allocated zeroes and zero runs of several lengths inside data. It needs
// qemu-io; the shell runs in each directory of a diff case.
const sparseRawSetup = "qemu-img create -q -f raw src.raw 64M && qemu-io -f raw " +
	"-c 'write -P 1 0 1M' -c 'write -P 2 3M 64k' -c 'write -P 0 8M 2M' " +
	"-c 'write -P 3 20484k 4k' -c 'write -P 4 63M 1M' -c 'write -P 5 30M 1M' " +
	"-c 'write -P 0 30784k 4k' -c 'write -P 0 30848.5k 1k' -c 'write -P 6 40M 3k' src.raw >/dev/null"

// small raw images for option and error cases.
var smallRawSetup = [][]string{{"create", "-q", "-f", "raw", "a.raw", "1M"}, {"create", "-q", "-f", "raw", "b.raw", "3k"}}

func TestInteropConvertErrors(t *testing.T) {
	c := func(args ...string) []string { return args }
	small := smallRawSetup
	cases := []diffCase{
		{name: "no arguments", args: c("convert")},
		{name: "source only", args: c("convert", "a.raw")},
		{name: "missing source", args: c("convert", "nonexist", "out.raw"), files: c("out.raw")},
		{name: "missing source progress", args: c("convert", "-p", "nonexist", "out.raw")},
		{name: "missing second source", setup: small, args: c("convert", "a.raw", "nonexist", "out.raw"), files: c("out.raw")},
		{name: "missing target directory", setup: small, args: c("convert", "a.raw", "nodir/out.raw")},
		{name: "unknown target format", setup: small, args: c("convert", "-O", "bogus", "a.raw", "out.raw"), files: c("out.raw")},
		{name: "unknown source format", setup: small, args: c("convert", "-f", "bogus", "a.raw", "out.raw")},
		{name: "bad create option", setup: small, args: c("convert", "-o", "foo=bar", "a.raw", "out.raw"), files: c("out.raw")},
		{name: "bad preallocation", setup: small, args: c("convert", "-o", "preallocation=bogus", "a.raw", "out.raw")},
		{name: "invalid option list", setup: small, args: c("convert", "-o", ",a", "a.raw", "out.raw")},
		{name: "options help", args: c("convert", "-o", "help")},
		{name: "options help with files", setup: small, args: c("convert", "-O", "raw", "-o", "help", "a.raw", "out.raw"), files: c("out.raw")},
		{name: "options help unknown format", args: c("convert", "-O", "bogus", "-o", "help")},
		{name: "options help without format", args: c("convert", "--target-image-opts", "-n", "-o", "help")},
		{name: "options with -n", setup: small, args: c("convert", "-n", "-o", "preallocation=full", "a.raw", "b.raw")},
		{name: "compress raw", setup: small, args: c("convert", "-c", "a.raw", "out.raw"), files: c("out.raw")},
		{name: "compress and copy offload", setup: small, args: c("convert", "-c", "-C", "a.raw", "out.raw")},
		{name: "sparse size and copy offload", setup: small, args: c("convert", "-S", "4k", "-C", "a.raw", "out.raw")},
		{name: "salvage and copy offload", setup: small, args: c("convert", "--salvage", "-C", "a.raw", "out.raw")},
		{name: "target image opts without -n", setup: small, args: c("convert", "--target-image-opts", "a.raw", "driver=raw,file.filename=out.raw")},
		{name: "target is zero without -n", setup: small, args: c("convert", "--target-is-zero", "a.raw", "out.raw")},
		{name: "target is zero with backing", setup: small, args: c("convert", "-p", "-n", "--target-is-zero", "-B", "a.raw", "a.raw", "b.raw")},
		{name: "backing on raw", setup: small, args: c("convert", "-B", "a.raw", "a.raw", "out.raw"), files: c("out.raw")},
		{name: "backing format on raw", setup: small, args: c("convert", "-F", "raw", "a.raw", "out.raw")},
		{name: "backing with several sources", setup: small, args: c("convert", "-n", "-B", "a.raw", "a.raw", "b.raw", "b.raw")},
		{name: "sparse size unaligned", setup: small, args: c("convert", "-S", "1000", "a.raw", "out.raw")},
		{name: "sparse size too big", setup: small, args: c("convert", "-S", "32M", "a.raw", "out.raw")},
		{name: "sparse size not a number", setup: small, args: c("convert", "-S", "foo", "a.raw", "out.raw")},
		{name: "coroutines zero", setup: small, args: c("convert", "-m", "0", "a.raw", "out.raw")},
		{name: "coroutines too many", setup: small, args: c("convert", "-m", "17", "a.raw", "out.raw")},
		{name: "coroutines not a number", setup: small, args: c("convert", "-m", "8x", "a.raw", "out.raw")},
		{name: "coroutines hex", setup: small, args: c("convert", "-q", "-m", "0x10", "a.raw", "out.raw"), files: c("out.raw")},
		{name: "rate limit not a number", setup: small, args: c("convert", "-r", "fast", "a.raw", "out.raw")},
		{name: "bad cache", setup: small, args: c("convert", "-t", "bogus", "a.raw", "out.raw")},
		{name: "bad source cache", setup: small, args: c("convert", "-T", "bogus", "a.raw", "out.raw")},
		{name: "-n missing target", setup: small, args: c("convert", "-n", "a.raw", "nonexist.raw"), files: c("nonexist.raw")},
		{name: "-n target too small", setup: small, args: c("convert", "-n", "a.raw", "b.raw"), files: c("b.raw")},
		{name: "snapshot on raw", setup: small, args: c("convert", "-l", "snap", "a.raw", "out.raw"), files: c("out.raw")},
		{name: "snapshot options on raw", setup: small, args: c("convert", "-l", "snapshot.id=1", "a.raw", "out.raw")},
		{name: "bad snapshot options", setup: small, args: c("convert", "-l", "snapshot.foo=1", "a.raw", "out.raw")},
		{name: "snapshot with several sources", setup: small, args: c("convert", "-l", "snap", "a.raw", "b.raw", "out.raw")},
		{name: "old snapshot option", setup: small, args: c("convert", "-s", "snap", "a.raw", "out.raw")},
		{name: "bitmaps on raw", setup: small, args: c("convert", "--bitmaps", "a.raw", "out.raw")},
		{name: "bitmaps with several sources", setup: small, args: c("convert", "--bitmaps", "a.raw", "b.raw", "out.raw")},
		{name: "skip broken bitmaps alone", setup: small, args: c("convert", "--skip-broken-bitmaps", "a.raw", "out.raw")},
		{name: "image opts and format", setup: small, args: c("convert", "--image-opts", "-f", "raw", "a.raw", "out.raw")},
		{name: "missing option argument", args: c("convert", "a.raw", "out.raw", "-O")},
		{name: "unknown option", args: c("convert", "-Z", "a.raw", "out.raw")},
		{name: "directory source", shell: "mkdir d", args: c("convert", "d", "out.raw")},
		{name: "target is the source", setup: small, args: c("convert", "a.raw", "a.raw"), files: c("a.raw")},
		{name: "-n target is the source", setup: small, args: c("convert", "-n", "a.raw", "a.raw"), files: c("a.raw")},
	}
	runDiffCases(t, cases)
}

func TestInteropConvertRaw(t *testing.T) {
	c := func(args ...string) []string { return args }
	fresh := func(name string, args ...string) diffCase {
		return diffCase{name: name, shell: sparseRawSetup, args: append([]string{"convert"}, args...),
			files: c("dst.raw"), mapOf: c("dst.raw"), infoOf: c("dst.raw")}
	}
	// dense drops the comparison of info, whose disk size for a fully
	// allocated file varies with the file system's extent blocks from run
	// to run, for qemu-img too.
	dense := func(d diffCase) diffCase {
		d.infoOf = nil
		return d
	}
	garbage := sparseRawSetup + " && qemu-img create -q -f raw dst.raw 65M && qemu-io -f raw -c 'write -P 9 0 65M' dst.raw >/dev/null"
	zeroTarget := sparseRawSetup + " && qemu-img create -q -f raw dst.raw 64M"
	cases := []diffCase{
		fresh("default", "src.raw", "dst.raw"),
		fresh("progress", "-p", "src.raw", "dst.raw"),
		fresh("progress quiet", "-p", "-q", "src.raw", "dst.raw"),
		fresh("format given", "-f", "raw", "-O", "raw", "src.raw", "dst.raw"),
		dense(fresh("fully allocated", "-p", "-S", "0", "src.raw", "dst.raw")),
		fresh("sparse 512", "-S", "512", "src.raw", "dst.raw"),
		fresh("sparse 64k", "-p", "-S", "64k", "src.raw", "dst.raw"),
		fresh("sparse 1M", "-S", "1M", "src.raw", "dst.raw"),
		fresh("out of order", "-W", "-m", "16", "src.raw", "dst.raw"),
		fresh("one coroutine", "-m", "1", "src.raw", "dst.raw"),
		fresh("copy offload", "-p", "-C", "src.raw", "dst.raw"),
		fresh("cache none", "-t", "none", "-T", "none", "src.raw", "dst.raw"),
		fresh("cache writeback", "-t", "writeback", "src.raw", "dst.raw"),
		dense(fresh("preallocation full", "-o", "preallocation=full", "src.raw", "dst.raw")),
		dense(fresh("preallocation falloc", "-o", "preallocation=falloc", "src.raw", "dst.raw")),
		fresh("size option overridden", "-o", "size=1M", "src.raw", "dst.raw"),
		fresh("rate limit", "-r", "1G", "src.raw", "dst.raw"),
		fresh("salvage", "--salvage", "src.raw", "dst.raw"),
		fresh("force share", "-U", "src.raw", "dst.raw"),
		fresh("image opts", "--image-opts", "driver=raw,file.filename=src.raw", "dst.raw"),
		fresh("several sources", "-p", "src.raw", "src.raw", "dst.raw"),
		{name: "odd sizes", shell: "head -c 1000 /dev/zero | tr '\\0' 'a' > a && head -c 700 /dev/zero | tr '\\0' 'b' > b && : > e",
			args: c("convert", "-p", "a", "e", "b", "a", "dst.raw"), files: c("dst.raw"), mapOf: c("dst.raw"), infoOf: c("dst.raw")},
		// Offloading into a data file must not bypass the clusters'
		// subcluster bitmaps: the target reads the source after it.
		{name: "copy offload into a data file with subclusters", shell: "qemu-img create -q -f raw base.raw 1M && " +
			"qemu-io -f raw -c 'write -P 1 0 1M' base.raw >/dev/null && " +
			"qemu-img create -q -f qcow2 -o \"data_file=$PWD/d.raw,extended_l2=on\" -b base.raw -F raw t.qcow2 1M && " +
			"qemu-io -f qcow2 -c 'write -P 2 0 2k' -c 'write -P 3 512k 64k' t.qcow2 >/dev/null && qemu-img create -q -f raw s.raw 1M && qemu-io -f raw -c 'write -P 7 0 300k' -c 'write -P 8 300k 724k' s.raw >/dev/null",
			args: c("convert", "-C", "-n", "-B", "base.raw", "-F", "raw", "-f", "raw", "-O", "qcow2", "s.raw", "t.qcow2"), compareOf: c("t.qcow2"), checkOf: c("t.qcow2")},
		{name: "copy offload from a data file", shell: "qemu-img create -q -f qcow2 -o data_file=d.raw s.qcow2 1M && " +
			"qemu-io -f qcow2 -c 'write -P 2 0 256k' -c 'write -z 512k 64k' s.qcow2 >/dev/null",
			args: c("convert", "-C", "-f", "qcow2", "-O", "raw", "s.qcow2", "dst.raw"), files: c("dst.raw")},
		{name: "metadata-preallocated source", shell: "qemu-img create -q -f qcow2 -o preallocation=metadata pm.qcow2 32M && " +
			"qemu-io -f qcow2 -c 'write -P 9 1M 1M' -c 'write -z 4M 64k' -c 'write 20M 4k' pm.qcow2 >/dev/null",
			args: c("convert", "-p", "-O", "qcow2", "pm.qcow2", "dst.qcow2"), files: c("dst.qcow2"), mapOf: c("dst.qcow2")},
		{name: "metadata-preallocated source to raw", shell: "qemu-img create -q -f qcow2 -o preallocation=metadata pm.qcow2 32M && " +
			"qemu-io -f qcow2 -c 'write -P 9 1M 1M' pm.qcow2 >/dev/null",
			args: c("convert", "-p", "-S", "0", "-O", "raw", "pm.qcow2", "dst.raw"), files: c("dst.raw"), mapOf: c("dst.raw")},
		{name: "empty source", shell: ": > e", args: c("convert", "-p", "e", "dst.raw"), files: c("dst.raw"), infoOf: c("dst.raw")},
		{name: "existing target replaced", shell: garbage, args: c("convert", "src.raw", "dst.raw"), files: c("dst.raw"), mapOf: c("dst.raw"), infoOf: c("dst.raw")},
		{name: "-n over data", shell: garbage, args: c("convert", "-p", "-n", "src.raw", "dst.raw"), files: c("dst.raw"), mapOf: c("dst.raw")},
		{name: "-n -S 0 over data", shell: garbage, args: c("convert", "-n", "-S", "0", "src.raw", "dst.raw"), files: c("dst.raw"), mapOf: c("dst.raw")},
		{name: "-n target is zero", shell: zeroTarget, args: c("convert", "-n", "--target-is-zero", "src.raw", "dst.raw"), files: c("dst.raw"), mapOf: c("dst.raw")},
		{name: "-n target image opts", shell: garbage, args: c("convert", "-n", "--target-image-opts", "src.raw", "driver=raw,file.filename=dst.raw"), files: c("dst.raw"), mapOf: c("dst.raw")},
	}
	runDiffCases(t, cases)
}

// TestConvertProgressTerminal checks the progress lines on a terminal: they
// are the same as qemu-img's (the terminal turns "\n" into "\r\n" for
// both).
func TestConvertProgressTerminal(t *testing.T) {
	oracle.QemuImgPath(t)
	oracle.QemuIOPath(t)
	var outs [2]string
	for i, tool := range []string{oracle.QemuImgLink(t), oracle.QemuImgPath(t)} {
		dir := t.TempDir()
		if out, err := shellIn(dir, sparseRawSetup); err != nil {
			t.Fatalf("setup: %v\n%s", err, out)
		}
		outs[i] = runOnTerminal(t, dir, tool, "convert", "-p", "src.raw", "dst.raw")
	}
	if outs[0] != outs[1] {
		t.Errorf("progress on a terminal differs\nqimg:     %q\nqemu-img: %q", outs[0], outs[1])
	}
	if !strings.HasPrefix(outs[0], "    (0.00/100%)\r") || !strings.HasSuffix(outs[0], "    (100.00/100%)\r\r\n") {
		t.Errorf("progress %q does not run from 0%% to 100%%", outs[0])
	}
}

// runOnTerminal runs a command with a pseudo-terminal as its stdout and
// returns what it printed there.
func runOnTerminal(t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	defer master.Close()
	if err := unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Skipf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetInt(int(master.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Skipf("pty number: %v", err)
	}
	slave, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("open pty: %v", err)
	}
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Stdout = slave
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	var out bytes.Buffer
	done := make(chan struct{})
	go func() {
		io.Copy(&out, master) // ends with EIO once the child has exited
		close(done)
	}()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, stderr.String())
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("pty output did not end")
	}
	return out.String()
}

// TestConvertInterrupt interrupts a slow convert: it exits non-zero, says
// so in one line, and leaves no target that looks complete.
func TestConvertInterrupt(t *testing.T) {
	oracle.QemuImgPath(t)
	for _, preexisting := range []bool{false, true} {
		t.Run(fmt.Sprintf("preexisting %v", preexisting), func(t *testing.T) {
			dir := t.TempDir()
			src := filepath.Join(dir, "src.raw")
			if err := os.WriteFile(src, bytes.Repeat([]byte{7}, 8<<20), 0o644); err != nil {
				t.Fatal(err)
			}
			dst := filepath.Join(dir, "dst.raw")
			if preexisting {
				os.WriteFile(dst, []byte("precious"), 0o600)
			}
			// 8 MiB at 1 MiB/s: seconds, long enough to interrupt.
			cmd := exec.Command(oracle.QemuImgLink(t), "convert", "-r", "1M", src, dst)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			// Interrupt once the target exists at its full size: the
			// copy has started.
			for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				if st, err := os.Stat(dst); err == nil && st.Size() == 8<<20 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the target was not created")
				}
			}
			time.Sleep(100 * time.Millisecond)
			cmd.Process.Signal(os.Interrupt)
			err := cmd.Wait()
			if err == nil || cmd.ProcessState.ExitCode() != 130 {
				t.Errorf("exit: %v, want code 130", err)
			}
			st, statErr := os.Stat(dst)
			switch {
			case !preexisting && statErr == nil:
				t.Errorf("interrupted convert left its target behind")
			case preexisting && (statErr != nil || st.Size() != 0):
				t.Errorf("pre-existing target: %v, size %v; want it kept, empty", statErr, st)
			}
			if lines := strings.Split(strings.TrimSpace(stderr.String()), "\n"); len(lines) != 1 || !strings.Contains(lines[0], "interrupted") {
				t.Errorf("stderr %q, want one line about the interruption", stderr.String())
			}
		})
	}
}

// requireQcow2 skips a test until the qcow2 driver is registered.
func requireQcow2(t *testing.T) {
	t.Helper()
	if _, ok := drivers.Registry().Lookup("qcow2"); !ok {
		t.Skip("the qcow2 driver is not registered yet")
	}
}

// qcow2Setup adds to the sparse raw image a qcow2 copy, a qcow2 chain
// (base.qcow2 under top.qcow2, which overwrites, zeroes and discards parts
// of it) and a compressed qcow2 image, all made by qemu-img.
const qcow2Setup = sparseRawSetup + " && qemu-img convert -O qcow2 src.raw src.qcow2" +
	" && qemu-img convert -O qcow2 src.raw base.qcow2" +
	" && qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2" +
	" && qemu-io -f qcow2 -c 'write -P 7 512k 1M' -c 'write -z 30M 64k' -c 'write -P 8 50M 128k' top.qcow2 >/dev/null" +
	" && qemu-img convert -c -O qcow2 src.raw comp.qcow2"

func TestInteropConvertQcow2(t *testing.T) {
	requireQcow2(t)
	c := func(args ...string) []string { return args }
	toQcow2 := func(name string, args ...string) diffCase {
		return diffCase{name: name, shell: qcow2Setup, args: append([]string{"convert", "-O", "qcow2"}, args...),
			mapOf: c("dst.qcow2"), compareOf: c("dst.qcow2"), checkOf: c("dst.qcow2")}
	}
	toRaw := func(name string, args ...string) diffCase {
		return diffCase{name: name, shell: qcow2Setup, args: append([]string{"convert", "-O", "raw"}, args...),
			files: c("dst.raw"), mapOf: c("dst.raw"), infoOf: c("dst.raw")}
	}
	compressed := func(name string, args ...string) diffCase {
		// Compressed bytes differ between compressors; content, check
		// and the allocation (without host offsets) must not.
		d := toQcow2(name, append([]string{"-c"}, args...)...)
		d.mapOf = nil
		return d
	}
	shape := func(name string, args ...string) diffCase {
		// Out-of-order writes place clusters in any order, and a
		// partly written cluster may read as zeroes from a hole or from
		// written zeroes: the allocation is compared without host
		// offsets or zero flags (TestConvertQcow2AllocationShape).
		d := toQcow2(name, args...)
		d.mapOf = nil
		return d
	}
	cases := []diffCase{
		toQcow2("raw to qcow2", "src.raw", "dst.qcow2"),
		toQcow2("raw to qcow2 progress", "-p", "src.raw", "dst.qcow2"),
		toQcow2("raw to qcow2 fully allocated", "-S", "0", "src.raw", "dst.qcow2"),
		toQcow2("raw to qcow2 small clusters", "-o", "cluster_size=4k", "src.raw", "dst.qcow2"),
		toQcow2("raw to qcow2 preallocation metadata", "-o", "preallocation=metadata", "src.raw", "dst.qcow2"),
		toQcow2("raw to qcow2 preallocation falloc", "-o", "preallocation=falloc", "src.raw", "dst.qcow2"),
		toQcow2("raw to qcow2 preallocation full", "-o", "preallocation=full", "src.raw", "dst.qcow2"),
		toQcow2("raw to qcow2 several sources", "src.raw", "src.raw", "dst.qcow2"),
		toQcow2("qcow2 to qcow2", "src.qcow2", "dst.qcow2"),
		toQcow2("qcow2 chain to qcow2", "-p", "top.qcow2", "dst.qcow2"),
		toQcow2("qcow2 chain to backed qcow2", "-B", "base.qcow2", "-F", "qcow2", "top.qcow2", "dst.qcow2"),
		toQcow2("raw to backed qcow2", "-B", "base.qcow2", "-F", "qcow2", "src.raw", "dst.qcow2"),
		toQcow2("backing option", "-o", "backing_file=base.qcow2,backing_fmt=qcow2", "top.qcow2", "dst.qcow2"),
		toQcow2("compressed to qcow2", "comp.qcow2", "dst.qcow2"),
		toRaw("qcow2 to raw", "src.qcow2", "dst.raw"),
		toRaw("qcow2 to raw progress", "-p", "src.qcow2", "dst.raw"),
		toRaw("qcow2 chain to raw", "top.qcow2", "dst.raw"),
		toRaw("compressed to raw", "comp.qcow2", "dst.raw"),
		toRaw("qcow2 to raw fully allocated", "-S", "0", "src.qcow2", "dst.raw"),
		shape("raw to qcow2 out of order", "-W", "-m", "16", "src.raw", "dst.qcow2"),
		shape("raw to qcow2 large clusters", "-o", "cluster_size=2M", "src.raw", "dst.qcow2"),
		shape("qcow2 chain to qcow2 out of order", "-W", "top.qcow2", "dst.qcow2"),
		compressed("compressed zlib", "-p", "src.raw", "dst.qcow2"),
		compressed("compressed zstd", "-o", "compression_type=zstd", "src.raw", "dst.qcow2"),
		compressed("compressed small clusters", "-o", "cluster_size=512", "src.qcow2", "dst.qcow2"),
		compressed("compressed 2M clusters", "-o", "cluster_size=2M", "src.qcow2", "dst.qcow2"),
		compressed("compressed chain", "top.qcow2", "dst.qcow2"),
		compressed("compressed fully allocated", "-S", "0", "src.raw", "dst.qcow2"),
		{name: "-n onto qcow2", shell: qcow2Setup + " && qemu-img create -q -f qcow2 dst.qcow2 64M && qemu-io -f qcow2 -c 'write -P 9 0 64M' dst.qcow2 >/dev/null",
			args: c("convert", "-n", "-O", "qcow2", "src.raw", "dst.qcow2"), compareOf: c("dst.qcow2"), checkOf: c("dst.qcow2"), mapOf: c("dst.qcow2")},
		{name: "-n target is zero onto qcow2", shell: qcow2Setup + " && qemu-img create -q -f qcow2 dst.qcow2 64M",
			args: c("convert", "-n", "--target-is-zero", "-O", "qcow2", "src.raw", "dst.qcow2"), compareOf: c("dst.qcow2"), checkOf: c("dst.qcow2"), mapOf: c("dst.qcow2")},
		{name: "compressed -n onto qcow2", shell: qcow2Setup + " && qemu-img create -q -f qcow2 dst.qcow2 64M",
			args: c("convert", "-c", "-n", "-O", "qcow2", "src.raw", "dst.qcow2"), compareOf: c("dst.qcow2"), checkOf: c("dst.qcow2")},
		{name: "compression with preallocation", shell: qcow2Setup, args: c("convert", "-c", "-O", "qcow2", "-o", "preallocation=full", "src.raw", "dst.qcow2"), files: c("dst.qcow2")},
		{name: "compression with encryption", shell: qcow2Setup, args: c("convert", "-c", "-O", "qcow2", "-o", "encrypt.format=luks", "src.raw", "dst.qcow2"), files: c("dst.qcow2")},
		{name: "backing without format", shell: qcow2Setup, args: c("convert", "-O", "qcow2", "-B", "base.qcow2", "top.qcow2", "dst.qcow2"), files: c("dst.qcow2")},
		{name: "backing option without format", shell: qcow2Setup, args: c("convert", "-O", "qcow2", "-o", "backing_file=base.qcow2", "top.qcow2", "dst.qcow2"), files: c("dst.qcow2")},
		{name: "backing with several sources to qcow2", shell: qcow2Setup, args: c("convert", "-O", "qcow2", "-B", "base.qcow2", "-F", "qcow2", "src.raw", "src.raw", "dst.qcow2"), files: c("dst.qcow2")},
		{name: "qcow2 options help", args: c("convert", "-O", "qcow2", "-o", "help")},
		{name: "compressed -n onto raw", shell: qcow2Setup + " && qemu-img create -q -f raw dst.raw 64M", args: c("convert", "-c", "-n", "src.qcow2", "dst.raw")},
	}
	runDiffCases(t, cases)
}

// TestConvertQcow2DiskSize checks that qimg's qcow2 targets take the disk
// space qemu-img's do, within two clusters.
func TestConvertQcow2DiskSize(t *testing.T) {
	requireQcow2(t)
	oracle.QemuIOPath(t)
	for _, args := range [][]string{{"-O", "qcow2"}, {"-O", "qcow2", "-S", "0"}, {"-c", "-O", "qcow2"}, {"-O", "qcow2", "-o", "preallocation=full"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			ours, theirs := convertWithBoth(t, sparseRawSetup, append(append([]string{"convert"}, args...), "src.raw", "dst.qcow2")...)
			var sizes [2]int64
			for i, dir := range []string{ours, theirs} {
				var st unix.Stat_t
				if err := unix.Stat(filepath.Join(dir, "dst.qcow2"), &st); err != nil {
					t.Fatal(err)
				}
				sizes[i] = st.Blocks * 512
			}
			if d := sizes[0] - sizes[1]; d > 128<<10 || d < -128<<10 {
				t.Errorf("disk size %d, qemu-img's %d: more than two clusters apart", sizes[0], sizes[1])
			}
		})
	}
}

// mapShape returns an image's allocation as `qemu-img map` reports it,
// without host offsets or zero flags, adjacent runs merged.
func mapShape(t *testing.T, dir, file string) string {
	t.Helper()
	r := oracle.QemuImgIn(t, dir, "map", "--output=json", file)
	if r.Code != 0 {
		t.Fatalf("map: %s", r)
	}
	var runs []struct {
		Start, Length int64
		Depth         int
		Present, Data bool
	}
	if err := json.Unmarshal([]byte(r.Stdout), &runs); err != nil {
		t.Fatalf("map output: %v", err)
	}
	var b strings.Builder
	for i := 0; i < len(runs); {
		j := i + 1
		for j < len(runs) && runs[j].Depth == runs[i].Depth && runs[j].Present == runs[i].Present && runs[j].Data == runs[i].Data {
			j++
		}
		end := runs[j-1].Start + runs[j-1].Length
		fmt.Fprintf(&b, "%d+%d depth %d present %v data %v\n", runs[i].Start, end-runs[i].Start, runs[i].Depth, runs[i].Present, runs[i].Data)
		i = j
	}
	return b.String()
}

// TestConvertQcow2AllocationShape compares the allocation of qcow2 targets
// where host offsets or zero flags may differ from qemu-img's.
func TestConvertQcow2AllocationShape(t *testing.T) {
	requireQcow2(t)
	oracle.QemuIOPath(t)
	for _, args := range [][]string{{"-W", "-m", "16", "src.raw"}, {"-o", "cluster_size=2M", "src.raw"}, {"-W", "top.qcow2"}, {"-c", "src.raw"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			ours, theirs := convertWithBoth(t, qcow2Setup, append(append([]string{"convert", "-O", "qcow2"}, args...), "dst.qcow2")...)
			shapes := [2]string{mapShape(t, ours, "dst.qcow2"), mapShape(t, theirs, "dst.qcow2")}
			if shapes[0] != shapes[1] {
				t.Errorf("allocation differs\nqimg:\n%s\nqemu-img:\n%s", shapes[0], shapes[1])
			}
		})
	}
}

// convertWithBoth runs the same command with qimg and with qemu-img, each in
// a fresh directory prepared by the setup shell, and returns the two
// directories.
func convertWithBoth(t *testing.T, setup string, args ...string) (ours, theirs string) {
	t.Helper()
	ours, theirs = t.TempDir(), t.TempDir()
	for _, dir := range []string{ours, theirs} {
		if out, err := shellIn(dir, setup); err != nil {
			t.Fatalf("setup: %v\n%s", err, out)
		}
	}
	if r := oracle.RunQimg(t, ours, args...); r.Code != 0 {
		t.Fatalf("qimg %v: %s", args, r)
	}
	if r := oracle.QemuImgIn(t, theirs, args...); r.Code != 0 {
		t.Fatalf("qemu-img %v: %s", args, r)
	}
	return ours, theirs
}
