package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qimg/qimg/internal/drivers"
	"github.com/qimg/qimg/internal/oracle"
)

// TestInteropLockedImage runs qimg and qemu-img on an image a qemu-io
// process holds open for writing and expects the same exit codes and
// messages: refusals while it is locked, -U, force-share and file.locking.
func TestInteropLockedImage(t *testing.T) {
	oracle.QemuImgPath(t)
	oracle.QemuIOPath(t)
	dir := t.TempDir()
	oracle.MustQemuImg(t, "create", "-f", "qcow2", filepath.Join(dir, "img.qcow2"), "1M")
	oracle.HoldQemuIO(t, filepath.Join(dir, "img.qcow2"), "-f", "qcow2", filepath.Join(dir, "img.qcow2"))
	orig, err := os.ReadFile(filepath.Join(dir, "img.qcow2"))
	if err != nil {
		t.Fatal(err)
	}
	window := "driver=raw,size=1024,file.filename=img.qcow2"
	// Successful opens of the window are compared by exit code and
	// stderr only: QEMU names such an image "json:{...}", which qimg's
	// info does not do yet.
	type tc struct {
		args       []string
		sameStdout bool
	}
	c := func(args ...string) tc { return tc{args, true} }
	opened := func(args ...string) tc { return tc{args, false} }
	cases := []tc{
		// qemu-io takes "resize" on the qcow2 file, which a raw window
		// does not share: info refuses.
		c("info", "--image-opts", window),
		c("info", "--output=json", "--image-opts", window),
		opened("info", "-U", "--image-opts", window),
		opened("info", "--force-share", "--output=json", "--image-opts", window),
		opened("info", "--image-opts", window+",force-share=on"),
		opened("info", "--image-opts", window+",file.locking=off"),
		c("info", "--image-opts", window+",file.locking=on"),
		c("info", "--image-opts", window+",file.locking=auto"),
		c("info", "--image-opts", window+",file.locking=bogus"),
		c("info", "--image-opts", window+",file.locking="),
		// The lock conflict comes before the unknown option.
		c("info", "--image-opts", window+",locking=off"),
		c("info", "-U", "--image-opts", window+",locking=off"),
		// create takes "write" on the file, which qemu-io does not share.
		c("create", "-f", "raw", "img.qcow2", "1M"),
		c("create", "-f", "raw", "-o", "preallocation=full", "img.qcow2", "64k"),
	}
	if _, ok := drivers.Registry().Lookup("qcow2"); ok {
		cases = append(cases,
			c("info", "img.qcow2"),
			c("info", "--backing-chain", "img.qcow2"),
			c("info", "-U", "img.qcow2"),
		)
	}
	for _, tc := range cases {
		got := oracle.RunQimg(t, dir, tc.args...)
		want := oracle.QemuImgIn(t, dir, tc.args...)
		if got.Code != want.Code || got.Stderr != want.Stderr || (tc.sameStdout && got.Stdout != want.Stdout) {
			t.Errorf("%q differs\nqimg: %s\nqemu-img: %s", tc.args, got, want)
		}
	}
	if now, _ := os.ReadFile(filepath.Join(dir, "img.qcow2")); !bytes.Equal(now, orig) {
		t.Errorf("an image in use was changed")
	}
}

// TestLockingOption checks the --image-opts file.locking values in process.
func TestLockingOption(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "img.raw")
	if err := os.WriteFile(img, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		value string
		code  int
		err   string
	}{
		{"on", 0, ""},
		{"off", 0, ""},
		{"auto", 0, ""},
		{"yes", 1, "qemu-img: Could not open 'driver=raw,file.filename=" + img + ",file.locking=yes': invalid parameter value: yes\n"},
	}
	for _, c := range cases {
		var out, errb bytes.Buffer
		spec := "driver=raw,file.filename=" + img + ",file.locking=" + c.value
		code := Main([]string{"qemu-img", "info", "--image-opts", spec}, strings.NewReader(""), &out, &errb)
		if code != c.code || errb.String() != c.err {
			t.Errorf("file.locking=%s: exit %d, stderr %q; want %d, %q", c.value, code, errb.String(), c.code, c.err)
		}
	}
}
