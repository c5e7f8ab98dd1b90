package oracle

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// LockedBytes lists the bytes of file on which any process holds a
// byte-range lock, sorted, from /proc/locks. Each one-byte range counts
// once however many holders it has.
func LockedBytes(t testing.TB, file string) []int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(file, &st); err != nil {
		t.Fatal(err)
	}
	text, err := os.ReadFile("/proc/locks")
	if err != nil {
		t.Fatalf("reading /proc/locks: %v", err)
	}
	return parseProcLocks(text, unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
}

// parseProcLocks reads /proc/locks lines such as
// "1: OFDLCK ADVISORY  READ -1 fe:00:9979780 203 203" (major and minor in
// hex, the inode in decimal, then the first and last byte). Lines of
// blocked waiters ("6: -> OFDLCK ...") hold nothing and are skipped.
func parseProcLocks(text []byte, major, minor uint32, ino uint64) []int64 {
	id := fmt.Sprintf("%02x:%02x:%d", major, minor, ino)
	var out []int64
	sc := bufio.NewScanner(bytes.NewReader(text))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 8 || f[1] == "->" {
			continue
		}
		if f[len(f)-3] != id {
			continue
		}
		start, err1 := strconv.ParseInt(f[len(f)-2], 10, 64)
		end, err2 := strconv.ParseInt(f[len(f)-1], 10, 64)
		if err1 != nil || err2 != nil || end-start > 1024 {
			continue
		}
		for b := start; b <= end; b++ {
			out = append(out, b)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Holder is a qemu-io process keeping an image open.
type Holder struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{}
	errb  bytes.Buffer
}

// HoldQemuIO starts `qemu-io args...` with a pipe for its standard input,
// so that it keeps its image open, and waits until the open is complete:
// qemu-io answers a command only after opening its image (and taking all
// its locks), so the holder sends one and waits for the reply. The process
// ends when Stop is called or the test ends. A qemu-io that exits early
// fails the test.
func HoldQemuIO(t testing.TB, file string, args ...string) *Holder {
	t.Helper()
	h := &Holder{cmd: exec.Command(QemuIOPath(t), args...), done: make(chan struct{})}
	h.cmd.Env = append(os.Environ(), "LC_ALL=C")
	h.cmd.Stderr = &h.errb
	in, err := h.cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := h.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	h.stdin = in
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		signalled := false
		for sc.Scan() {
			if !signalled && strings.Contains(sc.Text(), holderMarker) {
				close(ready)
				signalled = true
			}
		}
	}()
	go func() {
		h.cmd.Wait()
		close(h.done)
	}()
	t.Cleanup(h.Stop)
	// "open" with no argument only prints usage text containing the
	// marker; it touches no image.
	if _, err := io.WriteString(in, "help open\n"); err != nil {
		t.Fatalf("qemu-io %q: %v: %s", args, err, h.errb.String())
	}
	select {
	case <-ready:
	case <-h.done:
		t.Fatalf("qemu-io %q exited before holding %s: %s", args, file, h.errb.String())
	case <-time.After(20 * time.Second):
		t.Fatalf("qemu-io %q did not open %s: %s", args, file, h.errb.String())
	}
	return h
}

// holderMarker is a line of `help open` output.
const holderMarker = "open the file specified by path"

// Stop closes qemu-io's input, which makes it close the image and exit,
// and waits for it.
func (h *Holder) Stop() {
	h.stdin.Close()
	select {
	case <-h.done:
	case <-time.After(20 * time.Second):
		h.cmd.Process.Kill()
		<-h.done
	}
}
