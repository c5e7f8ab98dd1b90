package cli

import (
	"testing"
)

func TestInteropResize(t *testing.T) {
	c := func(args ...string) []string { return args }
	images := [][]string{
		c("create", "-q", "-f", "raw", "r", "1M"),
		c("create", "-q", "-f", "qcow2", "img", "1M"),
	}
	data := "qemu-io -f qcow2 -c 'write -P 1 0 64k' -c 'write -P 2 900k 100k' img"
	cases := []diffCase{
		{name: "raw grow", setup: images, args: c("resize", "-f", "raw", "r", "2M"), files: c("r")},
		{name: "raw probed", setup: images, args: c("resize", "r", "2M"), files: c("r")},
		{name: "raw relative", setup: images, args: c("resize", "-f", "raw", "r", "+1M"), files: c("r")},
		{name: "raw shrink", setup: images, args: c("resize", "--shrink", "-f", "raw", "r", "100k"), files: c("r")},
		{name: "raw shrink unaligned", setup: images, args: c("resize", "--shrink", "-f", "raw", "r", "1000"), files: c("r")},
		{name: "raw shrink refused", setup: images, args: c("resize", "-f", "raw", "r", "1000"), files: c("r")},
		{name: "raw falloc", setup: images, args: c("resize", "-f", "raw", "--preallocation=falloc", "r", "3M"), files: c("r")},
		{name: "raw full", setup: images, args: c("resize", "-f", "raw", "--preallocation=full", "r", "3M"), files: c("r")},
		{name: "raw metadata", setup: images, args: c("resize", "-f", "raw", "--preallocation=metadata", "r", "3M"), files: c("r")},
		{name: "raw image-opts", setup: images, args: c("resize", "--image-opts", "driver=raw,file.filename=r", "5M"), files: c("r")},
		{name: "raw offset grow", setup: images, args: c("resize", "--image-opts", "driver=raw,offset=4096,file.filename=r", "2M"), files: c("r")},
		{name: "raw offset shrink", setup: images, args: c("resize", "--shrink", "--image-opts", "driver=raw,offset=4096,file.filename=r", "1000"), files: c("r")},
		{name: "raw offset falloc", setup: images, args: c("resize", "--preallocation=falloc", "--image-opts", "driver=raw,offset=512,file.filename=r", "3M"), files: c("r")},
		{name: "raw fixed size", setup: images, args: c("resize", "--image-opts", "driver=raw,offset=4096,size=4096,file.filename=r", "2M"), files: c("r")},
		{name: "raw beyond maximum", setup: images, args: c("resize", "-f", "raw", "r", "9223372036854775000"), files: c("r")},
		{name: "raw offset beyond maximum", setup: images, args: c("resize", "--image-opts", "driver=raw,offset=4096,file.filename=r", "9223372035781033984"), files: c("r")},

		{name: "qcow2 grow", setup: images, shell: data, args: c("resize", "img", "1G"), files: c("img")},
		{name: "qcow2 grow quiet", setup: images, args: c("resize", "-q", "img", "+3M"), files: c("img")},
		{name: "qcow2 same size", setup: images, args: c("resize", "img", "+0"), files: c("img")},
		{name: "qcow2 shrink", setup: images, shell: data, args: c("resize", "--shrink", "img", "512k"), files: c("img"), checkOf: c("img")},
		{name: "qcow2 shrink after file", setup: images, shell: data, args: c("resize", "img", "--shrink", "-100k"), files: c("img")},
		{name: "qcow2 shrink refused", setup: images, shell: data, args: c("resize", "img", "512k"), files: c("img")},
		{name: "qcow2 shrink unaligned", setup: images, args: c("resize", "--shrink", "img", "1000")},
		{name: "qcow2 shrink preallocated", setup: images, args: c("resize", "--shrink", "--preallocation=full", "img", "512k")},
		{name: "qcow2 shrink many refblocks", setup: [][]string{c("create", "-q", "-f", "qcow2", "-o", "cluster_size=512", "img", "16M")},
			shell: "qemu-io -f qcow2 -c 'write -P 1 0 512k' -c 'write -P 2 10M 1M' img", args: c("resize", "--shrink", "img", "100k"), files: c("img")},
		{name: "qcow2 shrink compressed", setup: [][]string{c("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", "img", "64M")},
			shell: "qemu-io -f qcow2 -c 'write -P 1 0 1M' -c 'write -c -P 3 60M 4k' img", args: c("resize", "--shrink", "img", "1M"), files: c("img")},
		{name: "qcow2 shrink extended l2", setup: [][]string{c("create", "-q", "-f", "qcow2", "-o", "extended_l2=on", "img", "64M")},
			shell: "qemu-io -f qcow2 -c 'write -P 1 0 1M' -c 'write -P 2 30M 3M' img", args: c("resize", "--shrink", "img", "30000k"), files: c("img")},
		{name: "qcow2 shrink data file", setup: [][]string{c("create", "-q", "-f", "qcow2", "-o", "data_file=d.raw", "img", "64M")},
			shell: "qemu-io -f qcow2 -c 'write -P 1 0 1M' -c 'write -P 2 30M 3M' img", args: c("resize", "--shrink", "img", "20M"), files: c("img", "d.raw")},
		{name: "qcow2 grow data file raw", setup: [][]string{c("create", "-q", "-f", "qcow2", "-o", "data_file=d.raw,data_file_raw=on", "img", "1M")},
			args: c("resize", "img", "10M"), files: c("img", "d.raw")},
		{name: "qcow2 shrink with snapshot", setup: images, shell: data + " && qemu-img snapshot -c s img && qemu-io -f qcow2 -c 'write -P 5 512k 512k' img",
			args: c("resize", "--shrink", "img", "256k"), fixup: zeroDates("img"), files: c("img"), checkOf: c("img")},
		{name: "qcow2 grow with snapshot", setup: images, shell: "qemu-img snapshot -c s img",
			args: c("resize", "img", "10M"), fixup: zeroDates("img"), files: c("img")},
		{name: "qcow2 v2 with snapshot", setup: [][]string{c("create", "-q", "-f", "qcow2", "-o", "compat=0.10", "img", "1M")},
			shell: "qemu-img snapshot -c s img", args: c("resize", "img", "10M")},
		{name: "qcow2 too big", setup: images, args: c("resize", "img", "7E")},
		{name: "qcow2 beyond int64", setup: images, args: c("resize", "img", "9E")},
		{name: "qcow2 zero", setup: images, args: c("resize", "img", "0")},
		{name: "qcow2 negative", setup: images, args: c("resize", "img", "-2M")},
		{name: "qcow2 negative after --", setup: images, args: c("resize", "img", "--", "-1M")},
		{name: "qcow2 overflowing relative", setup: images, args: c("resize", "img", "+9223372036854775807")},
		{name: "bad size", setup: images, args: c("resize", "img", "abc")},
		{name: "size out of range", setup: images, args: c("resize", "img", "99999999999999999999")},
		{name: "bad preallocation", setup: images, args: c("resize", "--preallocation=bogus", "img", "2M")},
		{name: "empty preallocation", setup: images, args: c("resize", "--preallocation=", "img", "2M")},
		{name: "force share", setup: images, args: c("resize", "-U", "img", "2M")},
		{name: "not enough arguments", args: c("resize", "img")},
		{name: "no arguments", args: c("resize")},
		{name: "extra argument", setup: images, args: c("resize", "img", "1M", "extra")},
		{name: "missing file", args: c("resize", "nonexist", "1M")},
		{name: "image-opts and format", setup: images, args: c("resize", "--image-opts", "-f", "qcow2", "img", "3M")},
		{name: "missing preallocation argument", setup: images, args: c("resize", "img", "--preallocation")},
	}
	for _, p := range []string{"off", "metadata", "falloc", "full"} {
		for _, o := range []string{"", ",extended_l2=on", ",compat=0.10"} {
			cases = append(cases, diffCase{
				name: "grow over backing " + p + o,
				setup: [][]string{
					c("create", "-q", "-f", "qcow2", "base", "64M"),
					c("create", "-q", "-f", "qcow2", "-o", "backing_file=base,backing_fmt=qcow2"+o, "img", "1000k"),
				},
				shell: "qemu-io -f qcow2 -c 'write -P 1 0 64M' base && qemu-io -f qcow2 -c 'write -P 2 0 4k' img",
				args:  c("resize", "--preallocation="+p, "img", "30M"),
				files: c("img"),
			})
		}
	}
	for _, p := range []string{"metadata", "falloc", "full"} {
		cases = append(cases, diffCase{name: "qcow2 grow " + p, setup: images, shell: data,
			args: c("resize", "--preallocation="+p, "img", "5M"), files: c("img")})
	}
	runDiffCases(t, cases)
}
