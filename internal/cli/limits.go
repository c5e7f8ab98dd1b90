package cli

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/qimg/qimg/internal/units"
)

// Resource limits: qimg's replacement for running qemu-img under prlimit.
//
// `--limits memory=SIZE,time=DURATION,depth=N` (or the QIMG_LIMITS
// environment variable, same syntax) bounds a run:
//
//   - memory: the memory the Go runtime holds (heap, stacks, metadata).
//     The garbage collector aims below it (runtime/debug.SetMemoryLimit)
//     and a watchdog ends the run with a one-line error once it is
//     exceeded, so that an image that would make qimg allocate without
//     bound gives an error exit instead of an OOM kill.
//   - time: a wall-clock deadline after which the run ends with a one-line
//     error.
//   - depth: the longest backing chain opened.
//
// Untrusted mode (--untrusted, QIMG_UNTRUSTED=1) sets defaults for the
// limits not given: memory=1G, time=15s, depth=16. "0", "off" or "none"
// lifts a limit. Exceeding a limit exits with status 1.
//
// Independently of these, when qimg runs under an address-space rlimit
// (prlimit --as=…, as OpenStack runs qemu-img info), it keeps the garbage
// collector's target well inside the address space left after the Go
// runtime's own reservations, so that the heap does not grow into a
// reservation the kernel refuses.

// Defaults of untrusted mode.
const (
	untrustedMemory = 1 << 30
	untrustedTime   = 15 * time.Second
	untrustedDepth  = 16
)

// limitsEnv is the environment variable holding limits.
const limitsEnv = "QIMG_LIMITS"

// limitPoll is how often the watchdog looks at memory use.
const limitPoll = 10 * time.Millisecond

// limits are a run's resource limits; a zero value is no limit.
type limits struct {
	memory int64
	time   time.Duration
	depth  int
	// given records which limits were set explicitly.
	givenMemory, givenTime, givenDepth bool
}

// parseLimits adds the limits of a "key=value,…" list to l.
func parseLimits(spec string, l *limits) error {
	for _, kv := range strings.Split(spec, ",") {
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return fmt.Errorf("Invalid limit '%s': expected memory=SIZE, time=SECONDS or depth=N", kv)
		}
		off := v == "0" || v == "off" || v == "none" || v == "unlimited"
		switch k {
		case "memory":
			l.givenMemory = true
			if off {
				l.memory = 0
				continue
			}
			n, err := units.ParseSize(v)
			if err != nil || n > 1<<62 {
				return fmt.Errorf("Invalid memory limit '%s': expected a size such as 512M or 2G", v)
			}
			if n < 16<<20 {
				return fmt.Errorf("Invalid memory limit '%s': at least 16 MiB are needed", v)
			}
			l.memory = int64(n)
		case "time":
			l.givenTime = true
			if off {
				l.time = 0
				continue
			}
			d, err := parseDuration(v)
			if err != nil {
				return fmt.Errorf("Invalid time limit '%s': expected seconds or a duration such as 90s or 10m", v)
			}
			l.time = d
		case "depth":
			l.givenDepth = true
			if off {
				l.depth = 0
				continue
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 1<<20 {
				return fmt.Errorf("Invalid backing chain depth limit '%s'", v)
			}
			l.depth = n
		default:
			return fmt.Errorf("Unknown limit '%s': expected memory, time or depth", k)
		}
	}
	return nil
}

// parseDuration accepts a number of seconds (with a fraction) or a Go
// duration ("1m30s").
func parseDuration(s string) (time.Duration, error) {
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		if f <= 0 || f > 1e9 {
			return 0, errors.New("out of range")
		}
		return time.Duration(f * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, errors.New("invalid duration")
	}
	return d, nil
}

// withDefaults returns l with untrusted mode's defaults for the limits not
// given.
func (l limits) withDefaults(untrusted bool) limits {
	if !untrusted {
		return l
	}
	if !l.givenMemory {
		l.memory = untrustedMemory
	}
	if !l.givenTime {
		l.time = untrustedTime
	}
	if !l.givenDepth {
		l.depth = untrustedDepth
	}
	return l
}

