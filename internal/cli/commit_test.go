package cli

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qimg/qimg/internal/oracle"
)

// overlayWrites are qemu-io commands that leave every kind of cluster in an
// overlay: partial and whole data clusters, zero clusters (aligned and
// not), data that is all zeroes, a discard, and data past the end of a
// shorter backing file.
var overlayWrites = []string{
	"write -P 3 128k 512",
	"write -P 4 512k 100k",
	"write -P 0 1M 64k",
	"write -z 1200k 200k",
	"write -z 1500k 3k",
	"write -P 5 1600k 64k",
	"discard 1600k 64k",
	"write -P 6 2100k 70k",
}

// commitSetup builds base <- top: base of the given format and options
// (1 MiB, or size), top a qcow2 overlay of topSize with overlayWrites.
func commitSetup(baseFmt, baseOpts, baseSize, topOpts, topSize string) string {
	bo, to := "", ""
	if baseOpts != "" {
		bo = " -o " + baseOpts
	}
	if topOpts != "" {
		to = " -o " + topOpts
	}
	return sh(
		fmt.Sprintf("qemu-img create -q -f %s%s base.img %s", baseFmt, bo, baseSize),
		qio("base.img", baseFmt, "write -P 1 0 64k", "write -P 2 700k 300k"),
		fmt.Sprintf("qemu-img create -q -f qcow2%s -b base.img -F %s top.qcow2 %s", to, baseFmt, topSize),
		qio("top.qcow2", "qcow2", overlayWrites...),
	)
}

// chain3 builds base <- mid <- top, all qcow2, mid shorter than the
// others.
var chain3 = sh(
	"qemu-img create -q -f qcow2 base.qcow2 2M",
	qio("base.qcow2", "qcow2", "write -P 1 0 2M"),
	"qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2 1M",
	qio("mid.qcow2", "qcow2", "write -P 2 64k 64k", "write -z 300k 64k"),
	"qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 3M",
	qio("top.qcow2", "qcow2", "write -P 3 128k 512", "write -P 4 1536k 4k", "write -z 2M 64k"),
)

