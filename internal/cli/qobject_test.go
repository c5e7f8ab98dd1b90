package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/internal/oracle"
)

func TestQuotedEscapes(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain", `"plain"`},
		{`a"b\c`, `"a\"b\\c"`},
		{"\b\f\n\r\t", `"\b\f\n\r\t"`},
		{"\x00\x01\x1f", `"\u0000\u0001\u001F"`},
		{"\x7f", `"\u007F"`},
		{"é", `"\u00E9"`},
		{"€", `"\u20AC"`},
		{"😀", `"\uD83D\uDE00"`},
		{"\U0010FFFD", `"\uDBFF\uDFFD"`},
		// Invalid UTF-8, decoded as QEMU's mod_utf8_codepoint does.
		{"\xff", `"\uFFFD"`},
		{"\xfe", `"\uFFFD"`},
		{"\x80\x80", `"\uFFFD\uFFFD"`},       // stray continuation bytes, one each
		{"\xe2\x82x", `"\uFFFDx"`},           // truncated: lead and continuation go together
		{"\xe2\x82", `"\uFFFD"`},             // truncated at the end
		{"\xe2x", `"\uFFFDx"`},               // lead only
		{"\xc0\x80", `"\u0000"`},             // modified UTF-8 NUL
		{"\xc1\xbf", `"\uFFFD"`},             // overlong
		{"\xe0\x80\xaf", `"\uFFFD"`},         // overlong '/'
		{"\xed\xa0\x80", `"\uFFFD"`},         // surrogate
		{"\xef\xbf\xbe", `"\uFFFD"`},         // U+FFFE noncharacter
		{"\xef\xb7\x90", `"\uFFFD"`},         // U+FDD0 noncharacter
		{"\xf4\x90\x80\x80", `"\uFFFD"`},     // beyond U+10FFFF
		{"\xf8\x88\x80\x80\x80", `"\uFFFD"`}, // five-byte form
		{"\xfc\x84\x80\x80\x80\x80z", `"\uFFFDz"`},
		{"a\xffb", `"a\uFFFDb"`},
	}
	for _, tc := range tests {
		var w jsonWriter
		w.quoted(tc.in)
		if got := w.b.String(); got != tc.want {
			t.Errorf("quoted(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

func TestJSONShapes(t *testing.T) {
	nested := block.NewDict().Set("a", block.NewDict()).Set("b", []any{})
	tests := []struct {
		v             any
		pretty, plain string
	}{
		{block.NewDict(), "{\n}", "{}"},
		{[]any{}, "[\n]", "[]"},
		{[]any{int64(1), "x", true, nil, 1.5}, "[\n    1,\n    \"x\",\n    true,\n    null,\n    1.5\n]", `[1, "x", true, null, 1.5]`},
		{nested, "{\n    \"a\": {\n    },\n    \"b\": [\n    ]\n}", `{"a": {}, "b": []}`},
		{block.NewDict().Set("n", int64(-5)).Set("u", uint64(1<<63)), "{\n    \"n\": -5,\n    \"u\": 9223372036854775808\n}", `{"n": -5, "u": 9223372036854775808}`},
		{0.1, "0.10000000000000001", "0.10000000000000001"},
	}
	for _, tc := range tests {
		if got := toJSON(tc.v); got != tc.pretty {
			t.Errorf("toJSON(%v) =\n%s\nwant\n%s", tc.v, got, tc.pretty)
		}
		if got := toCompactJSON(tc.v); got != tc.plain {
			t.Errorf("toCompactJSON(%v) = %s, want %s", tc.v, got, tc.plain)
		}
	}
}

func TestQDictOrder(t *testing.T) {
	// Known buckets (tdb_hash % 512), computed with QEMU's tdb_hash.
	for key, bucket := range map[string]uint32{"driver": 239, "offset": 180, "size": 318, "file": 463, "filename": 313} {
		if got := tdbHash(key) % qdictBuckets; got != bucket {
			t.Errorf("bucket of %q = %d, want %d", key, got, bucket)
		}
	}
	// Keys sharing a bucket come out newest first: find two that collide.
	var a, b string
	seen := map[uint32]string{}
	for i := 0; a == ""; i++ {
		k := fmt.Sprintf("k%d", i)
		h := tdbHash(k) % qdictBuckets
		if prev, ok := seen[h]; ok {
			a, b = prev, k
		}
		seen[h] = k
	}
	d := block.NewDict().Set(a, int64(1)).Set(b, int64(2))
	if got, want := toCompactJSON(d), fmt.Sprintf(`{"%s": 2, "%s": 1}`, b, a); got != want {
		t.Errorf("colliding keys: %s, want %s", got, want)
	}
	// Replacing a value keeps the key's place.
	d.Set(a, int64(3))
	if got, want := toCompactJSON(d), fmt.Sprintf(`{"%s": 2, "%s": 3}`, b, a); got != want {
		t.Errorf("after replacing: %s, want %s", got, want)
	}
}

// schemaRank orders keys as QEMU's QAPI schema declares them (ImageInfo,
// ImageCheck, ImageInfoSpecific and its qcow2 branch, LUKS information,
// SnapshotInfo, Qcow2BitmapInfo); within any one object the order matches
// the schema, which decides the output order of keys sharing a bucket.
var schemaRank = []string{
	"id", "name", "vm-state-size", "date-sec", "date-nsec", "vm-clock-sec", "vm-clock-nsec", "icount",
	"granularity", "flags",
	"filename", "format", "check-errors", "image-end-offset", "corruptions", "leaks", "corruptions-fixed",
	"leaks-fixed", "total-clusters", "allocated-clusters", "fragmented-clusters", "compressed-clusters",
	"dirty-flag", "actual-size", "virtual-size", "cluster-size", "encrypted", "compressed", "backing-filename",
	"full-backing-filename", "backing-filename-format", "snapshots", "backing-image", "format-specific",
	"type", "data",
	"compat", "data-file", "data-file-raw", "extended-l2", "lazy-refcounts", "corrupt", "refcount-bits",
	"encrypt", "bitmaps", "compression-type",
	"cipher-alg", "cipher-mode", "ivgen-alg", "ivgen-hash-alg", "hash-alg", "payload-offset",
	"master-key-iters", "uuid", "slots", "active", "iters", "stripes", "key-offset",
}

// fromJSON rebuilds what qemu-img printed as block.Dict values inserted in
// schema order.
func fromJSON(t *testing.T, v any) any {
	t.Helper()
	switch x := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			if !slices.Contains(schemaRank, k) {
				t.Fatalf("key %q is not in the test's schema list", k)
			}
			keys = append(keys, k)
		}
		slices.SortFunc(keys, func(a, b string) int { return slices.Index(schemaRank, a) - slices.Index(schemaRank, b) })
		d := block.NewDict()
		for _, k := range keys {
			d.Set(k, fromJSON(t, x[k]))
		}
		return d
	case []any:
		out := []any{}
		for _, e := range x {
			out = append(out, fromJSON(t, e))
		}
		return out
	case json.Number:
		n, err := x.Int64()
		if err != nil {
			t.Fatalf("number %s: %v", x, err)
		}
		return n
	}
	return v
}

func decodeJSON(t *testing.T, s string) any {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("qemu-img printed bad JSON: %v\n%s", err, s)
	}
	return v
}

