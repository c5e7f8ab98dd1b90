package cli

import (
	"path/filepath"
	"regexp"
	"testing"

	"github.com/qimg/qimg/internal/oracle"
)

// runTime matches the time in bench's last line, which differs from run
// to run.
var runTime = regexp.MustCompile(`Run completed in [0-9]+\.[0-9]{3} seconds\.`)

// TestInteropBench compares `bench` with qemu-img's: the lines it prints
// (the time aside), exit codes and errors, and what write runs leave in
// the image.
func TestInteropBench(t *testing.T) {
	oracle.QemuImgPath(t)
	c := func(args ...string) []string { return args }
	images := sh(
		"qemu-img create -q -f raw a.raw 4M",
		"qemu-img create -q -f qcow2 a.qcow2 4M",
		qio("a.qcow2", "qcow2", "write -P 1 0 1M"),
		"qemu-img create -q -f raw empty.raw 0",
	)
	tests := []struct {
		name  string
		args  []string
		files []string
	}{
		{name: "read", args: c("-c", "1000", "a.raw")},
		{name: "read qcow2", args: c("-c", "200", "-d", "8", "-f", "qcow2", "a.qcow2")},
		{name: "write", args: c("-w", "-c", "100", "-d", "4", "--pattern", "0x41", "-f", "raw", "a.raw"), files: c("a.raw")},
		{name: "write qcow2 with flushes", args: c("-w", "-c", "64", "-d", "4", "--flush-interval", "8", "-S", "64k", "a.qcow2")},
		{name: "write without drain", args: c("-w", "-c", "64", "-d", "4", "--flush-interval=16", "--no-drain", "-f", "raw", "a.raw"), files: c("a.raw")},
		{name: "buffer and step", args: c("-c", "10", "-s", "64k", "-S", "1M", "-o", "512", "a.raw")},
		{name: "offsets wrap", args: c("-c", "50", "-S", "1M", "-o", "3M", "a.raw")},
		{name: "beyond the end", args: c("-c", "3", "-o", "4095k", "a.raw")},
		{name: "empty image", args: c("-c", "0", "empty.raw")},
		{name: "cache none", args: c("-c", "10", "-t", "none", "-i", "native", "a.raw")},
		{name: "quiet", args: c("-q", "-c", "10", "a.raw")},
		{name: "image opts", args: c("-c", "10", "--image-opts", "driver=qcow2,file.filename=a.qcow2")},
		{name: "force share", args: c("-U", "-c", "10", "a.raw")},
		{name: "native aio without O_DIRECT", args: c("-n", "a.raw")},
		{name: "bad count", args: c("-c", "x", "a.raw")},
		{name: "count too big", args: c("-c", "2147483648", "a.raw")},
		{name: "bad depth", args: c("-d", "-1", "a.raw")},
		{name: "bad pattern", args: c("--pattern", "256", "a.raw")},
		{name: "bad flush interval", args: c("-w", "--flush-interval", "x", "a.raw")},
		{name: "flush interval in a read test", args: c("--flush-interval", "100", "a.raw")},
		{name: "flush interval below depth", args: c("-w", "--flush-interval", "2", "a.raw")},
		{name: "bad aio", args: c("-i", "bogus", "a.raw")},
		{name: "bad cache", args: c("-t", "bogus", "a.raw")},
		{name: "bad buffer size", args: c("-s", "3G", "a.raw")},
		{name: "bad step", args: c("-S", "x", "a.raw")},
		{name: "bad offset", args: c("-o", "-1", "a.raw")},
		{name: "missing file", args: c("nonexist")},
		{name: "no file", args: c()},
		{name: "two files", args: c("a.raw", "a.raw")},
		{name: "unknown option", args: c("--bogus", "a.raw")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ours, theirs := t.TempDir(), t.TempDir()
			for _, dir := range []string{ours, theirs} {
				if out, err := shellIn(dir, images); err != nil {
					t.Fatalf("setup: %v\n%s", err, out)
				}
			}
			args := append(c("bench"), tc.args...)
			got, want := oracle.RunQimg(t, ours, args...), oracle.QemuImgIn(t, theirs, args...)
			norm := func(s string) string { return runTime.ReplaceAllString(s, "Run completed in T seconds.") }
			if got.Code != want.Code || norm(got.Stdout) != norm(want.Stdout) || got.Stderr != want.Stderr {
				t.Errorf("qimg: %s\nqemu-img: %s", got, want)
			}
			for _, f := range tc.files {
				if err := oracle.SameFile(filepath.Join(ours, f), filepath.Join(theirs, f)); err != nil {
					t.Errorf("file %s: %v", f, err)
				}
			}
		})
	}
}
