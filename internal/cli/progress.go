package cli

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
)

// progress prints the progress of a long command as qemu-img does
// (util/qemu-progress.c): with -p, a line "    (x.xx/100%)" ending in a
// carriage return on stdout, printed at 0%, whenever the figure has moved
// by more than the minimum step since the last line, and at 100%, and a
// newline at the end. Without -p nothing is printed, except that SIGUSR1
// makes the next update print the figure on stderr, ending in a newline.
//
// The figures are single-precision floats, as in QEMU, so that the lines
// printed are the same.
type progress struct {
	out, errOut io.Writer
	enabled     bool
	minSkip     float32
	current     float32
	lastPrint   float32
	// pending is set by SIGUSR1 when progress is not enabled.
	pending atomic.Bool
	stop    func()
}

// newProgress starts progress reporting; close releases the signal
// handler.
func (a *App) newProgress(enabled bool, minSkip float32) *progress {
	p := &progress{out: a.Stdout, errOut: a.Stderr, enabled: enabled, minSkip: minSkip}
	if !enabled {
		ch := make(chan os.Signal, 1)
		done := make(chan struct{})
		signal.Notify(ch, syscall.SIGUSR1)
		go func() {
			for {
				select {
				case <-ch:
					p.pending.Store(true)
				case <-done:
					return
				}
			}
		}()
		p.stop = func() {
			signal.Stop(ch)
			close(done)
		}
	}
	return p
}

// print reports progress: with max 0, delta is the percentage done;
// otherwise delta is a percentage of a step worth max percent of the whole.
func (p *progress) print(delta float32, max int) {
	current := delta
	if max != 0 {
		current = p.current + delta/100*float32(max)
	}
	if current > 100 {
		current = 100
	}
	p.current = current
	if current > p.lastPrint+p.minSkip || current < p.lastPrint-p.minSkip || current == 100 || current == 0 {
		p.lastPrint = current
		switch {
		case p.enabled:
			fmt.Fprintf(p.out, "    (%3.2f/100%%)\r", float64(current))
		case p.pending.Swap(false):
			fmt.Fprintf(p.errOut, "    (%3.2f/100%%)\n", float64(current))
		}
	}
}

// end finishes the progress line.
func (p *progress) end() {
	if p.enabled {
		fmt.Fprint(p.out, "\n")
	}
}

// close releases the SIGUSR1 handler.
func (p *progress) close() {
	if p.stop != nil {
		p.stop()
		p.stop = nil
	}
}
