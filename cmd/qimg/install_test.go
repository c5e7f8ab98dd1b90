package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// run runs a command and returns its exit code and output streams.
func run(t *testing.T, dir, name string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, out.String(), errb.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), out.String(), errb.String()
	}
	t.Fatalf("%s %q: %v", name, args, err)
	return 0, "", ""
}

// TestMakeInstall installs qimg into a temporary prefix with the Makefile,
// as the README says, and runs it under each installed name.
func TestMakeInstall(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("make is required under CI=true")
		}
		t.Skip("make not installed")
	}
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	prefix := t.TempDir()
	bin := filepath.Join(t.TempDir(), "qimg")
	if code, out, errs := run(t, root, "make", "-s", "install", "PREFIX="+prefix, "BIN="+bin); code != 0 {
		t.Fatalf("make install: exit %d\n%s%s", code, out, errs)
	}
	bindir := filepath.Join(prefix, "bin")
	fi, err := os.Stat(filepath.Join(bindir, "qimg"))
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		t.Fatalf("installed qimg: %v %v", fi, err)
	}
	for _, link := range []string{"qemu-img", "kvm-img", "qemu-nbd", "qemu-io"} {
		target, err := os.Readlink(filepath.Join(bindir, link))
		if err != nil || target != "qimg" {
			t.Errorf("%s: link to %q, %v; want a link to qimg", link, target, err)
		}
	}
	for _, name := range []string{"qimg", "qemu-img", "kvm-img"} {
		code, out, _ := run(t, prefix, filepath.Join(bindir, name), "--version")
		if code != 0 || !strings.HasPrefix(out, "qemu-img version 7.2.0 (qimg ") {
			t.Errorf("%s --version: exit %d, %q", name, code, out)
		}
	}
	notYet := []struct {
		name string
		args []string
		tool string
	}{
		{"qemu-nbd", nil, "qemu-nbd"},
		{"qemu-io", []string{"-c", "read 0 512", "x"}, "qemu-io"},
		{"qimg", []string{"nbd", "x"}, "qemu-nbd"},
		{"qimg", []string{"io"}, "qemu-io"},
	}
	for _, tc := range notYet {
		code, out, errs := run(t, prefix, filepath.Join(bindir, tc.name), tc.args...)
		if code != 1 || out != "" || !strings.HasPrefix(errs, tc.tool+": "+tc.tool+" is not yet available in qimg ") {
			t.Errorf("%s %q: exit %d, stdout %q, stderr %q", tc.name, tc.args, code, out, errs)
		}
	}
	// The qemu-img link works as qemu-img does.
	img := filepath.Join(prefix, "disk.raw")
	code, out, errs := run(t, prefix, filepath.Join(bindir, "qemu-img"), "create", "-f", "raw", img, "1M")
	if code != 0 || out != "Formatting '"+img+"', fmt=raw size=1048576\n" || errs != "" {
		t.Errorf("qemu-img create: exit %d, %q, %q", code, out, errs)
	}
	if code, out, errs := run(t, root, "make", "-s", "uninstall", "PREFIX="+prefix); code != 0 {
		t.Fatalf("make uninstall: exit %d\n%s%s", code, out, errs)
	}
	for _, name := range []string{"qimg", "qemu-img", "kvm-img", "qemu-nbd", "qemu-io"} {
		if _, err := os.Lstat(filepath.Join(bindir, name)); !os.IsNotExist(err) {
			t.Errorf("%s left after uninstall: %v", name, err)
		}
	}
}
