package raw_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"syscall"
	"testing"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/block/raw"
	"github.com/qimg/qimg/storage"
)

// qcow2Prober probes like QEMU's qcow2 driver (magic and version 2 or 3)
// and opens nothing: it makes a registry in which a raw image's first
// sector can turn it into "another format".
type qcow2Prober struct{}

func (qcow2Prober) Name() string { return "qcow2" }

func (qcow2Prober) Probe(p *block.ProbeInput) int {
	if len(p.Header) >= 8 && string(p.Header[:4]) == "QFI\xfb" {
		if v := binary.BigEndian.Uint32(p.Header[4:]); v == 2 || v == 3 {
			return 100
		}
	}
	return 0
}

func (qcow2Prober) Open(storage.File, *block.DriverOptions) (block.Image, error) {
	return nil, block.ErrUnsupported
}

var qcow2Magic = []byte("QFI\xfb\x00\x00\x00\x03")

// memEnv returns an environment over a MemFS holding the named files, with
// warnings going to the returned buffer.
func memEnv(files map[string][]byte) (*block.Env, *storage.MemFS, *bytes.Buffer) {
	fs := storage.NewMemFS()
	for name, content := range files {
		f := storage.NewMemFile(name)
		f.WriteAt(content, 0)
		fs.Put(name, f)
	}
	var stderr bytes.Buffer
	env := &block.Env{Registry: block.NewRegistry(raw.New(), qcow2Prober{}), Files: fs, Stderr: &stderr, Prog: "qemu-img"}
	return env, fs, &stderr
}

func mustOpen(t *testing.T, env *block.Env, name string, o block.OpenOptions) *block.Node {
	t.Helper()
	n, err := env.Open(name, o)
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

func TestCreateSizes(t *testing.T) {
	tests := []struct {
		size, want int64
	}{
		{0, 0}, {1, 512}, {511, 512}, {512, 512}, {513, 1024}, {1000, 1024},
		{1 << 20, 1 << 20}, {3 << 29, 3 << 29}, {1 << 40, 1 << 40}, {1<<40 + 1, 1<<40 + 512},
	}
	for _, prealloc := range []string{"", "off", "falloc", "full"} {
		for _, tc := range tests {
			if prealloc == "full" && tc.size > 1<<20 {
				continue // writes every byte
			}
			env, fs, _ := memEnv(nil)
			opts := ""
			if prealloc != "" {
				opts = "preallocation=" + prealloc
			}
			if err := env.Create(block.CreateParams{Filename: "x", Format: "raw", Size: tc.size, Options: opts}); err != nil {
				t.Fatalf("create %d %q: %v", tc.size, prealloc, err)
			}
			f := fs.File("x")
			got, _ := f.Size()
			if got != tc.want {
				t.Errorf("create %d %q: file size %d, want %d", tc.size, prealloc, got, tc.want)
			}
			alloc, _ := f.AllocatedSize()
			switch {
			case tc.want == 0 && alloc != 0:
				t.Errorf("create %d %q: allocated %d", tc.size, prealloc, alloc)
			case prealloc == "full" && alloc < tc.want:
				t.Errorf("create %d full: allocated %d", tc.size, alloc)
			case prealloc != "full" && tc.want > 0 && alloc != 64<<10:
				// Only the first block is written (a MemFile allocates 64 KiB chunks).
				t.Errorf("create %d %q: allocated %d", tc.size, prealloc, alloc)
			}
			n := mustOpen(t, env, "x", block.OpenOptions{Format: "raw"})
			if n.Size() != tc.want {
				t.Errorf("create %d %q: image size %d", tc.size, prealloc, n.Size())
			}
		}
	}
}

func TestCreateErrors(t *testing.T) {
	tests := []struct {
		opts string
		size int64
		want string
	}{
		{"preallocation=metadata", 1 << 20, "Unsupported preallocation mode: metadata"},
		{"preallocation=bogus", 1 << 20, "invalid parameter value: bogus"},
		{"preallocation=Full", 1 << 20, "invalid parameter value: Full"},
		{"cluster_size=4096", 1 << 20, "Invalid parameter 'cluster_size'"},
		{"", -1, "Image creation needs a size parameter"},
		{"extent_size_hint=5G", 1 << 20, "Extent size hint is too large"},
	}
	for _, tc := range tests {
		env, _, _ := memEnv(nil)
		err := env.Create(block.CreateParams{Filename: "x", Format: "raw", Size: tc.size, Options: tc.opts})
		if err == nil || err.Error() != tc.want {
			t.Errorf("create -o %q: %v, want %q", tc.opts, err, tc.want)
		}
	}
	specs := raw.New().CreateSpecs()
	if len(specs) != 1 || specs[0].Name != "size" || specs[0].Type != block.OptSize {
		t.Errorf("CreateSpecs = %v", specs)
	}
}

func TestOddFileSize(t *testing.T) {
	// A file that ends inside a sector is seen in whole sectors: the tail
	// reads as zeroes and is reported as such, as QEMU does.
	content := bytes.Repeat([]byte{7}, 1000)
	env, fs, _ := memEnv(map[string][]byte{"odd": content})
	n := mustOpen(t, env, "odd", block.OpenOptions{Format: "raw", Write: true})
	if n.Size() != 1024 {
		t.Fatalf("size %d, want 1024", n.Size())
	}
	buf := make([]byte, 1024)
	if _, err := n.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf[:1000], content) || !bytes.Equal(buf[1000:], make([]byte, 24)) {
		t.Error("padded read differs")
	}
	ext, err := n.BlockStatus(1000, 24)
	if err != nil || ext.Length != 24 || !ext.Has(block.Zero) || ext.Has(block.Data) {
		t.Errorf("BlockStatus of the padding = %+v, %v", ext, err)
	}
	ext, err = n.BlockStatus(0, 1024)
	if err != nil || ext.Length != 1000 || !ext.Has(block.Data) {
		t.Errorf("BlockStatus of the data = %+v, %v", ext, err)
	}
	// Writing into the padding grows the file.
	if _, err := n.WriteAt([]byte("end"), 1021); err != nil {
		t.Fatal(err)
	}
	if got, _ := fs.File("odd").Size(); got != 1024 {
		t.Errorf("file size %d after writing the last bytes", got)
	}
}

