package block

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

func TestSplitOptionList(t *testing.T) {
	kv := func(pairs ...string) []KeyValue {
		var out []KeyValue
		for i := 0; i < len(pairs); i += 2 {
			out = append(out, KeyValue{pairs[i], pairs[i+1]})
		}
		return out
	}
	tests := []struct {
		in   string
		want []KeyValue
		help bool
	}{
		{"", nil, false},
		{"a=1", kv("a", "1"), false},
		{"a=1,b=2", kv("a", "1", "b", "2"), false},
		{"a=1,,2", kv("a", "1,2"), false},
		{"a=1,,,b=2", kv("a", "1,", "b", "2"), false},
		{"a=,,", kv("a", ","), false},
		{"a=x,,,,y", kv("a", "x,,y"), false},
		{"a=", kv("a", ""), false},
		{"a=,b=", kv("a", "", "b", ""), false},
		{"=x", kv("", "x"), false},
		{"a=1,", kv("a", "1"), false},
		{"a=b=c", kv("a", "b=c"), false},
		{"flag", kv("flag", "on"), false},
		{"noflag", kv("flag", "off"), false},
		{"no", kv("", "off"), false},
		{"nocow,nonocow", kv("cow", "off", "nocow", "off"), false},
		{"a,b", kv("a", "on", "b", "on"), false},
		{"help", kv("help", "on"), true},
		{"?", kv("?", "on"), true},
		{"size=1M,help", kv("size", "1M", "help", "on"), true},
		{"help=on", kv("help", "on"), false},
		{"nohelp", kv("help", "off"), false},
		{"a=help", kv("a", "help"), false},
	}
	for _, tc := range tests {
		got, help := SplitOptionList(tc.in)
		if !reflect.DeepEqual(got, tc.want) || help != tc.help {
			t.Errorf("SplitOptionList(%q) = %v, %v; want %v, %v", tc.in, got, help, tc.want, tc.help)
		}
	}
}

var testSpecs = []OptionSpec{
	{Name: "size", Type: OptSize, Help: "Virtual disk size"},
	{Name: "count", Type: OptNumber, Help: "A number"},
	{Name: "flag", Type: OptBool, Help: "A flag", Default: "off"},
	{Name: "name", Type: OptString},
	{Name: "mode", Type: OptString, Help: "Mode", Default: "fast"},
	{Name: "cluster_size", Type: OptSize, Help: "qcow2 cluster size", Default: "65536"},
}

func TestOptionsSetErrors(t *testing.T) {
	const sizeHint = "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.\n"
	tests := []struct {
		name, value string
		msg, hint   string
	}{
		{"bogus", "1", "Invalid parameter 'bogus'", ""},
		{"", "1", "Invalid parameter ''", ""},
		{"flag", "maybe", "Parameter 'flag' expects 'on' or 'off'", ""},
		{"flag", "", "Parameter 'flag' expects 'on' or 'off'", ""},
		{"flag", "ON", "Parameter 'flag' expects 'on' or 'off'", ""},
		{"count", "abc", "Parameter 'count' expects a number", ""},
		{"count", "1k", "Parameter 'count' expects a number", ""},
		{"count", "", "Parameter 'count' expects a number", ""},
		{"count", "99999999999999999999", "Value '99999999999999999999' is too large for parameter 'count'", ""},
		{"size", "abc", "Parameter 'size' expects a non-negative number below 2^64", sizeHint},
		{"size", "-1", "Parameter 'size' expects a non-negative number below 2^64", sizeHint},
		{"size", "1.5", "Parameter 'size' expects a non-negative number below 2^64", sizeHint},
		{"size", "", "Parameter 'size' expects a non-negative number below 2^64", sizeHint},
		{"size", "16E", "Value '16E' is out of range for parameter 'size'", ""},
		{"size", "18446744073709551616", "Value '18446744073709551616' is out of range for parameter 'size'", ""},
	}
	for _, tc := range tests {
		o := NewOptions(testSpecs)
		err := o.Set(tc.name, tc.value)
		var oe *OptionError
		if !errors.As(err, &oe) || oe.Msg != tc.msg || oe.Hint != tc.hint || err.Error() != tc.msg {
			t.Errorf("Set(%q, %q) = %#v, want %q hint %q", tc.name, tc.value, err, tc.msg, tc.hint)
			continue
		}
		if oe.ErrorHint() != tc.hint {
			t.Errorf("ErrorHint = %q", oe.ErrorHint())
		}
		if o.Has(tc.name) {
			t.Errorf("Set(%q, %q) failed but stored a value", tc.name, tc.value)
		}
	}
}

