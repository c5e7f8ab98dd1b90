package cli

import (
	"testing"
)

func TestInteropAmend(t *testing.T) {
	c := func(args ...string) []string { return args }
	images := [][]string{
		c("create", "-q", "-f", "qcow2", "img", "4M"),
		c("create", "-q", "-f", "raw", "r", "1M"),
		c("create", "-q", "-f", "qcow2", "-o", "data_file=d.raw,data_file_raw=on", "df", "4M"),
		c("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", "lz", "4M"),
		c("create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2", "4M"),
	}
	data := "qemu-io -f qcow2 -c 'write -P 1 0 100k' -c 'write -z 1M 64k' -c 'write -c -P 2 2M 64k' img && " +
		"qemu-io -f qcow2 -c 'write -P 1 0 100k' lz && qemu-io -f qcow2 -c 'write -P 3 0 64k' v2"
	snaps := data + " && qemu-img snapshot -c s img && qemu-io -f qcow2 -c 'write -z 3M 64k' -c 'write -P 4 0 4k' img && " +
		"qemu-img snapshot -c s v2 && qemu-io -f qcow2 -c 'write -P 4 0 4k' v2"
	cases := []diffCase{
		{name: "help", args: c("amend", "-f", "qcow2", "-o", "help")},
		{name: "help of an image", setup: images, args: c("amend", "-o", "help", "img")},
		{name: "help among options", setup: images, args: c("amend", "-o", "help,compat=0.10", "img")},
		{name: "help raw", args: c("amend", "-f", "raw", "-o", "help")},
		{name: "help unknown format", args: c("amend", "-f", "bogus", "-o", "help")},
		{name: "raw", setup: images, args: c("amend", "-o", "size=2M", "r")},
		{name: "raw help", setup: images, args: c("amend", "-o", "help", "r")},
		{name: "no options", setup: images, args: c("amend", "img")},
		{name: "no file", args: c("amend", "-o", "compat=1.1")},
		{name: "two files", setup: images, args: c("amend", "-o", "compat=1.1", "img", "r")},
		{name: "missing file", args: c("amend", "-o", "compat=1.1", "nonexist")},
		{name: "bad option list", setup: images, args: c("amend", "-o", ",compat=0.10", "img")},
		{name: "bad cache", setup: images, args: c("amend", "-t", "bogus", "-o", "compat=0.10", "img")},
		{name: "unknown option", setup: images, args: c("amend", "-o", "foo=bar", "img")},
		{name: "creation option", setup: images, args: c("amend", "-o", "cluster_size=4k", "img")},
		{name: "creation encryption", setup: images, args: c("amend", "-o", "encryption=on", "img")},
		{name: "creation encrypt.format", setup: images, args: c("amend", "-o", "encrypt.format=luks", "img")},
		{name: "creation preallocation", setup: images, args: c("amend", "-o", "preallocation=full", "img")},
		{name: "bad compat", setup: images, args: c("amend", "-o", "compat=2", "img")},
		{name: "bad refcount bits", setup: images, args: c("amend", "-o", "refcount_bits=3", "img")},
		{name: "refcount bits not a number", setup: images, args: c("amend", "-o", "refcount_bits=x", "img")},
		{name: "bad bool", setup: images, args: c("amend", "-o", "lazy_refcounts=maybe", "img")},
		{name: "bad size", setup: images, args: c("amend", "-o", "size=abc", "img")},
		{name: "size beyond int64", setup: images, args: c("amend", "-o", "size=9E", "img")},
		{name: "backing file", setup: images, args: c("amend", "-o", "backing_file=x", "img")},
		{name: "backing format", setup: images, args: c("amend", "-o", "backing_fmt=qcow2", "img")},
		{name: "empty backing", setup: images, args: c("amend", "-o", "backing_file=,backing_fmt=", "img")},
		{name: "same backing", setup: [][]string{c("create", "-q", "-f", "qcow2", "base", "4M"), c("create", "-q", "-f", "qcow2", "-b", "base", "-F", "qcow2", "img", "4M")},
			args: c("amend", "-o", "backing_file=base,backing_fmt=qcow2", "img"), files: c("img")},
		{name: "data file without one", setup: images, args: c("amend", "-o", "data_file=x", "img")},
		{name: "data file raw on", setup: images, args: c("amend", "-o", "data_file_raw=on", "img")},
		{name: "encryption", setup: images, args: c("amend", "-o", "encrypt.state=active", "img")},
		{name: "encryption keyslot", setup: images, args: c("amend", "-o", "encrypt.keyslot=1", "img")},

		{name: "downgrade", setup: images, shell: data, args: c("amend", "-o", "compat=0.10", "img"), files: c("img"), checkOf: c("img")},
		{name: "downgrade v2 name", setup: images, shell: data, args: c("amend", "-o", "compat=v2", "img"), files: c("img")},
		{name: "downgrade with snapshots", setup: images, shell: snaps, args: c("amend", "-p", "-o", "compat=0.10", "img"),
			fixup: zeroDates("img"), files: c("img"), checkOf: c("img")},
		{name: "downgrade over backing", setup: [][]string{c("create", "-q", "-f", "qcow2", "base", "4M"), c("create", "-q", "-f", "qcow2", "-b", "base", "-F", "qcow2", "img", "4M")},
			shell: "qemu-io -f qcow2 -c 'write -P 9 0 4M' base && qemu-io -f qcow2 -c 'write -P 1 0 100k' -c 'write -z 1M 64k' -c 'write -z 3M 128k' img",
			args:  c("amend", "-o", "compat=0.10", "img"), files: c("img", "base"), compareOf: c("img")},
		{name: "downgrade lazy", setup: images, shell: data, args: c("amend", "-o", "compat=0.10", "lz"), files: c("lz")},
		{name: "downgrade extended l2", setup: [][]string{c("create", "-q", "-f", "qcow2", "-o", "extended_l2=on", "img", "4M")}, args: c("amend", "-o", "compat=0.10", "img"), files: c("img")},
		{name: "downgrade zstd", setup: [][]string{c("create", "-q", "-f", "qcow2", "-o", "compression_type=zstd", "img", "4M")}, args: c("amend", "-o", "compat=0.10", "img"), files: c("img")},
		{name: "downgrade zstd compressed", setup: [][]string{c("create", "-q", "-f", "qcow2", "-o", "compression_type=zstd", "img", "4M")},
			shell: "qemu-io -f qcow2 -c 'write -c 0 64k' img", args: c("amend", "-o", "compat=0.10", "img"), files: c("img")},
		{name: "downgrade data file", setup: images, args: c("amend", "-o", "compat=0.10", "df"), files: c("df")},
		{name: "downgrade 8-bit refcounts", setup: [][]string{c("create", "-q", "-f", "qcow2", "-o", "refcount_bits=8", "img", "4M")}, args: c("amend", "-o", "compat=0.10", "img")},
		{name: "downgrade to 16-bit refcounts", setup: [][]string{c("create", "-q", "-f", "qcow2", "-o", "refcount_bits=8", "img", "4M")}, shell: "qemu-io -f qcow2 -c 'write -P 1 0 100k' -c 'write -z 1M 64k' img",
			args: c("amend", "-p", "-o", "compat=0.10,refcount_bits=16", "img"), files: c("img")},
		{name: "downgrade with lazy refcounts on", setup: images, args: c("amend", "-o", "compat=0.10,lazy_refcounts=on", "img")},
		{name: "downgrade with 8-bit refcounts", setup: images, args: c("amend", "-o", "refcount_bits=8,compat=0.10", "img")},
		{name: "downgrade snapshot of another size", setup: images, shell: "qemu-img snapshot -c s img && qemu-img resize -q img 8M",
			args: c("amend", "-o", "compat=0.10", "img"), fixup: zeroDates("img"), files: c("img")},
		{name: "upgrade", setup: images, shell: snaps, args: c("amend", "-p", "-o", "compat=1.1", "v2"), fixup: zeroDates("v2"), files: c("v2")},
		{name: "upgrade with everything", setup: images, shell: snaps, args: c("amend", "-p", "-o", "compat=1.1,refcount_bits=4,lazy_refcounts=on,size=8M", "v2"),
			fixup: zeroDates("v2"), files: c("v2"), checkOf: c("v2")},
		{name: "same version", setup: images, args: c("amend", "-o", "compat=1.1", "img"), files: c("img")},
		{name: "quiet progress", setup: images, shell: data, args: c("amend", "-q", "-p", "-o", "compat=0.10", "img"), files: c("img")},
		{name: "image-opts", setup: images, shell: data, args: c("amend", "--image-opts", "-o", "compat=0.10", "driver=qcow2,file.filename=img"), files: c("img")},
		{name: "force and cache", setup: images, shell: data, args: c("amend", "--force", "-t", "none", "-o", "compat=0.10", "img"), files: c("img")},
		{name: "options merged", setup: images, shell: data, args: c("amend", "-o", "compat=0.10", "-o", "refcount_bits=16", "img"), files: c("img")},

		{name: "lazy refcounts on", setup: images, args: c("amend", "-o", "lazy_refcounts=on", "img"), files: c("img")},
		{name: "lazy refcounts off", setup: images, shell: data, args: c("amend", "-o", "lazy_refcounts=off", "lz"), files: c("lz")},
		{name: "lazy refcounts kept", setup: images, shell: data, args: c("amend", "-o", "refcount_bits=32", "lz"), files: c("lz")},
		{name: "data file renamed", setup: images, args: c("amend", "-o", "data_file=new.raw", "df"), files: c("df")},
		{name: "data file name dropped", setup: images, args: c("amend", "-o", "data_file=", "df"), files: c("df")},
		{name: "data file raw off", setup: images, args: c("amend", "-o", "data_file_raw=off", "df"), files: c("df"), infoOf: c("df")},
		{name: "grow", setup: images, shell: data, args: c("amend", "-o", "size=8M", "img"), files: c("img")},
		{name: "shrink", setup: images, shell: data, args: c("amend", "-o", "size=1M", "img"), files: c("img")},
		{name: "size 0", setup: images, args: c("amend", "-o", "size=0", "img"), files: c("img")},
		{name: "refcount bits shared clusters", setup: images, shell: snaps + " && qemu-img snapshot -c t img && qemu-img snapshot -c u img",
			args: c("amend", "-o", "refcount_bits=2", "img"), fixup: zeroDates("img"), files: c("img")},
	}
	for _, bits := range []string{"1", "2", "4", "8", "32", "64"} {
		cases = append(cases, diffCase{name: "refcount bits " + bits,
			setup: [][]string{c("create", "-q", "-f", "qcow2", "-o", "cluster_size=512", "img", "16M")},
			shell: "qemu-io -f qcow2 -c 'write -P 1 0 1M' -c 'write -P 2 12M 64k' img",
			args:  c("amend", "-p", "-o", "refcount_bits="+bits, "img"), files: c("img"), checkOf: c("img")})
	}
	runDiffCases(t, cases)
}
