package cli

import (
	"testing"
)

// TestInteropMap compares `map` with qemu-img's, human and JSON, on images
// of every kind qemu-img 7.2 makes, and its option handling and errors.
func TestInteropMap(t *testing.T) {
	c := func(args ...string) []string { return args }
	images := sh(
		// raw: sparse, dense, an odd length, empty.
		"qemu-img create -q -f raw sparse.raw 4M",
		qio("sparse.raw", "raw", "write -P 1 64k 64k", "write -P 2 1M 4k", "write -P 3 3M 1M"),
		"head -c 1M /dev/urandom > dense.raw",
		"head -c 1000 /dev/urandom > odd.raw",
		": > empty.raw",
		// qcow2: data, zero clusters with and without a host cluster,
		// a discard, a compressed cluster, clusters written in reverse.
		"qemu-img create -q -f qcow2 a.qcow2 8M",
		qio("a.qcow2", "qcow2", "write -P 1 0 128k", "write -P 2 1M 64k", "write -z 1M 64k",
			"write -P 3 2M 192k", "write -z -u 2M 64k", "discard 2112k 64k", "write -c -P 4 4M 64k",
			"write -P 5 6M 64k", "write -P 6 5M 64k", "write -P 7 7M 1k"),
		// A chain: a short base, a middle and a top, with data at every level.
		"qemu-img create -q -f qcow2 base.qcow2 2M",
		qio("base.qcow2", "qcow2", "write -P 1 0 1M"),
		"qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2 4M",
		qio("mid.qcow2", "qcow2", "write -P 2 512k 64k", "write -z 768k 64k", "write -P 2 3M 64k"),
		"qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 6M",
		qio("top.qcow2", "qcow2", "write -P 3 0 64k", "write -P 3 5M 64k"),
		// A raw base under a qcow2 overlay.
		"qemu-img create -q -f qcow2 -b sparse.raw -F raw over.qcow2",
		qio("over.qcow2", "qcow2", "write -P 9 1M 64k"),
		// Subclusters, an external data file, a raw data file, version 2,
		// metadata preallocation, small clusters.
		"qemu-img create -q -f qcow2 -o extended_l2=on ext.qcow2 4M",
		qio("ext.qcow2", "qcow2", "write -P 1 0 4k", "write -P 1 40k 8k", "write -z 64k 32k"),
		"qemu-img create -q -f qcow2 -o data_file=d.raw df.qcow2 4M",
		qio("df.qcow2", "qcow2", "write -P 1 0 64k", "write -P 2 2M 128k"),
		"qemu-img create -q -f qcow2 -o data_file=dr.raw,data_file_raw=on dfr.qcow2 4M",
		qio("dfr.qcow2", "qcow2", "write -P 1 1M 64k"),
		"qemu-img create -q -f qcow2 -o compat=0.10 v2.qcow2 4M",
		qio("v2.qcow2", "qcow2", "write -P 1 0 64k", "write -z 1M 64k"),
		"qemu-img create -q -f qcow2 -o preallocation=metadata pm.qcow2 4M",
		qio("pm.qcow2", "qcow2", "write -P 1 1M 64k"),
		"qemu-img create -q -f qcow2 -o cluster_size=512 small.qcow2 1M",
		qio("small.qcow2", "qcow2", "write -P 1 0 3k", "write -P 2 10k 1k", "write -P 3 5k 1k"),
		"qemu-img create -q -f qcow2 s.qcow2 4M",
		qio("s.qcow2", "qcow2", "write -P 1 0 64k"),
		"qemu-img snapshot -c snap s.qcow2",
		qio("s.qcow2", "qcow2", "write -P 2 0 64k"),
	)
	var cases []diffCase
	for _, f := range []string{"sparse.raw", "dense.raw", "odd.raw", "empty.raw", "a.qcow2", "base.qcow2", "mid.qcow2",
		"top.qcow2", "over.qcow2", "ext.qcow2", "df.qcow2", "dfr.qcow2", "v2.qcow2", "pm.qcow2", "small.qcow2", "s.qcow2"} {
		cases = append(cases,
			diffCase{name: f + " human", shell: images, args: c("map", f)},
			diffCase{name: f + " json", shell: images, args: c("map", "--output=json", f)})
	}
	cases = append(cases,
		diffCase{name: "raw probed as -f", shell: images, args: c("map", "-f", "raw", "a.qcow2")},
		diffCase{name: "file format", shell: images, args: c("map", "-f", "file", "--output", "json", "sparse.raw")},
		diffCase{name: "image-opts", shell: images, args: c("map", "--image-opts", "driver=qcow2,file.filename=top.qcow2")},
		diffCase{name: "image-opts offset", shell: images, args: c("map", "--output=json", "--image-opts", "driver=raw,offset=64k,file.filename=sparse.raw")},
		diffCase{name: "force share", shell: images, args: c("map", "-U", "top.qcow2")},
		diffCase{name: "start offset", shell: images, args: c("map", "--start-offset=1M", "--output=json", "top.qcow2")},
		diffCase{name: "start offset unaligned", shell: images, args: c("map", "-s", "1000", "--output=json", "a.qcow2")},
		diffCase{name: "max length", shell: images, args: c("map", "--max-length", "700k", "--output=json", "a.qcow2")},
		diffCase{name: "start and length", shell: images, args: c("map", "-s", "64k", "-l", "1M", "a.qcow2")},
		diffCase{name: "start at the end", shell: images, args: c("map", "-s", "8M", "--output=json", "a.qcow2")},
		diffCase{name: "start beyond the end", shell: images, args: c("map", "-s", "1G", "a.qcow2")},
		diffCase{name: "start beyond the end json", shell: images, args: c("map", "-s", "1G", "--output=json", "a.qcow2")},
		diffCase{name: "zero max length", shell: images, args: c("map", "-l", "0", "--output=json", "a.qcow2")},
		diffCase{name: "lengths that wrap", shell: images, args: c("map", "-s", "1M", "-l", "9223372036854775807", "--output=json", "a.qcow2")},
		diffCase{name: "bad start offset", shell: images, args: c("map", "-s", "x", "a.qcow2")},
		diffCase{name: "negative start offset", shell: images, args: c("map", "-s", "-1", "a.qcow2")},
		diffCase{name: "bad max length", shell: images, args: c("map", "--max-length=1Q", "a.qcow2")},
		diffCase{name: "bad output", shell: images, args: c("map", "--output=xml", "a.qcow2")},
		diffCase{name: "bad output before missing file", args: c("map", "--output=xml", "nonexist")},
		diffCase{name: "missing file", args: c("map", "nonexist")},
		diffCase{name: "no file", args: c("map")},
		diffCase{name: "two files", shell: images, args: c("map", "a.qcow2", "top.qcow2")},
		diffCase{name: "options after the file", shell: images, args: c("map", "a.qcow2", "--output=json", "-l", "1M")},
		diffCase{name: "unknown option", args: c("map", "--bogus", "x")},
		diffCase{name: "missing argument", args: c("map", "x", "-s")},
		diffCase{name: "missing backing file", shell: "qemu-img create -q -f qcow2 -u -b gone.qcow2 -F qcow2 o.qcow2 1M",
			args: c("map", "o.qcow2")},
		diffCase{name: "unknown format", shell: images, args: c("map", "-f", "bogus", "a.qcow2")},
	)
	runDiffCases(t, cases)
}
