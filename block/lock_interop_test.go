package block_test

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/block/raw"
	"github.com/qimg/qimg/internal/oracle"
)

// qcow2Locker stands in for the qcow2 driver, so that these tests depend on
// the locking model only: it opens a qcow2 file as raw would, but uses it
// as a format with metadata does (the default role), which is all locking
// looks at. (The command-line tests use the real driver.)
type qcow2Locker struct{ *raw.Driver }

func (qcow2Locker) Name() string { return "qcow2" }

func (qcow2Locker) Probe(p *block.ProbeInput) int {
	if bytes.HasPrefix(p.Header, []byte("QFI\xfb")) {
		return 100
	}
	return 0
}

func (qcow2Locker) FileUse(*block.DriverOptions) block.FileUse {
	return block.FileUse{Role: block.RoleImage}
}

func lockTestEnv() *block.Env {
	return &block.Env{Registry: block.NewRegistry(qcow2Locker{raw.New()}, raw.New())}
}

// newImage creates a 1 MiB image with the real qemu-img.
func newImage(t *testing.T, format string) string {
	t.Helper()
	name := filepath.Join(t.TempDir(), "img."+format)
	oracle.MustQemuImg(t, "create", "-f", format, name, "1M")
	return name
}

func mustOpen(t *testing.T, name string, o block.OpenOptions) *block.Node {
	t.Helper()
	n, err := lockTestEnv().Open(name, o)
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	return n
}

// TestLockInteropBytes checks that qimg locks the bytes QEMU locks for the
// same open, comparing /proc/locks while each holds the image.
func TestLockInteropBytes(t *testing.T) {
	oracle.QemuIOPath(t)
	cases := []struct {
		name   string
		format string
		qemu   []string // qemu-io options before the image ("IMG" is replaced)
		o      block.OpenOptions
	}{
		{"raw read-write", "raw", []string{"-f", "raw", "IMG"}, block.OpenOptions{Format: "raw", Write: true}},
		{"raw read-only", "raw", []string{"-r", "-f", "raw", "IMG"}, block.OpenOptions{Format: "raw"}},
		{"raw window read-write", "raw", []string{"--image-opts", "driver=raw,size=1024,file.filename=IMG"},
			block.OpenOptions{Format: "raw", Write: true, DriverOptions: map[string]string{"size": "1024"}}},
		{"qcow2 read-write", "qcow2", []string{"-f", "qcow2", "IMG"}, block.OpenOptions{Format: "qcow2", Write: true}},
		{"qcow2 read-only", "qcow2", []string{"-r", "-f", "qcow2", "IMG"}, block.OpenOptions{Format: "qcow2"}},
		{"qcow2 force-share", "qcow2", []string{"-r", "-U", "-f", "qcow2", "IMG"}, block.OpenOptions{Format: "qcow2", ForceShare: true}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img := newImage(t, c.format)
			args := slices.Clone(c.qemu)
			for i := range args {
				args[i] = strings.ReplaceAll(args[i], "IMG", img)
			}
			h := oracle.HoldQemuIO(t, img, args...)
			want := oracle.LockedBytes(t, img)
			h.Stop()
			if got := oracle.LockedBytes(t, img); len(got) != 0 {
				t.Fatalf("bytes %v still locked after qemu-io exited", got)
			}
			n := mustOpen(t, img, c.o)
			got := oracle.LockedBytes(t, img)
			if err := n.Close(); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, want) {
				t.Errorf("qimg locks bytes %v, qemu-io %v", got, want)
			}
			if left := oracle.LockedBytes(t, img); len(left) != 0 {
				t.Errorf("bytes %v still locked after Close", left)
			}
		})
	}
}

// lockMessage is how a QEMU tool prints a lock error: the error line with
// the tool's prefix, then the hint.
func lockMessage(prefix string, err error) string {
	var h interface{ ErrorHint() string }
	hint := ""
	if errors.As(err, &h) {
		hint = h.ErrorHint()
	}
	return prefix + err.Error() + "\n" + hint
}

