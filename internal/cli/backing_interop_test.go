package cli

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/internal/drivers"
	"github.com/qimg/qimg/internal/oracle"
)

// qio is a shell command that runs qemu-io commands on an image quietly.
func qio(file, format string, cmds ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "qemu-io -f %s", format)
	for _, c := range cmds {
		fmt.Fprintf(&b, " -c '%s'", c)
	}
	fmt.Fprintf(&b, " %s >/dev/null", file)
	return b.String()
}

// sh joins shell commands with &&.
func sh(cmds ...string) string { return strings.Join(cmds, " && ") }

// chainShell builds a backing chain l0 <- l1 <- ... <- l<depth>: l0 is a
// 1 MiB image of the bottom format filled with pattern 1; each level above
// is a qcow2 overlay (of its own size: larger, smaller, larger again, so
// that reads past the end of a shorter backing image return zeroes) with a
// few qemu-io writes of its own pattern, one of them a zero write.
func chainShell(depth int, bottom string) string {
	sizes := []string{"1M", "2M", "1536K", "3M", "2560K"}
	cmds := []string{
		fmt.Sprintf("qemu-img create -q -f %s l0.img 1M", bottom),
		qio("l0.img", bottom, "write -P 1 0 1M"),
	}
	for k := 1; k <= depth; k++ {
		prev := fmt.Sprintf("l%d.img", k-1)
		if k == 1 {
			prev = "l0.img"
		}
		pfmt := "qcow2"
		if k == 1 {
			pfmt = bottom
		}
		img := fmt.Sprintf("l%d.img", k)
		cmds = append(cmds,
			fmt.Sprintf("qemu-img create -q -f qcow2 -b %s -F %s %s %s", prev, pfmt, img, sizes[k%len(sizes)]),
			qio(img, "qcow2",
				fmt.Sprintf("write -P %d %dk 64k", k+1, 64*k),
				fmt.Sprintf("write -P %d %dk 3k", k+11, 700+100*k),
				fmt.Sprintf("write -z %dk 64k", 256*k),
				fmt.Sprintf("write -P %d 1100k 8k", k+21)))
	}
	return sh(cmds...)
}

func TestInteropBackingChains(t *testing.T) {
	c := func(args ...string) []string { return args }
	var cases []diffCase
	for _, bottom := range []string{"raw", "qcow2"} {
		for depth := 1; depth <= 4; depth++ {
			top := fmt.Sprintf("l%d.img", depth)
			name := fmt.Sprintf("%s depth %d", bottom, depth)
			setup := chainShell(depth, bottom)
			cases = append(cases,
				diffCase{name: "read " + name, shell: setup, args: c("convert", "-O", "raw", top, "out.raw"), files: c("out.raw")},
				diffCase{name: "info chain " + name, shell: setup, args: c("info", "--backing-chain", top)},
				diffCase{name: "info chain json " + name, shell: setup, args: c("info", "--backing-chain", "--output=json", top)},
			)
		}
	}
	base := sh("qemu-img create -q -f qcow2 b.qcow2 3M", qio("b.qcow2", "qcow2", "write -P 7 0 3M"), "mkdir -p sub other")
	cases = append(cases,
		// Relative backing names resolve against the overlay's directory.
		diffCase{name: "create in subdirectory", shell: base, args: c("create", "-f", "qcow2", "-b", "../b.qcow2", "-F", "qcow2", "sub/t.qcow2"),
			files: c("sub/t.qcow2"), infoOf: c("sub/t.qcow2")},
		diffCase{name: "create in subdirectory names cwd file", shell: base, args: c("create", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "sub/t.qcow2")},
		diffCase{name: "create option in subdirectory", shell: base,
			args: c("create", "-f", "qcow2", "-o", "backing_file=../b.qcow2,backing_fmt=qcow2", "sub/t.qcow2"), files: c("sub/t.qcow2")},
		diffCase{name: "create unopened relative", shell: base, args: c("create", "-f", "qcow2", "-u", "-b", "../nonexist", "-F", "qcow2", "sub/t.qcow2", "1M"),
			files: c("sub/t.qcow2")},
		diffCase{name: "create unopened needs size", shell: base, args: c("create", "-f", "qcow2", "-u", "-b", "../b.qcow2", "-F", "qcow2", "sub/t.qcow2")},
		diffCase{name: "create backing raw detected", shell: sh(base, "qemu-img create -q -f raw r.raw 1M"), args: c("create", "-f", "qcow2", "-b", "r.raw", "t.qcow2")},
		diffCase{name: "create smaller than backing", shell: base, args: c("create", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "t.qcow2", "1M"),
			files: c("t.qcow2")},
		diffCase{name: "create chain across directories",
			shell: sh(base, "qemu-img create -q -f qcow2 -b ../b.qcow2 -F qcow2 sub/m.qcow2", qio("sub/m.qcow2", "qcow2", "write -P 8 1M 64k")),
			args:  c("create", "-f", "qcow2", "-b", "../sub/m.qcow2", "-F", "qcow2", "other/t.qcow2"), files: c("other/t.qcow2"), infoOf: c("other/t.qcow2")},
		diffCase{name: "info chain across directories",
			shell: sh(base, "qemu-img create -q -f qcow2 -b ../b.qcow2 -F qcow2 sub/m.qcow2", "qemu-img create -q -f qcow2 -b ../sub/m.qcow2 -F qcow2 other/t.qcow2"),
			args:  c("info", "--backing-chain", "other/t.qcow2")},
		diffCase{name: "read chain across directories",
			shell: sh(base, "qemu-img create -q -f qcow2 -b ../b.qcow2 -F qcow2 sub/m.qcow2", qio("sub/m.qcow2", "qcow2", "write -P 8 1M 64k"),
				"qemu-img create -q -f qcow2 -b ../sub/m.qcow2 -F qcow2 other/t.qcow2", qio("other/t.qcow2", "qcow2", "write -P 9 1040k 4k")),
			args: c("convert", "-O", "raw", "other/t.qcow2", "out.raw"), files: c("out.raw")},
		diffCase{name: "info chain absolute names",
			shell: sh(base, `qemu-img create -q -f qcow2 -b "$PWD/b.qcow2" -F qcow2 sub/m.qcow2`, `qemu-img create -q -f qcow2 -b "$PWD/sub/m.qcow2" -F qcow2 t.qcow2`),
			args:  c("info", "--backing-chain", "t.qcow2")},
		diffCase{name: "info chain json absolute names",
			shell: sh(base, `qemu-img create -q -f qcow2 -b "$PWD/b.qcow2" -F qcow2 sub/m.qcow2`, `qemu-img create -q -f qcow2 -b "$PWD/sub/m.qcow2" -F qcow2 t.qcow2`),
			args:  c("info", "--backing-chain", "--output=json", "t.qcow2")},
		diffCase{name: "info chain missing backing",
			shell: sh(base, "qemu-img create -q -f qcow2 -u -b gone.qcow2 -F qcow2 t.qcow2 1M"), args: c("info", "--backing-chain", "t.qcow2")},
		diffCase{name: "info chain loop",
			shell: sh(base, "qemu-img create -q -f qcow2 -b b.qcow2 -F qcow2 t.qcow2", "qemu-img rebase -u -b t.qcow2 -F qcow2 b.qcow2"),
			args:  c("info", "--backing-chain", "t.qcow2")},
		diffCase{name: "info chain self loop",
			shell: sh(base, "qemu-img rebase -u -b b.qcow2 -F qcow2 b.qcow2"), args: c("info", "--backing-chain", "b.qcow2")},
		diffCase{name: "info self loop without chain",
			shell: sh(base, "qemu-img rebase -u -b b.qcow2 -F qcow2 b.qcow2"), args: c("info", "b.qcow2")},
	)
	runDiffCases(t, cases)
}