func TestOffsetSizeOptions(t *testing.T) {
	content := make([]byte, 1<<20)
	for i := range content {
		content[i] = byte(i / 512)
	}
	tests := []struct {
		opts map[string]string
		size int64  // the image size, when it opens
		off  int64  // where it starts in the file
		err  string // the error, when it does not
	}{
		{map[string]string{"offset": "512"}, 1<<20 - 512, 512, ""},
		{map[string]string{"offset": "100"}, 1 << 20, 100, ""}, // 1 MiB - 100, rounded up to a sector as QEMU does
		{map[string]string{"size": "4096"}, 4096, 0, ""},
		{map[string]string{"offset": "1k", "size": "2k"}, 2048, 1024, ""},
		{map[string]string{"offset": "1M"}, 0, 1 << 20, ""},
		{map[string]string{"offset": "1M", "size": "0"}, 0, 1 << 20, ""},
		{map[string]string{"offset": "2M"}, 0, 0, "Offset (2097152) cannot be greater than size of the containing file (1048576)"},
		{map[string]string{"offset": "16E"}, 0, 0, "Value '16E' is out of range for parameter 'offset'"},
		{map[string]string{"offset": "9E"}, 0, 0, "Offset (10376293541461622784) cannot be greater than size of the containing file (1048576)"},
		{map[string]string{"offset": "512k", "size": "1M"}, 0, 0,
			"The sum of offset (524288) and size (1048576) has to be smaller or equal to the  actual size of the containing file (1048576)"},
		{map[string]string{"size": "2M"}, 0, 0,
			"The sum of offset (0) and size (2097152) has to be smaller or equal to the  actual size of the containing file (1048576)"},
		{map[string]string{"size": "1000"}, 0, 0, "Specified size is not multiple of 512"},
		{map[string]string{"offset": "-1"}, 0, 0, "Parameter 'offset' expects a non-negative number below 2^64"},
		{map[string]string{"size": "x"}, 0, 0, "Parameter 'size' expects a non-negative number below 2^64"},
		{map[string]string{"bogus": "1"}, 0, 0, "Block format 'raw' does not support the option 'bogus'"},
	}
	for _, tc := range tests {
		env, _, _ := memEnv(map[string][]byte{"x": content})
		n, err := env.Open("x", block.OpenOptions{Format: "raw", Write: true, DriverOptions: tc.opts})
		if tc.err != "" {
			if err == nil || err.Error() != tc.err {
				t.Errorf("%v: %v, want %q", tc.opts, err, tc.err)
			}
			if n != nil {
				n.Close()
			}
			continue
		}
		if err != nil {
			t.Errorf("%v: %v", tc.opts, err)
			continue
		}
		if n.Size() != tc.size {
			t.Errorf("%v: size %d, want %d", tc.opts, n.Size(), tc.size)
		}
		if n.Size() >= 512 {
			buf := make([]byte, 512)
			if _, err := n.ReadAt(buf, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf, content[tc.off:tc.off+512]) {
				t.Errorf("%v: the window does not start at %d", tc.opts, tc.off)
			}
			ext, err := n.BlockStatus(0, 512)
			if err != nil || ext.HostOffset != tc.off || !ext.Has(block.OffsetValid) {
				t.Errorf("%v: BlockStatus = %+v, %v", tc.opts, ext, err)
			}
		}
		// Nothing outside the window can be reached.
		if _, err := n.WriteAt([]byte{1}, n.Size()); !errors.Is(err, block.ErrRange) {
			t.Errorf("%v: write past the window: %v", tc.opts, err)
		}
		// A fixed size cannot change; with only an offset the file ends
		// the new size after it.
		if _, fixed := tc.opts["size"]; fixed {
			if err := n.Image.(block.Resizer).Resize(1<<21, "off"); !errors.Is(err, block.ErrUnsupported) {
				t.Errorf("%v: Resize: %v", tc.opts, err)
			}
		} else {
			if err := n.Image.(block.Resizer).Resize(1<<21, "off"); err != nil || n.Image.Size() != 1<<21 {
				t.Errorf("%v: Resize: %v, size %d", tc.opts, err, n.Image.Size())
			}
			if got, _ := n.File.Size(); got != tc.off+1<<21 {
				t.Errorf("%v: the file is %d bytes after the resize, want %d", tc.opts, got, tc.off+1<<21)
			}
		}
		n.Close()
	}
}