// startLimits applies limits to the run: the chain depth to the block
// environment, the memory target to the garbage collector, and a watchdog
// for the memory and time limits. The returned function stops the
// watchdog and restores the garbage collector's settings.
func (a *App) startLimits(l limits) func() {
	if l.depth > 0 {
		a.env().MaxChainDepth = l.depth
	}
	prevLimit := debug.SetMemoryLimit(-1)
	target := prevLimit
	if l.memory > 0 {
		// Aim the collector below the hard limit, so that the
		// watchdog fires only when live memory really is too large.
		target = min(target, l.memory-l.memory/8)
	}
	if room, ok := addressSpaceRoom(); ok {
		target = min(target, max(room/2, 32<<20))
		boundThreads(a.getenv)
	}
	if target != prevLimit {
		debug.SetMemoryLimit(target)
	}
	done := make(chan struct{})
	if l.memory > 0 || l.time > 0 {
		go a.watchdog(l, done)
	}
	return func() {
		close(done)
		// Another run in the same process (tests) may have set its own
		// target since; leave that one alone.
		if target != prevLimit && debug.SetMemoryLimit(-1) == target {
			debug.SetMemoryLimit(prevLimit)
		}
	}
}

// watchdog ends the run when it exceeds a memory or time limit.
func (a *App) watchdog(l limits, done <-chan struct{}) {
	var deadline <-chan time.Time
	if l.time > 0 {
		t := time.NewTimer(l.time)
		defer t.Stop()
		deadline = t.C
	}
	var tick <-chan time.Time
	var samples []metrics.Sample
	if l.memory > 0 {
		t := time.NewTicker(limitPoll)
		defer t.Stop()
		tick = t.C
		samples = []metrics.Sample{
			{Name: "/memory/classes/total:bytes"},
			{Name: "/memory/classes/heap/released:bytes"},
		}
	}
	for {
		select {
		case <-done:
			return
		case <-deadline:
			a.limitExceeded(fmt.Sprintf("Time limit of %s exceeded; raise it with --limits time=SECONDS", l.time))
			return
		case <-tick:
			metrics.Read(samples)
			used := int64(samples[0].Value.Uint64() - samples[1].Value.Uint64())
			if used > l.memory {
				a.limitExceeded(fmt.Sprintf("Memory limit of %s exceeded; raise it with --limits memory=SIZE",
					units.FormatSize(uint64(l.memory))))
				return
			}
		}
	}
}

// limitExceeded reports an exceeded limit, runs the cleanups commands
// registered for that case (an incomplete convert target is removed) and
// ends the run.
func (a *App) limitExceeded(msg string) {
	if a.halt != nil {
		// Nothing the command still writes may follow the message.
		fmt.Fprintf(a.halt(), "%s: %s\n", a.Prog, msg)
	} else {
		a.errorf("%s", msg)
	}
	a.runAbortHooks()
	if a.Exit != nil {
		a.Exit(1)
		return
	}
	os.Exit(1)
}

// addressSpaceRoom returns how much address space the process may still
// map under RLIMIT_AS, when that limit is set.
func addressSpaceRoom() (int64, bool) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_AS, &rl); err != nil || rl.Cur == unix.RLIM_INFINITY || rl.Cur > 1<<62 {
		return 0, false
	}
	data, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0, false
	}
	pages, err := strconv.ParseInt(strings.Fields(string(data))[0], 10, 64)
	if err != nil {
		return 0, false
	}
	return max(int64(rl.Cur)-pages*int64(os.Getpagesize()), 0), true
}

// boundThreads caps the number of threads running Go code (called under an
// address-space rlimit, when GOMAXPROCS is not set), so that per-processor
// caches and compression workers stay within the little room such a limit
// leaves: under prlimit --as=1G a Go program has about 300 MiB left after
// the runtime's own reservations, which convert -c with 256 workers
// exceeds.
func boundThreads(getenv func(string) string) {
	if getenv("GOMAXPROCS") != "" {
		return
	}
	if runtime.GOMAXPROCS(0) > maxProcsUnderRlimit {
		runtime.GOMAXPROCS(maxProcsUnderRlimit)
	}
}

// maxProcsUnderRlimit is GOMAXPROCS under an address-space rlimit.
const maxProcsUnderRlimit = 8
