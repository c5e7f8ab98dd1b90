package block

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/qimg/qimg/internal/units"
)

// OptionType is the type of a create, amend or open option.
type OptionType int

// Option types, as QEMU's QemuOptType has them.
const (
	OptString OptionType = iota
	OptBool
	OptNumber
	OptSize
)

func (t OptionType) String() string {
	switch t {
	case OptBool:
		return "bool (on/off)"
	case OptNumber:
		return "num"
	case OptSize:
		return "size"
	}
	return "str"
}

// OptionSpec describes one option a driver accepts: its name, type, help text
// and default (the default is printed in "Formatting" lines; empty means
// none). The order of a driver's specs is the order QEMU prints them in.
type OptionSpec struct {
	Name    string
	Type    OptionType
	Help    string
	Default string
}

// MergeSpecs appends the specs of b that a does not already name, as QEMU
// merges a format's create options with its protocol's.
func MergeSpecs(a, b []OptionSpec) []OptionSpec {
	out := append([]OptionSpec(nil), a...)
	for _, s := range b {
		if findSpec(out, s.Name) == nil {
			out = append(out, s)
		}
	}
	return out
}

func findSpec(specs []OptionSpec, name string) *OptionSpec {
	for i := range specs {
		if specs[i].Name == name {
			return &specs[i]
		}
	}
	return nil
}

// HelpText formats specs as `-o help` prints them: one line each, sorted.
func HelpText(specs []OptionSpec) string {
	var lines []string
	for _, s := range specs {
		line := fmt.Sprintf("  %s=<%s>", s.Name, s.Type)
		if s.Help != "" {
			if len(line) < 24 {
				line += strings.Repeat(" ", 24-len(line))
			}
			line += " - " + s.Help
		}
		lines = append(lines, line)
	}
	sort.Strings(lines)
	if len(lines) == 0 {
		return ""
	}
	return strings.Join(lines, "\n") + "\n"
}

// KeyValue is one "key=value" item of an option list.
type KeyValue struct {
	Key, Value string
}

// IsHelpOption reports whether s asks for help ("help" or "?").
func IsHelpOption(s string) bool { return s == "help" || s == "?" }

// SplitOptionList splits "a=1,b=2,flag,noflag" into items, with ",," as an
// escaped comma inside values. An item without "=" is a flag: "name" means
// name=on and "noname" means name=off. help reports whether a bare "help" or
// "?" item was present.
func SplitOptionList(s string) (items []KeyValue, help bool) {
	for p := s; p != ""; {
		n := strings.IndexAny(p, "=,")
		if n < 0 || p[n] != '=' {
			// A flag.
			if n < 0 {
				n = len(p)
			}
			name := p[:n]
			p = p[n:]
			switch {
			case strings.HasPrefix(name, "no"):
				items = append(items, KeyValue{name[2:], "off"})
			default:
				if IsHelpOption(name) {
					help = true
				}
				items = append(items, KeyValue{name, "on"})
			}
		} else {
			name := p[:n]
			var value string
			value, p = SplitValue(p[n+1:])
			items = append(items, KeyValue{name, value})
		}
		p = strings.TrimPrefix(p, ",")
	}
	return items, help
}

// SplitValue reads an option value up to an unescaped comma, where ",,"
// stands for ","; rest starts at the comma that ended the value, or is
// empty.
func SplitValue(p string) (value, rest string) {
	var b strings.Builder
	for {
		i := strings.IndexByte(p, ',')
		if i < 0 {
			b.WriteString(p)
			return b.String(), ""
		}
		if i+1 < len(p) && p[i+1] == ',' {
			b.WriteString(p[:i+1])
			p = p[i+2:]
			continue
		}
		b.WriteString(p[:i])
		return b.String(), p[i:]
	}
}

// Options is a set of option values checked against specs, with QEMU's
// QemuOpts rules: a later value for a name overrides an earlier one, unknown
// names are refused, and each value is parsed by its type when set.
type Options struct {
	specs  []OptionSpec
	values []optValue
}

type optValue struct {
	name string
	str  string
	num  uint64
	b    bool
}

// NewOptions returns an empty option set over specs.
func NewOptions(specs []OptionSpec) *Options {
	return &Options{specs: specs}
}

// Specs returns the specs the set checks against.
func (o *Options) Specs() []OptionSpec { return o.specs }

// ErrInvalidParameter is wrapped by errors for option names a driver does not
// know.
var ErrInvalidParameter = errors.New("invalid parameter")

// OptionError is an option value that does not parse. Hint, when set, is an
// extra explanation QEMU prints on the lines after the error.
type OptionError struct {
	Msg  string
	Hint string
}

func (e *OptionError) Error() string { return e.Msg }

// Parse adds the items of an option list string.
func (o *Options) Parse(list string) error {
	items, _ := SplitOptionList(list)
	for _, kv := range items {
		if kv.Key == "id" {
			continue
		}
		if err := o.Set(kv.Key, kv.Value); err != nil {
			return err
		}
	}
	return nil
}

