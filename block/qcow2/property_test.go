package qcow2

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/internal/oracle"
)

// TestInteropRandomOperations applies a random sequence of writes, zero
// writes, discards, compressed writes and reads (at random offsets and
// lengths, crossing cluster and L2 table boundaries) to a qimg image and
// an in-memory model, checking every read; at the end the real qemu-img
// must find the image consistent and read the model's content.
func TestInteropRandomOperations(t *testing.T) {
	oracle.QemuImgPath(t)
	steps := 400
	if testing.Short() {
		steps = 100
	}
	for _, c := range []struct {
		opts    string
		backing bool
	}{
		{"cluster_size=512", false},
		{"cluster_size=512,refcount_bits=2", true},
		{"cluster_size=4k,l2-cache", false},
		{"cluster_size=1k,compat=0.10", false},
		{"cluster_size=2k,compat=0.10", true},
		{"extended_l2=on,cluster_size=16k", true},
		{"compression_type=zstd,cluster_size=2k", false},
		{"lazy_refcounts=on,cluster_size=1k", false},
		{"data_file=data.raw,cluster_size=4k", false},
	} {
		t.Run(c.opts, func(t *testing.T) {
			t.Parallel()
			randomOperations(t, c.opts, c.backing, steps)
		})
	}
}

func randomOperations(t *testing.T, opts string, withBacking bool, steps int) {
	dir := t.TempDir()
	img := filepath.Join(dir, "img.qcow2")
	const size = 3<<20 + 1536
	model := make([]byte, size)
	params := block.CreateParams{Filename: img, Format: "qcow2", Size: size}
	smallCache := false
	if opts == "cluster_size=4k,l2-cache" {
		// A tiny L2 cache with 512-byte entries forces evictions.
		opts, smallCache = "cluster_size=4k", true
	}
	params.Options = opts
	if withBacking {
		base := filepath.Join(dir, "base.qcow2")
		oracle.MustQemuImg(t, "create", "-q", "-f", "qcow2", base, "2M")
		oracle.MustQemuIO(t, "-f", "qcow2", "-c", "write -P 0xbb 0 2M", base)
		copy(model, bytes.Repeat([]byte{0xbb}, 2<<20))
		params.BackingFile, params.BackingFormat = "base.qcow2", "qcow2"
	}
	if bytes.Contains([]byte(opts), []byte("data_file=")) {
		params.Options = "data_file=" + strings.ReplaceAll(filepath.Join(dir, "data.raw"), ",", ",,") + ",cluster_size=4k"
	}
	env := hostEnv()
	if err := env.Create(params); err != nil {
		t.Fatal(err)
	}
	o := hostWrite()
	if smallCache {
		o.DriverOptions = map[string]string{"l2-cache-size": "2048", "l2-cache-entry-size": "512", "refcount-cache-size": "1"}
	}
	n, err := env.Open(img, o)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := n.Info()
	cs := info.ClusterSize
	v2 := bytes.Contains([]byte(opts), []byte("0.10"))
	compressOK := !bytes.Contains([]byte(opts), []byte("data_file"))
	rng := rand.New(rand.NewPCG(uint64(len(opts)), propertySeed))
	randRange := func() (int64, int64) {
		off := rng.Int64N(size)
		var n int64
		switch rng.IntN(3) {
		case 0:
			n = 1 + rng.Int64N(cs)
		case 1:
			n = 1 + rng.Int64N(4*cs)
		default:
			n = 1 + rng.Int64N(200000)
		}
		return off, min(n, size-off)
	}
	comp := n.Image.(block.Compressor)
	for step := 0; step < steps; step++ {
		off, l := randRange()
		switch r := rng.IntN(12); {
		case r < 5:
			p := oracle.RandomBytes(uint64(step), int(l))
			if rng.IntN(2) == 0 {
				clear(p[:l/2])
			}
			if _, err := n.WriteAt(p, off); err != nil {
				t.Fatalf("step %d: write %d at %d: %v", step, l, off, err)
			}
			copy(model[off:], p)
		case r == 5:
			flags := block.ZeroFlags(0)
			if rng.IntN(2) == 0 {
				flags = block.MayUnmap
			}
			if err := n.WriteZeroes(off, l, flags); err != nil {
				t.Fatalf("step %d: zero %d at %d: %v", step, l, off, err)
			}
			clear(model[off : off+l])
		case r == 6:
			if err := n.Discard(off, l); err != nil {
				t.Fatalf("step %d: discard %d at %d: %v", step, l, off, err)
			}
			if v2 && withBacking {
				break // ignored
			}
			start, end := (off+cs-1)/cs*cs, (off+l)/cs*cs
			if off+l == size {
				end = size
			}
			if start < end {
				clear(model[start:end])
			}
		case r == 7 && compressOK:
			coff := off / cs * cs
			cn := min(cs, size-coff)
			if e, err := n.BlockStatus(coff, cn); err != nil || e.Has(block.Allocated) || e.Length < cn {
				break
			}
			p := bytes.Repeat([]byte{byte(step), 1, 2, 3}, int(cn))[:cn]
			if err := comp.WriteCompressed(p, coff); err != nil {
				t.Fatalf("step %d: compressed write at %d: %v", step, coff, err)
			}
			copy(model[coff:], p)
		case r == 8:
			if err := n.Flush(); err != nil {
				t.Fatal(err)
			}
		default:
			got := make([]byte, l)
			if _, err := n.ReadAt(got, off); err != nil {
				t.Fatalf("step %d: read %d at %d: %v", step, l, off, err)
			}
			if !bytes.Equal(got, model[off:off+l]) {
				for j := range got {
					if got[j] != model[off+int64(j)] {
						t.Fatalf("step %d: read at %d: byte %d is %#x, want %#x", step, off, off+int64(j), got[j], model[off+int64(j)])
					}
				}
			}
		}
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	oracle.Check(t, img, "qcow2")
	raw := filepath.Join(dir, "model.raw")
	if err := os.WriteFile(raw, model, 0o644); err != nil {
		t.Fatal(err)
	}
	oracle.Compare(t, img, "qcow2", raw, "raw")
	if got := readAll(t, env, img); !bytes.Equal(got, model) {
		t.Fatal(fmt.Errorf("qimg reads a different content after reopening"))
	}
}

// propertySeed varies the operation sequences between runs when changed.
const propertySeed = 11
