package cli

import (
	"strings"
	"testing"
)

func TestIsValidOptionList(t *testing.T) {
	tests := map[string]bool{
		"a=1": true, "a=1,b=2": true, "a=1,,": true, "a=1,,,,": true, "help": true,
		"": false, ",a": false, "a,": false, "a=1,,,": false, ",": false,
	}
	for in, want := range tests {
		if got := isValidOptionList(in); got != want {
			t.Errorf("isValidOptionList(%q) = %v, want %v", in, got, want)
		}
	}
	a, _, errb := newTestApp()
	opts := ""
	for _, arg := range []string{"a=1", "b=2,,x"} {
		if !a.accumulateOptions(&opts, arg) {
			t.Fatalf("accumulateOptions(%q) failed: %s", arg, errb)
		}
	}
	if opts != "a=1,b=2,,x" {
		t.Errorf("accumulated %q", opts)
	}
	if a.accumulateOptions(&opts, "c=3,") || errb.String() != "qemu-img: Invalid option list: c=3,\n" {
		t.Errorf("a trailing comma was accepted: %q", errb)
	}
}

func TestCvtnum(t *testing.T) {
	tests := []struct {
		value  string
		want   int64
		stderr string
	}{
		{"1M", 1 << 20, ""},
		{"0x10k", 16 << 10, "qemu-img: warning: Using a multiplier suffix on hex numbers is deprecated: 0x10k\n"},
		{"-1", 0, "qemu-img: Invalid image size specified. You may use k, M, G, T, P or E suffixes for\n" +
			"qemu-img: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.\n"},
		{"8E", 0, "qemu-img: Invalid image size specified. Must be between 0 and 9223372036854775807.\n"},
		{"16E", 0, "qemu-img: Invalid image size specified. Must be between 0 and 9223372036854775807.\n"},
	}
	for _, tc := range tests {
		a, _, errb := newTestApp()
		got, ok := a.cvtnum("image size", tc.value, 0, maxInt64)
		if ok != (tc.want != 0) || got != tc.want || errb.String() != tc.stderr {
			t.Errorf("cvtnum(%q) = %d, %v, stderr %q", tc.value, got, ok, errb)
		}
	}
}

func TestCreateOptionHelp(t *testing.T) {
	a, out, _ := newTestApp()
	if code := a.printOptionHelp("", "raw", false); code != 0 {
		t.Fatalf("exit %d", code)
	}
	want := "Supported raw options:\n  size=<size>            - Virtual disk size\n\n" +
		"The protocol level may support further options.\nSpecify the target filename to include those options.\n"
	if out.String() != want {
		t.Errorf("raw options:\n%s\nwant\n%s", out, want)
	}
	a, out, _ = newTestApp()
	a.printOptionHelp("x", "raw", true)
	for _, line := range []string{"Supported options:\n", "  extent_size_hint=<size> - Extent size hint for the image file, 0 to disable\n",
		"  nocow=<bool (on/off)>  - Turn off copy-on-write (valid only on btrfs)\n",
		"  preallocation=<str>    - Preallocation mode (allowed values: off, falloc, full)\n"} {
		if !strings.Contains(out.String(), line) {
			t.Errorf("options with a file name lack %q:\n%s", line, out)
		}
	}
	a, _, errb := newTestApp()
	if code := a.printOptionHelp("", "bogus", false); code != 1 || errb.String() != "qemu-img: Unknown file format 'bogus'\n" {
		t.Errorf("unknown format: %d %q", code, errb)
	}
}