func TestWindowWritesStayInside(t *testing.T) {
	env, fs, _ := memEnv(map[string][]byte{"x": bytes.Repeat([]byte{0xff}, 8192)})
	n := mustOpen(t, env, "x", block.OpenOptions{Format: "raw", Write: true, DriverOptions: map[string]string{"offset": "1024", "size": "2048"}})
	if _, err := n.WriteAt(bytes.Repeat([]byte{1}, 2048), 0); err != nil {
		t.Fatal(err)
	}
	if err := n.WriteZeroes(0, 100, block.MayUnmap); err != nil {
		t.Fatal(err)
	}
	if err := n.Discard(1024, 1024); err != nil {
		t.Fatal(err)
	}
	got := fs.File("x").Bytes()
	if !bytes.Equal(got[:1024], bytes.Repeat([]byte{0xff}, 1024)) || !bytes.Equal(got[3072:], bytes.Repeat([]byte{0xff}, 8192-3072)) {
		t.Error("writes leaked out of the window")
	}
	if !bytes.Equal(got[1024:1124], make([]byte, 100)) || !bytes.Equal(got[1124:2048], bytes.Repeat([]byte{1}, 924)) {
		t.Error("window content wrong")
	}
}

const probeWarning = "WARNING: Image format was not specified for 'p.raw' and probing guessed raw.\n" +
	"         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n" +
	"         Specify the 'raw' format explicitly to remove the restrictions.\n"