// TestBackingSelfLoop checks that an image that is its own backing file is
// refused at once when its data is read (qemu-img 7.2 recurses until it
// runs out of memory).
func TestBackingSelfLoop(t *testing.T) {
	oracle.QemuImgPath(t)
	dir := t.TempDir()
	oracle.MustQemuImg(t, "create", "-q", "-f", "qcow2", filepath.Join(dir, "s.qcow2"), "1M")
	oracle.MustQemuImg(t, "rebase", "-u", "-b", "s.qcow2", "-F", "qcow2", filepath.Join(dir, "s.qcow2"))
	r := oracle.RunQimg(t, dir, "convert", "-O", "raw", "s.qcow2", "out.raw")
	want := "qemu-img: Could not open 's.qcow2': Could not open backing file: Backing file 's.qcow2' creates an infinite loop.\n"
	if r.Code != 1 || r.Stderr != want {
		t.Fatalf("convert of a self-backed image: %s\nwant exit 1 and %q", r, want)
	}
}

// TestBackingChainDepthLimit checks the chain depth bound of the Env, for
// info --backing-chain and for opening.
func TestBackingChainDepthLimit(t *testing.T) {
	oracle.QemuImgPath(t)
	dir := t.TempDir()
	oracle.MustQemuImg(t, "create", "-q", "-f", "qcow2", filepath.Join(dir, "l0.qcow2"), "1M")
	for k := 1; k <= 4; k++ {
		oracle.MustQemuImg(t, "create", "-q", "-f", "qcow2", "-b", fmt.Sprintf("l%d.qcow2", k-1), "-F", "qcow2", filepath.Join(dir, fmt.Sprintf("l%d.qcow2", k)))
	}
	top := filepath.Join(dir, "l4.qcow2")
	for _, tc := range []struct {
		limit int
		args  []string
		code  int
		err   string
	}{
		{4, []string{"info", "--backing-chain", top}, 0, ""},
		{3, []string{"info", "--backing-chain", top}, 1, fmt.Sprintf("qemu-img: Backing chain of '%s' is deeper than 3 images\n", filepath.Join(dir, "l0.qcow2"))},
		{4, []string{"convert", "-O", "raw", top, filepath.Join(dir, "out.raw")}, 0, ""},
		{3, []string{"convert", "-O", "raw", top, filepath.Join(dir, "out.raw")}, 1,
			fmt.Sprintf("qemu-img: Could not open '%s': Could not open backing file: Could not open backing file: Could not open backing file: Could not open backing file: Backing chain of '%s' is deeper than 3 images\n", top, filepath.Join(dir, "l0.qcow2"))},
	} {
		var out, errb bytes.Buffer
		a := &App{Prog: "qemu-img", Stdout: &out, Stderr: &errb, Env: &block.Env{Registry: drivers.Registry(), MaxChainDepth: tc.limit}}
		code := a.qemuImg(tc.args)
		if code != tc.code || errb.String() != tc.err {
			t.Errorf("limit %d, %v: exit %d, stderr %q; want %d, %q", tc.limit, tc.args, code, errb.String(), tc.code, tc.err)
		}
	}
	os.Remove(filepath.Join(dir, "out.raw"))
}