// qemuJSONSamples makes images with qemu-img and returns the JSON it prints
// for them: info of qcow2 images with every kind of format-specific data,
// snapshots, a backing chain, and check results.
func qemuJSONSamples(t *testing.T) map[string]string {
	oracle.QemuImgPath(t)
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	must := func(args ...string) { oracle.MustQemuImg(t, args...) }
	must("create", "-q", "-f", "qcow2", p("plain.qcow2"), "64M")
	must("create", "-q", "-f", "qcow2", "-o", "compat=0.10", p("old.qcow2"), "1G")
	must("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on,extended_l2=on,compression_type=zstd,refcount_bits=1,cluster_size=128k", p("features.qcow2"), "10G")
	must("create", "-q", "-f", "qcow2", "-o", "data_file="+p("data.raw")+",data_file_raw=on", p("datafile.qcow2"), "1M")
	names := []string{"plain.qcow2", "old.qcow2", "features.qcow2", "datafile.qcow2", "snaps.qcow2", "top.qcow2", "odd \"name\"\t\x01é\xff.raw"}
	if !testing.Short() {
		// LUKS key setup takes qemu-img seconds.
		must("create", "-q", "-f", "qcow2", "--object", "secret,id=s,data=pw", "-o", "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10", p("enc.qcow2"), "1M")
		names = append(names, "enc.qcow2")
	}
	must("create", "-q", "-f", "qcow2", p("snaps.qcow2"), "16M")
	must("snapshot", "-c", "first", p("snaps.qcow2"))
	must("snapshot", "-c", "a \"quoted\" name é", p("snaps.qcow2"))
	must("bitmap", "--add", p("snaps.qcow2"), "b1")
	must("bitmap", "--add", "-g", "128k", "--disable", p("snaps.qcow2"), "b2")
	must("create", "-q", "-f", "qcow2", "-b", p("plain.qcow2"), "-F", "qcow2", p("top.qcow2"))
	must("create", "-q", "-f", "raw", p("odd \"name\"\t\x01é\xff.raw"), "1M")
	out := map[string]string{}
	for _, name := range names {
		out["info "+name] = must2(t, "info", "--output=json", p(name))
		out["human "+name] = must2(t, "info", p(name))
		out["path "+name] = p(name)
	}
	out["chain top.qcow2"] = must2(t, "info", "--output=json", "--backing-chain", p("top.qcow2"))
	for _, name := range []string{"plain.qcow2", "snaps.qcow2", "features.qcow2"} {
		out["check "+name] = must2(t, "check", "--output=json", p(name))
	}
	return out
}

