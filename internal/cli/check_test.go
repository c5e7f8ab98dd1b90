package cli

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/block/raw"
	"github.com/qimg/qimg/storage"
)

// checkDriver is raw with a scripted consistency check, to test the check
// command's output and exit codes without a real format's checker.
type checkDriver struct {
	*raw.Driver
	results []block.CheckResult // one per Check call
	err     error
	lines   []string
	fixes   *[]block.FixMode
}

func (d *checkDriver) Name() string { return "chk" }

func (d *checkDriver) Probe(*block.ProbeInput) int { return 0 }

func (d *checkDriver) Open(f storage.File, o *block.DriverOptions) (block.Image, error) {
	img, err := d.Driver.Open(f, o)
	if err != nil {
		return nil, err
	}
	return &checkImage{Image: img, d: d}, nil
}

type checkImage struct {
	block.Image
	d     *checkDriver
	calls int
}

func (c *checkImage) Format() string { return "chk" }

func (c *checkImage) Check(fix block.FixMode, report func(string)) (block.CheckResult, error) {
	*c.d.fixes = append(*c.d.fixes, fix)
	for _, l := range c.d.lines {
		report(l)
	}
	if c.d.err != nil {
		return block.CheckResult{}, c.d.err
	}
	r := c.d.results[min(c.calls, len(c.d.results)-1)]
	c.calls++
	return r, nil
}

