// Package oracle drives the real qemu-img and qemu-io from tests, so that
// qimg's results can be checked against QEMU's: images qimg writes must pass
// `qemu-img check` and read back identically in QEMU, and images QEMU writes
// must read identically in qimg.
//
// When QEMU is not installed the tests that need it are skipped with a
// message, except under CI=true, where its absence is a failure.
package oracle

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// InCI reports whether the tests run under CI=true.
func InCI() bool { return os.Getenv("CI") == "true" }

// require finds a tool or skips (fails under CI) the test.
func require(t testing.TB, tool, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(tool)
	if err != nil {
		if InCI() {
			t.Fatalf("%s is required under CI=true but not installed (install %s)", tool, pkg)
		}
		t.Skipf("%s not installed (install %s to run this interop test)", tool, pkg)
	}
	return path
}

// QemuImgPath returns the path of the real qemu-img, skipping the test when
// it is missing (failing under CI=true).
func QemuImgPath(t testing.TB) string { return require(t, "qemu-img", "qemu-utils") }

// QemuIOPath returns the path of the real qemu-io.
func QemuIOPath(t testing.TB) string { return require(t, "qemu-io", "qemu-utils") }

// Result is the outcome of running a command.
type Result struct {
	Stdout string
	Stderr string
	Code   int
}

func (r Result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.Code, r.Stdout, r.Stderr)
}

// luksFlake is the message of a qemu-img failure that comes from timing its
// PBKDF2 benchmark with a coarse thread CPU clock; such runs are retried.
const luksFlake = "Unable to get accurate CPU usage"

// run executes a command and returns its result; a failure to start fails
// the test.
func run(t testing.TB, dir string, name string, args ...string) Result {
	t.Helper()
	for attempt := 0; ; attempt++ {
		cmd := exec.Command(name, args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "LC_ALL=C", "TZ=UTC")
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		r := Result{Stdout: out.String(), Stderr: errb.String()}
		var ee *exec.ExitError
		switch {
		case err == nil:
		case errors.As(err, &ee):
			r.Code = ee.ExitCode()
		default:
			t.Fatalf("running %s %q: %v", name, args, err)
		}
		if r.Code != 0 && strings.Contains(r.Stderr, luksFlake) && attempt < 5 {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		return r
	}
}

// QemuImg runs the real qemu-img with args in the current directory.
func QemuImg(t testing.TB, args ...string) Result {
	t.Helper()
	return run(t, "", QemuImgPath(t), args...)
}

// QemuImgIn runs the real qemu-img in dir.
func QemuImgIn(t testing.TB, dir string, args ...string) Result {
	t.Helper()
	return run(t, dir, QemuImgPath(t), args...)
}

// MustQemuImg runs qemu-img and fails the test unless it exits 0; it
// returns stdout.
func MustQemuImg(t testing.TB, args ...string) string {
	t.Helper()
	r := QemuImg(t, args...)
	if r.Code != 0 {
		t.Fatalf("qemu-img %s failed: %s", strings.Join(args, " "), r)
	}
	return r.Stdout
}

// QemuIO runs the real qemu-io with args.
func QemuIO(t testing.TB, args ...string) Result {
	t.Helper()
	return run(t, "", QemuIOPath(t), args...)
}

// MustQemuIO runs qemu-io and fails the test unless it exits 0 and prints
// no error lines.
func MustQemuIO(t testing.TB, args ...string) string {
	t.Helper()
	r := QemuIO(t, args...)
	if r.Code != 0 || strings.Contains(r.Stdout, "failed") || strings.Contains(r.Stderr, "qemu-io:") {
		t.Fatalf("qemu-io %s failed: %s", strings.Join(args, " "), r)
	}
	return r.Stdout
}

// Write writes pattern bytes with qemu-io: `write -P pattern off len`.
func Write(t testing.TB, file, format string, pattern byte, off, n int64) {
	t.Helper()
	MustQemuIO(t, "-f", format, "-c", fmt.Sprintf("write -P %d %d %d", pattern, off, n), file)
}

// ReadPattern asserts with qemu-io that [off, off+n) holds pattern bytes.
func ReadPattern(t testing.TB, file, format string, pattern byte, off, n int64) {
	t.Helper()
	r := QemuIO(t, "-f", format, "-c", fmt.Sprintf("read -P %d %d %d", pattern, off, n), file)
	if r.Code != 0 || strings.Contains(r.Stdout, "Pattern verification failed") || strings.Contains(r.Stdout, "failed") {
		t.Fatalf("qemu-io read -P %d %d %d on %s: %s", pattern, off, n, file, r)
	}
}

// Check runs `qemu-img check` and fails the test unless it reports no
// errors and no leaks.
func Check(t testing.TB, file, format string) {
	t.Helper()
	r := QemuImg(t, "check", "-f", format, file)
	if r.Code != 0 {
		t.Fatalf("qemu-img check %s: %s", file, r)
	}
}

// Compare runs `qemu-img compare` and fails the test unless the images have
// the same content.
func Compare(t testing.TB, a, fmtA, b, fmtB string) {
	t.Helper()
	r := QemuImg(t, "compare", "-f", fmtA, "-F", fmtB, a, b)
	if r.Code != 0 {
		t.Fatalf("qemu-img compare %s %s: %s", a, b, r)
	}
}

// ConvertToRaw converts an image to raw with the real qemu-img and returns
// the raw content.
func ConvertToRaw(t testing.TB, file, format string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out.raw")
	MustQemuImg(t, "convert", "-f", format, "-O", "raw", file, out)
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Digest is a short hash of bytes for messages.
func Digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:6])
}

// RandomBytes returns n bytes from a seeded generator.
func RandomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// Qimg builds the qimg binary once per test process and returns its path.
func Qimg(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "qimg-bin-")
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(dir, "qimg")
		cmd := exec.Command("go", "build", "-o", buildPath, "github.com/qimg/qimg/cmd/qimg")
		cmd.Dir = moduleRoot()
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildPath
}

// QemuImgLink returns the path of a "qemu-img" symbolic link to the qimg
// binary, so qimg runs under qemu-img's name.
func QemuImgLink(t testing.TB) string {
	t.Helper()
	bin := Qimg(t)
	link := filepath.Join(filepath.Dir(bin), "qemu-img")
	if _, err := os.Lstat(link); err != nil {
		if err := os.Symlink(bin, link); err != nil && !os.IsExist(err) {
			t.Fatal(err)
		}
	}
	return link
}

// RunQimg runs the qimg binary under the name qemu-img, in dir.
func RunQimg(t testing.TB, dir string, args ...string) Result {
	t.Helper()
	return run(t, dir, QemuImgLink(t), args...)
}

func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}
