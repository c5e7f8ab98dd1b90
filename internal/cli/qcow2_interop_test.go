package cli

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qimg/qimg/internal/oracle"
)

// qcow2CreateOptions are option lists whose images have no timestamp or
// random content, so qimg's file must equal qemu-img's.
func qcow2CreateOptions(short bool) []string {
	var opts []string
	for _, cs := range []string{"512", "4k", "64k", "2M"} {
		for _, prealloc := range []string{"off", "metadata", "falloc", "full"} {
			if short && cs == "2M" && prealloc != "off" {
				continue
			}
			opts = append(opts, fmt.Sprintf("cluster_size=%s,preallocation=%s", cs, prealloc))
		}
		opts = append(opts, fmt.Sprintf("cluster_size=%s,compat=0.10", cs))
	}
	for _, bits := range []string{"1", "2", "4", "8", "16", "32", "64"} {
		opts = append(opts, "refcount_bits="+bits)
	}
	return append(opts,
		"compat=1.1,lazy_refcounts=on",
		"compression_type=zstd",
		"compression_type=zlib",
		"extended_l2=on",
		"extended_l2=on,cluster_size=16k,preallocation=metadata",
		"extended_l2=on,preallocation=falloc",
		"data_file=data.raw",
		"data_file=data.raw,data_file_raw=on",
		"data_file=data.raw,preallocation=full",
		"nocow=on",
		"extent_size_hint=0",
		"compat=v2",
	)
}

