package cli

import (
	"fmt"
	"sort"
	"strings"

	"github.com/qimg/qimg/block"
)

// QEMU prints JSON (and the "Format specific information" tree) from QDicts,
// hash tables whose iteration order is bucket order: keys are ordered by
// tdb_hash(key) % 512, and keys sharing a bucket come newest first. Output
// that matches qemu-img byte for byte has to reproduce that order, so objects
// are built as *block.Dict in QAPI field order and laid out here.

const qdictBuckets = 512

// tdbHash is the hash QEMU's QDict uses for its buckets.
func tdbHash(key string) uint32 {
	value := uint32(0x238F13AF) * uint32(len(key))
	for i := 0; i < len(key); i++ {
		value += uint32(key[i]) << (uint(i) * 5 % 24)
	}
	return 1103515243*value + 12345
}

// qdictOrder returns the indexes of keys (given in insertion order) in the
// order a QDict iterates them.
func qdictOrder(keys []string) []int {
	idx := make([]int, len(keys))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool {
		ba := tdbHash(keys[idx[a]]) % qdictBuckets
		bb := tdbHash(keys[idx[b]]) % qdictBuckets
		if ba != bb {
			return ba < bb
		}
		return idx[a] > idx[b] // newest first within a bucket
	})
	return idx
}

// dictEntries returns a Dict's keys and values in QDict order.
func dictEntries(d *block.Dict) ([]string, []any) {
	var keys []string
	var vals []any
	d.Each(func(k string, v any) {
		keys = append(keys, k)
		vals = append(vals, v)
	})
	order := qdictOrder(keys)
	ok, ov := make([]string, len(keys)), make([]any, len(keys))
	for i, j := range order {
		ok[i], ov[i] = keys[j], vals[j]
	}
	return ok, ov
}

// jsonWriter reproduces QEMU's JSONWriter, in pretty mode (qemu-img's
// --output=json) or compact (json: filenames).
type jsonWriter struct {
	b         strings.Builder
	pretty    bool
	needComma bool
	stack     []bool // true for arrays
}

// newline starts a new line at the current depth in pretty mode.
func (w *jsonWriter) newline() {
	if w.pretty {
		w.b.WriteByte('\n')
		w.b.WriteString(strings.Repeat(" ", len(w.stack)*4))
	}
}

func (w *jsonWriter) commaName(name string) {
	if w.needComma {
		w.b.WriteByte(',')
		if w.pretty {
			w.newline()
		} else {
			w.b.WriteByte(' ')
		}
	} else {
		if w.b.Len() > 0 {
			w.newline()
		}
		w.needComma = true
	}
	if len(w.stack) > 0 && !w.stack[len(w.stack)-1] {
		w.quoted(name)
		w.b.WriteString(": ")
	}
}

func (w *jsonWriter) quoted(s string) {
	w.b.WriteByte('"')
	for len(s) > 0 {
		r, size := modUTF8Codepoint(s)
		s = s[size:]
		switch r {
		case '"':
			w.b.WriteString(`\"`)
		case '\\':
			w.b.WriteString(`\\`)
		case '\b':
			w.b.WriteString(`\b`)
		case '\f':
			w.b.WriteString(`\f`)
		case '\n':
			w.b.WriteString(`\n`)
		case '\r':
			w.b.WriteString(`\r`)
		case '\t':
			w.b.WriteString(`\t`)
		default:
			if r < 0 {
				r = 0xFFFD
			}
			switch {
			case r > 0xFFFF:
				fmt.Fprintf(&w.b, `\u%04X\u%04X`, 0xD800+((r-0x10000)>>10), 0xDC00+((r-0x10000)&0x3FF))
			case r < 0x20 || r >= 0x7F:
				fmt.Fprintf(&w.b, `\u%04X`, r)
			default:
				w.b.WriteByte(byte(r))
			}
		}
	}
	w.b.WriteByte('"')
}