func must2(t *testing.T, args ...string) string { return oracle.MustQemuImg(t, args...) }

// TestQemuSamples checks qimg's JSON writer and info rendering against
// output of the real qemu-img (one set of images for both).
func TestQemuSamples(t *testing.T) {
	samples := qemuJSONSamples(t)
	t.Run("JSON", func(t *testing.T) { testJSONMatchesQemu(t, samples) })
	t.Run("Info", func(t *testing.T) { testInfoRenderingMatchesQemu(t, samples) })
}

// testJSONMatchesQemu rebuilds the objects qemu-img printed, in schema
// order, and requires byte-identical output: key order (the QDict hash
// order), indentation, escapes and numbers.
func testJSONMatchesQemu(t *testing.T, samples map[string]string) {
	for name, out := range samples {
		if strings.HasPrefix(name, "human ") || strings.HasPrefix(name, "path ") {
			continue
		}
		t.Run(name, func(t *testing.T) {
			v := fromJSON(t, decodeJSON(t, out))
			if got := toJSON(v) + "\n"; got != out {
				t.Errorf("ours:\n%s\nqemu-img:\n%s", got, out)
			}
		})
	}
}

// infoFromJSON builds what `qemu-img info` reports from its JSON.
func infoFromJSON(t *testing.T, d *block.Dict) *imageInfo {
	get := func(k string) any { v, _ := d.Get(k); return v }
	ii := &imageInfo{actualSize: -1}
	ii.filename, _ = get("filename").(string)
	ii.format, _ = get("format").(string)
	ii.virtualSize, _ = get("virtual-size").(int64)
	if v, ok := get("actual-size").(int64); ok {
		ii.actualSize = v
	}
	ii.info.ClusterSize, _ = get("cluster-size").(int64)
	ii.info.Encrypted, _ = get("encrypted").(bool)
	dirty, has := get("dirty-flag").(bool)
	ii.info.Dirty, ii.info.NoDirtyFlag = dirty, !has
	ii.backingFile, _ = get("backing-filename").(string)
	ii.fullBackingFile, _ = get("full-backing-filename").(string)
	ii.backingFormat, ii.hasBackingFormat = get("backing-filename-format").(string)
	if fs, ok := get("format-specific").(*block.Dict); ok {
		data, _ := fs.Get("data")
		ii.info.Specific = data.(*block.Dict)
	}
	if snaps, ok := get("snapshots").([]any); ok {
		for _, s := range snaps {
			sd := s.(*block.Dict)
			g := func(k string) int64 { v, _ := sd.Get(k); n, _ := v.(int64); return n }
			id, _ := sd.Get("id")
			nm, _ := sd.Get("name")
			icount := int64(-1)
			if v, ok := sd.Get("icount"); ok {
				icount = v.(int64)
			}
			ii.info.Snapshots = append(ii.info.Snapshots, block.SnapshotInfo{
				ID: id.(string), Name: nm.(string), VMStateSize: uint64(g("vm-state-size")),
				DateSec: g("date-sec"), DateNsec: g("date-nsec"),
				VMClockNsec: uint64(g("vm-clock-sec"))*1e9 + uint64(g("vm-clock-nsec")), ICount: icount,
			})
		}
	}
	return ii
}