func TestInteropQcow2Create(t *testing.T) {
	c := func(args ...string) []string { return args }
	var cases []diffCase
	for _, o := range qcow2CreateOptions(testing.Short()) {
		files := c("img")
		if strings.Contains(o, "data_file") {
			files = append(files, "data.raw")
		}
		d := diffCase{name: "create " + o, args: c("create", "-f", "qcow2", "-o", o, "img", "3M"), files: files, infoOf: c("img")}
		if strings.Contains(o, "falloc") || strings.Contains(o, "full") {
			// The file systems's block accounting of fallocated
			// space varies from run to run, even for qemu-img.
			d.infoOf = nil
		}
		cases = append(cases, d)
	}
	base := [][]string{c("create", "-q", "-f", "qcow2", "base.qcow2", "5M")}
	cases = append(cases,
		diffCase{name: "create default", args: c("create", "-f", "qcow2", "img", "1G"), files: c("img")},
		diffCase{name: "create zero size", args: c("create", "-f", "qcow2", "img", "0"), files: c("img")},
		diffCase{name: "create unaligned size", args: c("create", "-f", "qcow2", "img", "1000"), files: c("img"), infoOf: c("img")},
		diffCase{name: "create huge", args: c("create", "-f", "qcow2", "img", "8E"), files: c("img")},
		diffCase{name: "create too big", args: c("create", "-f", "qcow2", "-o", "cluster_size=512", "img", "1P"), files: c("img")},
		diffCase{name: "create beyond maximum", args: c("create", "-f", "qcow2", "img", "9223372036854775296"), files: c("img")},
		diffCase{name: "create backing", setup: base, args: c("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "img"),
			files: c("img"), infoOf: c("img")},
		diffCase{name: "create backing with size", setup: base, args: c("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "img", "9M"),
			files: c("img")},
		diffCase{name: "create backing option", setup: base, args: c("create", "-f", "qcow2", "-o", "backing_file=base.qcow2,backing_fmt=qcow2", "img"),
			files: c("img")},
		// The hint "Detected format of qcow2." ends without a newline.
		diffCase{name: "create backing without format", setup: base, args: c("create", "-f", "qcow2", "-b", "base.qcow2", "img")},
		diffCase{name: "create backing without format unopened", args: c("create", "-f", "qcow2", "-u", "-b", "base.qcow2", "img", "1M")},
		diffCase{name: "create backing missing", args: c("create", "-f", "qcow2", "-b", "nonexist", "-F", "qcow2", "img")},
		diffCase{name: "create backing unopened", args: c("create", "-f", "qcow2", "-u", "-b", "nonexist", "-F", "raw", "img", "1M"), files: c("img")},
		diffCase{name: "create backing long name", args: c("create", "-f", "qcow2", "-o", "cluster_size=512", "-u", "-b", strings.Repeat("b", 1000), "-F", "raw", "img", "1M")},
		diffCase{name: "create backing too long name", args: c("create", "-f", "qcow2", "-u", "-b", strings.Repeat("b", 1100), "-F", "raw", "img", "1M")},
		diffCase{name: "create backing bad format", args: c("create", "-f", "qcow2", "-u", "-b", "x", "-F", "foo", "img", "1M")},
		diffCase{name: "create data file in another directory", shell: "mkdir sub",
			args: c("create", "-f", "qcow2", "-o", "data_file=dd.raw", "sub/img", "1M"), files: c("sub/img", "dd.raw", "sub/dd.raw")},
		diffCase{name: "create help", args: c("create", "-f", "qcow2", "-o", "help")},
		diffCase{name: "create help with file", args: c("create", "-f", "qcow2", "-o", "help", "img")},
	)
	for _, o := range []string{
		"compat=xyz", "cluster_size=3000", "cluster_size=4M", "cluster_size=0", "refcount_bits=3", "refcount_bits=128",
		"compat=0.10,refcount_bits=8", "compat=0.10,lazy_refcounts=on", "extended_l2=on,cluster_size=4k",
		"compat=0.10,extended_l2=on", "preallocation=bogus", "compression_type=lzo", "compat=0.10,compression_type=zstd",
		"data_file_raw=on", "backing_fmt=raw", "encryption=on", "encrypt.format=luks", "encrypt.format=bad",
		"lazy_refcounts=maybe", "data_file=dd.raw,compat=0.10", "compat=xyz,preallocation=bad",
		"preallocation=metadata,backing_file=base.qcow2,backing_fmt=qcow2",
		"data_file=dd.raw,data_file_raw=on,backing_file=base.qcow2,backing_fmt=qcow2",
	} {
		cases = append(cases, diffCase{name: "create error " + o, setup: base, args: c("create", "-f", "qcow2", "-o", o, "img", "1M"),
			files: c("img", "dd.raw")})
	}
	runDiffCases(t, cases)
}

func TestInteropQcow2Info(t *testing.T) {
	c := func(args ...string) []string { return args }
	var cases []diffCase
	setups := map[string]string{
		// The snapshot dates are zeroed so that both directories agree.
		"snapshots": "qemu-img create -q -f qcow2 img 1M && qemu-img snapshot -c one img && qemu-img snapshot -c two img && " +
			"off=$(od -An -t u8 -j 64 -N 8 --endian=big img | tr -d ' ') && " +
			"dd if=/dev/zero of=img bs=1 seek=$((off+16)) count=8 conv=notrunc 2>/dev/null && " +
			"dd if=/dev/zero of=img bs=1 seek=$((off+72+16)) count=8 conv=notrunc 2>/dev/null",
		"bitmaps":           "qemu-img create -q -f qcow2 img 1M && qemu-img bitmap --add img b0 && qemu-img bitmap --add -g 128k --disable img b1",
		"data file":         "qemu-img create -q -f qcow2 -o data_file=d.raw img 1M && qemu-io -f qcow2 -c 'write 0 64k' img >/dev/null",
		"backing":           "qemu-img create -q -f raw base 1M && qemu-img create -q -f qcow2 -b base -F raw img",
		"written":           "qemu-img create -q -f qcow2 img 1M && qemu-io -f qcow2 -c 'write -P 1 0 512k' -c 'write -c 512k 64k' img >/dev/null",
		"aes":               "qemu-img create -q --object secret,id=s0,data=abc -f qcow2 -o encrypt.format=aes,encrypt.key-secret=s0 img 1M",
		"corrupt":           "qemu-img create -q -f qcow2 img 1M && printf '\\002' | dd of=img bs=1 seek=79 conv=notrunc 2>/dev/null",
		"dirty":             "qemu-img create -q -f qcow2 -o lazy_refcounts=on img 1M && printf '\\001' | dd of=img bs=1 seek=79 conv=notrunc 2>/dev/null",
		"v2":                "qemu-img create -q -f qcow2 -o compat=0.10 img 1M",
		"zstd":              "qemu-img create -q -f qcow2 -o compression_type=zstd img 1M",
		"extl2":             "qemu-img create -q -f qcow2 -o extended_l2=on img 1M",
		"raw data":          "qemu-img create -q -f qcow2 -o data_file=d.raw,data_file_raw=on img 1M",
		"missing data file": "qemu-img create -q -f qcow2 -o data_file=d.raw img 1M && rm d.raw",
	}
	for name, shell := range setups {
		for _, out := range []string{"human", "json"} {
			cases = append(cases, diffCase{name: "info " + name + " " + out, shell: shell, args: c("info", "--output="+out, "img")})
		}
	}
	cases = append(cases,
		diffCase{name: "info backing chain", shell: setups["backing"], args: c("info", "--backing-chain", "img")},
		diffCase{name: "info backing chain json", shell: setups["backing"], args: c("info", "--backing-chain", "--output=json", "img")},
		diffCase{name: "info image-opts cache", shell: setups["v2"], args: c("info", "--image-opts", "driver=qcow2,file.filename=img,l2-cache-size=1M,cache-clean-interval=10")},
		diffCase{name: "info image-opts bad cache", shell: setups["v2"], args: c("info", "--image-opts", "driver=qcow2,file.filename=img,l2-cache-size=1M,refcount-cache-size=1M,cache-size=1M")},
		diffCase{name: "info image-opts bad entry size", shell: setups["v2"], args: c("info", "--image-opts", "driver=qcow2,file.filename=img,l2-cache-entry-size=100")},
		diffCase{name: "info image-opts bad overlap", shell: setups["v2"], args: c("info", "--image-opts", "driver=qcow2,file.filename=img,overlap-check=some")},
		diffCase{name: "info image-opts lazy on v2", shell: setups["v2"], args: c("info", "--image-opts", "driver=qcow2,file.filename=img,lazy-refcounts=on")},
		diffCase{name: "info truncated", shell: "qemu-img create -q -f qcow2 img 1M && truncate -s 100 img", args: c("info", "img")},
		diffCase{name: "info unknown feature", shell: "qemu-img create -q -f qcow2 img 1M && printf '\\040' | dd of=img bs=1 seek=79 conv=notrunc 2>/dev/null", args: c("info", "img")},
	)
	runDiffCases(t, cases)
}

// TestInteropQcow2DataFileNames: a relative data file name is found from
// the working directory, as qemu-img 7.2 finds it, whichever tool created
// the image; where qemu-img gives up, the error is the same.
func TestInteropQcow2DataFileNames(t *testing.T) {
	c := func(args ...string) []string { return args }
	made := "mkdir sub && qemu-img create -q -f qcow2 -o data_file=sub/d.raw sub/x.qcow2 1M && " +
		"qemu-io -f qcow2 -c 'write -P 7 0 64k' sub/x.qcow2 >/dev/null"
	runDiffCases(t, []diffCase{
		{name: "read a data file named from the working directory", shell: made,
			args: c("convert", "-O", "raw", "sub/x.qcow2", "out.raw"), files: c("out.raw")},
		{name: "write a data file named from the working directory", shell: made + " && printf 'abc' > in.raw",
			args: c("convert", "-n", "-f", "raw", "-O", "qcow2", "in.raw", "sub/x.qcow2"), files: c("sub/d.raw", "sub/x.qcow2")},
		{name: "check with a data file named from the working directory", shell: made,
			args: c("check", "sub/x.qcow2")},
		{name: "missing data file", shell: made + " && rm sub/d.raw",
			args: c("convert", "-O", "raw", "sub/x.qcow2", "out.raw"), files: c("out.raw")},
		{name: "missing data file info", shell: made + " && rm sub/d.raw", args: c("info", "sub/x.qcow2")},
		{name: "create a data file in a directory", shell: "mkdir sub",
			args: c("create", "-f", "qcow2", "-o", "data_file=sub/dd.raw", "sub/img", "1M"), files: c("sub/img", "sub/dd.raw")},
	})
}

// TestQcow2DataFileBesideImage: qimg also finds a data file named
// relative to the image's directory when the working directory has no such
// file (qemu-img 7.2 then fails), and an image qimg created with a data
// file in another directory reads back from there.
func TestQcow2DataFileBesideImage(t *testing.T) {
	oracle.QemuImgPath(t)
	dir := t.TempDir()
	if out, err := shellIn(dir, "mkdir sub && cd sub && qemu-img create -q -f qcow2 -o data_file=d.raw x.qcow2 1M && "+
		"qemu-io -f qcow2 -c 'write -P 7 0 64k' x.qcow2 >/dev/null"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if r := oracle.QemuImgIn(t, dir, "convert", "-O", "raw", "sub/x.qcow2", "theirs.raw"); r.Code == 0 {
		t.Fatalf("qemu-img found the data file beside the image; this test assumes it does not: %s", r)
	}
	if r := oracle.RunQimg(t, dir, "convert", "-O", "raw", "sub/x.qcow2", "ours.raw"); r.Code != 0 {
		t.Fatalf("qimg convert: %s", r)
	}
	got, err := os.ReadFile(filepath.Join(dir, "ours.raw"))
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 1<<20)
	copy(want, bytes.Repeat([]byte{7}, 64<<10))
	if !bytes.Equal(got, want) {
		t.Fatal("the data read through the data file beside the image differs from what qemu-io wrote")
	}
	// From the image's own directory both tools agree.
	if r := oracle.QemuImgIn(t, filepath.Join(dir, "sub"), "compare", "x.qcow2", "../ours.raw"); r.Code != 0 {
		t.Fatalf("qemu-img compare: %s", r)
	}
}
