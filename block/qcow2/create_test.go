package qcow2

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/internal/oracle"
)

// createCombos lists option strings whose images have no timestamp or
// random content.
func createCombos(short bool) []struct{ opts, size string } {
	type c = struct{ opts, size string }
	var out []c
	for _, cs := range []string{"512", "4k", "64k", "2M"} {
		for _, compat := range []string{"0.10", "1.1"} {
			for _, prealloc := range []string{"off", "metadata", "falloc", "full"} {
				size := "1M"
				if !short && prealloc == "off" {
					size = "1T"
				}
				if cs == "512" && size == "1T" {
					size = "100G"
				}
				out = append(out, c{fmt.Sprintf("cluster_size=%s,compat=%s,preallocation=%s", cs, compat, prealloc), size})
			}
		}
	}
	for _, bits := range []string{"1", "2", "4", "8", "32", "64"} {
		out = append(out, c{"refcount_bits=" + bits, "10M"}, c{"refcount_bits=" + bits + ",cluster_size=512,preallocation=metadata", "4M"})
	}
	out = append(out,
		c{"lazy_refcounts=on", "1G"},
		c{"compression_type=zstd", "1G"},
		c{"extended_l2=on", "1G"},
		c{"extended_l2=on,cluster_size=16k,preallocation=metadata", "3M"},
		c{"extended_l2=on,preallocation=falloc", "3M"},
		c{"cluster_size=512,preallocation=metadata", "40M"},
		c{"cluster_size=4k,refcount_bits=64,preallocation=metadata", "70M"},
		c{"cluster_size=512,refcount_bits=64,preallocation=falloc", "9M"},
		c{"", "0"},
		c{"", "1000"},
		c{"cluster_size=512", "16E-512"},
	)
	return out
}

// TestInteropCreateIdentical creates images with qimg and with qemu-img
// and expects identical files.
func TestInteropCreateIdentical(t *testing.T) {
	oracle.QemuImgPath(t)
	for _, c := range createCombos(testing.Short()) {
		name := c.opts + "/" + c.size
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			ours, theirs := filepath.Join(dir, "ours.qcow2"), filepath.Join(dir, "theirs.qcow2")
			size := c.size
			if size == "16E-512" {
				size = fmt.Sprint(int64(1<<63 - 512))
			}
			args := []string{"create", "-q", "-f", "qcow2"}
			if c.opts != "" {
				args = append(args, "-o", c.opts)
			}
			qr := oracle.QemuImg(t, append(args, theirs, size)...)
			err := hostEnv().Create(block.CreateParams{Filename: ours, Format: "qcow2", Size: parseSize(t, size), Options: c.opts})
			if qr.Code != 0 {
				want := strings.TrimSpace(strings.TrimPrefix(qr.Stderr, "qemu-img: "+theirs+": "))
				if err == nil || !strings.Contains(err.Error(), strings.Split(want, "\n")[0]) && !strings.Contains(want, "too large") {
					t.Fatalf("error %v, QEMU %q", err, want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := oracle.SameFile(ours, theirs); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func parseSize(t *testing.T, s string) int64 {
	var n int64
	mult := int64(1)
	switch s[len(s)-1] {
	case 'k':
		mult = 1 << 10
	case 'M':
		mult = 1 << 20
	case 'G':
		mult = 1 << 30
	case 'T':
		mult = 1 << 40
	}
	if mult > 1 {
		s = s[:len(s)-1]
	}
	if _, err := fmt.Sscan(s, &n); err != nil {
		t.Fatal(err)
	}
	return n * mult
}
