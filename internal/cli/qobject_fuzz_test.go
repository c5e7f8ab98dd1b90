package cli

import (
	"encoding/json"
	"testing"
	"unicode/utf8"

	"github.com/qimg/qimg/block"
)

// FuzzJSONString checks that any string, valid UTF-8 or not, comes out of
// the JSON writer as valid JSON, and that clean text survives the round
// trip.
func FuzzJSONString(f *testing.F) {
	for _, s := range []string{"", "plain", "a\"b\\c", "\x00\x1f\x7f", "é€😀", "\xff\xfe", "\xe2\x82", "\xc0\x80", "\xed\xa0\x80", "\xef\xbf\xbe", "\xfc\x84\x80\x80\x80\x80"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for p := s; p != ""; {
			_, n := modUTF8Codepoint(p)
			if n <= 0 || n > len(p) {
				t.Fatalf("%q: decoder consumed %d bytes", p, n)
			}
			p = p[n:]
		}
		out := toCompactJSON(block.NewDict().Set("k", s))
		var back map[string]string
		if err := json.Unmarshal([]byte(out), &back); err != nil {
			t.Fatalf("%q: invalid JSON %s: %v", s, out, err)
		}
		clean := utf8.ValidString(s)
		for _, r := range s {
			if r >= 0xFDD0 && r <= 0xFDEF || r&0xFFFE == 0xFFFE {
				clean = false
			}
		}
		if clean && back["k"] != s {
			t.Fatalf("%q came back as %q", s, back["k"])
		}
	})
}

// FuzzImageOpts feeds arbitrary --image-opts strings to the parser, which
// must not panic and must name a file whenever it succeeds.
func FuzzImageOpts(f *testing.F) {
	for _, s := range []string{"driver=raw,file.filename=x", "x", "file.filename=a,,b,offset=1", "driver=raw,file.driver=host_device,file.filename=/", "id=1", "noread-only,help"} {
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, s string, forceShare bool) {
		var o block.OpenOptions
		res, err := parseImageOpts(s, &o, forceShare, func(d string) bool { return d == "raw" })
		if err == nil && (res == nil || res.filename == "") {
			t.Fatalf("%q: success without a file name", s)
		}
	})
}
