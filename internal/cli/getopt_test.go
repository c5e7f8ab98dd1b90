package cli

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// scan runs getopt to the end and returns what it saw as strings: "c",
// "c=arg", "?(prev)", ":(prev)", then "--" and the operands.
func scan(args []string, short string, long []longOpt) []string {
	g := newGetopt(args, short, long)
	var out []string
	for {
		c := g.next()
		if c == -1 {
			break
		}
		switch {
		case c == '?' || c == ':':
			out = append(out, fmt.Sprintf("%c(%s)", c, g.prev()))
		case c >= 256:
			out = append(out, fmt.Sprintf("L%d", c))
		default:
			out = append(out, string(rune(c)))
		}
		if g.hasArg {
			out[len(out)-1] += "=" + g.optarg
		}
	}
	out = append(out, "--")
	return append(out, g.operands()...)
}

func TestGetopt(t *testing.T) {
	long := []longOpt{
		{"help", noArgument, 'h'},
		{"output", requiredArgument, 300},
		{"object", requiredArgument, 301},
		{"backing-chain", noArgument, 302},
		{"force-share", noArgument, 'U'},
		{"opt", optionalArgument, 303},
	}
	const short = ":f:hqUo:c::"
	tests := []struct {
		name string
		args string
		want string
	}{
		{"grouped flags", "cmd -qU file", "q U -- file"},
		{"attached argument", "cmd -fqcow2 file", "f=qcow2 -- file"},
		{"separate argument", "cmd -f qcow2 file", "f=qcow2 -- file"},
		{"group ending in argument option", "cmd -qfraw file", "q f=raw -- file"},
		{"group then separate argument", "cmd -qf raw file", "q f=raw -- file"},
		{"options after operands", "cmd file -f raw", "f=raw -- file"},
		{"operands permuted to the end", "cmd a -q b -f raw c", "q f=raw -- a b c"},
		{"double dash ends options", "cmd -q -- -f x", "q -- -f x"},
		{"double dash after operand", "cmd a -- -q", "-- a -q"},
		{"lone dash is an operand", "cmd - -q", "q -- -"},
		{"long with equals", "cmd --output=json f", "L300=json -- f"},
		{"long separate", "cmd --output json f", "L300=json -- f"},
		{"long unique prefix", "cmd --out=json f", "L300=json -- f"},
		{"long prefix ambiguous", "cmd --o json f", "?(--o) -- json f"},
		{"long exact beats prefix", "cmd --opt f", "L303 -- f"},
		{"long no-arg with value", "cmd --help=x f", "?(--help=x) -- f"},
		{"long unknown", "cmd --bogus f", "?(--bogus) -- f"},
		{"long missing argument", "cmd f --output", ":(--output) -- f"},
		{"long optional without value", "cmd --opt x", "L303 -- x"},
		{"long optional with value", "cmd --opt=3 x", "L303=3 -- x"},
		{"short missing argument", "cmd x -f", ":(-f) -- x"},
		{"unknown short last in group", "cmd -qZ x", "q ?(-qZ) -- x"},
		// qemu-img quotes argv[optind-1]; for an unknown option in the
		// middle of a group that is the previous word.
		{"unknown short mid group", "cmd x -Zq", "?(x) q -- x"},
		{"optional short attached", "cmd -c5 x", "c=5 -- x"},
		{"optional short detached", "cmd -c x", "c -- x"},
		{"negative number is an option", "cmd x -5", "?(-5) -- x"},
		{"empty argument is an operand", "cmd  -q", "q -- "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := strings.Join(scan(strings.Split(tc.args, " "), short, long), " ")
			if got != tc.want {
				t.Errorf("args %q: got %q, want %q", tc.args, got, tc.want)
			}
		})
	}
}

func TestGetoptRequireOrder(t *testing.T) {
	got := scan([]string{"qemu-img", "-T", "x", "info", "-f", "raw", "a"}, "+:hVT:", nil)
	want := []string{"T=x", "--", "info", "-f", "raw", "a"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}