func TestProbedRawWarning(t *testing.T) {
	tests := []struct {
		format string
		write  bool
		warn   bool
	}{
		{"", true, true},
		{"", false, false},
		{"raw", true, false},
		{"raw", false, false},
	}
	for _, tc := range tests {
		env, _, stderr := memEnv(map[string][]byte{"p.raw": make([]byte, 4096)})
		n := mustOpen(t, env, "p.raw", block.OpenOptions{Format: tc.format, Write: tc.write})
		if n.Probed != (tc.format == "") {
			t.Errorf("format %q: Probed %v", tc.format, n.Probed)
		}
		want := ""
		if tc.warn {
			want = probeWarning
		}
		if stderr.String() != want {
			t.Errorf("format %q write %v: stderr %q, want %q", tc.format, tc.write, stderr.String(), want)
		}
	}
}

func TestProbedRawSectorZero(t *testing.T) {
	// Sector 0 holds "QFI\xfb" and a version that is not 2 or 3, so it
	// probes as raw; one byte would make it qcow2.
	almost := append([]byte("QFI\xfb\x01\x00\x00\x03"), make([]byte, 4088)...)
	tests := []struct {
		name    string
		data    []byte
		off     int64
		refused bool
	}{
		{"qcow2 magic at 0", qcow2Magic, 0, true},
		{"qcow2 magic in a whole sector", append(append([]byte(nil), qcow2Magic...), make([]byte, 504)...), 0, true},
		{"magic across sectors 0 and 1", append(append([]byte(nil), qcow2Magic...), make([]byte, 1000)...), 0, true},
		{"one byte completing the magic", []byte{0}, 4, true},
		{"magic at 512", qcow2Magic, 512, false},
		{"magic at 8", qcow2Magic, 8, false},
		{"plain data at 0", []byte("hello"), 0, false},
		{"version 4", []byte("QFI\xfb\x00\x00\x00\x04"), 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env, fs, _ := memEnv(map[string][]byte{"p.raw": almost})
			n := mustOpen(t, env, "p.raw", block.OpenOptions{Write: true})
			before := fs.File("p.raw").Bytes()
			_, err := n.WriteAt(tc.data, tc.off)
			if !tc.refused {
				if err != nil {
					t.Fatalf("write refused: %v", err)
				}
				return
			}
			if err == nil || err.Error() != "Operation not permitted" || !errors.Is(err, syscall.EPERM) {
				t.Fatalf("write = %v, want EPERM 'Operation not permitted'", err)
			}
			if !bytes.Equal(fs.File("p.raw").Bytes(), before) {
				t.Error("a refused write changed the file")
			}
		})
	}
	// With the format given, nothing is restricted.
	env, fs, _ := memEnv(map[string][]byte{"p.raw": almost})
	n := mustOpen(t, env, "p.raw", block.OpenOptions{Format: "raw", Write: true})
	if _, err := n.WriteAt(qcow2Magic, 0); err != nil {
		t.Fatalf("write with -f raw: %v", err)
	}
	if !bytes.HasPrefix(fs.File("p.raw").Bytes(), qcow2Magic) {
		t.Error("write with -f raw did not land")
	}
}

func TestProbedRawZeroesAndDiscard(t *testing.T) {
	// Zeroing or discarding one byte of this sector would make it qcow2.
	almost := append([]byte("QFI\xfb\x01\x00\x00\x03"), bytes.Repeat([]byte{9}, 4088)...)
	env, fs, _ := memEnv(map[string][]byte{"p.raw": almost})
	n := mustOpen(t, env, "p.raw", block.OpenOptions{Write: true})
	for _, flags := range []block.ZeroFlags{0, block.MayUnmap} {
		if err := n.WriteZeroes(4, 1, flags); !errors.Is(err, syscall.EPERM) {
			t.Errorf("WriteZeroes(4, 1, %d) = %v, want EPERM", flags, err)
		}
	}
	// A discard inside sector 0 is dropped; beyond it, it happens.
	if err := n.Discard(4, 1000); err != nil {
		t.Fatal(err)
	}
	got := fs.File("p.raw").Bytes()
	if !bytes.Equal(got[:512], almost[:512]) {
		t.Error("a discard changed part of sector 0 of a probed image")
	}
	if d, ok := n.Image.(interface{ Format() string }); !ok || d.Format() != "raw" {
		t.Fatal("not raw")
	}
	// Zeroing the whole sector is fine: zeroes are raw.
	if err := n.WriteZeroes(0, 512, 0); err != nil {
		t.Errorf("zeroing sector 0: %v", err)
	}
}