// modUTF8Codepoint decodes the first character of s as QEMU's
// mod_utf8_codepoint does, which decides how invalid text is escaped: it
// returns the code point, or -1 for an invalid sequence, and the bytes
// consumed. Unlike Go's decoder it consumes a malformed sequence's lead
// byte together with the continuation bytes that follow it (up to six-byte
// forms), rejects noncharacters and surrogates, and accepts "\xC0\x80" as
// U+0000 (modified UTF-8).
func modUTF8Codepoint(s string) (rune, int) {
	b := s[0]
	switch {
	case b < 0x80:
		return rune(b), 1
	case b >= 0xFE, b&0x40 == 0:
		return -1, 1 // impossible byte, or a stray continuation byte
	}
	n := 0
	mask := byte(0x80)
	for ; b&mask != 0; mask >>= 1 {
		n++
	}
	cp := rune(b & (mask - 1))
	i := 1
	for ; i < n; i++ {
		if i >= len(s) || s[i]&0xC0 != 0x80 {
			return -1, i // a continuation byte is missing
		}
		cp = cp<<6 | rune(s[i]&0x3F)
	}
	minCP := [...]rune{0x80, 0x800, 0x10000, 0x200000, 0x4000000}
	switch {
	case cp > 0x10FFFF,
		cp >= 0xFDD0 && cp <= 0xFDEF, cp&0xFFFE == 0xFFFE, // noncharacters
		cp >= 0xD800 && cp <= 0xDFFF: // surrogates
		return -1, n
	case cp < minCP[n-2] && !(cp == 0 && n == 2):
		return -1, n // overlong, except \xC0\x80
	}
	return cp, n
}

func (w *jsonWriter) value(name string, v any) {
	switch x := v.(type) {
	case *block.Dict:
		w.commaName(name)
		w.b.WriteByte('{')
		w.stack = append(w.stack, false)
		w.needComma = false
		keys, vals := dictEntries(x)
		for i := range keys {
			w.value(keys[i], vals[i])
		}
		w.stack = w.stack[:len(w.stack)-1]
		w.needComma = true
		w.newline()
		w.b.WriteByte('}')
	case []any:
		w.commaName(name)
		w.b.WriteByte('[')
		w.stack = append(w.stack, true)
		w.needComma = false
		for _, e := range x {
			w.value("", e)
		}
		w.stack = w.stack[:len(w.stack)-1]
		w.needComma = true
		w.newline()
		w.b.WriteByte(']')
	case string:
		w.commaName(name)
		w.quoted(x)
	case bool:
		w.commaName(name)
		fmt.Fprint(&w.b, x)
	case int, int64, uint64, uint32, int32:
		w.commaName(name)
		fmt.Fprint(&w.b, x)
	case float64:
		w.commaName(name)
		w.b.WriteString(formatG17(x))
	case nil:
		w.commaName(name)
		w.b.WriteString("null")
	default:
		panic(fmt.Sprintf("qobject: unsupported value %T", v))
	}
}

// formatG17 formats a double as C's "%.17g".
func formatG17(f float64) string {
	return fmt.Sprintf("%.17g", f)
}

// toJSON renders v as qemu-img's pretty JSON (without a final newline).
func toJSON(v any) string {
	w := jsonWriter{pretty: true}
	w.value("", v)
	return w.b.String()
}

// toCompactJSON renders v as QEMU's qobject_to_json does: on one line,
// items separated by ", ".
func toCompactJSON(v any) string {
	var w jsonWriter
	w.value("", v)
	return w.b.String()
}

// dumpHuman renders a Dict as QEMU's dump_qdict does for "Format specific
// information": keys with dashes turned into spaces, nested objects and
// lists indented four spaces a level, list items as "[i]:".
func dumpHuman(b *strings.Builder, indent int, v any) {
	switch x := v.(type) {
	case *block.Dict:
		keys, vals := dictEntries(x)
		for i, k := range keys {
			composite := isComposite(vals[i])
			sep := " "
			if composite {
				sep = "\n"
			}
			fmt.Fprintf(b, "%s%s:%s", strings.Repeat(" ", indent*4), strings.ReplaceAll(k, "-", " "), sep)
			dumpHuman(b, indent+1, vals[i])
			if !composite {
				b.WriteByte('\n')
			}
		}
	case []any:
		for i, e := range x {
			composite := isComposite(e)
			sep := " "
			if composite {
				sep = "\n"
			}
			fmt.Fprintf(b, "%s[%d]:%s", strings.Repeat(" ", indent*4), i, sep)
			dumpHuman(b, indent+1, e)
			if !composite {
				b.WriteByte('\n')
			}
		}
	case float64:
		b.WriteString(formatG17(x))
	default:
		fmt.Fprint(b, x)
	}
}

func isComposite(v any) bool {
	switch v.(type) {
	case *block.Dict, []any:
		return true
	}
	return false
}
