// Package cli is qimg's command line: the qemu-img tool (and the entry
// points of qemu-nbd and qemu-io), with qemu-img 7.2's options, argument
// order, messages and exit codes.
package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/internal/drivers"
	"github.com/qimg/qimg/storage"
)

// Version is qimg's version.
const Version = "0.1.0"

// QemuVersion is the qemu-img version whose behaviour qimg reproduces.
const QemuVersion = "7.2.0"

// App is one run of a tool: its name, its streams and the block-layer
// environment images are opened in.
type App struct {
	// Prog is the name messages are prefixed with ("qemu-img", "qimg").
	Prog   string
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// Env is where images are opened and created.
	Env *block.Env
	// Getenv reads the environment; nil means os.Getenv.
	Getenv func(string) string
	// IsTerminal reports whether stdout is a terminal (for progress).
	IsTerminal func() bool
	// Exit ends the process when a resource limit is exceeded
	// (limits.go); nil means os.Exit.
	Exit func(code int)

	// objects holds the ids of --object objects other than secrets
	// (secrets live in Env.Secrets).
	objects map[string]bool

	// halt, when set, stops the output streams: what the command writes
	// after it is dropped, and it returns the error stream underneath,
	// for the last message of a run a resource limit ends.
	halt func() io.Writer

	// abortMu guards abortHooks: cleanups a command registers for a run
	// that a resource limit ends before the command can clean up itself.
	abortMu    sync.Mutex
	abortHooks map[int]func()
	abortNext  int
}

// withStreams returns an App for the same run that writes to other
// streams (to capture or silence what a step prints). It shares the
// environment and the --object state, not the abort hooks.
func (a *App) withStreams(stdout, stderr io.Writer) *App {
	return &App{
		Prog: a.Prog, Stdin: a.Stdin, Stdout: stdout, Stderr: stderr,
		Env: a.Env, Getenv: a.Getenv, IsTerminal: a.IsTerminal, Exit: a.Exit,
		objects: a.objects,
	}
}

// onAbort registers fn to run if a resource limit ends the process (for
// example, to remove an incomplete convert target). The returned function
// unregisters it.
func (a *App) onAbort(fn func()) func() {
	a.abortMu.Lock()
	defer a.abortMu.Unlock()
	if a.abortHooks == nil {
		a.abortHooks = map[int]func(){}
	}
	id := a.abortNext
	a.abortNext++
	a.abortHooks[id] = fn
	return func() {
		a.abortMu.Lock()
		defer a.abortMu.Unlock()
		delete(a.abortHooks, id)
	}
}

// runAbortHooks runs and forgets every registered abort cleanup.
func (a *App) runAbortHooks() {
	a.abortMu.Lock()
	hooks := a.abortHooks
	a.abortHooks = nil
	a.abortMu.Unlock()
	for _, fn := range hooks {
		fn()
	}
}

// command is one qemu-img command.
type command struct {
	name  string
	run   func(a *App, args []string) int
	usage string
}

// commands lists the qemu-img commands in the order help shows them.
func commands() []command {
	return []command{
		{"amend", cmdAmend, "amend [--object objectdef] [--image-opts] [-p] [-q] [-f fmt] [-t cache] [--force] -o options filename"},
		{"bench", cmdBench, "bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [-i aio] [-n] [--no-drain] [-o offset] [--pattern=pattern] [-q] [-s buffer_size] [-S step_size] [-t cache] [-w] [-U] filename"},
		{"bitmap", nil, "bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)... [-b source_file [-F source_fmt]] [-g granularity] [--object objectdef] [--image-opts | -f fmt] filename bitmap"},
		{"check", cmdCheck, "check [--object objectdef] [--image-opts] [-q] [-f fmt] [--output=ofmt] [-r [leaks | all]] [-T src_cache] [-U] filename"},
		{"commit", cmdCommit, "commit [--object objectdef] [--image-opts] [-q] [-f fmt] [-t cache] [-b base] [-r rate_limit] [-d] [-p] filename"},
		{"compare", cmdCompare, "compare [--object objectdef] [--image-opts] [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] [-U] filename1 filename2"},
		{"convert", cmdConvert, "convert [--object objectdef] [--image-opts] [--target-image-opts] [--target-is-zero] [--bitmaps] [-U] [-C] [-c] [-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt] [-B backing_file [-F backing_fmt]] [-o options] [-l snapshot_param] [-S sparse_size] [-r rate_limit] [-m num_coroutines] [-W] [--salvage] filename [filename2 [...]] output_filename"},
		{"create", cmdCreate, "create [--object objectdef] [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] filename [size]"},
		{"dd", cmdDD, "dd [--image-opts] [-U] [-f fmt] [-O output_fmt] [bs=block_size] [count=blocks] [skip=blocks] if=input of=output"},
		{"info", cmdInfo, "info [--object objectdef] [--image-opts] [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename"},
		{"map", cmdMap, "map [--object objectdef] [--image-opts] [-f fmt] [--start-offset=offset] [--max-length=len] [--output=ofmt] [-U] filename"},
		{"measure", cmdMeasure, "measure [--output=ofmt] [-O output_fmt] [-o options] [--size N | [--object objectdef] [--image-opts] [-f fmt] [-l snapshot_param] filename]"},
		{"snapshot", cmdSnapshot, "snapshot [--object objectdef] [--image-opts] [-U] [-q] [-l | -a snapshot | -c snapshot | -d snapshot] filename"},
		{"rebase", cmdRebase, "rebase [--object objectdef] [--image-opts] [-U] [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u] -b backing_file [-F backing_fmt] filename"},
		{"resize", cmdResize, "resize [--object objectdef] [--image-opts] [-f fmt] [--preallocation=prealloc] [-q] [--shrink] filename [+ | -]size"},
	}
}