func TestReadOnlyRaw(t *testing.T) {
	env, _, _ := memEnv(map[string][]byte{"x": make([]byte, 4096)})
	n := mustOpen(t, env, "x", block.OpenOptions{Format: "raw"})
	if _, err := n.WriteAt([]byte{1}, 0); !errors.Is(err, block.ErrReadOnly) {
		t.Errorf("WriteAt: %v", err)
	}
	if r, ok := n.Image.(block.Resizer); !ok {
		t.Error("raw images are not Resizers")
	} else if err := r.Resize(8192, "off"); !errors.Is(err, block.ErrReadOnly) {
		t.Errorf("Resize: %v", err)
	}
	info, err := n.Info()
	if err != nil || info.ClusterSize != 0 || info.Specific != nil || info.Dirty {
		t.Errorf("Info = %+v, %v", info, err)
	}
}

func TestResize(t *testing.T) {
	env, fs, _ := memEnv(map[string][]byte{"x": bytes.Repeat([]byte{3}, 4096)})
	n := mustOpen(t, env, "x", block.OpenOptions{Format: "raw", Write: true})
	r := n.Image.(block.Resizer)
	if err := r.Resize(1<<20, "full"); err != nil {
		t.Fatal(err)
	}
	if n.Size() != 1<<20 {
		t.Errorf("size %d after growing", n.Size())
	}
	if err := r.Resize(2048, "falloc"); err == nil || err.Error() != "Cannot use preallocation for shrinking files" {
		t.Errorf("shrinking with falloc: %v", err)
	}
	if err := r.Resize(2048, "off"); err != nil {
		t.Fatal(err)
	}
	if got, _ := fs.File("x").Size(); got != 2048 || n.Size() != 2048 {
		t.Errorf("file %d, image %d after shrinking", got, n.Size())
	}
}

func TestProbeScore(t *testing.T) {
	d := raw.New()
	for _, h := range [][]byte{nil, qcow2Magic, []byte("anything")} {
		if s := d.Probe(&block.ProbeInput{Header: h}); s != 1 {
			t.Errorf("Probe(%q) = %d, want 1", h, s)
		}
	}
	if d.Name() != "raw" || !strings.Contains(d.OpenSpecs()[0].Help, "offset") {
		t.Error("name or open specs wrong")
	}
}

// TestFileDriver: the file driver opens a file as raw does, under its own
// name, is never probed (not even for an empty file), leaves sector 0
// writable, and takes no offset option.
func TestFileDriver(t *testing.T) {
	qcowMagic := append([]byte("QFI\xfb"), make([]byte, 508)...)
	env, _, stderr := memEnv(map[string][]byte{"x": bytes.Repeat([]byte{7}, 4096), "e": nil})
	env.Registry = block.NewRegistry(raw.NewFile(), raw.New(), qcow2Prober{})
	for _, name := range []string{"x", "e"} {
		n := mustOpen(t, env, name, block.OpenOptions{Write: true})
		if n.Format() != "raw" {
			t.Errorf("%s probed as %q, want raw", name, n.Format())
		}
	}
	stderr.Reset()
	n := mustOpen(t, env, "x", block.OpenOptions{Format: "file", Write: true})
	if n.Format() != "file" || n.Size() != 4096 {
		t.Fatalf("format %q size %d", n.Format(), n.Size())
	}
	if _, err := n.WriteAt(qcowMagic, 0); err != nil {
		t.Fatalf("a write of another format's magic to sector 0: %v", err)
	}
	got := make([]byte, 4)
	if _, err := n.ReadAt(got, 0); err != nil || string(got) != "QFI\xfb" {
		t.Fatalf("read back %q, %v", got, err)
	}
	if stderr.Len() != 0 {
		t.Errorf("warnings for an unprobed file: %q", stderr.String())
	}
	if _, err := env.Open("x", block.OpenOptions{Format: "file", DriverOptions: map[string]string{"offset": "512"}}); err == nil {
		t.Error("the file driver took an offset option")
	}
	if _, ok := block.Driver(raw.NewFile()).(block.Measurer); ok {
		t.Error("the file driver measures; QEMU's does not")
	}
}