func TestOptionsValues(t *testing.T) {
	o := NewOptions(testSpecs)
	if err := o.Parse("id=x,size=1k,count=0x10,flag,name=a,,b"); err != nil {
		t.Fatal(err)
	}
	if o.Has("id") {
		t.Error("id was stored")
	}
	if got := o.Uint("size", 0); got != 1024 {
		t.Errorf("size = %d", got)
	}
	if got := o.Uint("count", 0); got != 16 {
		t.Errorf("count = %d", got)
	}
	if !o.Bool("flag", false) {
		t.Error("flag not set by a bare flag item")
	}
	if got := o.String("name"); got != "a,b" {
		t.Errorf("name = %q", got)
	}
	// Defaults count for String, Bool, Uint and Lookup, not for Has.
	if got := o.String("mode"); got != "fast" || o.Has("mode") {
		t.Errorf("mode = %q, Has %v", got, o.Has("mode"))
	}
	if got := o.Uint("cluster_size", 1); got != 65536 {
		t.Errorf("cluster_size default = %d", got)
	}
	if v, ok := o.Lookup("nothing"); v != "" || ok {
		t.Errorf("Lookup of an unknown name = %q, %v", v, ok)
	}
	if got := o.Uint("nothing", 7); got != 7 {
		t.Errorf("Uint fallback = %d", got)
	}
	if o.Bool("nothing", true) != true {
		t.Error("Bool fallback lost")
	}
	// A later value overrides an earlier one; Names keeps first-set order.
	if err := o.Parse("size=2k,noflag"); err != nil {
		t.Fatal(err)
	}
	if o.Uint("size", 0) != 2048 || o.Bool("flag", true) {
		t.Errorf("later values did not win: size %d flag %v", o.Uint("size", 0), o.Bool("flag", true))
	}
	if got := o.Names(); !reflect.DeepEqual(got, []string{"size", "count", "flag", "name"}) {
		t.Errorf("Names = %v", got)
	}
	o.Delete("size")
	if o.Has("size") || o.Uint("size", 5) != 5 {
		t.Error("Delete left a value")
	}
	o.SetNumber("size", 1<<20)
	if o.Uint("size", 0) != 1<<20 || o.String("size") != "1048576" {
		t.Errorf("SetNumber: %d %q", o.Uint("size", 0), o.String("size"))
	}
	if !reflect.DeepEqual(o.Specs(), testSpecs) {
		t.Error("Specs differ")
	}
	// Parse stops at the first bad item.
	if err := o.Parse("count=1,bogus=2"); err == nil || err.Error() != "Invalid parameter 'bogus'" {
		t.Errorf("Parse with an unknown name: %v", err)
	}
}

func TestOptionsPrint(t *testing.T) {
	specs := []OptionSpec{
		{Name: "size", Type: OptSize},
		{Name: "backing_file", Type: OptString},
		{Name: "flag", Type: OptBool},
		{Name: "count", Type: OptNumber},
		{Name: "compat", Type: OptString, Default: "1.1"},
		{Name: "cluster_size", Type: OptSize, Default: "65536"},
		{Name: "unset", Type: OptString},
	}
	tests := []struct {
		list string
		want string
	}{
		{"", "compat=1.1 cluster_size=65536"},
		{"size=1k", "size=1024 compat=1.1 cluster_size=65536"},
		{"size=1.5M", "size=1572864 compat=1.1 cluster_size=65536"},
		{"size=0x10", "size=16 compat=1.1 cluster_size=65536"},
		// QEMU prints sizes and numbers as int64.
		{"size=9E", "size=-8070450532247928832 compat=1.1 cluster_size=65536"},
		{"size=8E", "size=-9223372036854775808 compat=1.1 cluster_size=65536"},
		{"count=-1", "count=-1 compat=1.1 cluster_size=65536"},
		{"count=010", "count=8 compat=1.1 cluster_size=65536"},
		// Strings have their commas doubled; booleans print as given.
		{"backing_file=a,,b", "backing_file=a,,b compat=1.1 cluster_size=65536"},
		{"flag=yes", "flag=yes compat=1.1 cluster_size=65536"},
		{"flag", "flag=on compat=1.1 cluster_size=65536"},
		{"noflag", "flag=off compat=1.1 cluster_size=65536"},
		// Spec order, not the order given; the last value wins.
		{"compat=0.10,size=1,cluster_size=4k,size=2", "size=2 compat=0.10 cluster_size=4096"},
	}
	for _, tc := range tests {
		o := NewOptions(specs)
		if err := o.Parse(tc.list); err != nil {
			t.Fatalf("Parse(%q): %v", tc.list, err)
		}
		if got := o.Print(); got != tc.want {
			t.Errorf("Print after %q = %q, want %q", tc.list, got, tc.want)
		}
	}
}

func TestHelpText(t *testing.T) {
	specs := []OptionSpec{
		{Name: "size", Type: OptSize, Help: "Virtual disk size"},
		{Name: "a_rather_long_option_name", Type: OptBool, Help: "Long"},
		{Name: "nohelp", Type: OptNumber},
		{Name: "backing_file", Type: OptString, Help: "File name of a base image"},
	}
	want := "" +
		"  a_rather_long_option_name=<bool (on/off)> - Long\n" +
		"  backing_file=<str>     - File name of a base image\n" +
		"  nohelp=<num>\n" +
		"  size=<size>            - Virtual disk size\n"
	if got := HelpText(specs); got != want {
		t.Errorf("HelpText =\n%s\nwant\n%s", got, want)
	}
	if got := HelpText(nil); got != "" {
		t.Errorf("HelpText(nil) = %q", got)
	}
	for typ, name := range map[OptionType]string{OptString: "str", OptBool: "bool (on/off)", OptNumber: "num", OptSize: "size"} {
		if typ.String() != name {
			t.Errorf("%d.String() = %q", typ, typ.String())
		}
	}
}

