// Package units parses and prints sizes and numbers exactly as QEMU does:
// qemu_strtosz (1024-based suffixes, fractions, hex), strtoull-style numbers
// for number options, and size_to_str ("1.5 GiB") for human output.
package units

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"strconv"
	"strings"
)

// Parse errors.
var (
	// ErrInvalid is a string that is not a number of the expected form.
	ErrInvalid = errors.New("invalid number")
	// ErrRange is a number too large for 64 bits.
	ErrRange = errors.New("number out of range")
)

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}

func digitVal(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'z':
		return int(c-'a') + 10
	case c >= 'A' && c <= 'Z':
		return int(c-'A') + 10
	}
	return 99
}

// strtoull mirrors the C library's strtoull: leading white space, an
// optional sign (a minus negates modulo 2^64), base 0 detecting 0x and 0
// prefixes. It returns the value, the index just past the number (0 when
// nothing was converted) and ErrRange on overflow.
func strtoull(s string, base int) (uint64, int, error) {
	i := 0
	for i < len(s) && isSpace(s[i]) {
		i++
	}
	neg := false
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		neg = s[i] == '-'
		i++
	}
	if (base == 0 || base == 16) && i+1 < len(s) && s[i] == '0' && (s[i+1] == 'x' || s[i+1] == 'X') &&
		i+2 < len(s) && digitVal(s[i+2]) < 16 {
		i += 2
		base = 16
	} else if base == 0 {
		if i < len(s) && s[i] == '0' {
			base = 8
		} else {
			base = 10
		}
	}
	start := i
	var v uint64
	overflow := false
	for i < len(s) && digitVal(s[i]) < base {
		hi, lo := bits.Mul64(v, uint64(base))
		lo, carry := bits.Add64(lo, uint64(digitVal(s[i])), 0)
		if hi != 0 || carry != 0 {
			overflow = true
		}
		v = lo
		i++
	}
	if i == start {
		return 0, 0, nil
	}
	if overflow {
		return math.MaxUint64, i, ErrRange
	}
	if neg {
		v = -v
	}
	return v, i, nil
}

// ParseUint parses a number option as QEMU does (qemu_strtou64 with base 0):
// decimal, 0x hex or 0 octal, the whole string.
func ParseUint(s string) (uint64, error) {
	v, end, err := strtoull(s, 0)
	if err != nil {
		return v, err
	}
	if end == 0 || end != len(s) {
		return 0, ErrInvalid
	}
	return v, nil
}

func suffixMul(c byte) uint64 {
	switch c {
	case 'B', 'b':
		return 1
	case 'K', 'k':
		return 1 << 10
	case 'M', 'm':
		return 1 << 20
	case 'G', 'g':
		return 1 << 30
	case 'T', 't':
		return 1 << 40
	case 'P', 'p':
		return 1 << 50
	case 'E', 'e':
		return 1 << 60
	}
	return 0
}

// parseFraction reads a C strtod-style fraction ".ddd[e±dd]" at the start
// of s, returning its value and length (0 if there is none).
func parseFraction(s string) (float64, int) {
	i := 1
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i == 1 {
		return 0, 0
	}
	j := i
	if j < len(s) && (s[j] == 'e' || s[j] == 'E') {
		k := j + 1
		if k < len(s) && (s[k] == '+' || s[k] == '-') {
			k++
		}
		if k < len(s) && s[k] >= '0' && s[k] <= '9' {
			for k < len(s) && s[k] >= '0' && s[k] <= '9' {
				k++
			}
			j = k
		}
	}
	f, err := strconv.ParseFloat("0"+s[:j], 64)
	if err != nil {
		return 0, 0
	}
	return f, j
}

// ParseSize parses a size as qemu_strtosz does: a decimal (or 0x hex)
// number, an optional fraction, and an optional suffix B, K, M, G, T, P or
// E (any case, 1024-based). Fractions need a suffix other than B. Negative
// numbers are invalid; sizes of 2^64 bytes or more are ErrRange.
func ParseSize(s string) (uint64, error) {
	v, end, err := strtoull(s, 10)
	if err != nil {
		return 0, err
	}
	if end == 0 {
		return 0, ErrInvalid
	}
	if strings.IndexByte(s[:end], '-') >= 0 {
		return 0, ErrInvalid
	}
	var frac uint64
	rest := s[end:]
	switch {
	case v == 0 && rest != "" && (rest[0] == 'x' || rest[0] == 'X'):
		hv, hend, herr := strtoull(s, 16)
		if herr != nil {
			return 0, herr
		}
		if hend == 0 {
			return 0, ErrInvalid
		}
		v, rest = hv, s[hend:]
		if rest != "" && rest[0] == '.' {
			return 0, ErrInvalid
		}
	case rest != "" && rest[0] == '.':
		f, n := parseFraction(rest)
		if n == 0 {
			rest = rest[1:]
		} else {
			if strings.ContainsAny(rest[:n], "eE") {
				return 0, ErrInvalid
			}
			// A fraction that rounds to 1.0 gives 2^64, which the
			// C conversion QEMU does turns into 0 on x86-64.
			if x := f * 0x1p64; x < 0x1p64 {
				frac = uint64(x)
			}
			rest = rest[n:]
		}
	}
	mul := uint64(1)
	if rest != "" {
		if m := suffixMul(rest[0]); m != 0 {
			mul = m
			rest = rest[1:]
		}
	}
	if rest != "" {
		return 0, ErrInvalid
	}
	if mul == 1 {
		if frac != 0 {
			return 0, ErrInvalid
		}
		return v, nil
	}
	// 64.64 fixed point times an integer, rounding a half upward.
	hi, lo := bits.Mul64(v, mul)
	fhi, flo := bits.Mul64(frac, mul)
	lo, c := bits.Add64(lo, fhi, 0)
	hi += c
	lo, c = bits.Add64(lo, flo>>63, 0)
	hi += c
	if hi != 0 {
		return 0, ErrRange
	}
	return lo, nil
}

// HexSuffix reports whether s is a hexadecimal size followed by a
// multiplier suffix ("0x10k"), for which qemu_strtosz warns "Using a
// multiplier suffix on hex numbers is deprecated" whether or not the whole
// string then parses.
func HexSuffix(s string) bool {
	v, end, err := strtoull(s, 10)
	if err != nil || end == 0 || strings.IndexByte(s[:end], '-') >= 0 || v != 0 || end == len(s) ||
		(s[end] != 'x' && s[end] != 'X') {
		return false
	}
	_, hend, herr := strtoull(s, 16)
	if herr != nil || hend == 0 || hend == len(s) {
		return false
	}
	return suffixMul(s[hend]) != 0
}

// FormatSize prints a byte count as QEMU's size_to_str: three significant
// digits and a binary prefix ("1.5 GiB", "196 KiB", "0 B").
func FormatSize(v uint64) string {
	_, e := math.Frexp(float64(v) / (1000.0 / 1024.0))
	e = (e - 1) / 10 * 10
	prefixes := []string{"", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"}
	return fmt.Sprintf("%0.3g %sB", float64(v)/float64(uint64(1)<<e), prefixes[e/10])
}