// Set parses and stores one value.
func (o *Options) Set(name, value string) error {
	spec := findSpec(o.specs, name)
	if spec == nil {
		return &OptionError{Msg: fmt.Sprintf("Invalid parameter '%s'", name)}
	}
	v := optValue{name: name, str: value}
	switch spec.Type {
	case OptBool:
		b, ok := ParseBool(value)
		if !ok {
			return &OptionError{Msg: fmt.Sprintf("Parameter '%s' expects 'on' or 'off'", name)}
		}
		v.b = b
	case OptNumber:
		n, err := units.ParseUint(value)
		if errors.Is(err, units.ErrRange) {
			return &OptionError{Msg: fmt.Sprintf("Value '%s' is too large for parameter '%s'", value, name)}
		}
		if err != nil {
			return &OptionError{Msg: fmt.Sprintf("Parameter '%s' expects a number", name)}
		}
		v.num = n
	case OptSize:
		n, err := units.ParseSize(value)
		if errors.Is(err, units.ErrRange) {
			return &OptionError{Msg: fmt.Sprintf("Value '%s' is out of range for parameter '%s'", value, name)}
		}
		if err != nil {
			return &OptionError{
				Msg:  fmt.Sprintf("Parameter '%s' expects a non-negative number below 2^64", name),
				Hint: "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.\n",
			}
		}
		v.num = n
	}
	o.values = append(o.values, v)
	return nil
}

// SetNumber stores a number without parsing, as QEMU's qemu_opt_set_number.
func (o *Options) SetNumber(name string, n uint64) {
	o.values = append(o.values, optValue{name: name, str: fmt.Sprint(n), num: n})
}

// Delete forgets every value set for name.
func (o *Options) Delete(name string) {
	kept := o.values[:0]
	for _, v := range o.values {
		if v.name != name {
			kept = append(kept, v)
		}
	}
	o.values = kept
}

func (o *Options) find(name string) *optValue {
	for i := len(o.values) - 1; i >= 0; i-- {
		if o.values[i].name == name {
			return &o.values[i]
		}
	}
	return nil
}

// Has reports whether a value was set for name (defaults do not count).
func (o *Options) Has(name string) bool { return o.find(name) != nil }

// String returns the value set for name, else its spec default, else "".
func (o *Options) String(name string) string {
	s, _ := o.Lookup(name)
	return s
}

// Lookup returns the value set for name or its spec default, and whether
// there was either.
func (o *Options) Lookup(name string) (string, bool) {
	if v := o.find(name); v != nil {
		return v.str, true
	}
	if s := findSpec(o.specs, name); s != nil && s.Default != "" {
		return s.Default, true
	}
	return "", false
}

// Bool returns a boolean option, or def when neither set nor defaulted.
func (o *Options) Bool(name string, def bool) bool {
	if v := o.find(name); v != nil {
		return v.b
	}
	if s := findSpec(o.specs, name); s != nil && s.Default != "" {
		b, _ := ParseBool(s.Default)
		return b
	}
	return def
}

// Uint returns a number or size option, or def when neither set nor
// defaulted.
func (o *Options) Uint(name string, def uint64) uint64 {
	if v := o.find(name); v != nil {
		return v.num
	}
	if s := findSpec(o.specs, name); s != nil && s.Default != "" {
		var n uint64
		var err error
		if s.Type == OptSize {
			n, err = units.ParseSize(s.Default)
		} else {
			n, err = units.ParseUint(s.Default)
		}
		if err == nil {
			return n
		}
	}
	return def
}

// Names lists the names that have a value set, in the order first set.
func (o *Options) Names() []string {
	var names []string
	seen := map[string]bool{}
	for _, v := range o.values {
		if !seen[v.name] {
			seen[v.name] = true
			names = append(names, v.name)
		}
	}
	return names
}

// Print formats the options as QEMU's "Formatting" line lists them: every
// spec that has a value or a default, in spec order, sizes and numbers that
// were set printed as signed decimal numbers, strings with commas doubled.
func (o *Options) Print() string {
	var parts []string
	for _, s := range o.specs {
		v := o.find(s.Name)
		var value string
		switch {
		case v != nil:
			value = v.str
		case s.Default != "":
			value = s.Default
		default:
			continue
		}
		switch {
		case s.Type == OptString:
			value = strings.ReplaceAll(value, ",", ",,")
		case (s.Type == OptSize || s.Type == OptNumber) && v != nil:
			// QEMU prints them with PRId64: 2^63 and above come out
			// negative.
			value = fmt.Sprint(int64(v.num))
		}
		parts = append(parts, s.Name+"="+value)
	}
	return strings.Join(parts, " ")
}

// ParseBool parses a boolean the way QEMU does: on/yes/true/y and
// off/no/false/n.
func ParseBool(s string) (bool, bool) {
	switch s {
	case "on", "yes", "true", "y":
		return true, true
	case "off", "no", "false", "n":
		return false, true
	}
	return false, false
}
