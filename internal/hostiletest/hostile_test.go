package hostiletest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/internal/mutate"
	"github.com/qimg/qimg/internal/oracle"
)

// Bounds every run must keep. They are hang and runaway detectors, far
// above what a run takes (milliseconds), not speed assertions.
const (
	// runTimeout kills a run that hangs: well above untrusted mode's
	// default time limit, which must stop every run first.
	runTimeout = 60 * time.Second
	// maxRSS is the memory a run may use, as the hidden corpus allows.
	maxRSS = 1 << 30
	// slowLimit is the time limit given to the cases marked Slow, so
	// that they show the deadline ending a run cleanly without taking
	// untrusted mode's default 15 seconds each.
	slowLimit = "1s"
	// parallel is how many cases run at once (the CI machine has two
	// cores).
	parallel = 2
)

// host is what the cases must not reach: a secret file outside their
// directories and a listener that counts connections.
type host struct {
	bin    string
	root   string
	secret string
	token  []byte
	addr   string
	conns  atomic.Int32
}

// newHost plants the secret and starts the listener.
func newHost(t *testing.T) *host {
	t.Helper()
	h := &host{bin: oracle.Qimg(t), root: t.TempDir()}
	dir := filepath.Join(h.root, "host")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	h.secret = filepath.Join(dir, "secret.img")
	h.token = []byte(fmt.Sprintf("QIMG-HOST-SECRET-%x-", sha256.Sum256([]byte(h.root)))[:48])
	if err := os.WriteFile(h.secret, bytes.Repeat(h.token, (256<<10)/len(h.token)), 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = ln.Addr().String()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h.conns.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return h
}

// target is the mutate.Target for this host: a third of the non-essential
// cases (a sixth with -short), or all of them with QIMG_HOSTILE_ALL=1;
// QIMG_HOSTILE_SEED=N explores other random mutations.
func (h *host) target() mutate.Target {
	t := mutate.Target{Secret: h.secret, NetAddr: h.addr, Seed: defaultSeed, Short: testing.Short(), Sample: 3}
	if s, err := strconv.ParseUint(os.Getenv("QIMG_HOSTILE_SEED"), 10, 64); err == nil {
		t.Seed = s
	}
	switch {
	case os.Getenv("QIMG_HOSTILE_ALL") == "1":
		t.Sample = 1
	case testing.Short():
		t.Sample = 6
	}
	return t
}

// essentialCases returns a format's essential cases (the hostile names,
// loops, chains, bombs and huge tables), by name.
func (h *host) essentialCases(t *testing.T, format string) map[string]*mutate.Case {
	t.Helper()
	cases, err := mutate.NewRegistry().GenerateFormat(format, mutate.Target{Secret: h.secret, NetAddr: h.addr, Sample: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	m := make(map[string]*mutate.Case, len(cases))
	for i := range cases {
		m[cases[i].Name] = &cases[i]
	}
	return m
}

// writeCase writes a case's files into dir, which it creates.
func writeCase(t *testing.T, c *mutate.Case, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := c.Write(dir); err != nil {
		t.Fatal(err)
	}
}

// result is one run of the binary.
type result struct {
	args   []string
	code   int
	stdout string
	stderr string
	rss    int64 // bytes
	took   time.Duration
	hung   bool
}

func (r *result) String() string {
	return fmt.Sprintf("qimg %q: exit %d after %v, rss %d MiB\nstdout: %.2000s\nstderr: %.2000s",
		r.args, r.code, r.took.Round(time.Millisecond), r.rss>>20, r.stdout, r.stderr)
}

// run runs the binary in dir with an environment of its own.
func (h *host) run(t *testing.T, dir string, env []string, args ...string) *result {
	t.Helper()
	return h.runTool(t, dir, env, h.bin, args...)
}

// runTool runs a program (the binary, or a wrapper around it) in dir with
// an environment of its own.
func (h *host) runTool(t *testing.T, dir string, env []string, prog string, args ...string) *result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Dir = dir
	cmd.Env = append([]string{"LC_ALL=C", "TZ=UTC", "PATH=" + os.Getenv("PATH"), "HOME=" + h.root}, env...)
	var out, errb limitedBuffer
	out.max, errb.max = 8<<20, 1<<20
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	r := &result{args: args, stdout: out.String(), stderr: errb.String(), took: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case ctx.Err() != nil:
		r.hung, r.code = true, -1
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("running qimg %q: %v", args, err)
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		r.rss = ru.Maxrss << 10
	}
	return r
}

// limitedBuffer keeps the first max bytes written to it.
type limitedBuffer struct {
	bytes.Buffer
	max int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.Len(); room > 0 {
		b.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// crashMarks are what a Go panic, a fatal runtime error or a crash print.
var crashMarks = []string{"panic:", "goroutine ", "fatal error:", "runtime error", "SIGSEGV", "[signal ", "runtime."}

// checkRun checks what every run must satisfy; codes are the exit codes
// that count as a clean outcome of the command.
func (h *host) checkRun(t *testing.T, r *result, codes ...int) {
	t.Helper()
	for _, p := range h.problems(r, codes...) {
		t.Error(p)
	}
}

// problems lists what is wrong with a run: a hang, an exit code not in
// codes, a crash, too much memory, a failure without a message or with one
// not in qemu-img's style, the secret in the output.
func (h *host) problems(r *result, codes ...int) []string {
	if r.hung {
		return []string{fmt.Sprintf("hung (killed after %v): %s", runTimeout, r)}
	}
	var p []string
	if !slices.Contains(codes, r.code) {
		p = append(p, fmt.Sprintf("exit code %d, want one of %v: %s", r.code, codes, r))
	}
	for _, m := range crashMarks {
		if strings.Contains(r.stderr, m) || strings.Contains(r.stdout, m) && m != "runtime." {
			p = append(p, fmt.Sprintf("output holds %q: %s", m, r))
			break
		}
	}
	if r.rss > maxRSS {
		p = append(p, fmt.Sprintf("used %d MiB of memory: %s", r.rss>>20, r))
	}
	if r.code != 0 && strings.TrimSpace(r.stderr) == "" {
		p = append(p, fmt.Sprintf("failed without a message: %s", r))
	}
	if !qemuStyle(r.stderr) {
		p = append(p, fmt.Sprintf("stderr is not in qemu-img's style: %s", r))
	}
	for _, out := range []struct{ name, s string }{{"stdout", r.stdout}, {"stderr", r.stderr}} {
		if h.revealed([]byte(out.s)) {
			p = append(p, fmt.Sprintf("%s reveals the content of the host file %s: %s", out.name, h.secret, r))
		}
	}
	return p
}

// defaultSeed seeds the random mutations unless QIMG_HOSTILE_SEED says
// otherwise.
const defaultSeed = 13

// knownBugs are failures the corpus (with the default seed) finds in code
// another engineer owns and is changing, by "case command", with the
// reason. Their problems are
// logged instead of failing the test; a listed run that has no problem
// fails it, so that the entry goes once the bug is fixed.
var knownBugs = map[string]string{}

// checkCommand checks a run of one command on a case, minding knownBugs.
func (h *host) checkCommand(t *testing.T, c *mutate.Case, cmd string, r *result, codes ...int) {
	t.Helper()
	p := h.problems(r, codes...)
	bug, known := knownBugs[c.Name+" "+cmd]
	known = known && h.target().Seed == defaultSeed
	switch {
	case known && len(p) > 0:
		t.Logf("known bug (%s): %s", bug, p[0])
	case known:
		t.Errorf("known bug %q no longer happens on %s %s: remove it from knownBugs", bug, cmd, c.Name)
	default:
		for _, e := range p {
			t.Error(e)
		}
	}
}

// stderrPrefixes start the lines qemu-img writes to stderr: its own
// messages, a format driver's corruption reports, and check's findings.
var stderrPrefixes = []string{"qimg: ", "qcow2: ", "ERROR", "Leaked", "Warning", "Repairing", "Rebuilding", "The following"}

// qemuStyle reports whether stderr starts as qemu-img's stderr starts.
func qemuStyle(stderr string) bool {
	if stderr == "" {
		return true
	}
	for _, p := range stderrPrefixes {
		if strings.HasPrefix(stderr, p) {
			return true
		}
	}
	return false
}

// revealed reports whether b holds a piece of the secret file's content.
func (h *host) revealed(b []byte) bool { return bytes.Contains(b, h.token[:24]) }

// checkFileNoSecret scans the data of a file for the secret.
func (h *host) checkFileNoSecret(t *testing.T, name string) {
	t.Helper()
	found := false
	err := eachData(name, len(h.token), func(_ int64, b []byte) {
		found = found || h.revealed(b)
	})
	if found {
		t.Errorf("the converted image reveals the content of the host file %s", h.secret)
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Error(err)
	}
}

// scanBufs holds eachData's buffers.
var scanBufs = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// maxScan bounds the data eachData reads from one file.
const maxScan = 512 << 20

// eachData calls fn with the data extents of a file, a megabyte at a time
// (holes are skipped, so a terabyte-sized sparse file is cheap); successive
// pieces overlap by overlap bytes, so that no string that short is split.
func eachData(name string, overlap int, fn func(off int64, b []byte)) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	bp := scanBufs.Get().(*[]byte)
	defer scanBufs.Put(bp)
	buf := *bp
	scanned := int64(0)
	for off := int64(0); off < st.Size(); {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			return nil // no more data
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			hole = st.Size()
		}
		for p := data; p < hole; {
			if scanned >= maxScan {
				return fmt.Errorf("%s holds more than %d MiB of data", name, maxScan>>20)
			}
			n, err := f.ReadAt(buf[:min(int64(len(buf)), hole-p)], p)
			if n > 0 {
				fn(p, buf[:n])
				scanned += int64(n)
			}
			if err != nil && err != io.EOF {
				return err
			}
			if n == 0 || p+int64(n) >= hole {
				break
			}
			p += int64(max(n-overlap, 1))
		}
		off = hole
	}
	return nil
}

// fileState is what read-only commands must leave unchanged.
type fileState struct {
	hash  [32]byte
	mtime time.Time
	size  int64
	mode  fs.FileMode
}

// snapshot records the state of every regular file and link in dir (pipes
// are not opened).
func snapshot(t *testing.T, dir string) map[string]fileState {
	t.Helper()
	s := make(map[string]fileState)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fileState{mtime: fi.ModTime(), size: fi.Size(), mode: fi.Mode()}
		if fi.Mode().IsRegular() {
			hash := sha256.New()
			err := eachData(p, 0, func(off int64, b []byte) {
				fmt.Fprintf(hash, "%d:", off)
				hash.Write(b)
			})
			if err != nil {
				return err
			}
			hash.Sum(st.hash[:0])
		}
		s[p] = st
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func diffStates(before, after map[string]fileState) string {
	var b strings.Builder
	for p, s := range before {
		if a, ok := after[p]; !ok {
			fmt.Fprintf(&b, "%s removed; ", p)
		} else if a != s {
			fmt.Fprintf(&b, "%s changed (size %d -> %d, mtime %v -> %v); ", p, s.size, a.size, s.mtime, a.mtime)
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			fmt.Fprintf(&b, "%s created; ", p)
		}
	}
	return b.String()
}

// readOnly runs a read-only command and checks that it left the case's
// files as they were.
func (h *host) readOnly(t *testing.T, dir string, env []string, args ...string) *result {
	t.Helper()
	before := snapshot(t, dir)
	r := h.run(t, dir, env, args...)
	if d := diffStates(before, snapshot(t, dir)); d != "" {
		t.Errorf("read-only command modified the image: %s\n%s", d, r)
	}
	return r
}

// checkInfoJSON checks that info's JSON output parses and reports sizes a
// caller can trust: no negative virtual or actual size.
func checkInfoJSON(t *testing.T, r *result) {
	t.Helper()
	var info struct {
		VirtualSize *int64 `json:"virtual-size"`
		ActualSize  *int64 `json:"actual-size"`
		ClusterSize *int64 `json:"cluster-size"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &info); err != nil {
		t.Errorf("info --output=json: %v: %s", err, r)
		return
	}
	if info.VirtualSize == nil || *info.VirtualSize < 0 ||
		info.ActualSize != nil && *info.ActualSize < 0 || info.ClusterSize != nil && *info.ClusterSize <= 0 {
		t.Errorf("info reports impossible sizes: %s", r)
	}
}

// casePlan says which commands run on a case.
type casePlan struct {
	// extra adds the commands beyond the four of the hidden corpus
	// (compare, map, measure, info --backing-chain).
	extra bool
}

// runCase writes a case into its directory and runs the commands of the
// hidden corpus on it in untrusted mode: info, info --output=json, check
// and convert -O raw.
func (h *host) runCase(t *testing.T, c *mutate.Case, dir string, plan casePlan) {
	writeCase(t, c, dir)
	c.Files = nil // written: let the memory go
	out := filepath.Join(h.root, "out", filepath.Base(dir))
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(out)
	defer os.RemoveAll(dir)
	env := []string{"QIMG_UNTRUSTED=1"}
	if c.Slow {
		env = append(env, "QIMG_LIMITS=time="+slowLimit)
	}
	h.checkCommand(t, c, "info", h.readOnly(t, dir, env, "info", c.Main), 0, 1)
	r := h.readOnly(t, dir, env, "info", "--output=json", c.Main)
	h.checkCommand(t, c, "info-json", r, 0, 1)
	if r.code == 0 {
		checkInfoJSON(t, r)
	}
	h.checkCommand(t, c, "check", h.readOnly(t, dir, env, "check", c.Main), 0, 1, 2, 3, 63)
	target := filepath.Join(out, "out.raw")
	r = h.readOnly(t, dir, env, "convert", "-O", "raw", c.Main, target)
	h.checkCommand(t, c, "convert", r, 0, 1)
	h.checkFileNoSecret(t, target)
	if c.Named != "" && r.code == 0 {
		t.Errorf("untrusted convert of an image naming %q succeeded: %s", c.Named, r)
	}
	if plan.extra {
		for _, args := range [][]string{
			{"info", "--backing-chain", c.Main},
			{"compare", c.Main, c.Main},
			{"map", "--output=json", c.Main},
			{"measure", "-O", "qcow2", c.Main},
		} {
			r := h.readOnly(t, dir, env, args...)
			codes := []int{0, 1}
			if args[0] == "compare" {
				// Differ, cannot open, block status or read failed.
				codes = []int{0, 1, 2, 3, 4}
			}
			h.checkCommand(t, c, args[0], r, codes...)
		}
	}
}

// TestHostileImages runs every generated case through the four commands of
// the hidden corpus in untrusted mode (and a quarter of them through
// compare, map, measure and info --backing-chain too).
func TestHostileImages(t *testing.T) {
	h := newHost(t)
	cases, err := mutate.NewRegistry().Generate(h.target())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d cases", len(cases))
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i := range cases {
		c := &cases[i]
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			t.Run(c.Name, func(t *testing.T) {
				h.runCase(t, c, filepath.Join(h.root, "cases", fmt.Sprint(i)), casePlan{extra: i%4 == 0})
			})
		}()
	}
	wg.Wait()
	if n := h.conns.Load(); n != 0 {
		t.Errorf("qimg made %d network connections", n)
	}
	if got := snapshot(t, filepath.Dir(h.secret)); len(got) != 2 {
		t.Errorf("the host directory changed: %v", got)
	}
}

// TestDefaultModeRefusesProtocols runs the cases that name other files in
// default mode: plain paths are followed as qemu-img follows them, but a
// json: or protocol name is refused with an error naming the option that
// allows it, and nothing connects anywhere.
func TestDefaultModeRefusesProtocols(t *testing.T) {
	h := newHost(t)
	cases, err := mutate.NewRegistry().Generate(h.target())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for i := range cases {
		c := &cases[i]
		if c.Named == "" || c.UntrustedOnly {
			continue
		}
		n++
		t.Run(c.Name, func(t *testing.T) {
			dir := filepath.Join(h.root, "cases", fmt.Sprint(i))
			writeCase(t, c, dir)
			defer os.RemoveAll(dir)
			target := filepath.Join(h.root, "out.raw")
			defer os.Remove(target)
			r := h.readOnly(t, dir, nil, "convert", "-O", "raw", c.Main, target)
			if r.hung {
				t.Fatalf("hung: %s", r)
			}
			for _, m := range crashMarks {
				if strings.Contains(r.stderr, m) {
					t.Errorf("output holds %q: %s", m, r)
				}
			}
			if block.HasProtocol(c.Named) {
				if r.code != 1 || !strings.Contains(r.stderr, block.AllowProtocolsOption) {
					t.Errorf("protocol name %q not refused with a pointer to %s: %s", c.Named, block.AllowProtocolsOption, r)
				}
			}
		})
	}
	if n == 0 {
		t.Fatal("no cases name other files")
	}
	if c := h.conns.Load(); c != 0 {
		t.Errorf("qimg made %d network connections", c)
	}
}
