package cli

import (
	"fmt"
	"testing"
)

// rebaseSetup builds old.img (1 MiB of pattern 1 with a hole, in oldFmt),
// new.img (a different pattern in places, of newSize, in newFmt) and
// top.qcow2 over old.img with a few writes of its own.
func rebaseSetup(oldFmt, newFmt, newSize, topOpts string) string {
	to := ""
	if topOpts != "" {
		to = " -o " + topOpts
	}
	return sh(
		fmt.Sprintf("qemu-img create -q -f %s old.img 1M", oldFmt),
		qio("old.img", oldFmt, "write -P 1 0 512k", "write -P 1 768k 256k"),
		fmt.Sprintf("qemu-img create -q -f %s new.img %s", newFmt, newSize),
		qio("new.img", newFmt, "write -P 1 0 300k", "write -P 2 300k 1k", "write -P 1 301k 100k", "write -P 3 440k 40k"),
		fmt.Sprintf("qemu-img create -q -f qcow2%s -b old.img -F %s top.qcow2 2M", to, oldFmt),
		qio("top.qcow2", "qcow2", "write -P 5 128k 512", "write -z 400k 64k", "write -P 6 1500k 64k"),
	)
}

// rebaseChain builds base <- mid <- top, with data at each level.
var rebaseChain = sh(
	"qemu-img create -q -f qcow2 base.qcow2 1M",
	qio("base.qcow2", "qcow2", "write -P 1 0 1M"),
	"qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2",
	qio("mid.qcow2", "qcow2", "write -P 2 64k 64k", "write -z 200k 8k", "write -P 3 600k 1k"),
	"qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2",
	qio("top.qcow2", "qcow2", "write -P 4 0 4k"),
)