// Main runs the tool chosen by the program name in args[0] and returns the
// exit code.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	prog := "qimg"
	if len(args) > 0 {
		prog = filepath.Base(args[0])
	}
	out, errOut := &haltable{w: stdout}, &haltable{w: stderr}
	a := &App{Prog: prog, Stdin: stdin, Stdout: out, Stderr: errOut}
	a.halt = func() io.Writer {
		out.halt()
		return errOut.halt()
	}
	rest := args[1:]
	switch prog {
	case "qemu-nbd":
		return a.notYet("qemu-nbd")
	case "qemu-io":
		return a.notYet("qemu-io")
	case "qemu-img", "kvm-img":
	default:
		if len(rest) > 0 {
			switch rest[0] {
			case "nbd":
				a.Prog = "qemu-nbd"
				return a.notYet("qemu-nbd")
			case "io":
				a.Prog = "qemu-io"
				return a.notYet("qemu-io")
			}
		}
	}
	return a.qemuImg(rest)
}

// haltable is an output stream that can be stopped for good: a resource
// limit ends a run while the command's goroutines may still be writing,
// and the limit's message must be the last line.
type haltable struct {
	mu     sync.Mutex
	w      io.Writer
	halted bool
}

func (h *haltable) Write(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.halted {
		return len(p), nil
	}
	return h.w.Write(p)
}

// halt drops every later write and returns the stream underneath.
func (h *haltable) halt() io.Writer {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.halted = true
	return h.w
}

func (a *App) notYet(tool string) int {
	a.errorf("%s is not yet available in qimg %s", tool, Version)
	return 1
}

func (a *App) getenv(k string) string {
	if a.Getenv != nil {
		return a.Getenv(k)
	}
	return os.Getenv(k)
}

// errorf prints an error line: "prog: message".
func (a *App) errorf(format string, args ...any) {
	fmt.Fprintf(a.Stderr, "%s: %s\n", a.Prog, fmt.Sprintf(format, args...))
}

// usageError prints an error line and the pointer to --help, and returns
// exit code 1, as qemu-img's error_exit does.
func (a *App) usageError(format string, args ...any) int {
	a.errorf(format, args...)
	fmt.Fprintf(a.Stderr, "Try '%s --help' for more information\n", a.Prog)
	return 1
}

// commonOption handles what every command's option loop shares with
// qemu-img's: a missing option argument and an unknown option end the
// command with a usage error, -h prints the help, --object defines an
// object (for the commands that take it). It returns the exit code and
// true when the command must stop there.
func (a *App) commonOption(g *getopt, c int) (int, bool) {
	switch c {
	case optObject:
		return a.objectOption(g.optarg)
	case ':':
		return a.usageError("missing argument for option '%s'", g.prev()), true
	case '?':
		return a.usageError("unrecognized option '%s'", g.prev()), true
	case 'h':
		return a.help(), true
	}
	return 0, false
}

// reportErr prints err with an optional prefix, and any hint it carries on
// the following lines. Hints are printed exactly as they are: QEMU's hints
// carry their own line ends, and some (such as "Detected format of qcow2.")
// have none.
func (a *App) reportErr(prefix string, err error) {
	a.errorf("%s%s", prefix, err)
	var h interface{ ErrorHint() string }
	if errors.As(err, &h) && h.ErrorHint() != "" {
		io.WriteString(a.Stderr, h.ErrorHint())
	}
}

