package cli

import (
	"testing"
)

// TestInteropDD compares `dd` with qemu-img's: the output files byte for
// byte, in raw and qcow2, with every operand, and the errors.
func TestInteropDD(t *testing.T) {
	c := func(args ...string) []string { return args }
	images := sh(
		"qemu-img create -q -f raw a.raw 3M",
		qio("a.raw", "raw", "write -P 1 0 64k", "write -P 2 1M 4k", "write -P 3 2560k 512k"),
		"qemu-img convert -f raw -O qcow2 a.raw a.qcow2",
		"qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 top.qcow2 4M",
		qio("top.qcow2", "qcow2", "write -P 4 3M 4k"),
		"yes qimg-dd-odd-input | head -c 1000 > odd.raw",
	)
	dd := func(name string, files []string, args ...string) diffCase {
		return diffCase{name: name, shell: images, args: append(c("dd"), args...), files: files}
	}
	out := c("out")
	runDiffCases(t, []diffCase{
		dd("raw", out, "if=a.raw", "of=out"),
		dd("qcow2 input", out, "-f", "qcow2", "if=a.qcow2", "of=out"),
		dd("chain", out, "if=top.qcow2", "of=out"),
		dd("qcow2 output", out, "-O", "qcow2", "if=a.raw", "of=out"),
		dd("qcow2 output small blocks", out, "-O", "qcow2", "bs=4k", "skip=3", "if=top.qcow2", "of=out"),
		dd("block size", out, "bs=1M", "if=a.raw", "of=out"),
		dd("odd block size", out, "bs=3000", "count=100", "if=a.raw", "of=out"),
		dd("count", out, "bs=64k", "count=5", "if=a.raw", "of=out"),
		dd("count and skip", out, "bs=4k", "count=300", "skip=250", "if=a.raw", "of=out"),
		dd("count past the end", out, "count=999999", "if=a.raw", "of=out"),
		dd("count zero", out, "count=0", "if=a.raw", "of=out"),
		dd("skip past count", out, "count=2", "skip=5", "if=a.raw", "of=out"),
		dd("skip past the end", out, "bs=1M", "skip=9", "if=a.raw", "of=out"),
		dd("skip overflowing", out, "bs=1M", "skip=9E", "if=a.raw", "of=out"),
		dd("odd input", out, "bs=300", "skip=1", "if=odd.raw", "of=out"),
		dd("operands twice", out, "if=nonexist", "if=a.raw", "of=out"),
		dd("image opts", out, "--image-opts", "if=driver=qcow2,file.filename=a.qcow2", "of=out"),
		dd("force share", out, "-U", "if=a.raw", "of=out"),
		dd("existing output replaced", out, "if=odd.raw", "of=a.raw"),
		dd("no operands", nil),
		dd("no output", nil, "if=a.raw"),
		dd("no input", nil, "of=out"),
		dd("operand without =", nil, "if=a.raw", "of=out", "x"),
		dd("unknown operand", nil, "conv=notrunc", "if=a.raw", "of=out"),
		dd("bad block size", nil, "bs=0", "if=a.raw", "of=out"),
		dd("block size too big", nil, "bs=2G", "if=a.raw", "of=out"),
		dd("bad count", nil, "count=x", "if=a.raw", "of=out"),
		dd("negative skip", nil, "skip=-1", "if=a.raw", "of=out"),
		dd("missing input", nil, "if=nonexist", "of=out"),
		dd("unknown output format", nil, "-O", "bogus", "if=a.raw", "of=out"),
		dd("output directory missing", nil, "if=a.raw", "of=nodir/out"),
		dd("wrong input format", nil, "-f", "qcow2", "if=a.raw", "of=out"),
		dd("unknown option", nil, "--bogus", "if=a.raw", "of=out"),
		dd("missing option argument", nil, "if=a.raw", "of=out", "-O"),
	})
}
