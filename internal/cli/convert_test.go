package cli

import (
	"bytes"
	"strings"
	"syscall"
	"testing"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/block/raw"
	"github.com/qimg/qimg/storage"
)

func TestParseCLong(t *testing.T) {
	cases := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"8", 8, true}, {" 16", 16, true}, {"+3", 3, true}, {"-1", -1, true},
		{"0x10", 16, true}, {"010", 8, true}, {"0", 0, true},
		{"", 0, false}, {"8x", 0, false}, {"1_0", 0, false}, {"0b1", 0, false},
		{"09", 0, false}, {"--1", 0, false}, {"8 ", 0, false},
	}
	for _, tc := range cases {
		got, ok := parseCLong(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("parseCLong(%q) = %d, %v; want %d, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestProgress(t *testing.T) {
	var out, errOut bytes.Buffer
	p := &progress{out: &out, errOut: &errOut, enabled: true, minSkip: 1}
	for _, step := range []struct {
		delta float32
		max   int
	}{{0, 100}, {0.5, 0}, {1.5, 0}, {2, 0}, {2.6, 0}, {40, 0}, {30, 0}, {100, 0}, {100, 0}} {
		p.print(step.delta, step.max)
	}
	p.end()
	want := "    (0.00/100%)\r    (1.50/100%)\r    (2.60/100%)\r    (40.00/100%)\r" +
		"    (30.00/100%)\r    (100.00/100%)\r    (100.00/100%)\r\n"
	if out.String() != want {
		t.Errorf("progress printed %q, want %q", out.String(), want)
	}

	// Relative steps, as a part of a larger job.
	out.Reset()
	p = &progress{out: &out, errOut: &errOut, enabled: true, minSkip: 1}
	p.print(50, 10)
	p.print(50, 10)
	if out.String() != "    (5.00/100%)\r    (10.00/100%)\r" {
		t.Errorf("relative progress printed %q", out.String())
	}

	// Disabled: nothing, until SIGUSR1 asks for one line on stderr.
	out.Reset()
	p = &progress{out: &out, errOut: &errOut, minSkip: 1}
	p.print(10, 0)
	p.pending.Store(true)
	p.print(20, 0)
	p.print(30, 0)
	p.end()
	if out.Len() != 0 || errOut.String() != "    (20.00/100%)\n" {
		t.Errorf("disabled progress printed %q and %q", out.String(), errOut.String())
	}
}

// failingDriver is raw, except that its images fail reads at byte 1 MiB.
type failingDriver struct{ *raw.Driver }

func (failingDriver) Name() string                { return "failing" }
func (failingDriver) Probe(*block.ProbeInput) int { return 0 }

func (d failingDriver) Open(f storage.File, o *block.DriverOptions) (block.Image, error) {
	img, err := d.Driver.Open(f, o)
	if err != nil {
		return nil, err
	}
	return failingImage{img}, nil
}

type failingImage struct{ block.Image }

func (i failingImage) ReadAt(p []byte, off int64) (int, error) {
	if off <= 1<<20 && 1<<20 < off+int64(len(p)) {
		return 0, syscall.EIO
	}
	return i.Image.ReadAt(p, off)
}

// memApp returns an App over an in-memory file system holding a 4 MiB raw
// "src" of data, readable as format "failing" too.
func memApp() (*App, *storage.MemFS, *bytes.Buffer, *bytes.Buffer) {
	fs := storage.NewMemFS()
	src := storage.NewMemFile("src")
	src.WriteAt(bytes.Repeat([]byte{0x5a}, 4<<20), 0)
	fs.Put("src", src)
	var out, errOut bytes.Buffer
	env := &block.Env{Registry: block.NewRegistry(raw.New(), failingDriver{raw.New()}), Files: fs}
	return &App{Prog: "qemu-img", Stdout: &out, Stderr: &errOut, Env: env}, fs, &out, &errOut
}

func TestConvertFailureCleanup(t *testing.T) {
	readErr := "qemu-img: error while reading at byte 0: Input/output error\n"
	t.Run("new target removed", func(t *testing.T) {
		a, fs, _, errOut := memApp()
		if code := a.qemuImg([]string{"convert", "-f", "failing", "src", "dst"}); code != 1 {
			t.Errorf("exit %d, want 1", code)
		}
		if errOut.String() != readErr {
			t.Errorf("stderr %q, want %q", errOut.String(), readErr)
		}
		if fs.Exists("dst") {
			t.Error("failed convert left its new target behind")
		}
	})
	t.Run("re-created target emptied", func(t *testing.T) {
		a, fs, _, _ := memApp()
		old := storage.NewMemFile("dst")
		old.WriteAt([]byte("old content"), 0)
		fs.Put("dst", old)
		if code := a.qemuImg([]string{"convert", "-f", "failing", "src", "dst"}); code != 1 {
			t.Errorf("exit %d, want 1", code)
		}
		if f := fs.File("dst"); f == nil {
			t.Error("failed convert removed a pre-existing file")
		} else if size, _ := f.Size(); size != 0 {
			t.Errorf("failed convert left %d bytes in the target it re-created", size)
		}
	})
	t.Run("-n target left", func(t *testing.T) {
		a, fs, _, _ := memApp()
		old := storage.NewMemFile("dst")
		old.WriteAt(bytes.Repeat([]byte{1}, 4<<20), 0)
		fs.Put("dst", old)
		if code := a.qemuImg([]string{"convert", "-n", "-f", "failing", "src", "dst"}); code != 1 {
			t.Errorf("exit %d, want 1", code)
		}
		if f := fs.File("dst"); f == nil {
			t.Error("failed convert -n removed its target")
		} else if size, _ := f.Size(); size != 4<<20 {
			t.Errorf("failed convert -n resized its target to %d", size)
		}
	})
	t.Run("salvage", func(t *testing.T) {
		a, fs, _, errOut := memApp()
		if code := a.qemuImg([]string{"convert", "--salvage", "-f", "failing", "src", "dst"}); code != 0 {
			t.Fatalf("exit %d, want 0\n%s", code, errOut)
		}
		lines := strings.Split(strings.TrimSpace(errOut.String()), "\n")
		if len(lines) != 1 || lines[0] != "qemu-img: warning: error while reading offset 1048576: Input/output error" {
			t.Errorf("stderr %q, want one warning", errOut.String())
		}
		got := fs.File("dst").Bytes()
		want := bytes.Repeat([]byte{0x5a}, 4<<20)
		clear(want[1<<20 : 1<<20+512])
		if !bytes.Equal(got, want) {
			t.Error("salvaged copy differs")
		}
	})
	t.Run("salvage quiet", func(t *testing.T) {
		a, _, _, errOut := memApp()
		if code := a.qemuImg([]string{"convert", "-q", "--salvage", "-f", "failing", "src", "dst"}); code != 0 || errOut.Len() != 0 {
			t.Errorf("exit %d, stderr %q; want 0 and nothing", code, errOut)
		}
	})
}

func TestConvertInMemory(t *testing.T) {
	a, fs, out, errOut := memApp()
	if code := a.qemuImg([]string{"convert", "-p", "-O", "raw", "src", "src", "dst"}); code != 0 {
		t.Fatalf("exit %d\n%s", code, errOut)
	}
	want := bytes.Repeat([]byte{0x5a}, 8<<20)
	if got := fs.File("dst").Bytes(); !bytes.Equal(got, want) {
		t.Error("concatenated copy differs")
	}
	if !strings.HasPrefix(out.String(), "    (0.00/100%)\r") || !strings.HasSuffix(out.String(), "    (100.00/100%)\r\n") {
		t.Errorf("progress %q", out.String())
	}
}