// TestLockInteropQemuHolds opens images that qemu-io holds and checks that
// qimg refuses exactly when QEMU's own tools refuse, with their words.
func TestLockInteropQemuHolds(t *testing.T) {
	oracle.QemuIOPath(t)
	img := newImage(t, "qcow2")
	oracle.HoldQemuIO(t, img, "-f", "qcow2", img)
	cases := []struct {
		name string
		o    block.OpenOptions
		// qemu is the equivalent QEMU command and its message prefix;
		// nil for qemu-img info.
		qemu   []string
		prefix string
		want   string // qimg's error; "" for none
	}{
		{"info", block.OpenOptions{NoIO: true, NoBacking: true}, nil, "", `Failed to get shared "write" lock`},
		{"info -f raw", block.OpenOptions{Format: "raw", NoIO: true, NoBacking: true},
			[]string{"qemu-img", "info", "-f", "raw", img}, "", ""},
		{"info -U", block.OpenOptions{NoIO: true, NoBacking: true, ForceShare: true},
			[]string{"qemu-img", "info", "-U", img}, "", ""},
		{"read", block.OpenOptions{Format: "qcow2"},
			[]string{"qemu-io", "-r", "-f", "qcow2", "-c", "read 0 512", img}, "qemu-io: can't open device " + img + ": ",
			`Failed to get shared "write" lock`},
		{"read -U", block.OpenOptions{Format: "qcow2", ForceShare: true},
			[]string{"qemu-io", "-r", "-U", "-f", "qcow2", "-c", "read 0 512", img}, "", ""},
		{"write as raw", block.OpenOptions{Format: "raw", Write: true},
			[]string{"qemu-io", "-f", "raw", "-c", "read 0 512", img}, "qemu-io: can't open device " + img + ": ",
			`Failed to get "write" lock`},
		{"read with locking off", block.OpenOptions{Format: "qcow2", Locking: block.LockOff},
			[]string{"qemu-io", "-r", "--image-opts", "-c", "read 0 512", "driver=qcow2,file.filename=" + img + ",file.locking=off"}, "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			qemu := c.qemu
			prefix := c.prefix
			if qemu == nil {
				qemu = []string{"qemu-img", "info", img}
				prefix = "qemu-img: Could not open '" + img + "': "
			}
			var r oracle.Result
			if qemu[0] == "qemu-img" {
				r = oracle.QemuImg(t, qemu[1:]...)
			} else {
				r = oracle.QemuIO(t, qemu[1:]...)
			}
			n, err := lockTestEnv().Open(img, c.o)
			if c.want == "" {
				if err != nil {
					t.Fatalf("qimg: %v", err)
				}
				n.Close()
				if r.Code != 0 || strings.Contains(r.Stderr, "lock") {
					t.Fatalf("qimg opens, but QEMU does not: %s", r)
				}
				return
			}
			if err == nil {
				n.Close()
				t.Fatalf("qimg opens an image qemu-io holds; want %q", c.want)
			}
			if err.Error() != c.want || !errors.Is(err, block.ErrLocked) {
				t.Fatalf("qimg: %v, want %q", err, c.want)
			}
			if want := lockMessage(prefix, err); r.Code != 1 || r.Stderr != want {
				t.Fatalf("QEMU's words differ\nqimg's:\n%s\nQEMU: %s", want, r)
			}
		})
	}
}

// TestLockInteropQimgHolds holds images open in qimg and checks that QEMU's
// tools refuse them as they refuse images other QEMU processes hold.
func TestLockInteropQimgHolds(t *testing.T) {
	oracle.QemuIOPath(t)
	oracle.QemuImgPath(t)
	type qemuRun struct {
		args []string // "IMG" is replaced
		want string   // stderr; "" for success
	}
	cases := []struct {
		name string
		o    block.OpenOptions
		runs []qemuRun
	}{
		{"qcow2 written as raw", block.OpenOptions{Format: "raw", Write: true}, []qemuRun{
			{[]string{"qemu-img", "info", "IMG"}, "qemu-img: Could not open 'IMG': Failed to get shared \"write\" lock\nIs another process using the image [IMG]?\n"},
			{[]string{"qemu-img", "info", "-U", "IMG"}, ""},
			{[]string{"qemu-img", "info", "-f", "raw", "IMG"}, ""},
			{[]string{"qemu-io", "-f", "raw", "-c", "read 0 512", "IMG"}, ""},
		}},
		{"qcow2 written", block.OpenOptions{Format: "qcow2", Write: true}, []qemuRun{
			{[]string{"qemu-io", "-f", "qcow2", "-c", "read 0 512", "IMG"}, "qemu-io: can't open device IMG: Failed to get \"write\" lock\nIs another process using the image [IMG]?\n"},
			{[]string{"qemu-io", "-r", "-f", "qcow2", "-c", "read 0 512", "IMG"}, "qemu-io: can't open device IMG: Failed to get shared \"write\" lock\nIs another process using the image [IMG]?\n"},
			{[]string{"qemu-img", "create", "-f", "qcow2", "IMG", "2M"}, "qemu-img: IMG: Failed to get \"write\" lock\nIs another process using the image [IMG]?\n"},
			{[]string{"qemu-img", "info", "-U", "IMG"}, ""},
		}},
		{"qcow2 read", block.OpenOptions{Format: "qcow2"}, []qemuRun{
			{[]string{"qemu-io", "-r", "-f", "qcow2", "-c", "read 0 512", "IMG"}, ""},
			{[]string{"qemu-img", "info", "IMG"}, ""},
			{[]string{"qemu-io", "-f", "qcow2", "-c", "read 0 512", "IMG"}, "qemu-io: can't open device IMG: Failed to get \"write\" lock\nIs another process using the image [IMG]?\n"},
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img := newImage(t, "qcow2")
			orig, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			n := mustOpen(t, img, c.o)
			for _, run := range c.runs {
				args := slices.Clone(run.args)
				for i := range args {
					args[i] = strings.ReplaceAll(args[i], "IMG", img)
				}
				var r oracle.Result
				if args[0] == "qemu-img" {
					r = oracle.QemuImg(t, args[1:]...)
				} else {
					r = oracle.QemuIO(t, args[1:]...)
				}
				want := strings.ReplaceAll(run.want, "IMG", img)
				if want == "" {
					if r.Code != 0 || r.Stderr != "" {
						t.Errorf("%q while qimg holds the image: %s", args, r)
					}
				} else if r.Code != 1 || r.Stderr != want {
					t.Errorf("%q while qimg holds the image:\n%s\nwant exit 1 and\n%s", args, r, want)
				}
			}
			if err := n.Close(); err != nil {
				t.Fatal(err)
			}
			if c.o.Format == "qcow2" && !c.o.Write {
				if now, _ := os.ReadFile(img); !bytes.Equal(now, orig) {
					t.Errorf("the image changed while qimg held it")
				}
			}
			// Released: QEMU writes it now.
			oracle.MustQemuIO(t, "-f", "qcow2", "-c", "write 0 512", img)
		})
	}
}

