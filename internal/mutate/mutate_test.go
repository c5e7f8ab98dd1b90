package mutate

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/klauspost/compress/flate"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/block/qcow2"
	"github.com/qimg/qimg/internal/drivers"
	"github.com/qimg/qimg/internal/oracle"
	"github.com/qimg/qimg/storage"
)

var testTarget = Target{Secret: "/host/dir/secret.img", NetAddr: "127.0.0.1:10809", Seed: 1}

// digest hashes a case's files.
func digest(c *Case) [32]byte { return digestFiles(c.Files) }

func TestGenerate(t *testing.T) {
	r := NewRegistry()
	if got := r.Names(); !slices.Equal(got, []string{"qcow2", "raw"}) {
		t.Errorf("formats %v", got)
	}
	a, err := r.Generate(testTarget)
	if err != nil {
		t.Fatal(err)
	}
	b, err := r.Generate(testTarget)
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != len(b) || len(a) < 500 {
		t.Fatalf("%d and %d cases", len(a), len(b))
	}
	names := map[string]bool{}
	content := map[[32]byte]string{}
	for i := range a {
		c := &a[i]
		if c.Name != b[i].Name || digest(c) != digest(&b[i]) {
			t.Fatalf("case %d differs between runs: %s, %s", i, c.Name, b[i].Name)
		}
		if names[c.Name] {
			t.Errorf("duplicate name %s", c.Name)
		}
		names[c.Name] = true
		if _, ok := c.Files[c.Main]; !ok {
			t.Errorf("%s: no main file %s", c.Name, c.Main)
		}
		if !strings.HasPrefix(c.Name, c.Format+"/") {
			t.Errorf("%s: format %s", c.Name, c.Format)
		}
		// A mutation that changes nothing is a valid image under
		// another name.
		if d := digest(c); content[d] != "" {
			t.Errorf("%s has the same files as %s", c.Name, content[d])
		} else {
			content[d] = c.Name
		}
	}
	for _, want := range []string{
		"qcow2/v3/valid", "qcow2/v3/backing-absolute-secret", "qcow2/v3/data-file-json-file",
		"qcow2/v3/backing-raw-symlink-to-secret", "qcow2/v3/loop-pair", "qcow2/v3/chain-depth-40",
		"qcow2/zstd/compressed-zstd-rle-bomb", "qcow2/v3/compressed-deflate-bomb", "qcow2/v3/huge-l1-32MiB-8TiB",
		"raw/small/disguise-qcow2-backing-secret", "raw/sparse-1t/valid",
	} {
		if !names[want] {
			t.Errorf("no case %s", want)
		}
	}
}

func TestSample(t *testing.T) {
	r := NewRegistry()
	all, err := r.Generate(testTarget)
	if err != nil {
		t.Fatal(err)
	}
	st := testTarget
	st.Sample = 3
	some, err := r.Generate(st)
	if err != nil {
		t.Fatal(err)
	}
	if len(some) >= len(all)*2/3 || len(some) < len(all)/5 {
		t.Errorf("Sample 3 keeps %d of %d cases", len(some), len(all))
	}
	kept := map[string]bool{}
	for _, c := range some {
		kept[c.Name] = true
	}
	for _, c := range all {
		essential := c.Named != "" || strings.HasSuffix(c.Name, "/valid") || strings.Contains(c.Name, "/compressed-") ||
			strings.Contains(c.Name, "/huge-") || strings.Contains(c.Name, "/loop-")
		if essential && !kept[c.Name] {
			t.Errorf("Sample dropped essential case %s", c.Name)
		}
	}
}

