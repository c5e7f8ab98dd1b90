package cli

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qimg/qimg/internal/oracle"
)

// readmeBlock returns the lines of the first ```sh block after the README
// heading that starts with heading.
func readmeBlock(t *testing.T, heading string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "\n"+heading)
	if !ok {
		t.Fatalf("README.md has no %q section", heading)
	}
	_, rest, ok = strings.Cut(rest, "```sh\n")
	if !ok {
		t.Fatalf("README.md section %q has no sh block", heading)
	}
	block, _, ok := strings.Cut(rest, "```")
	if !ok {
		t.Fatalf("README.md section %q: unterminated sh block", heading)
	}
	var lines []string
	for _, l := range strings.Split(block, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	return lines
}

// TestReadmeGoldenImage runs the README's "Golden image + overlays"
// walk-through as written, with the qimg binary, and checks what it claims.
func TestReadmeGoldenImage(t *testing.T) {
	oracle.QemuImgPath(t)
	oracle.QemuIOPath(t)
	bin := t.TempDir()
	if err := os.Symlink(oracle.Qimg(t), filepath.Join(bin, "qimg")); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	env := append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	lines := readmeBlock(t, "## Golden image + overlays")
	if len(lines) < 8 {
		t.Fatalf("the walk-through has only %d commands", len(lines))
	}
	var chain string
	for _, l := range lines {
		cmd := exec.Command("sh", "-c", l)
		cmd.Dir, cmd.Env = dir, env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", l, err, out)
		}
		if strings.Contains(l, "--backing-chain") {
			chain = string(out)
		}
	}
	p := func(name string) string { return filepath.Join(dir, name) }
	if !strings.Contains(chain, "image: vm1.qcow2\n") || !strings.Contains(chain, "\n\nimage: golden.qcow2\n") {
		t.Errorf("info --backing-chain printed:\n%s", chain)
	}
	for _, f := range []string{"golden.qcow2", "golden-v1.qcow2", "vm1.qcow2", "vm2.qcow2"} {
		oracle.Check(t, p(f), "qcow2")
	}
	// The golden image holds vm1's changes; vm1 is empty and reads as
	// before; vm2 stands alone with the content it had.
	oracle.ReadPattern(t, p("golden.qcow2"), "qcow2", 0x31, 4<<20, 64<<10)
	oracle.ReadPattern(t, p("vm1.qcow2"), "qcow2", 0x31, 4<<20, 64<<10)
	oracle.ReadPattern(t, p("vm1.qcow2"), "qcow2", 0x47, 0, 1<<20)
	if m := oracle.MustQemuImg(t, "map", "--output=json", p("vm1.qcow2")); strings.Contains(m, `"depth": 0, "present": true`) {
		t.Errorf("vm1.qcow2 still allocates clusters after commit:\n%s", m)
	}
	oracle.ReadPattern(t, p("vm2.qcow2"), "qcow2", 0x47, 0, 1<<20)
	oracle.ReadPattern(t, p("vm2.qcow2"), "qcow2", 0, 4<<20, 64<<10)
	if info := oracle.MustQemuImg(t, "info", p("vm2.qcow2")); strings.Contains(info, "backing file") {
		t.Errorf("vm2.qcow2 still has a backing file:\n%s", info)
	}
}
