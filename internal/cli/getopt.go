package cli

import (
	"fmt"
	"strings"
)

// Argument kinds of a long option.
const (
	noArgument       = 0
	requiredArgument = 1
	optionalArgument = 2
)

// longOpt is one entry of a getopt_long option table.
type longOpt struct {
	name   string
	hasArg int
	val    int
}

// getopt scans arguments as GNU getopt_long does, because qemu-img's
// behaviour (and the text of its errors, which quote argv[optind-1]) follows
// from it: short options may be grouped and take attached or separate
// arguments, long options may be abbreviated to a unique prefix and take
// "=value" or a separate argument, options and operands may be mixed (the
// operands are moved to the end), and "--" ends the options. An option
// string starting with '+' stops at the first operand; a ':' (after any '+')
// makes a missing argument return ':' rather than '?'.
type getopt struct {
	args      []string // args[0] is the command name; permuted in place
	shortopts string
	longopts  []longOpt
	requireOrder,
	colon bool

	optind   int
	optarg   string
	hasArg   bool
	nextchar string
	inWord   bool // nextchar is the rest of a short-option group
	first    int  // first_nonopt
	last     int  // last_nonopt
	// errText is what glibc's getopt prints (after "argv[0]: ") for the
	// last error it returned, when the option string does not start
	// with ':' and so asks it to report errors itself.
	errText string
}

func newGetopt(args []string, shortopts string, longopts []longOpt) *getopt {
	g := &getopt{args: args, longopts: longopts, optind: 1, first: 1, last: 1}
	if strings.HasPrefix(shortopts, "+") {
		g.requireOrder = true
		shortopts = shortopts[1:]
	}
	if strings.HasPrefix(shortopts, ":") {
		g.colon = true
	}
	g.shortopts = shortopts
	return g
}

func (g *getopt) nonOption(i int) bool {
	a := g.args[i]
	return len(a) < 2 || a[0] != '-'
}

// exchange moves the options in [last, optind) before the operands in
// [first, last), as glibc's exchange does.
func (g *getopt) exchange() {
	nonopts := append([]string(nil), g.args[g.first:g.last]...)
	opts := g.args[g.last:g.optind]
	n := copy(g.args[g.first:], opts)
	copy(g.args[g.first+n:], nonopts)
	g.first += g.optind - g.last
	g.last = g.optind
}

// next returns the next option character (or long option value), '?' for
// an unknown option or one given an argument it does not take, ':' for a
// missing argument (when the option string starts with ':'), or -1 when
// the options are done; the operands are then args[optind:].
func (g *getopt) next() int {
	argc := len(g.args)
	g.optarg, g.hasArg = "", false
	if !g.inWord || g.nextchar == "" {
		g.inWord = false
		if g.last > g.optind {
			g.last = g.optind
		}
		if g.first > g.optind {
			g.first = g.optind
		}
		if !g.requireOrder {
			if g.first != g.last && g.last != g.optind {
				g.exchange()
			} else if g.last != g.optind {
				g.first = g.optind
			}
			for g.optind < argc && g.nonOption(g.optind) {
				g.optind++
			}
			g.last = g.optind
		}
		if g.optind != argc && g.args[g.optind] == "--" {
			g.optind++
			if g.first != g.last && g.last != g.optind {
				g.exchange()
			} else if g.first == g.last {
				g.first = g.optind
			}
			g.last = argc
			g.optind = argc
		}
		if g.optind == argc {
			if g.first != g.last {
				g.optind = g.first
			}
			return -1
		}
		if g.nonOption(g.optind) {
			// Only reached in require-order mode.
			return -1
		}
		if g.longopts != nil && g.args[g.optind][1] == '-' {
			return g.longOption()
		}
		g.nextchar = g.args[g.optind][1:]
		g.inWord = true
	}
	c := g.nextchar[0]
	g.nextchar = g.nextchar[1:]
	if g.nextchar == "" {
		g.optind++
	}
	i := strings.IndexByte(g.shortopts, c)
	if i < 0 || c == ':' || c == ';' {
		g.errText = fmt.Sprintf("invalid option -- '%c'", c)
		return '?'
	}
	spec := g.shortopts[i+1:]
	if strings.HasPrefix(spec, ":") {
		if strings.HasPrefix(spec, "::") {
			if g.nextchar != "" {
				g.optarg, g.hasArg = g.nextchar, true
				g.optind++
			}
		} else if g.nextchar != "" {
			g.optarg, g.hasArg = g.nextchar, true
			g.optind++
		} else if g.optind == argc {
			g.inWord = false
			g.nextchar = ""
			if g.colon {
				return ':'
			}
			g.errText = fmt.Sprintf("option requires an argument -- '%c'", c)
			return '?'
		} else {
			g.optarg, g.hasArg = g.args[g.optind], true
			g.optind++
		}
		g.inWord = false
		g.nextchar = ""
	}
	return int(c)
}

func (g *getopt) longOption() int {
	argc := len(g.args)
	word := g.args[g.optind][2:]
	name, value, hasValue := strings.Cut(word, "=")
	var found *longOpt
	for i := range g.longopts {
		if g.longopts[i].name == name {
			found = &g.longopts[i]
			break
		}
	}
	if found == nil {
		ambiguous := false
		for i := range g.longopts {
			p := &g.longopts[i]
			if !strings.HasPrefix(p.name, name) {
				continue
			}
			if found == nil {
				found = p
			} else if found.hasArg != p.hasArg || found.val != p.val {
				ambiguous = true
			}
		}
		if ambiguous {
			g.errText = fmt.Sprintf("option '--%s' is ambiguous; possibilities:", name)
			for _, p := range g.longopts {
				if strings.HasPrefix(p.name, name) {
					g.errText += fmt.Sprintf(" '--%s'", p.name)
				}
			}
			g.optind++
			return '?'
		}
	}
	if found == nil {
		g.errText = fmt.Sprintf("unrecognized option '--%s'", word)
		g.optind++
		return '?'
	}
	g.optind++
	if hasValue {
		if found.hasArg == noArgument {
			g.errText = fmt.Sprintf("option '--%s' doesn't allow an argument", found.name)
			return '?'
		}
		g.optarg, g.hasArg = value, true
	} else if found.hasArg == requiredArgument {
		if g.optind < argc {
			g.optarg, g.hasArg = g.args[g.optind], true
			g.optind++
		} else {
			if g.colon {
				return ':'
			}
			g.errText = fmt.Sprintf("option '--%s' requires an argument", found.name)
			return '?'
		}
	}
	return found.val
}

// operands returns the arguments left after option scanning.
func (g *getopt) operands() []string { return g.args[g.optind:] }

// prev returns argv[optind-1], the word qemu-img quotes in option errors.
func (g *getopt) prev() string {
	if g.optind-1 < len(g.args) && g.optind > 0 {
		return g.args[g.optind-1]
	}
	return ""
}