func TestInteropCommit(t *testing.T) {
	c := func(args ...string) []string { return args }
	both := c("base.img", "top.qcow2")
	var cases []diffCase
	// The emptied top is the same file as qemu-img's; a qcow2 base has
	// the same content and allocation, but its clusters land in the
	// order QEMU's parallel requests happen to complete in, which varies
	// from run to run.
	committed := func(name, setup string, args ...string) diffCase {
		return diffCase{name: name, shell: setup, args: append(c("commit"), args...),
			files: c("top.qcow2"), compareOf: both, shapeOf: both, checkOf: both}
	}
	committedRaw := func(name, setup string, args ...string) diffCase {
		return diffCase{name: name, shell: setup, args: append(c("commit"), args...),
			files: both, mapOf: c("base.img"), shapeOf: c("top.qcow2"), checkOf: c("top.qcow2")}
	}
	for _, tc := range []struct {
		name                                      string
		baseFmt, baseOpts, baseSize, topOpts, top string
	}{
		{"qcow2", "qcow2", "", "3M", "", "3M"},
		{"raw base", "raw", "", "3M", "", "3M"},
		{"base grows", "qcow2", "", "1M", "", "3M"},
		{"raw base grows", "raw", "", "1M", "", "3M"},
		{"base larger", "qcow2", "", "4M", "", "3M"},
		{"4k clusters", "qcow2", "cluster_size=4k", "3M", "cluster_size=4k", "3M"},
		{"512 byte base clusters", "qcow2", "cluster_size=512", "3M", "", "3M"},
		{"512 byte top clusters", "qcow2", "", "3M", "cluster_size=512", "3M"},
		{"2M base clusters", "qcow2", "cluster_size=2M", "3M", "", "3M"},
		{"extended l2", "qcow2", "extended_l2=on", "3M", "extended_l2=on", "3M"},
		{"version 2", "qcow2", "compat=0.10", "3M", "compat=0.10", "3M"},
		{"refcount bits 1", "qcow2", "", "3M", "refcount_bits=1", "3M"},
		{"lazy refcounts", "qcow2", "", "3M", "lazy_refcounts=on", "3M"},
		{"zstd", "qcow2", "compression_type=zstd", "3M", "compression_type=zstd", "3M"},
	} {
		setup := commitSetup(tc.baseFmt, tc.baseOpts, tc.baseSize, tc.topOpts, tc.top)
		if tc.baseFmt == "raw" {
			cases = append(cases, committedRaw(tc.name, setup, "top.qcow2"))
			continue
		}
		cases = append(cases, committed(tc.name, setup, "top.qcow2"))
	}
	std := commitSetup("qcow2", "", "3M", "", "3M")
	cases = append(cases,
		committed("drop", std, "-d", "top.qcow2"),
		committed("quiet", std, "-q", "top.qcow2"),
		committed("format", std, "-f", "qcow2", "top.qcow2"),
		committed("base named", std, "-b", "base.img", "top.qcow2"),
		committed("writethrough", std, "-t", "writethrough", "top.qcow2"),
		committed("cache none", std, "-t", "none", "top.qcow2"),
		committed("unsafe cache", std, "-t", "unsafe", "top.qcow2"),
		committed("rate limit", std, "-r", "64M", "top.qcow2"),
		committed("image opts", std, "--image-opts", "driver=qcow2,file.filename=top.qcow2"),
		// A big L1 table relocated by growth, and a refcount table
		// relocated by 512-byte clusters, empty the same way.
		committed("grown top", sh(std, "qemu-img resize -q top.qcow2 40G", qio("top.qcow2", "qcow2", "write -P 9 39G 64k")), "top.qcow2"),
		committed("relocated refcount table", sh(
			"qemu-img create -q -f qcow2 base.img 4M",
			"qemu-img create -q -f qcow2 -o cluster_size=512 -b base.img -F qcow2 top.qcow2",
			qio("top.qcow2", "qcow2", "write -P 1 0 4M")), "top.qcow2"),
		// Emptied by discarding every cluster; the snapshot's date differs
		// between the two images.
		diffCase{name: "snapshot in top", shell: sh(std, "qemu-img snapshot -c snap top.qcow2"), args: c("commit", "top.qcow2"),
			fixup: func(t *testing.T, dir string) { oracle.ZeroSnapshotDates(t, filepath.Join(dir, "top.qcow2")) },
			files: c("top.qcow2"), compareOf: both, shapeOf: both, checkOf: both},
		committed("empty top", sh("qemu-img create -q -f qcow2 base.img 1M", "qemu-img create -q -f qcow2 -b base.img -F qcow2 top.qcow2"), "top.qcow2"),
		committed("zero size", sh("qemu-img create -q -f qcow2 base.img 0", "qemu-img create -q -f qcow2 -b base.img -F qcow2 top.qcow2"), "top.qcow2"),
		diffCase{name: "bitmap in top", shell: sh(std, "qemu-img bitmap --add top.qcow2 b0"), args: c("commit", "top.qcow2"),
			compareOf: both, shapeOf: both, checkOf: both},
	)
	three := c("base.qcow2", "mid.qcow2", "top.qcow2")
	chainCase := func(name, setup string, args ...string) diffCase {
		return diffCase{name: name, shell: setup, args: append(c("commit"), args...), compareOf: three, shapeOf: three, checkOf: three}
	}
	cases = append(cases,
		chainCase("chain default", chain3, "top.qcow2"),
		chainCase("chain base", chain3, "-b", "base.qcow2", "top.qcow2"),
		chainCase("chain base with drop", chain3, "-d", "-b", "base.qcow2", "top.qcow2"),
		chainCase("chain mid named", chain3, "-b", "mid.qcow2", "top.qcow2"),
		chainCase("chain middle", chain3, "mid.qcow2"),
		chainCase("chain base through a link", sh(chain3, "ln -s base.qcow2 link.qcow2"), "-b", "link.qcow2", "top.qcow2"),
		chainCase("chain base by path", sh(chain3, "mkdir d"), "-b", "d/../base.qcow2", "top.qcow2"),
	)
	sub := sh("mkdir sub", "cd sub", chain3)
	subThree := c("sub/base.qcow2", "sub/mid.qcow2", "sub/top.qcow2")
	cases = append(cases,
		// -b names are relative to the images, not to the working directory.
		diffCase{name: "chain base relative to images", shell: sub, args: c("commit", "-b", "base.qcow2", "sub/top.qcow2"),
			compareOf: subThree, shapeOf: subThree, checkOf: subThree},
		diffCase{name: "chain base relative to cwd", shell: sub, args: c("commit", "-b", "sub/base.qcow2", "sub/top.qcow2"), files: subThree},
	)
	// Errors.
	cases = append(cases,
		diffCase{name: "no file", args: c("commit")},
		diffCase{name: "two files", args: c("commit", "a", "b")},
		diffCase{name: "missing file", args: c("commit", "nonexist")},
		diffCase{name: "no backing", shell: "qemu-img create -q -f qcow2 x.qcow2 1M", args: c("commit", "x.qcow2"), files: c("x.qcow2")},
		diffCase{name: "raw image", shell: "qemu-img create -q -f raw x.raw 1M", args: c("commit", "x.raw")},
		diffCase{name: "base not in chain", shell: std, args: c("commit", "-b", "other.img", "top.qcow2"), files: both},
		diffCase{name: "base is top", shell: std, args: c("commit", "-b", "top.qcow2", "top.qcow2"), files: both},
		diffCase{name: "base empty name", shell: std, args: c("commit", "-b", "", "top.qcow2"), files: both},
		diffCase{name: "bad cache", shell: std, args: c("commit", "-t", "bogus", "top.qcow2")},
		diffCase{name: "bad rate", shell: std, args: c("commit", "-r", "1x", "top.qcow2")},
		diffCase{name: "negative rate", shell: std, args: c("commit", "-r", "-1", "top.qcow2")},
		diffCase{name: "missing option argument", args: c("commit", "top.qcow2", "-b")},
		diffCase{name: "unknown option", args: c("commit", "-Z", "top.qcow2")},
		diffCase{name: "missing backing file", shell: "qemu-img create -q -f qcow2 -u -b gone.img -F raw top.qcow2 1M", args: c("commit", "top.qcow2")},
		diffCase{name: "wrong format", shell: std, args: c("commit", "-f", "raw", "top.qcow2")},
	)
	runDiffCases(t, cases)
}