func TestInteropRebase(t *testing.T) {
	c := func(args ...string) []string { return args }
	top := c("top.qcow2")
	rebased := func(name, setup string, args ...string) diffCase {
		return diffCase{name: name, shell: setup, args: append(c("rebase"), args...), files: top, checkOf: top, mapOf: top}
	}
	std := rebaseSetup("qcow2", "qcow2", "1M", "")
	var cases []diffCase
	for _, tc := range []struct{ name, oldFmt, newFmt, newSize, topOpts string }{
		{"qcow2", "qcow2", "qcow2", "1M", ""},
		{"raw to raw", "raw", "raw", "1M", ""},
		{"qcow2 to raw", "qcow2", "raw", "1M", ""},
		{"new shorter", "qcow2", "qcow2", "512K", ""},
		{"new longer", "qcow2", "qcow2", "3M", ""},
		{"version 2 overlay", "qcow2", "qcow2", "1M", "compat=0.10"},
		{"4k clusters", "qcow2", "qcow2", "1M", "cluster_size=4k"},
		{"512 byte clusters", "qcow2", "qcow2", "1M", "cluster_size=512"},
		{"extended l2", "qcow2", "qcow2", "1M", "extended_l2=on"},
	} {
		setup := rebaseSetup(tc.oldFmt, tc.newFmt, tc.newSize, tc.topOpts)
		cases = append(cases,
			rebased(tc.name, setup, "-b", "new.img", "-F", tc.newFmt, "top.qcow2"),
			rebased(tc.name+" standalone", setup, "-b", "", "top.qcow2"),
			rebased(tc.name+" progress", setup, "-p", "-b", "new.img", "-F", tc.newFmt, "top.qcow2"),
		)
	}
	three := c("base.qcow2", "mid.qcow2", "top.qcow2")
	chain := func(name, setup string, args ...string) diffCase {
		return diffCase{name: name, shell: setup, args: append(c("rebase"), args...), files: three, checkOf: three, mapOf: c("top.qcow2")}
	}
	sub := sh("mkdir sub", "cd sub", rebaseChain)
	cases = append(cases,
		// Onto an image of the chain: only what lies above it is compared.
		chain("onto base in chain", rebaseChain, "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"),
		chain("onto base in chain progress", rebaseChain, "-p", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"),
		chain("standalone chain", rebaseChain, "-b", "", "top.qcow2"),
		chain("onto new empty", sh(rebaseChain, "qemu-img create -q -f qcow2 e.qcow2 1M"), "-b", "e.qcow2", "-F", "qcow2", "top.qcow2"),
		chain("unsafe", rebaseChain, "-u", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"),
		diffCase{name: "unsafe missing", shell: rebaseChain, args: c("rebase", "-u", "-b", "gone.qcow2", "-F", "qcow2", "top.qcow2"), files: three},
		chain("unsafe without -b", rebaseChain, "-u", "top.qcow2"),
		chain("unsafe empty", rebaseChain, "-u", "-b", "", "top.qcow2"),
		chain("unsafe format ignored", rebaseChain, "-u", "-F", "qcow2", "top.qcow2"),
		chain("quiet", rebaseChain, "-q", "-p", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"),
		chain("caches", rebaseChain, "-t", "writethrough", "-T", "none", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"),
		chain("force share", rebaseChain, "-U", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"),
		chain("image opts", rebaseChain, "--image-opts", "-b", "base.qcow2", "-F", "qcow2", "driver=qcow2,file.filename=top.qcow2"),
		// Relative new names resolve against the overlay's directory.
		diffCase{name: "relative to overlay", shell: sub, args: c("rebase", "-b", "base.qcow2", "-F", "qcow2", "sub/top.qcow2"),
			files: c("sub/base.qcow2", "sub/mid.qcow2", "sub/top.qcow2"), checkOf: c("sub/top.qcow2")},
		diffCase{name: "relative to cwd is wrong", shell: sub, args: c("rebase", "-b", "sub/base.qcow2", "-F", "qcow2", "sub/top.qcow2"),
			files: c("sub/top.qcow2")},
		diffCase{name: "up a directory", shell: sh(rebaseChain, "mkdir d", "qemu-img create -q -f qcow2 -b ../mid.qcow2 -F qcow2 d/t.qcow2", qio("d/t.qcow2", "qcow2", "write -P 9 1k 1k")),
			args: c("rebase", "-b", "../base.qcow2", "-F", "qcow2", "d/t.qcow2"), files: c("d/t.qcow2"), checkOf: c("d/t.qcow2")},
		// Safe mode writes what would change, then fails without -F.
		diffCase{name: "no backing format", shell: std, args: c("rebase", "-b", "new.img", "top.qcow2"), files: top},
		diffCase{name: "unsafe no backing format", shell: std, args: c("rebase", "-u", "-b", "new.img", "top.qcow2"), files: top},
		diffCase{name: "no backing file", shell: std, args: c("rebase", "top.qcow2")},
		diffCase{name: "bad backing format", shell: std, args: c("rebase", "-b", "new.img", "-F", "bogus", "top.qcow2"), files: top},
		diffCase{name: "wrong backing format", shell: std, args: c("rebase", "-b", "new.img", "-F", "raw", "top.qcow2"), files: top},
		diffCase{name: "new missing", shell: std, args: c("rebase", "-b", "gone.img", "-F", "qcow2", "top.qcow2"), files: top},
		diffCase{name: "new is the overlay", shell: std, args: c("rebase", "-b", "top.qcow2", "-F", "qcow2", "top.qcow2"), files: top},
		diffCase{name: "old missing", shell: "qemu-img create -q -f qcow2 -u -b gone.img -F raw top.qcow2 1M", args: c("rebase", "-b", "", "top.qcow2")},
		diffCase{name: "old missing unsafe", shell: "qemu-img create -q -f qcow2 -u -b gone.img -F raw top.qcow2 1M", args: c("rebase", "-u", "-b", "", "top.qcow2"), files: top},
		diffCase{name: "standalone gets backing", shell: sh("qemu-img create -q -f qcow2 top.qcow2 1M", "qemu-img create -q -f qcow2 n.qcow2 1M", qio("n.qcow2", "qcow2", "write -P 1 0 100k")),
			args: c("rebase", "-b", "n.qcow2", "-F", "qcow2", "top.qcow2"), files: top, checkOf: top},
		diffCase{name: "raw image", shell: "qemu-img create -q -f raw x.raw 1M", args: c("rebase", "-u", "-f", "raw", "x.raw")},
		diffCase{name: "raw image safe", shell: sh("qemu-img create -q -f raw x.raw 1M", "qemu-img create -q -f raw n.raw 1M"), args: c("rebase", "-b", "n.raw", "-F", "raw", "-f", "raw", "x.raw")},
		diffCase{name: "name too long", shell: std, args: c("rebase", "-u", "-b", longName(1100), "-F", "qcow2", "top.qcow2"), files: top},
		diffCase{name: "no file", args: c("rebase", "-b", "x")},
		diffCase{name: "two files", args: c("rebase", "-b", "x", "a", "b")},
		diffCase{name: "missing file", args: c("rebase", "-b", "x", "-F", "raw", "nonexist")},
		diffCase{name: "bad cache", shell: std, args: c("rebase", "-t", "bogus", "-b", "new.img", "-F", "qcow2", "top.qcow2")},
		diffCase{name: "bad source cache", shell: std, args: c("rebase", "-T", "bogus", "-b", "new.img", "-F", "qcow2", "top.qcow2")},
		diffCase{name: "bad cache progress", shell: std, args: c("rebase", "-p", "-t", "bogus", "-b", "new.img", "-F", "qcow2", "top.qcow2")},
		diffCase{name: "missing option argument", args: c("rebase", "top.qcow2", "-b")},
		diffCase{name: "unknown option", args: c("rebase", "-Z", "top.qcow2")},
	)
	runDiffCases(t, cases)
}

// longName is a backing file name of n bytes.
func longName(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = 'b'
	}
	return string(b)
}