func TestMergeSpecs(t *testing.T) {
	a := []OptionSpec{{Name: "size", Help: "format's"}, {Name: "compat"}}
	got := MergeSpecs(a, FileProtocolSpecs())
	var names []string
	for _, s := range got {
		names = append(names, s.Name)
	}
	if want := []string{"size", "compat", "nocow", "preallocation", "extent_size_hint"}; !reflect.DeepEqual(names, want) {
		t.Errorf("merged names %v, want %v", names, want)
	}
	if got[0].Help != "format's" {
		t.Error("the format's spec did not win")
	}
	got[0].Name = "changed"
	if a[0].Name != "size" {
		t.Error("MergeSpecs aliases its input")
	}
	fp := FileProtocolSpecs()
	fp[0].Name = "changed"
	if FileProtocolSpecs()[0].Name != "size" {
		t.Error("FileProtocolSpecs returns shared storage")
	}
}

func TestParseBool(t *testing.T) {
	for _, s := range []string{"on", "yes", "true", "y"} {
		if b, ok := ParseBool(s); !b || !ok {
			t.Errorf("ParseBool(%q) = %v, %v", s, b, ok)
		}
	}
	for _, s := range []string{"off", "no", "false", "n"} {
		if b, ok := ParseBool(s); b || !ok {
			t.Errorf("ParseBool(%q) = %v, %v", s, b, ok)
		}
	}
	for _, s := range []string{"", "On", "1", "0", "enable"} {
		if _, ok := ParseBool(s); ok {
			t.Errorf("ParseBool(%q) accepted", s)
		}
	}
	if !IsHelpOption("help") || !IsHelpOption("?") || IsHelpOption("HELP") || IsHelpOption("") {
		t.Error("IsHelpOption is wrong")
	}
}

func TestParsePrealloc(t *testing.T) {
	for in, want := range map[string]string{"": "off", "off": "off", "metadata": "metadata", "falloc": "falloc", "full": "full"} {
		if got, err := ParsePrealloc(in); got != want || err != nil {
			t.Errorf("ParsePrealloc(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParsePrealloc("Full"); err == nil || err.Error() != "invalid parameter value: Full" {
		t.Errorf("ParsePrealloc(Full): %v", err)
	}
}

func TestCheckRange(t *testing.T) {
	tests := []struct {
		size, off, n int64
		ok           bool
	}{
		{100, 0, 100, true},
		{100, 0, 0, true},
		{100, 100, 0, true},
		{100, 99, 1, true},
		{100, 99, 2, false},
		{100, 101, 0, false},
		{100, -1, 1, false},
		{100, 0, -1, false},
		{100, 50, 1 << 62, false},
		{1 << 62, 1<<62 - 1, 1 << 62, false}, // off+n overflows int64
		{0, 0, 0, true},
		{0, 0, 1, false},
	}
	for _, tc := range tests {
		err := CheckRange(tc.size, tc.off, tc.n)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrRange)) {
			t.Errorf("CheckRange(%d, %d, %d) = %v", tc.size, tc.off, tc.n, err)
		}
	}
}

func TestFormatError(t *testing.T) {
	e := &FormatError{Field: "L1 table offset", Offset: 40, Value: 0x123, Reason: "beyond end of file"}
	if e.Error() != "L1 table offset 0x123: beyond end of file" || !errors.Is(e, ErrCorrupt) {
		t.Errorf("FormatError = %q", e)
	}
	e = &FormatError{Field: "cluster bits", Value: 40, Err: ErrUnsupported}
	if e.Error() != "invalid cluster bits 0x28" || !errors.Is(e, ErrUnsupported) || errors.Is(e, ErrCorrupt) {
		t.Errorf("FormatError = %q", e)
	}
	wrapped := fmt.Errorf("x.qcow2: %w", e)
	var fe *FormatError
	if !errors.As(wrapped, &fe) || fe.Field != "cluster bits" {
		t.Error("errors.As lost the FormatError")
	}
}

func TestExtentHas(t *testing.T) {
	e := Extent{Status: Allocated | Data}
	if !e.Has(Allocated) || !e.Has(Allocated|Data) || e.Has(Zero) || e.Has(Data|Zero) {
		t.Errorf("Has is wrong for %v", e.Status)
	}
}

func TestHintedError(t *testing.T) {
	base := errors.New("Backing file specified without backing format")
	e := &HintedError{Err: base, Hint: "Detected format of raw."}
	if e.Error() != base.Error() || e.ErrorHint() != "Detected format of raw." || !errors.Is(e, base) {
		t.Errorf("HintedError = %q / %q", e, e.ErrorHint())
	}
	if !strings.Contains(ErrTooBig.Error(), "too large") {
		t.Errorf("ErrTooBig = %q", ErrTooBig)
	}
}
