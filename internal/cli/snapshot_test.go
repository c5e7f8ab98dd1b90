package cli

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qimg/qimg/internal/oracle"
)

// premadeImages runs qemu-img (and "qemu-io" steps) once for a test, to
// make images whose snapshots carry dates: the cases copy them with cp, so
// that both tools see the same files.
func premadeImages(t *testing.T, steps ...[]string) {
	t.Helper()
	for _, s := range steps {
		if s[0] == "qemu-io" {
			oracle.MustQemuIO(t, s[1:]...)
			continue
		}
		oracle.MustQemuImg(t, s...)
	}
}

// zeroDates clears the snapshot dates of the qcow2 files of a case's
// directory that have snapshots.
func zeroDates(names ...string) func(t *testing.T, dir string) {
	return func(t *testing.T, dir string) {
		for _, n := range names {
			oracle.ZeroSnapshotDates(t, filepath.Join(dir, n))
		}
	}
}

func TestInteropSnapshot(t *testing.T) {
	c := func(args ...string) []string { return args }
	pre := t.TempDir()
	p := func(name string) string { return filepath.Join(pre, name) }
	long := strings.Repeat("n", 300)
	premadeImages(t,
		c("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", p("sn.qcow2"), "4M"),
		c("qemu-io", "-f", "qcow2", "-c", "write -P 1 0 64k", p("sn.qcow2")),
		c("snapshot", "-c", "one", p("sn.qcow2")),
		c("qemu-io", "-f", "qcow2", "-c", "write -P 2 32k 64k", p("sn.qcow2")),
		c("snapshot", "-c", "a rather long snapshot name", p("sn.qcow2")),
		c("snapshot", "-c", "héhé", p("sn.qcow2")),
		c("snapshot", "-c", long, p("sn.qcow2")),
		c("qemu-io", "-f", "qcow2", "-c", "write -P 3 1M 4k", p("sn.qcow2")),
		c("create", "-q", "-f", "qcow2", "-o", "compat=0.10", p("v2.qcow2"), "4M"),
		c("qemu-io", "-f", "qcow2", "-c", "write -P 1 0 64k", p("v2.qcow2")),
		c("snapshot", "-c", "old", p("v2.qcow2")),
		c("qemu-io", "-f", "qcow2", "-c", "write -P 2 0 4k", p("v2.qcow2")),
		c("create", "-q", "-f", "qcow2", p("grown.qcow2"), "1M"),
		c("qemu-io", "-f", "qcow2", "-c", "write -P 1 1020k 4k", p("grown.qcow2")),
		c("snapshot", "-c", "small", p("grown.qcow2")),
		c("resize", "-q", p("grown.qcow2"), "3M"),
		c("qemu-io", "-f", "qcow2", "-c", "write -P 2 2M 64k", p("grown.qcow2")),
		c("create", "-q", "-f", "qcow2", p("bm.qcow2"), "4M"),
		c("qemu-io", "-f", "qcow2", "-c", "write -P 1 0 64k", p("bm.qcow2")),
		c("bitmap", "--add", p("bm.qcow2"), "b0"),
		c("snapshot", "-c", "s", p("bm.qcow2")),
	)
	badL1 := p("bad.qcow2")
	oracle.CopyFile(t, p("sn.qcow2"), badL1)
	corruptFirstSnapshotL1(t, badL1)

	cp := func(names ...string) string {
		var s []string
		for _, n := range names {
			s = append(s, "cp "+p(n)+" .")
		}
		return strings.Join(s, " && ")
	}
	fresh := [][]string{
		c("create", "-q", "-f", "qcow2", "img", "4M"),
		c("create", "-q", "-f", "raw", "r", "1M"),
		c("create", "-q", "-f", "qcow2", "-o", "data_file=d.raw", "df", "1M"),
	}
	withData := "qemu-io -f qcow2 -c 'write -P 7 0 100k' -c 'write -z 200k 64k' img"
	snapFiles := zeroDates("sn.qcow2")
	cases := []diffCase{
		{name: "list", shell: cp("sn.qcow2"), args: c("snapshot", "-l", "sn.qcow2")},
		{name: "list after file", shell: cp("sn.qcow2"), args: c("snapshot", "sn.qcow2", "-l")},
		{name: "list force share", shell: cp("sn.qcow2"), args: c("snapshot", "-U", "-l", "sn.qcow2")},
		{name: "list image-opts", shell: cp("sn.qcow2"), args: c("snapshot", "--image-opts", "-l", "driver=qcow2,file.filename=sn.qcow2")},
		{name: "list none", setup: fresh, args: c("snapshot", "-l", "img")},
		{name: "list raw", setup: fresh, args: c("snapshot", "-l", "r")},
		{name: "list data file", setup: fresh, args: c("snapshot", "-l", "df")},
		{name: "info lists", shell: cp("sn.qcow2"), args: c("info", "sn.qcow2")},
		{name: "info json lists", shell: cp("sn.qcow2"), args: c("info", "--output=json", "sn.qcow2")},
		{name: "list v2", shell: cp("v2.qcow2"), args: c("snapshot", "-l", "v2.qcow2")},

		{name: "create", setup: fresh, shell: withData, args: c("snapshot", "-c", "s1", "img"),
			fixup: zeroDates("img"), files: c("img"), infoOf: c("img"), checkOf: c("img")},
		{name: "create quiet", setup: fresh, args: c("snapshot", "-q", "-c", "s1", "img"),
			fixup: zeroDates("img"), files: c("img")},
		{name: "create duplicate name", shell: cp("sn.qcow2"), args: c("snapshot", "-c", "one", "sn.qcow2"),
			fixup: snapFiles, files: c("sn.qcow2"), infoOf: c("sn.qcow2")},
		{name: "create long name", setup: fresh, args: c("snapshot", "-c", long, "img"),
			fixup: zeroDates("img"), files: c("img"), infoOf: c("img")},
		{name: "create v2", shell: cp("v2.qcow2"), args: c("snapshot", "-c", "new", "v2.qcow2"),
			fixup: zeroDates("v2.qcow2"), files: c("v2.qcow2")},
		{name: "create with backing", setup: [][]string{
			c("create", "-q", "-f", "qcow2", "base", "4M"),
			c("create", "-q", "-f", "qcow2", "-b", "base", "-F", "qcow2", "img", "4M"),
		}, shell: "qemu-io -f qcow2 -c 'write -P 5 0 1M' base && " + withData,
			args: c("snapshot", "-c", "s", "img"), fixup: zeroDates("img"), files: c("img", "base")},
		{name: "create extended l2", setup: [][]string{c("create", "-q", "-f", "qcow2", "-o", "extended_l2=on", "img", "4M")},
			shell: withData, args: c("snapshot", "-c", "s", "img"), fixup: zeroDates("img"), files: c("img")},
		{name: "create with bitmaps", shell: cp("bm.qcow2"), args: c("snapshot", "-c", "t", "bm.qcow2"),
			checkOf: c("bm.qcow2"), compareOf: c("bm.qcow2")},
		{name: "create raw", setup: fresh, args: c("snapshot", "-c", "x", "r")},
		{name: "create data file", setup: fresh, args: c("snapshot", "-c", "x", "df"), files: c("df")},

		{name: "apply by name", shell: cp("sn.qcow2"), args: c("snapshot", "-a", "one", "sn.qcow2"),
			fixup: snapFiles, files: c("sn.qcow2"), checkOf: c("sn.qcow2")},
		{name: "apply by id", shell: cp("sn.qcow2"), args: c("snapshot", "-a", "2", "sn.qcow2"),
			fixup: snapFiles, files: c("sn.qcow2")},
		{name: "apply unicode name", shell: cp("sn.qcow2"), args: c("snapshot", "-a", "héhé", "sn.qcow2"),
			fixup: snapFiles, files: c("sn.qcow2")},
		{name: "apply missing", shell: cp("sn.qcow2"), args: c("snapshot", "-a", "nope", "sn.qcow2")},
		{name: "apply other size", shell: cp("grown.qcow2"), args: c("snapshot", "-a", "small", "grown.qcow2"),
			fixup: zeroDates("grown.qcow2"), files: c("grown.qcow2"), infoOf: c("grown.qcow2")},
		{name: "apply v2", shell: cp("v2.qcow2"), args: c("snapshot", "-a", "old", "v2.qcow2"),
			fixup: zeroDates("v2.qcow2"), files: c("v2.qcow2")},
		{name: "apply with bitmaps", shell: cp("bm.qcow2"), args: c("snapshot", "-a", "s", "bm.qcow2")},
		{name: "apply raw", setup: fresh, args: c("snapshot", "-a", "x", "r")},
		{name: "apply data file", setup: fresh, args: c("snapshot", "-a", "x", "df")},
		{name: "apply bad L1 table", shell: cp("bad.qcow2"), args: c("snapshot", "-a", "one", "bad.qcow2")},
		{name: "apply force share", shell: cp("sn.qcow2"), args: c("snapshot", "-U", "-a", "one", "sn.qcow2")},

		{name: "delete", shell: cp("sn.qcow2"), args: c("snapshot", "-d", "one", "sn.qcow2"),
			fixup: snapFiles, files: c("sn.qcow2"), infoOf: c("sn.qcow2"), checkOf: c("sn.qcow2")},
		{name: "delete last", shell: cp("sn.qcow2"), args: c("snapshot", "-d", long[:255], "sn.qcow2"),
			fixup: snapFiles, files: c("sn.qcow2")},
		{name: "delete by id", shell: cp("sn.qcow2"), args: c("snapshot", "-d", "1", "sn.qcow2")},
		{name: "delete missing", shell: cp("sn.qcow2"), args: c("snapshot", "-d", "nope", "sn.qcow2")},
		{name: "delete with bitmaps", shell: cp("bm.qcow2"), args: c("snapshot", "-d", "s", "bm.qcow2"),
			checkOf: c("bm.qcow2"), compareOf: c("bm.qcow2")},
		{name: "delete raw", setup: fresh, args: c("snapshot", "-d", "x", "r")},
		{name: "delete data file", setup: fresh, args: c("snapshot", "-d", "x", "df")},
		{name: "delete bad L1 table", shell: cp("bad.qcow2"), args: c("snapshot", "-d", "one", "bad.qcow2")},

		{name: "no action", setup: fresh, args: c("snapshot", "img"), files: c("img")},
		{name: "mixed actions", setup: fresh, args: c("snapshot", "-l", "-c", "x", "img")},
		{name: "list twice", setup: fresh, args: c("snapshot", "-l", "-l", "img")},
		{name: "missing argument", setup: fresh, args: c("snapshot", "img", "-c")},
		{name: "no file", args: c("snapshot", "-l")},
		{name: "two files", setup: fresh, args: c("snapshot", "-l", "img", "r")},
		{name: "format option", setup: fresh, args: c("snapshot", "-f", "qcow2", "-l", "img")},
		{name: "missing file", args: c("snapshot", "-l", "nonexist")},

		{name: "convert snapshot by name", shell: cp("sn.qcow2"), args: c("convert", "-l", "one", "-O", "raw", "sn.qcow2", "out"), files: c("out")},
		{name: "convert snapshot by id", shell: cp("sn.qcow2"), args: c("convert", "-l", "2", "-O", "qcow2", "sn.qcow2", "out"), files: c("out")},
		{name: "convert snapshot options", shell: cp("sn.qcow2"), args: c("convert", "-l", "snapshot.id=1,snapshot.name=one", "-O", "raw", "sn.qcow2", "out"), files: c("out")},
		{name: "convert snapshot id option", shell: cp("sn.qcow2"), args: c("convert", "-l", "snapshot.id=3", "-O", "raw", "sn.qcow2", "out"), files: c("out")},
		{name: "convert snapshot wrong pair", shell: cp("sn.qcow2"), args: c("convert", "-l", "snapshot.id=2,snapshot.name=one", "-O", "raw", "sn.qcow2", "out")},
		{name: "convert snapshot missing", shell: cp("sn.qcow2"), args: c("convert", "-l", "nope", "-O", "raw", "sn.qcow2", "out")},
		{name: "convert snapshot other size", shell: cp("grown.qcow2"), args: c("convert", "-l", "small", "-O", "raw", "grown.qcow2", "out"), files: c("out")},
		{name: "convert snapshot bad L1 table", shell: cp("bad.qcow2"), args: c("convert", "-l", "one", "-O", "raw", "bad.qcow2", "out")},
		{name: "convert -s is gone", shell: cp("sn.qcow2"), args: c("convert", "-s", "one", "-O", "raw", "sn.qcow2", "out")},
		{name: "convert snapshot raw", setup: fresh, args: c("convert", "-l", "x", "-O", "raw", "r", "out")},
	}
	runDiffCases(t, cases)
}

// corruptFirstSnapshotL1 makes the first snapshot's L1 table offset
// unaligned.
func corruptFirstSnapshotL1(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	off := binary.BigEndian.Uint64(b[64:])
	binary.BigEndian.PutUint64(b[off:], binary.BigEndian.Uint64(b[off:])+8)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
