package crashtest

import (
	"bufio"
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/internal/drivers"
	"github.com/qimg/qimg/internal/oracle"
)

// wstep is one operation of the write workload.
type wstep struct {
	// kind is 'w' write, 'z' zero write that may unmap, 'Z' zero write
	// that keeps the clusters, 'd' discard, 'c' compressed cluster, 'f'
	// flush.
	kind   byte
	off, n int64
}

// Workload parameters: images have 64 KiB clusters, and the last quarter
// of the disk is kept for compressed writes, each to a cluster of its own.
const (
	wCluster    = 64 * kb
	wSteps      = 320
	compressEnd = imageSize
	compressLo  = imageSize * 3 / 4
)

// workloadSteps returns the seeded sequence of operations.
func workloadSteps(seed uint64) []wstep {
	rng := rand.New(rand.NewPCG(seed, 3))
	var steps []wstep
	nextCompressed := int64(compressLo)
	for k := 0; k < wSteps; k++ {
		if k%8 == 7 {
			steps = append(steps, wstep{kind: 'f'})
			continue
		}
		off := rng.Int64N(compressLo/512) * 512
		n := min(1+rng.Int64N(128*kb), compressLo-off)
		switch r := rng.IntN(20); {
		case r < 14:
			steps = append(steps, wstep{kind: 'w', off: off, n: n})
		case r < 15:
			steps = append(steps, wstep{kind: 'z', off: off, n: n})
		case r < 16:
			steps = append(steps, wstep{kind: 'Z', off: off, n: n})
		case r < 18:
			steps = append(steps, wstep{kind: 'd', off: off, n: n})
		default:
			if nextCompressed+wCluster <= compressEnd {
				steps = append(steps, wstep{kind: 'c', off: nextCompressed, n: wCluster})
				nextCompressed += wCluster
			} else {
				steps = append(steps, wstep{kind: 'w', off: off, n: n})
			}
		}
	}
	return steps
}

// stepData is what step k writes.
func stepData(k int, s wstep) []byte {
	if s.kind == 'c' {
		return bytes.Repeat([]byte(fmt.Sprintf("compressed step %d ", k)), int(s.n/16+1))[:s.n]
	}
	return bytes.Repeat([]byte{byte(k%250 + 1)}, int(s.n))
}

// runWorkload is the write workload, run by the test binary in a process
// of its own: "path,seed" opens the image and runs the steps, printing
// "ack N" once a flush has made the first N steps durable.
func runWorkload(spec string) error {
	parts := strings.Split(spec, ",")
	seed, err := strconv.ParseUint(parts[1], 10, 64)
	if err != nil {
		return err
	}
	env := &block.Env{Registry: drivers.Registry()}
	n, err := env.Open(parts[0], block.OpenOptions{Format: "qcow2", Write: true})
	if err != nil {
		return err
	}
	out := bufio.NewWriter(os.Stdout)
	for k, s := range workloadSteps(seed) {
		switch s.kind {
		case 'w':
			_, err = n.WriteAt(stepData(k, s), s.off)
		case 'z':
			err = n.WriteZeroes(s.off, s.n, block.MayUnmap)
		case 'Z':
			err = n.WriteZeroes(s.off, s.n, 0)
		case 'd':
			err = n.Image.Discard(s.off, s.n)
		case 'c':
			err = n.Image.(block.Compressor).WriteCompressed(stepData(k, s), s.off)
		case 'f':
			if err = n.Flush(); err == nil {
				fmt.Fprintf(out, "ack %d\n", k+1)
				err = out.Flush()
			}
		}
		if err != nil {
			return fmt.Errorf("step %d: %w", k, err)
		}
	}
	return n.Close()
}

