package units

import (
	"errors"
	"strconv"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want uint64
		err  error
	}{
		{"0", 0, nil},
		{"1", 1, nil},
		{"1b", 1, nil},
		{"1B", 1, nil},
		{"1k", 1024, nil},
		{"1K", 1024, nil},
		{"2m", 2 << 20, nil},
		{"1.5G", 3 << 29, nil},
		{"1.5g", 3 << 29, nil},
		{"1.k", 1024, nil},
		{"1.0", 1, nil},
		{"1T", 1 << 40, nil},
		{"1P", 1 << 50, nil},
		{"1e", 1 << 60, nil},
		{"15E", 15 << 60, nil},
		{"0x10", 16, nil},
		{"0x10k", 16 << 10, nil},
		{" 1M", 1 << 20, nil},
		{"+1M", 1 << 20, nil},
		{"0.5k", 512, nil},
		{"0.0001k", 0, nil}, // 0.1024 rounds down
		{"0.0005k", 1, nil}, // 0.512 rounds half up
		{"18446744073709551615", 1<<64 - 1, nil},
		{"18446744073709551616", 0, ErrRange},
		{"16E", 0, ErrRange},
		{"16384P", 0, ErrRange},
		{"", 0, ErrInvalid},
		{"abc", 0, ErrInvalid},
		{"-1", 0, ErrInvalid},
		{"-0", 0, ErrInvalid},
		{"1.5", 0, ErrInvalid},
		{"0.5b", 0, ErrInvalid},
		{"1kb", 0, ErrInvalid},
		{"1Q", 0, ErrInvalid},
		{"10Q", 0, ErrInvalid},
		{"0x1.8k", 0, ErrInvalid},
		{"1.5e3k", 0, ErrInvalid},
		{"1 k", 0, ErrInvalid},
		{"0x", 0, ErrInvalid},
		{"0x.5", 0, ErrInvalid},
		{"0X1F", 31, nil},
		{"0x10.5k", 0, ErrInvalid},
		{"0xffffffffffffffff", 1<<64 - 1, nil},
		{"0x10000000000000000", 0, ErrRange},
		{"0xffffffffffffffffk", 0, ErrRange},
		{"0x10kz", 0, ErrInvalid},
		{"1.5E", 3 << 59, nil},
		{"1.", 1, nil},
		{"1.0k", 1024, nil},
		{"1.50k", 1536, nil},
		{".5k", 0, ErrInvalid},
		{"1e3", 0, ErrInvalid}, // "e" is the exabyte suffix, then "3" is left over
		{"1k ", 0, ErrInvalid},
		{"\t\n 2k", 2048, nil},
		{"+-1", 0, ErrInvalid},
		{"1.5.k", 0, ErrInvalid},
		// A fraction that rounds to 1.0 counts as 0, as in QEMU on x86-64.
		{"1.9999999999999999999k", 1024, nil},
		{"0.99999999999999999999k", 0, nil},
		{"1.99999999999999999b", 1, nil},
		{"16383.9999P", 18446743961119560932, nil},
		{"15.99999999999999999E", 15 << 60, nil},
		{"15.9999E", 18446628781559090944, nil},
		{"8E", 1 << 63, nil},
		{"1P", 1 << 50, nil},
		{"1t", 1 << 40, nil},
		{"007", 7, nil}, // decimal, not octal
		{"08", 8, nil},
	}
	for _, tc := range tests {
		got, err := ParseSize(tc.in)
		if !errors.Is(err, tc.err) || (tc.err == nil && got != tc.want) {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestHexSuffix(t *testing.T) {
	tests := map[string]bool{
		"0x10k": true, "0X10K": true, "0x10kz": true, "0xffffffffffffffffk": true, " 0x1e": false, "0x1b": false,
		"0x10": false, "0x": false, "0xk": false, "10k": false, "0x1ffffffffffffffffk": false, "-0x10k": false,
		"0x10.5k": false, "00x10k": false, "": false,
	}
	for in, want := range tests {
		if got := HexSuffix(in); got != want {
			t.Errorf("HexSuffix(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestParseUint(t *testing.T) {
	tests := []struct {
		in   string
		want uint64
		err  error
	}{
		{"16", 16, nil},
		{"0x10", 16, nil},
		{"010", 8, nil},
		{"0", 0, nil},
		{" 7", 7, nil},
		{"-1", 1<<64 - 1, nil},
		{"99999999999999999999", 0, ErrRange},
		{"", 0, ErrInvalid},
		{"12k", 0, ErrInvalid},
		{"x", 0, ErrInvalid},
		{"08", 0, ErrInvalid},
	}
	for _, tc := range tests {
		got, err := ParseUint(tc.in)
		if !errors.Is(err, tc.err) || (tc.err == nil && got != tc.want) {
			t.Errorf("ParseUint(%q) = %d, %v; want %d, %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestFormatSize(t *testing.T) {
	tests := []struct {
		in   uint64
		want string
	}{
		{0, "0 B"},
		{1, "1 B"},
		{512, "512 B"},
		{999, "999 B"},
		{1000, "0.977 KiB"},
		{1023, "0.999 KiB"},
		{4096, "4 KiB"},
		{200704, "196 KiB"},
		{1 << 20, "1 MiB"},
		{3 << 29, "1.5 GiB"},
		{1 << 40, "1 TiB"},
		{1<<64 - 1, "16 EiB"},
	}
	for _, tc := range tests {
		if got := FormatSize(tc.in); got != tc.want {
			t.Errorf("FormatSize(%d) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"1", "1.5G", "0x10", "-1", "1.k", "16E", " +3e"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseSize(s)
		// Plain decimal digits must agree with strconv.
		if s != "" && strings.Trim(s, "0123456789") == "" {
			want, werr := strconv.ParseUint(s, 10, 64)
			if (werr == nil) != (err == nil) || v != want && werr == nil {
				t.Fatalf("ParseSize(%q) = %d, %v; strconv says %d, %v", s, v, err, want, werr)
			}
		}
		// With a K suffix the value is 1024 times the plain one.
		if k, kerr := ParseSize(s + "k"); err == nil && kerr == nil && strings.Trim(s, "0123456789") == "" && k != v*1024 {
			t.Fatalf("ParseSize(%qk) = %d, want %d", s, k, v*1024)
		}
	})
}