// TestCommitProgress checks -p: qemu-img prints 0% (as many times as its
// job loop turns before progress is made), then 100% and a newline.
func TestCommitProgress(t *testing.T) {
	oracle.QemuImgPath(t)
	dir := t.TempDir()
	if out, err := shellIn(dir, commitSetup("qcow2", "", "3M", "", "3M")); err != nil {
		t.Fatalf("setup: %v\n%s", err, out)
	}
	r := oracle.RunQimg(t, dir, "commit", "-p", "top.qcow2")
	if r.Code != 0 || r.Stderr != "" {
		t.Fatalf("commit -p: %s", r)
	}
	if !strings.HasPrefix(r.Stdout, "    (0.00/100%)\r") || !strings.HasSuffix(r.Stdout, "    (100.00/100%)\r\nImage committed.\n") {
		t.Errorf("commit -p printed %q", r.Stdout)
	}
	r = oracle.RunQimg(t, dir, "commit", "-p", "-q", "top.qcow2")
	if r.Code != 0 || r.Stdout != "" || r.Stderr != "" {
		t.Errorf("commit -p -q: %s", r)
	}
	oracle.Check(t, filepath.Join(dir, "top.qcow2"), "qcow2")
}

// TestCommitReadOnlyBacking checks that commit opens only its base for
// writing, as qemu-img does: a read-only golden image below the base does
// not stop it, while committing into the golden image fails as qemu-img's
// reopen fails. As root, the commands run as nobody (with setpriv).
func TestCommitReadOnlyBacking(t *testing.T) {
	oracle.QemuImgPath(t)
	oracle.QemuIOPath(t)
	var prefix []string
	if os.Getuid() == 0 {
		p, err := exec.LookPath("setpriv")
		if err != nil {
			t.Skip("running as root without setpriv")
		}
		prefix = []string{p, "--reuid=65534", "--regid=65534", "--clear-groups"}
	}
	setup := sh(
		"qemu-img create -q -f qcow2 golden.qcow2 1M", qio("golden.qcow2", "qcow2", "write -P 1 0 1M"),
		"qemu-img create -q -f qcow2 -b golden.qcow2 -F qcow2 vm1.qcow2",
		"qemu-img create -q -f qcow2 -b vm1.qcow2 -F qcow2 snap.qcow2", qio("snap.qcow2", "qcow2", "write -P 2 0 64k"),
	)
	bin, err := os.ReadFile(oracle.Qimg(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"commit", "snap.qcow2"}, {"commit", "-b", "golden.qcow2", "snap.qcow2"}} {
		var res [2]oracle.Result
		for k, tool := range []string{"qemu-img", "qimg"} {
			dir := t.TempDir()
			if out, err := shellIn(dir, setup); err != nil {
				t.Fatalf("setup: %v\n%s", err, out)
			}
			if err := os.WriteFile(filepath.Join(dir, "qemu-img"), bin, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(filepath.Join(dir, "golden.qcow2"), 0o444); err != nil {
				t.Fatal(err)
			}
			if prefix != nil {
				for _, d := range []string{dir, filepath.Dir(dir)} {
					if err := os.Chmod(d, 0o755); err != nil {
						t.Fatal(err)
					}
				}
				for _, f := range []string{".", "vm1.qcow2", "snap.qcow2"} {
					if err := os.Chown(filepath.Join(dir, f), 65534, 65534); err != nil {
						t.Fatal(err)
					}
				}
			}
			exe := tool
			if tool == "qimg" {
				exe = filepath.Join(dir, "qemu-img")
			}
			res[k] = runAs(t, dir, prefix, exe, args...)
			if res[k].Code == 0 {
				oracle.ReadPattern(t, filepath.Join(dir, "snap.qcow2"), "qcow2", 2, 0, 64<<10)
				oracle.ReadPattern(t, filepath.Join(dir, "vm1.qcow2"), "qcow2", 2, 0, 64<<10)
				oracle.Check(t, filepath.Join(dir, "vm1.qcow2"), "qcow2")
			}
		}
		if res[0].Code != res[1].Code || res[0].Stdout != res[1].Stdout || res[0].Stderr != res[1].Stderr {
			t.Errorf("%v: qimg: %s\nqemu-img: %s", args, res[1], res[0])
		}
	}
}

// runAs runs a program in dir, behind prefix (a command that changes the
// user) when it is not empty.
func runAs(t *testing.T, dir string, prefix []string, exe string, args ...string) oracle.Result {
	t.Helper()
	argv := append(append(append([]string(nil), prefix...), exe), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	r := oracle.Result{}
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("%v: %v", argv, err)
		}
		r.Code = ee.ExitCode()
	}
	r.Stdout, r.Stderr = out.String(), errb.String()
	return r
}