func (a *App) printf(format string, args ...any) {
	fmt.Fprintf(a.Stdout, format, args...)
}

// versionText is what -V prints.
func versionText() string {
	return fmt.Sprintf("qemu-img version %s (qimg %s)\n"+
		"qimg is a pure Go reimplementation compatible with qemu-img %s; it is not QEMU.\n", QemuVersion, Version, QemuVersion)
}

func (a *App) help() int {
	var b strings.Builder
	b.WriteString(versionText())
	fmt.Fprintf(&b, "usage: %s [standard options] command [command options]\n", a.Prog)
	b.WriteString("Disk image utility (qemu-img compatible)\n\n")
	b.WriteString("    '-h', '--help'       display this help and exit\n")
	b.WriteString("    '-V', '--version'    output version information and exit\n")
	b.WriteString("    '-T', '--trace'      [[enable=]<pattern>][,events=<file>][,file=<file>]\n")
	b.WriteString("                         specify tracing options (accepted and ignored)\n")
	b.WriteString("    '--untrusted'        treat images as hostile: open only files inside the image's\n")
	b.WriteString("                         directory and apply resource limits (also QIMG_UNTRUSTED=1)\n")
	b.WriteString("    '--limits'           memory=SIZE,time=SECONDS,depth=N: resource limits (also\n")
	b.WriteString("                         QIMG_LIMITS); untrusted mode defaults to memory=1G,time=15,depth=16\n")
	b.WriteString("\nCommand syntax:\n")
	for _, c := range commands() {
		fmt.Fprintf(&b, "  %s\n", c.usage)
	}
	b.WriteString(helpParameters)
	fmt.Fprintf(&b, "\nSupported formats: %s\n", strings.Join(a.env().Registry.Names(), " "))
	b.WriteString("\nReport bugs to the qimg project's issue tracker.\n")
	io.WriteString(a.Stdout, b.String())
	return 0
}

const helpParameters = `
Command parameters:
  'filename' is a disk image filename
  'objectdef' defines an object such as a secret: secret,id=ID,data=VALUE or
    secret,id=ID,file=PATH (format=raw|base64); secrets supply passwords and keys
  'fmt' is the disk image format; it is detected from the content when omitted
  'cache' is the cache mode for writing: 'none', 'writeback' (default, except
    for convert), 'writethrough', 'directsync' or 'unsafe' (default for convert)
  'src_cache' is the cache mode for reading source images, with the same values
  'size' is a size in bytes, with optional suffixes k or K (1024), M, G, T, P
    and E (each 1024 times the previous); 'b' means bytes
  'output_filename' is the destination image
  'output_fmt' is the destination format
  'options' is a comma-separated list of name=value format options; -o help
    lists the options of the chosen format
  'snapshot_param' is 'snapshot.id=[ID],snapshot.name=[NAME]' or '[ID_OR_NAME]'
  '-c' compresses the target image (formats that support compression)
  '-u' allows unsafe backing chains: rebase only rewrites the backing file
    name; create does not open the backing file
  '-h' with or without a command shows this help and lists the formats
  '-p' shows progress (commands that support it)
  '-q' quiet mode: print nothing but errors
  '-S' is the number of consecutive zero bytes that convert turns into a hole
    (default 4k); with 0 the target is fully allocated
  '--output' selects 'human' or 'json' output
  '-n' skips creating the target (it must exist)

Parameters to check subcommand:
  '-r' repairs what the check finds: '-r leaks' frees leaked clusters only,
    '-r all' fixes every kind of error it can

Parameters to convert subcommand:
  '--bitmaps' copies all top-level persistent bitmaps to the destination
  '-m' sets how many requests run in parallel (default 8)
  '-W' allows writes to the target out of order

Parameters to snapshot subcommand:
  'snapshot' is the name of the snapshot to create, apply or delete
  '-a' applies a snapshot, '-c' creates one, '-d' deletes one, '-l' lists them

Parameters to compare subcommand:
  '-f' first image format, '-F' second image format
  '-s' strict mode: differing sizes or allocation count as differences

Parameters to dd subcommand:
  'bs=BYTES' block size (default 512), 'count=N' blocks to copy,
  'if=FILE' input, 'of=FILE' output, 'skip=N' input blocks to skip
`

// env returns the block environment, creating the default one on first use.
func (a *App) env() *block.Env {
	if a.Env == nil {
		a.Env = &block.Env{Registry: drivers.Registry()}
	}
	if a.Env.Stderr == nil {
		a.Env.Stderr = a.Stderr
	}
	if a.Env.Prog == "" {
		a.Env.Prog = a.Prog
	}
	return a.Env
}