// testInfoRenderingMatchesQemu renders qemu-img's own information about
// qcow2 and raw images through info's human and JSON writers and compares
// with what qemu-img printed: format-specific trees, snapshot tables,
// backing files, escapes in names.
func testInfoRenderingMatchesQemu(t *testing.T, samples map[string]string) {
	if _, off := time.Now().Zone(); off != 0 {
		t.Skip("snapshot dates print in local time; the oracle runs qemu-img in UTC")
	}
	for name, out := range samples {
		base, ok := strings.CutPrefix(name, "info ")
		if !ok {
			continue
		}
		t.Run(base, func(t *testing.T) {
			ii := infoFromJSON(t, fromJSON(t, decodeJSON(t, out)).(*block.Dict))
			if got := toJSON(ii.dict()) + "\n"; got != out {
				t.Errorf("JSON:\nours:\n%s\nqemu-img:\n%s", got, out)
			}
			// JSON cannot carry invalid UTF-8; the human output shows
			// the name's bytes.
			ii.filename = samples["path "+base]
			human := samples["human "+base]
			if got := ii.human(); got != human {
				t.Errorf("human:\nours:\n%s\nqemu-img:\n%s", got, human)
			}
		})
	}
	// The chain: an array of ImageInfo, printed from one array.
	v := fromJSON(t, decodeJSON(t, samples["chain top.qcow2"])).([]any)
	var arr []any
	for _, e := range v {
		arr = append(arr, infoFromJSON(t, e.(*block.Dict)).dict())
	}
	if got := toJSON(arr) + "\n"; got != samples["chain top.qcow2"] {
		t.Errorf("backing chain:\nours:\n%s\nqemu-img:\n%s", got, samples["chain top.qcow2"])
	}
}

func TestDumpHuman(t *testing.T) {
	d := block.NewDict().Set("compat", "1.1").Set("lazy-refcounts", false).
		Set("bitmaps", []any{block.NewDict().Set("name", "b").Set("flags", []any{"auto"})}).
		Set("empty", []any{})
	var b strings.Builder
	dumpHuman(&b, 1, d)
	want := "" +
		"    compat: 1.1\n" +
		"    lazy refcounts: false\n" +
		"    bitmaps:\n" +
		"        [0]:\n" +
		"            flags:\n" +
		"                [0]: auto\n" +
		"            name: b\n" +
		"    empty:\n"
	// The key order is QDict order; check the lines, not their order, for
	// the top level, and the nested block as printed.
	got := b.String()
	for _, line := range strings.SplitAfter(want, "\n") {
		if !strings.Contains(got, line) {
			t.Errorf("dump lacks %q:\n%s", line, got)
		}
	}
	if !bytes.Contains([]byte(got), []byte("        [0]:\n            flags:\n                [0]: auto\n            name: b\n")) &&
		!bytes.Contains([]byte(got), []byte("        [0]:\n            name: b\n            flags:\n                [0]: auto\n")) {
		t.Errorf("nested list misprinted:\n%s", got)
	}
}
