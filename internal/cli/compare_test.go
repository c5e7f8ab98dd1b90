package cli

import (
	"testing"
)

// TestInteropCompare compares `compare` with qemu-img's: identical and
// different images of every kind, strict mode, size mismatches, progress,
// and the errors with their exit codes.
func TestInteropCompare(t *testing.T) {
	c := func(args ...string) []string { return args }
	images := sh(
		"qemu-img create -q -f raw a.raw 4M",
		qio("a.raw", "raw", "write -P 1 64k 64k", "write -P 2 1M 4k", "write -P 3 3M 1M"),
		"qemu-img convert -f raw -O qcow2 a.raw a.qcow2",
		"qemu-img convert -c -f raw -O qcow2 a.raw ac.qcow2",
		"qemu-img convert -S 0 -f raw -O raw a.raw full.raw",
		// One byte changed in the middle of a sector of data.
		"cp a.raw b.raw",
		qio("b.raw", "raw", "write -P 9 1049000 1"),
		// Data where the other image has a hole, zeroes where it has data.
		"cp a.raw c.raw",
		qio("c.raw", "raw", "write -P 5 2M 512"),
		"qemu-img convert -f raw -O qcow2 a.raw z.qcow2",
		qio("z.qcow2", "qcow2", "write -z 64k 64k"),
		// Zero data written into an allocated cluster, and a longer image
		// whose tail holds zeroes, or data.
		"qemu-img convert -f raw -O qcow2 a.raw zd.qcow2",
		qio("zd.qcow2", "qcow2", "write -P 0 2M 64k"),
		"cp a.raw long.raw && truncate -s 6M long.raw",
		"cp long.raw longdata.raw",
		qio("longdata.raw", "raw", "write -P 4 5M 4k"),
		"qemu-img create -q -f qcow2 long.qcow2 6M",
		qio("long.qcow2", "qcow2", "write -P 1 64k 64k", "write -P 2 1M 4k", "write -P 3 3M 1M", "write -z 4M 1M"),
		// A chain that reads as a.raw.
		"qemu-img create -q -f qcow2 base.qcow2 4M",
		qio("base.qcow2", "qcow2", "write -P 1 64k 64k", "write -P 7 1M 4k", "write -P 3 3M 1M"),
		"qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2",
		qio("top.qcow2", "qcow2", "write -P 2 1M 4k"),
		"head -c 1000 /dev/zero > odd.raw",
		": > empty.raw",
	)
	cmp := func(name string, args ...string) diffCase {
		return diffCase{name: name, shell: images, args: append(c("compare"), args...)}
	}
	runDiffCases(t, []diffCase{
		cmp("raw and qcow2", "a.raw", "a.qcow2"),
		cmp("formats given", "-f", "raw", "-F", "qcow2", "a.raw", "a.qcow2"),
		cmp("compressed", "ac.qcow2", "a.raw"),
		cmp("sparse and full", "a.raw", "full.raw"),
		cmp("one byte", "a.raw", "b.raw"),
		cmp("one byte quiet", "-q", "a.raw", "b.raw"),
		cmp("data where a hole is", "a.raw", "c.raw"),
		cmp("hole where data is", "c.raw", "a.qcow2"),
		cmp("zero clusters", "a.raw", "z.qcow2"),
		cmp("zero clusters reversed", "z.qcow2", "a.qcow2"),
		cmp("zero data", "zd.qcow2", "a.qcow2"),
		cmp("longer with zeroes", "a.raw", "long.raw"),
		cmp("longer with data", "longdata.raw", "a.qcow2"),
		cmp("longer qcow2 with zero clusters", "long.qcow2", "a.raw"),
		cmp("backing chain", "top.qcow2", "a.raw"),
		cmp("backing chain differs", "base.qcow2", "a.raw"),
		cmp("odd and empty", "odd.raw", "empty.raw"),
		cmp("strict same", "-s", "a.qcow2", "a.qcow2"),
		cmp("strict raw and qcow2", "-s", "a.raw", "a.qcow2"),
		cmp("strict sizes", "-s", "a.raw", "long.raw"),
		cmp("strict raw and raw", "-s", "a.raw", "full.raw"),
		cmp("progress", "-p", "a.raw", "long.qcow2"),
		cmp("progress quiet", "-p", "-q", "a.raw", "a.qcow2"),
		cmp("progress mismatch", "-p", "a.raw", "b.raw"),
		cmp("cache", "-T", "none", "a.raw", "a.qcow2"),
		cmp("bad cache", "-T", "bogus", "a.raw", "a.qcow2"),
		cmp("force share", "-U", "a.raw", "a.qcow2"),
		cmp("image opts", "--image-opts", "driver=raw,file.filename=a.raw", "driver=qcow2,file.filename=a.qcow2"),
		cmp("image opts and format", "--image-opts", "-f", "raw", "driver=raw,file.filename=a.raw", "a.qcow2"),
		cmp("options after the files", "a.raw", "b.raw", "-q"),
		cmp("missing first", "nonexist", "a.raw"),
		cmp("missing second", "a.raw", "nonexist"),
		cmp("one file", "a.raw"),
		cmp("three files", "a.raw", "a.raw", "a.raw"),
		cmp("unknown format", "-f", "bogus", "a.raw", "a.raw"),
		cmp("wrong format", "-F", "qcow2", "a.raw", "a.raw"),
		cmp("unknown option", "--bogus", "a.raw", "a.raw"),
		cmp("missing argument", "a.raw", "a.raw", "-f"),
		cmp("object", "--object", "secret,id=s,data=x", "a.raw", "a.qcow2"),
		cmp("bad object", "--object", "secret,id=s", "a.raw", "a.qcow2"),
	})
}