func TestCheckCommand(t *testing.T) {
	dir := t.TempDir()
	img := dir + "/img"
	if code, _, stderr := runMain("qemu-img", "create", "-q", "-f", "raw", img, "1M"); code != 0 {
		t.Fatal(stderr)
	}
	clean := block.CheckResult{ImageEndOffset: 327680, TotalClusters: 16, AllocatedClusters: 2}
	tests := []struct {
		name    string
		args    []string
		results []block.CheckResult
		err     error
		lines   []string
		code    int
		stdout  string
		stderr  string
		fixes   []block.FixMode
	}{
		{
			name: "clean", args: []string{"check", "-f", "chk", img}, results: []block.CheckResult{clean},
			stdout: "No errors were found on the image.\n2/16 = 12.50% allocated, 0.00% fragmented, 0.00% compressed clusters\nImage end offset: 327680\n",
			fixes:  []block.FixMode{block.FixNone},
		},
		{
			name: "clean json", args: []string{"check", "--output=json", "-f", "chk", img}, results: []block.CheckResult{clean},
			stdout: "{\n    \"image-end-offset\": 327680,\n    \"total-clusters\": 16,\n    \"check-errors\": 0,\n    \"allocated-clusters\": 2,\n    \"filename\": \"" + img + "\",\n    \"format\": \"chk\"\n}\n",
			fixes:  []block.FixMode{block.FixNone},
		},
		{
			name: "quiet", args: []string{"check", "-q", "-f", "chk", img}, results: []block.CheckResult{clean},
			fixes: []block.FixMode{block.FixNone},
		},
		{
			name: "leaks", args: []string{"check", "-f", "chk", img},
			results: []block.CheckResult{{Leaks: 3, ImageEndOffset: 65536, TotalClusters: 16, AllocatedClusters: 4, FragmentedClusters: 1, CompressedClusters: 2}},
			lines:   []string{"Leaked cluster 5 refcount=1 reference=0"},
			code:    3,
			stdout:  "\n3 leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n4/16 = 25.00% allocated, 25.00% fragmented, 50.00% compressed clusters\nImage end offset: 65536\n",
			stderr:  "Leaked cluster 5 refcount=1 reference=0\n",
			fixes:   []block.FixMode{block.FixNone},
		},
		{
			name: "corruptions and leaks", args: []string{"check", "-f", "chk", img},
			results: []block.CheckResult{{Corruptions: 2, Leaks: 1}},
			code:    2,
			stdout:  "\n2 errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n\n1 leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n",
			fixes:   []block.FixMode{block.FixNone},
		},
		{
			name: "internal errors", args: []string{"check", "-f", "chk", img},
			results: []block.CheckResult{{CheckErrors: 1}},
			code:    1,
			stdout:  "\n1 internal errors have occurred during the check.\n",
			stderr:  "qemu-img: Check failed\n",
			fixes:   []block.FixMode{block.FixNone},
		},
		{
			name: "check could not run", args: []string{"check", "-f", "chk", img},
			err: errors.New("Input/output error"), code: 1,
			stderr: "qemu-img: Check failed: Input/output error\n",
			fixes:  []block.FixMode{block.FixNone},
		},
		{
			name: "repair leaks", args: []string{"check", "-r", "leaks", "-f", "chk", img},
			results: []block.CheckResult{{Leaks: 2, LeaksFixed: 2}, clean},
			stdout:  "The following inconsistencies were found and repaired:\n\n    2 leaked clusters\n    0 corruptions\n\nDouble checking the fixed image now...\nNo errors were found on the image.\n2/16 = 12.50% allocated, 0.00% fragmented, 0.00% compressed clusters\nImage end offset: 327680\n",
			fixes:   []block.FixMode{block.FixLeaks, block.FixNone},
		},
		{
			name: "repair all json keeps fixed counts", args: []string{"check", "-r", "all", "--output=json", "-f", "chk", img},
			results: []block.CheckResult{{Corruptions: 1, CorruptionsFixed: 1, Leaks: 1, LeaksFixed: 1}, {}},
			// Key order verified against qemu-img check -r all --output=json.
			stdout: "{\n    \"corruptions-fixed\": 1,\n    \"check-errors\": 0,\n    \"leaks-fixed\": 1,\n    \"filename\": \"" + img + "\",\n    \"format\": \"chk\"\n}\n",
			fixes:  []block.FixMode{block.FixAll, block.FixNone},
		},
		{
			name: "unsupported", args: []string{"check", "-f", "chk", img},
			err: block.ErrUnsupported, code: 63,
			stderr: "qemu-img: This image format does not support checks\n",
			fixes:  []block.FixMode{block.FixNone},
		},
		{
			name: "bad repair mode", args: []string{"check", "-r", "some", img}, code: 1,
			stderr: "qemu-img: Unknown option value for -r (expecting 'leaks' or 'all'): some\nTry 'qemu-img --help' for more information\n",
		},
		{
			name: "bad source cache", args: []string{"check", "-T", "fast", img}, code: 1,
			stderr: "qemu-img: Invalid source cache option: fast\n",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var fixes []block.FixMode
			d := &checkDriver{Driver: raw.New(), results: tc.results, err: tc.err, lines: tc.lines, fixes: &fixes}
			var out, errb bytes.Buffer
			a := &App{Prog: "qemu-img", Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb,
				Env: &block.Env{Registry: block.NewRegistry(raw.New(), d)}}
			code := a.qemuImg(tc.args)
			if code != tc.code || out.String() != tc.stdout || errb.String() != tc.stderr {
				t.Errorf("exit %d\nstdout %q\nstderr %q\nwant %d\n%q\n%q", code, out.String(), errb.String(), tc.code, tc.stdout, tc.stderr)
			}
			if len(fixes) != len(tc.fixes) {
				t.Errorf("check calls %v, want %v", fixes, tc.fixes)
			}
			for i := range min(len(fixes), len(tc.fixes)) {
				if fixes[i] != tc.fixes[i] {
					t.Errorf("check calls %v, want %v", fixes, tc.fixes)
				}
			}
		})
	}
}

func TestInteropCheckCommandLine(t *testing.T) {
	c := func(args ...string) []string { return args }
	raw1M := [][]string{c("create", "-q", "-f", "raw", "r", "1M")}
	runDiffCases(t, []diffCase{
		{name: "raw has no checks", setup: raw1M, args: c("check", "r")},
		{name: "raw has no checks json", setup: raw1M, args: c("check", "--output=json", "r")},
		{name: "raw repair", setup: raw1M, args: c("check", "-r", "all", "r")},
		{name: "missing file", args: c("check", "nonexist")},
		{name: "directory", shell: "mkdir d", args: c("check", "d")},
		{name: "no file", args: c("check")},
		{name: "two files", args: c("check", "a", "b")},
		{name: "bad repair value", setup: raw1M, args: c("check", "-r", "x", "r")},
		{name: "bad output", setup: raw1M, args: c("check", "--output=yaml", "r")},
		{name: "bad source cache", setup: raw1M, args: c("check", "-T", "bogus", "r")},
		{name: "missing -r argument", args: c("check", "r", "-r")},
		{name: "long repair option", setup: raw1M, args: c("check", "--repair=leaks", "r")},
	})
}