// memCase puts a case's files (those held in memory whole) into an
// in-memory file system.
func memCase(t *testing.T, c *Case) *storage.MemFS {
	t.Helper()
	fs := storage.NewMemFS()
	for name, f := range c.Files {
		if f.Link != "" || f.FIFO || f.Dir {
			continue
		}
		w, err := fs.Create(name, storage.OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		w.WriteAt(f.Data, 0)
		for _, ch := range f.Chunks {
			w.WriteAt(ch.Data, ch.Off)
		}
		if f.Size > 0 {
			w.Truncate(max(f.Size, int64(len(f.Data))))
		}
		w.Close()
	}
	return fs
}

// TestBasesOpen opens every valid base, with the files it names, through
// the block layer and reads all of it.
func TestBasesOpen(t *testing.T) {
	cases, err := NewRegistry().Generate(Target{Secret: "/x", NetAddr: "127.0.0.1:1", Sample: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	for i := range cases {
		c := &cases[i]
		if !strings.HasSuffix(c.Name, "/valid") || c.Name == "raw/sparse-1t/valid" {
			continue
		}
		env := &block.Env{Registry: drivers.Registry(), Files: memCase(t, c)}
		n, err := env.Open(c.Main, block.OpenOptions{})
		if err != nil {
			t.Errorf("%s: %v", c.Name, err)
			continue
		}
		if n.Driver.Name() != c.Format {
			t.Errorf("%s: opened as %s", c.Name, n.Driver.Name())
		}
		buf := make([]byte, n.Size())
		if _, err := n.ReadAt(buf, 0); err != nil {
			t.Errorf("%s: read: %v", c.Name, err)
		}
		n.Close()
	}
}

// TestBasesPassQemuCheck checks the qcow2 bases with the real qemu-img:
// the mutations start from images QEMU finds clean (all but the one left
// dirty on purpose).
func TestBasesPassQemuCheck(t *testing.T) {
	oracle.QemuImgPath(t)
	bases, err := qcow2Format().Bases()
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bases {
		if b.Name == "dirty" {
			continue
		}
		dir := t.TempDir()
		c := Case{Name: b.Name, Main: b.Main, Files: b.Files}
		if err := c.Write(dir); err != nil {
			t.Fatal(err)
		}
		// QEMU opens a data file relative to the working directory.
		if r := oracle.QemuImgIn(t, dir, "check", b.Main); r.Code != 0 {
			t.Errorf("qemu-img check %s: %s", b.Name, r)
		}
	}
}

// TestEmbed checks that the names the generator embeds are the names
// qimg's qcow2 driver reads back.
func TestEmbed(t *testing.T) {
	bases, err := qcow2Format().Bases()
	if err != nil {
		t.Fatal(err)
	}
	var v3 Base
	for _, b := range bases {
		if b.Name == "v3" {
			v3 = b
		}
	}
	long := strings.Repeat("d/", 511) + "x"
	for _, name := range []string{"back.img", testTarget.Secret, long, `json:{"file":{"driver":"file"}}`} {
		for _, mode := range []struct {
			format   string
			dataFile bool
		}{{"", false}, {"raw", false}, {"", true}} {
			b, err := q2Embed(v3.clone(), name, mode.format, mode.dataFile)
			if err != nil {
				t.Fatalf("%q: %v", name, err)
			}
			data := b.Files[b.Main].Data
			h, err := qcow2.DecodeHeader(data)
			if err != nil {
				t.Fatal(err)
			}
			x, err := qcow2.ParseExtensions(data[:4096], h)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case mode.dataFile:
				if !x.HasDataFile || x.DataFile != name || h.IncompatibleFeatures&4 == 0 || h.BackingFileOffset != 0 {
					t.Errorf("data file %q: %+v %+v", name, h, x)
				}
			default:
				got := string(data[h.BackingFileOffset : h.BackingFileOffset+uint64(h.BackingFileSize)])
				if got != name || x.BackingFormat != mode.format {
					t.Errorf("backing %q (%s): got %q (%s)", name, mode.format, got, x.BackingFormat)
				}
			}
		}
	}
}

// TestBombs checks that the decompression bombs are bombs: far more output
// than a cluster from a stream a descriptor can describe.
func TestBombs(t *testing.T) {
	const cluster = 4096
	d := deflateBomb(1000 * cluster)
	if len(d) > 2*cluster-512 {
		t.Errorf("deflate bomb of %d bytes does not fit a descriptor", len(d))
	}
	n, err := io.Copy(io.Discard, flate.NewReader(bytes.NewReader(d)))
	if err != nil || n != 1000*cluster {
		t.Errorf("deflate bomb inflates to %d, %v", n, err)
	}
	z := zstdRLEBomb(64<<20, 23)
	if len(z) > 2*cluster-512 || !bytes.HasPrefix(z, []byte{0x28, 0xb5, 0x2f, 0xfd}) {
		t.Errorf("zstd bomb of %d bytes", len(z))
	}
}

// TestWrite writes a case with links, pipes, holes and chunks.
func TestWrite(t *testing.T) {
	dir := t.TempDir()
	c := Case{Name: "x", Main: "a", Files: map[string]File{
		"a":       {Data: []byte("abc"), Chunks: []Chunk{{Off: 1 << 20, Data: []byte("z")}}, Size: 2 << 20},
		"l":       {Link: "a"},
		"p":       {FIFO: true},
		"d":       {Dir: true},
		"d/inner": {Data: []byte("i")},
	}}
	if err := c.Write(dir); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "l"))
	if err != nil || len(b) != 2<<20 || string(b[:3]) != "abc" || b[1<<20] != 'z' {
		t.Errorf("a: %d bytes, %v", len(b), err)
	}
	if fi, err := os.Lstat(filepath.Join(dir, "p")); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		t.Errorf("p: %v %v", fi, err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "d", "inner")); err != nil || string(b) != "i" {
		t.Errorf("d/inner: %q %v", b, err)
	}
	if _, ok := c.MainBytes(); ok {
		t.Error("MainBytes of a file with chunks")
	}
}