// TestLockInteropTwoQimgWriters opens one image twice in one process: the
// opens exclude each other as two processes would.
func TestLockInteropTwoQimgWriters(t *testing.T) {
	img := newImage(t, "qcow2")
	a := mustOpen(t, img, block.OpenOptions{Format: "qcow2", Write: true})
	_, err := lockTestEnv().Open(img, block.OpenOptions{Format: "qcow2", Write: true})
	if want := "Failed to get \"write\" lock\nIs another process using the image [" + img + "]?\n"; err == nil || lockMessage("", err) != want {
		t.Fatalf("second writer: %v, want %q", err, want)
	}
	r := mustOpen(t, img, block.OpenOptions{Format: "qcow2", ForceShare: true})
	r.Close()
	a.Close()
	b := mustOpen(t, img, block.OpenOptions{Format: "qcow2", Write: true})
	b.Close()
	// Raw images do not exclude writers, in QEMU or qimg.
	img = newImage(t, "raw")
	a = mustOpen(t, img, block.OpenOptions{Format: "raw", Write: true})
	b = mustOpen(t, img, block.OpenOptions{Format: "raw", Write: true})
	b.Close()
	a.Close()
}

// lockHelperEnv names the image TestLockHelperProcess holds.
const lockHelperEnv = "QIMG_LOCK_HELPER_IMAGE"

// TestLockHelperProcess is not a test: run by TestLockInteropProcessExit in
// a child process, it holds an image open for writing until killed.
func TestLockHelperProcess(t *testing.T) {
	img := os.Getenv(lockHelperEnv)
	if img == "" {
		return
	}
	n, err := lockTestEnv().Open(img, block.OpenOptions{Format: "raw", Write: true})
	if err != nil {
		os.Stdout.WriteString("error: " + err.Error() + "\n")
		os.Exit(2)
	}
	os.Stdout.WriteString("held\n")
	os.Stdin.Read(make([]byte, 1))
	n.Close()
	os.Exit(0)
}

// TestLockInteropProcessExit checks that a qimg process that dies without
// closing its image leaves no lock behind.
func TestLockInteropProcessExit(t *testing.T) {
	oracle.QemuImgPath(t)
	img := newImage(t, "qcow2")
	cmd := exec.Command(os.Args[0], "-test.run=^TestLockHelperProcess$")
	cmd.Env = append(os.Environ(), lockHelperEnv+"="+img)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "held\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("helper: %q %v", line, err)
	}
	if r := oracle.QemuImg(t, "info", img); r.Code != 1 || !strings.Contains(r.Stderr, `Failed to get shared "write" lock`) {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("qemu-img info while the helper holds the image: %s", r)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	if got := oracle.LockedBytes(t, img); len(got) != 0 {
		t.Fatalf("bytes %v locked after the holder died", got)
	}
	if r := oracle.QemuImg(t, "info", img); r.Code != 0 {
		t.Fatalf("qemu-img info after the holder died: %s", r)
	}
}
