// Command compare times `qemu-img convert` against `qimg convert` on the
// same generated inputs and prints, for each workload, the median wall time
// of each tool, their ratio, and each tool's peak resident memory and CPU
// use.
//
// It needs only Go and the real qemu-img (which also prepares the qcow2
// inputs, so both tools read the same bytes). The runs alternate between
// the tools after one warm-up run each, and the ratio is the median of the
// ratios of each pair of runs, so that it holds when the machine's speed
// drifts; before every run the previous target is deleted, which also
// drops its unwritten pages. Timings come from the wall clock and the
// process's own accounting (wait4 rusage: CPU time, peak RSS).
//
// Usage:
//
//	go run ./bench/compare [-n runs] [-dir dir] [-keep] [-only regexp] [-qimg path] [-qemu-img path]
//
// Workloads qimg cannot run yet (such as a format it does not write) are
// listed as skipped.
package main

import (
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

const (
	mib = int64(1) << 20
	gib = int64(1) << 30
)

// workload is one convert to time.
type workload struct {
	name string
	// input is the name of the generated input.
	input string
	// args are convert's arguments before the input and the output.
	args []string
}

func workloads() []workload {
	return []workload{
		{"raw→raw dense 1G", "dense.raw", []string{"-O", "raw"}},
		{"raw→raw sparse 25% 1G", "sparse.raw", []string{"-O", "raw"}},
		{"raw→raw zeroes 4G", "zero.raw", []string{"-O", "raw"}},
		{"raw→raw dense -C 1G", "dense.raw", []string{"-C", "-O", "raw"}},
		{"raw→raw dense -W 1G", "dense.raw", []string{"-W", "-O", "raw"}},
		{"raw→qcow2 dense 1G", "dense.raw", []string{"-O", "qcow2"}},
		{"raw→qcow2 sparse 25% 1G", "sparse.raw", []string{"-O", "qcow2"}},
		{"raw→qcow2 zeroes 4G", "zero.raw", []string{"-O", "qcow2"}},
		{"qcow2→raw dense 1G", "dense.qcow2", []string{"-O", "raw"}},
		{"qcow2→qcow2 -c zlib 1G", "mixed.qcow2", []string{"-c", "-O", "qcow2", "-o", "compression_type=zlib"}},
		{"qcow2→qcow2 -c zstd 1G", "mixed.qcow2", []string{"-c", "-O", "qcow2", "-o", "compression_type=zstd"}},
	}
}

// sample is one timed run.
type sample struct {
	wall, user, sys time.Duration
	// rss is the peak resident set in bytes.
	rss int64
}

func main() {
	runs := flag.Int("n", 5, "timed runs of each tool per workload")
	dir := flag.String("dir", "", "directory for inputs and outputs (default: a new temporary directory)")
	keep := flag.Bool("keep", false, "keep the directory and its inputs")
	only := flag.String("only", "", "run only the workloads whose name matches this regular expression")
	qimg := flag.String("qimg", "", "qimg binary (default: build ./cmd/qimg)")
	qemuImg := flag.String("qemu-img", "qemu-img", "qemu-img binary")
	flag.Parse()
	if err := run(*runs, *dir, *keep, *only, *qimg, *qemuImg); err != nil {
		fmt.Fprintln(os.Stderr, "compare:", err)
		os.Exit(1)
	}
}

func run(runs int, dir string, keep bool, only, qimg, qemuImg string) error {
	if runs < 1 {
		return errors.New("-n must be at least 1")
	}
	var filter *regexp.Regexp
	if only != "" {
		var err error
		if filter, err = regexp.Compile(only); err != nil {
			return err
		}
	}
	if _, err := exec.LookPath(qemuImg); err != nil {
		return fmt.Errorf("qemu-img not found: %v", err)
	}
	if dir == "" {
		d, err := os.MkdirTemp("", "qimg-bench-")
		if err != nil {
			return err
		}
		dir = d
		if !keep {
			defer os.RemoveAll(dir)
		}
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if qimg == "" {
		qimg = filepath.Join(dir, "qimg")
		build := exec.Command("go", "build", "-trimpath", "-o", qimg, "./cmd/qimg")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("building qimg: %v", err)
		}
	}
	var todo []workload
	for _, w := range workloads() {
		if filter == nil || filter.MatchString(w.name) {
			todo = append(todo, w)
		}
	}
	if err := prepare(dir, qemuImg, todo); err != nil {
		return err
	}
	fmt.Printf("%d CPUs, %s/%s, %d timed runs per tool after one warm-up; medians\n\n", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runs)
	fmt.Printf("| %-26s | %12s | %9s | %7s | %13s | %10s | %13s | %10s |\n",
		"workload", "qemu-img (s)", "qimg (s)", "ratio", "qemu-img RSS", "qimg RSS", "qemu-img CPU", "qimg CPU")
	fmt.Printf("|%s|%s:|%s:|%s:|%s:|%s:|%s:|%s:|\n", strings.Repeat("-", 28), strings.Repeat("-", 13),
		strings.Repeat("-", 10), strings.Repeat("-", 8), strings.Repeat("-", 14), strings.Repeat("-", 11), strings.Repeat("-", 14), strings.Repeat("-", 11))
	for _, w := range todo {
		in := filepath.Join(dir, w.input)
		outQ, outO := filepath.Join(dir, "out.qemu"), filepath.Join(dir, "out.qimg")
		theirs := append(append([]string{qemuImg, "convert"}, w.args...), in, outQ)
		ours := append(append([]string{qimg, "convert"}, w.args...), in, outO)
		// One untimed run of each: the warm-up.
		if _, err := timed(ours, outO); err != nil {
			fmt.Printf("| %-26s | skipped: qimg cannot run it yet (%v) |\n", w.name, err)
			continue
		}
		if _, err := timed(theirs, outQ); err != nil {
			return fmt.Errorf("%s: qemu-img failed: %v", w.name, err)
		}
		var q, o []sample
		for range runs {
			s, err := timed(theirs, outQ)
			if err != nil {
				return fmt.Errorf("%s: qemu-img: %v", w.name, err)
			}
			q = append(q, s)
			if s, err = timed(ours, outO); err != nil {
				return fmt.Errorf("%s: qimg: %v", w.name, err)
			}
			o = append(o, s)
		}
		os.Remove(outQ)
		os.Remove(outO)
		mq, mo := median(q, wallOf), median(o, wallOf)
		fmt.Printf("| %-26s | %12.2f | %9.2f | %6.2f× | %10.0f MiB | %6.0f MiB | %12.0f%% | %9.0f%% |\n",
			w.name, mq.Seconds(), mo.Seconds(), pairRatio(o, q),
			float64(maxRSS(q))/float64(mib), float64(maxRSS(o))/float64(mib),
			cpuPercent(q), cpuPercent(o))
	}
	return nil
}

// timed runs a command after deleting its previous output.
func timed(argv []string, out string) (sample, error) {
	os.Remove(out)
	cmd := exec.Command(argv[0], argv[1:]...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	err := cmd.Run()
	wall := time.Since(start)
	if err != nil {
		return sample{}, fmt.Errorf("%v: %s", err, strings.TrimSpace(stderr.String()))
	}
	s := sample{wall: wall, user: cmd.ProcessState.UserTime(), sys: cmd.ProcessState.SystemTime()}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		s.rss = ru.Maxrss * 1024
	}
	return s, nil
}

func wallOf(s sample) time.Duration { return s.wall }

func median(ss []sample, f func(sample) time.Duration) time.Duration {
	v := make([]time.Duration, len(ss))
	for i, s := range ss {
		v[i] = f(s)
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// pairRatio is the median over the pairs of runs of qimg's wall time over
// qemu-img's.
func pairRatio(ours, theirs []sample) float64 {
	r := make([]float64, len(ours))
	for i := range ours {
		r[i] = ours[i].wall.Seconds() / theirs[i].wall.Seconds()
	}
	slices.Sort(r)
	if len(r)%2 == 1 {
		return r[len(r)/2]
	}
	return (r[len(r)/2-1] + r[len(r)/2]) / 2
}

func maxRSS(ss []sample) int64 {
	var m int64
	for _, s := range ss {
		m = max(m, s.rss)
	}
	return m
}

// cpuPercent is the median CPU time over the median wall time: 200% means
// two cores busy.
func cpuPercent(ss []sample) float64 {
	cpu := median(ss, func(s sample) time.Duration { return s.user + s.sys })
	return 100 * cpu.Seconds() / median(ss, wallOf).Seconds()
}

// prepare generates the inputs the workloads need, unless they exist.
func prepare(dir, qemuImg string, todo []workload) error {
	need := map[string]bool{}
	for _, w := range todo {
		need[w.input] = true
	}
	if need["dense.qcow2"] {
		need["dense.raw"] = true
	}
	if need["mixed.qcow2"] {
		need["mixed.raw"] = true
	}
	gen := []struct {
		name string
		make func(string) error
	}{
		{"dense.raw", func(p string) error { return writeImage(p, gib, 1, denseChunk) }},
		{"sparse.raw", func(p string) error { return writeImage(p, gib, 2, sparseChunk) }},
		{"mixed.raw", func(p string) error { return writeImage(p, gib, 3, mixedChunk) }},
		{"zero.raw", func(p string) error { return writeImage(p, 4*gib, 0, zeroChunk) }},
		{"dense.qcow2", func(p string) error { return qemuConvert(qemuImg, filepath.Join(dir, "dense.raw"), p) }},
		{"mixed.qcow2", func(p string) error { return qemuConvert(qemuImg, filepath.Join(dir, "mixed.raw"), p) }},
	}
	for _, g := range gen {
		p := filepath.Join(dir, g.name)
		if !need[g.name] {
			continue
		}
		if _, err := os.Stat(p); err == nil {
			continue
		}
		fmt.Fprintf(os.Stderr, "generating %s\n", p)
		if err := g.make(p + ".tmp"); err != nil {
			return fmt.Errorf("generating %s: %v", g.name, err)
		}
		if err := os.Rename(p+".tmp", p); err != nil {
			return err
		}
	}
	return nil
}

// chunkFunc fills (or, returning false, leaves as a hole) the chunk at
// index i of an image being generated.
type chunkFunc func(r *rand.Rand, i int64, buf []byte) bool

// denseChunk is random data: incompressible, no zeroes.
func denseChunk(r *rand.Rand, _ int64, buf []byte) bool {
	fillRandom(r, buf)
	return true
}

// sparseChunk holds data in one chunk of four, holes elsewhere.
func sparseChunk(r *rand.Rand, i int64, buf []byte) bool {
	if i%4 != 0 {
		return false
	}
	fillRandom(r, buf)
	return true
}

// zeroChunk writes allocated zeroes.
func zeroChunk(_ *rand.Rand, _ int64, buf []byte) bool {
	clear(buf)
	return true
}

// mixedChunk is compressible data with some entropy, like a file system
// image: text-like runs of words, random bytes, and zero runs.
func mixedChunk(r *rand.Rand, _ int64, buf []byte) bool {
	words := []string{"block ", "image ", "cluster ", "qemu ", "the ", "of ", "data ", "0x1f3a ", "\n", "kernel ", "offset "}
	for i := 0; i < len(buf); {
		switch r.IntN(8) {
		case 0:
			n := min(len(buf)-i, 512+r.IntN(4096))
			fillRandom(r, buf[i:i+n])
			i += n
		case 1:
			n := min(len(buf)-i, 4096*(1+r.IntN(4)))
			clear(buf[i : i+n])
			i += n
		default:
			for end := min(len(buf), i+2048); i < end; {
				i += copy(buf[i:end], words[r.IntN(len(words))])
			}
		}
	}
	return true
}

func fillRandom(r *rand.Rand, buf []byte) {
	for i := 0; i+8 <= len(buf); i += 8 {
		v := r.Uint64()
		buf[i], buf[i+1], buf[i+2], buf[i+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
		buf[i+4], buf[i+5], buf[i+6], buf[i+7] = byte(v>>32), byte(v>>40), byte(v>>48), byte(v>>56)
	}
}

// writeImage writes a raw image of size bytes in 1 MiB chunks.
func writeImage(path string, size int64, seed uint64, chunk chunkFunc) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return err
	}
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	buf := make([]byte, mib)
	for i := int64(0); i*mib < size; i++ {
		if chunk(r, i, buf) {
			if _, err := f.WriteAt(buf, i*mib); err != nil {
				return err
			}
		}
	}
	return f.Sync()
}

// qemuConvert makes a qcow2 input with qemu-img, so that both tools read
// QEMU's layout.
func qemuConvert(qemuImg, in, out string) error {
	cmd := exec.Command(qemuImg, "convert", "-O", "qcow2", in, out)
	cmd.Stderr = os.Stderr
	return cmd.Run()
}
