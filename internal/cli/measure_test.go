package cli

import (
	"strings"
	"testing"

	"github.com/qimg/qimg/internal/oracle"
)

func TestInteropMeasure(t *testing.T) {
	c := func(args ...string) []string { return args }
	var cases []diffCase
	size := func(name string, args ...string) {
		cases = append(cases, diffCase{name: name, args: append(c("measure"), args...)})
	}
	for _, sz := range []string{"0", "1", "1000", "1M", "1G", "1T", "100T"} {
		size("raw "+sz, "--size", sz)
		size("qcow2 "+sz, "--size", sz, "-O", "qcow2")
	}
	for _, o := range []string{
		"cluster_size=512", "cluster_size=4k", "cluster_size=2M", "cluster_size=3k", "cluster_size=4M", "cluster_size=0",
		"refcount_bits=1", "refcount_bits=4", "refcount_bits=64", "refcount_bits=3", "refcount_bits=128",
		"extended_l2=on", "extended_l2=on,cluster_size=8k", "extended_l2=on,cluster_size=2M", "extended_l2=maybe",
		"preallocation=metadata", "preallocation=falloc", "preallocation=full", "preallocation=bogus", "preallocation=",
		"compat=0.10", "compat=1.1", "compat=v3", "compat=0.10,refcount_bits=8", "compat=0.10,extended_l2=on",
		"backing_file=x", "backing_file=x,preallocation=full", "lazy_refcounts=on", "compression_type=bogus",
		"encryption=on", "encrypt.format=aes", "encrypt.format=bogus", "encrypt.format=luks",
		"encrypt.format=luks,encrypt.key-secret=nope", "size=2G", "foo=bar", "help", "cluster_size=abc",
		"encrypt.format=luks,encrypt.iter-time=abc",
	} {
		size("qcow2 "+o, "--size", "1G", "-O", "qcow2", "-o", o)
	}
	size("qcow2 too large", "--size", "8E", "-O", "qcow2", "-o", "cluster_size=512")
	size("qcow2 largest", "--size", "4P", "-O", "qcow2", "-o", "cluster_size=2M")
	size("raw options", "--size", "1G", "-o", "preallocation=full,nocow=on")
	size("raw bad option", "--size", "1G", "-o", "cluster_size=4k")
	size("json", "--size", "1G", "-O", "qcow2", "--output=json")
	size("json raw", "--size", "1G", "--output", "json")
	size("merged options", "--size", "1G", "-O", "qcow2", "-o", "cluster_size=4k", "-o", "refcount_bits=8")
	// Each successful LUKS case costs qemu-img a few seconds of PBKDF2
	// benchmarking, whatever iter-time says: few of them.
	for _, o := range []string{
		"", ",encrypt.cipher-alg=aes-128", ",encrypt.cipher-alg=aes-256,encrypt.cipher-mode=cbc,cluster_size=2M",
		",encrypt.cipher-alg=bogus", ",encrypt.cipher-mode=bogus", ",encrypt.ivgen-alg=bogus", ",encrypt.hash-alg=bogus",
		",encrypt.cipher-alg=des", ",encrypt.cipher-alg=3des",
	} {
		size("luks"+o, "--object", "secret,id=s0,data=x", "--size", "1G", "-O", "qcow2", "-o", "encrypt.format=luks,encrypt.iter-time=10,encrypt.key-secret=s0"+o)
	}
	// Inputs.
	img := sh(
		"qemu-img create -q -f qcow2 a.qcow2 10M",
		qio("a.qcow2", "qcow2", "write 0 1M", "write -z 2M 1M", "write 5000k 3k", "write -P 0 7M 64k", "write 9M 100"),
		"qemu-img create -q -f raw r.raw 5M",
		qio("r.raw", "raw", "write 1M 100k", "write 4M 1"),
		"qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 top.qcow2 12M",
		qio("top.qcow2", "qcow2", "write 1536k 8k", "write 11M 4k"),
	)
	input := func(name string, args ...string) {
		cases = append(cases, diffCase{name: name, shell: img, args: append(c("measure"), args...)})
	}
	for _, o := range []string{"", "cluster_size=4k", "cluster_size=512", "cluster_size=2M", "refcount_bits=1", "extended_l2=on",
		"preallocation=full", "preallocation=metadata", "backing_file=a.qcow2", "compat=0.10"} {
		for _, f := range []string{"a.qcow2", "r.raw", "top.qcow2"} {
			args := c("-O", "qcow2")
			if o != "" {
				args = append(args, "-o", o)
			}
			input("input "+f+" "+o, append(args, f)...)
		}
	}
	// Images preallocated with metadata: their data clusters that are
	// holes in the file read as zeroes (QEMU's metadata preallocation
	// rule), the fallocated ones as data.
	pre := img + " && " + sh(
		"qemu-img create -q -f qcow2 -o preallocation=metadata pm.qcow2 64M",
		qio("pm.qcow2", "qcow2", "write 1M 1M", "write 40M 64k"),
		"qemu-img create -q -f qcow2 -o preallocation=metadata,cluster_size=4k pm4.qcow2 8M",
		"qemu-img create -q -f qcow2 -o preallocation=falloc pf.qcow2 16M",
		qio("pf.qcow2", "qcow2", "write 1M 1M"),
	)
	for _, f := range []string{"pm.qcow2", "pm4.qcow2", "pf.qcow2"} {
		cases = append(cases, diffCase{name: "preallocated input " + f, shell: pre, args: c("measure", "-O", "qcow2", f)})
	}
	input("raw from qcow2", "a.qcow2")
	input("raw from raw", "-O", "raw", "r.raw")
	input("json input", "--output=json", "-O", "qcow2", "a.qcow2")
	input("format", "-f", "qcow2", "-O", "qcow2", "a.qcow2")
	input("wrong format", "-f", "raw", "-O", "qcow2", "a.qcow2")
	input("force share", "-U", "-O", "qcow2", "a.qcow2")
	input("image opts", "--image-opts", "-O", "qcow2", "driver=qcow2,file.filename=a.qcow2")
	input("missing file", "-O", "qcow2", "nonexist")
	input("input and size", "--size", "1M", "a.qcow2")
	input("two inputs", "a.qcow2", "r.raw")
	input("format without file", "-f", "raw")
	input("snapshot without file", "-l", "s")
	input("image opts without file", "--image-opts")
	input("nothing", "-O", "qcow2")
	input("unknown format", "--size", "1M", "-O", "bogus")
	input("bad output", "--output=xml", "--size", "1M")
	input("bad size", "--size", "1x")
	input("negative size", "--size", "-1")
	input("snapshot of raw", "-l", "s", "r.raw")
	input("snapshot missing", "-O", "qcow2", "-l", "nope", "a.qcow2")
	input("snapshot bad param", "-O", "qcow2", "-l", "snapshot.foo=1", "a.qcow2")
	// Bitmaps and snapshots of the input. Its data clusters hold no
	// holes: QEMU looks for holes in the data clusters of an image it
	// deems metadata-preallocated (from the file's allocation, which
	// bitmaps and snapshots change), and qimg does not.
	marked := sh(
		"qemu-img create -q -f qcow2 a.qcow2 10M",
		qio("a.qcow2", "qcow2", "write 0 1M", "write -z 2M 1M", "write 4992k 64k"),
		"qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 top.qcow2 12M",
		"qemu-img bitmap --add a.qcow2 b0",
		"qemu-img bitmap --add -g 512 a.qcow2 a_longer_bitmap_name",
		"qemu-img snapshot -c s1 a.qcow2",
		qio("a.qcow2", "qcow2", "write 5M 1M"),
		"qemu-img bitmap --add --disable -g 1M top.qcow2 t",
	)
	for _, args := range [][]string{
		c("-O", "qcow2", "a.qcow2"), c("--output=json", "-O", "qcow2", "-o", "cluster_size=4k", "a.qcow2"),
		c("-O", "qcow2", "-o", "compat=0.10", "a.qcow2"), c("-O", "raw", "a.qcow2"), c("-O", "qcow2", "top.qcow2"),
		c("-O", "qcow2", "-l", "s1", "a.qcow2"), c("-O", "qcow2", "-l", "1", "a.qcow2"),
		c("-O", "qcow2", "-l", "snapshot.name=s1", "a.qcow2"), c("-O", "qcow2", "-l", "snapshot.id=1,snapshot.name=s1", "a.qcow2"),
		c("-O", "qcow2", "-l", "snapshot.id=2", "a.qcow2"),
	} {
		cases = append(cases, diffCase{name: "marked " + strings.Join(args, " "), shell: marked, args: append(c("measure"), args...)})
	}
	runDiffCases(t, cases)
}

// TestMeasureGetoptErrors checks the errors glibc's getopt prints for
// measure, whose option string asks getopt to report them; qemu-img then
// prints its help text (qimg prints its own) and exits 0.
func TestMeasureGetoptErrors(t *testing.T) {
	oracle.QemuImgPath(t)
	dir := t.TempDir()
	for _, o := range []string{"-Z", "-qZ", "-f", "--o", "--size", "--image-opts=1", "--foo=bar", "--out"} {
		got := oracle.RunQimg(t, dir, "measure", o)
		want := oracle.QemuImgIn(t, dir, "measure", o)
		if got.Code != want.Code || got.Stderr != want.Stderr || !strings.Contains(got.Stdout, "Command syntax:") {
			t.Errorf("measure %s: %s\nqemu-img: exit %d, stderr %q", o, got, want.Code, want.Stderr)
		}
	}
}