// Global long options of the qemu-img tool.
const (
	optUntrusted = 1000 + iota
	optAllowProtocols
	optLimits
)

// qemuImg is qemu-img's main: global options, then the command.
func (a *App) qemuImg(args []string) int {
	if len(args) < 1 {
		return a.usageError("Not enough arguments")
	}
	argv := append([]string{a.Prog}, args...)
	g := newGetopt(argv, "+:hVT:", []longOpt{
		{"help", noArgument, 'h'},
		{"version", noArgument, 'V'},
		{"trace", requiredArgument, 'T'},
		{"untrusted", noArgument, optUntrusted},
		{"allow-image-protocols", noArgument, optAllowProtocols},
		{"limits", requiredArgument, optLimits},
	})
	env := a.env()
	if v := a.getenv("QIMG_UNTRUSTED"); v != "" && v != "0" {
		env.Policy.Untrusted = true
	}
	var lim limits
	if err := parseLimits(a.getenv(limitsEnv), &lim); err != nil {
		a.errorf("%s: %s", limitsEnv, err)
		return 1
	}
	for {
		c := g.next()
		if c == -1 {
			break
		}
		if code, stop := a.commonOption(g, c); stop {
			return code
		}
		switch c {
		case 'V':
			io.WriteString(a.Stdout, versionText())
			return 0
		case 'T':
			if code, stop := a.traceOption(g.optarg); stop {
				return code
			}
		case optUntrusted:
			env.Policy.Untrusted = true
		case optAllowProtocols:
			env.Policy.AllowProtocols = true
		case optLimits:
			if err := parseLimits(g.optarg, &lim); err != nil {
				a.errorf("%s", err)
				return 1
			}
		}
	}
	defer a.startLimits(lim.withDefaults(env.Policy.Untrusted))()
	rest := g.operands()
	if len(rest) < 1 {
		return 0
	}
	name := rest[0]
	for _, c := range commands() {
		if c.name == name {
			if c.run == nil {
				a.errorf("Command '%s' is not yet implemented in qimg %s", name, Version)
				return 1
			}
			return c.run(a, rest)
		}
	}
	return a.usageError("Command not found: %s", name)
}

// traceOption handles -T/--trace as QEMU's trace_opt_parse does, with no
// trace events to offer: "enable=PATTERN" (the implied first option) and
// each line of the "events=FILE" file warn about a plain event name, which
// does not exist in qimg, while wildcard patterns match nothing silently;
// "enable=help" lists the (no) events and exits 0; "file=" is accepted. It
// returns an exit code and true when qemu-img would exit.
func (a *App) traceOption(spec string) (int, bool) {
	var enable, events string
	hasEnable, hasEvents := false, false
	for _, kv := range splitQemuOpts(spec, "enable") {
		if kv.flag && block.IsHelpOption(kv.key) {
			a.printf("trace options:\n  enable=<str>\n  events=<str>\n  file=<str>\n")
			return 1, true
		}
		if kv.flag {
			on := map[bool]string{true: "off", false: "on"}[kv.prefix != ""]
			a.errorf("warning: short-form boolean option '%s%s' deprecated", kv.prefix, kv.key)
			fmt.Fprintf(a.Stderr, "Please use %s=%s instead\n", kv.key, on)
		}
		switch kv.key {
		case "enable":
			enable, hasEnable = kv.value, true
		case "events":
			events, hasEvents = kv.value, true
		case "file":
		default:
			a.errorf("Invalid parameter '%s'", kv.key)
			return 1, true
		}
	}
	if hasEnable {
		if block.IsHelpOption(enable) {
			return 0, true
		}
		a.traceEvent(enable, "")
	}
	if hasEvents {
		data, err := os.ReadFile(events)
		if err != nil {
			fmt.Fprintf(a.Stderr, "%s:%s: %s\n", a.Prog, events, storage.Strerror(err))
			return 1, true
		}
		for i, line := range strings.Split(string(data), "\n") {
			if line != "" && line[0] != '#' {
				a.traceEvent(line, fmt.Sprintf("%s:%d:", events, i+1))
			}
		}
	}
	return 0, false
}

// traceEvent enables a trace event pattern; loc prefixes warnings with
// where the pattern came from ("file:line:").
func (a *App) traceEvent(pattern, loc string) {
	name := strings.TrimPrefix(pattern, "-")
	if name == "" || strings.ContainsAny(name, "*?") {
		return
	}
	fmt.Fprintf(a.Stderr, "%s:%s warning: trace event '%s' does not exist\n", a.Prog, loc, name)
}