// TestKillWriteWorkload kills a process writing to an image (with lazy
// refcounts and without) at seeded random moments: the image checks as
// above, and every byte reads as the flushed state left it or as a later
// step may have.
func TestKillWriteWorkload(t *testing.T) {
	oracle.QemuImgPath(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, lazy := range []string{"off", "on"} {
		t.Run("lazy_refcounts="+lazy, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "w.qcow2")
			prepare := func() {
				os.Remove(path)
				timed(t, qimgCmd(t, dir, "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts="+lazy, "w.qcow2", strconv.Itoa(imageSize)))
			}
			workload := func(seed uint64) *exec.Cmd {
				cmd := exec.Command(self, "-test.run=^$")
				cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%d", workloadEnv, path, seed))
				return cmd
			}
			prepare()
			full := timed(t, workload(99))
			rng := rand.New(rand.NewPCG(crashSeed(), 3))
			killed := 0
			for k := 0; k < kills(); k++ {
				prepare()
				seed := uint64(100 + k)
				cmd := workload(seed)
				var out bytes.Buffer
				cmd.Stdout = &out
				delay := time.Duration(rng.Float64() * float64(full))
				if !runKilled(t, cmd, delay) {
					continue
				}
				killed++
				acked := 0
				for _, l := range strings.Fields(out.String()) {
					if n, err := strconv.Atoi(l); err == nil {
						acked = n
					}
				}
				where := fmt.Sprintf("killed after %v of %v, %d steps acknowledged", delay, full, acked)
				checkKilled(t, where, path)
				verifyWorkload(t, where, path, workloadSteps(seed), acked)
			}
			t.Logf("%d of %d runs killed; a full run takes %v", killed, kills(), full)
		})
	}
}

// verifyWorkload reads the image and checks every byte against the steps:
// the state after the first acked steps, or a value a later step may have
// left.
func verifyWorkload(t *testing.T, where, path string, steps []wstep, acked int) {
	t.Helper()
	want := make([]byte, imageSize)
	for k, s := range steps[:acked] {
		switch s.kind {
		case 'w', 'c':
			copy(want[s.off:], stepData(k, s))
		case 'z', 'Z':
			clear(want[s.off : s.off+s.n])
		case 'd':
			// Whole clusters read as zeroes after a discard.
			if start, end := (s.off+wCluster-1)/wCluster*wCluster, (s.off+s.n)/wCluster*wCluster; start < end {
				clear(want[start:end])
			}
		}
	}
	n := openImage(t, path)
	defer n.Close()
	got := make([]byte, chunk)
	for off := int64(0); off < imageSize; off += chunk {
		if _, err := n.ReadAt(got, off); err != nil {
			t.Fatalf("%s: read at %d: %v", where, off, err)
		}
		if bytes.Equal(got, want[off:off+chunk]) {
			continue
		}
		// The steps after the acknowledged ones that touch this chunk,
		// with what they write.
		var near []laterStep
		for k := acked; k < len(steps); k++ {
			if s := steps[k]; s.kind != 'f' && s.off < off+chunk && off < s.off+s.n {
				near = append(near, laterStep{wstep: s, data: stepData(k, s)})
			}
		}
		for j, v := range got {
			b := off + int64(j)
			if v == want[b] || laterAllows(near, b, v) {
				continue
			}
			t.Fatalf("%s: byte %d reads %#x, flushed as %#x", where, b, v, want[b])
		}
	}
}

// laterStep is a step after the acknowledged ones and what it writes.
type laterStep struct {
	wstep
	data []byte
}

// laterAllows reports whether a step after the acknowledged ones may have
// left byte b reading v.
func laterAllows(later []laterStep, b int64, v byte) bool {
	for _, s := range later {
		if b < s.off || b >= s.off+s.n {
			continue
		}
		switch s.kind {
		case 'd', 'z':
			// A range discarded (or zeroed with unmapping) and not
			// flushed may read as anything: its clusters were freed
			// and may have been reused, as in QEMU.
			return true
		case 'Z':
			if v == 0 {
				return true
			}
		case 'w', 'c':
			if s.data[b-s.off] == v {
				return true
			}
		}
	}
	return false
}
