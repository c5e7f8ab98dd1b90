package cli

import (
	"errors"
	"io"

	"github.com/qimg/qimg/block"
)

// amendSpecser is a driver (or image) that lists the options amend takes.
type amendSpecser interface {
	AmendSpecs() []block.OptionSpec
}

// cmdAmend is `qemu-img amend`: change the creation options of an existing
// image in place.
func cmdAmend(a *App, args []string) int {
	g := newGetopt(args, ":ho:f:t:pq", []longOpt{
		{"help", noArgument, 'h'},
		{"object", requiredArgument, optObject},
		{"image-opts", noArgument, optImageOpts},
		{"force", noArgument, optForce},
	})
	var options, format string
	cache := defaultCache
	quiet, showProgress, imageOpts, force := false, false, false, false
	for {
		c := g.next()
		if c == -1 {
			break
		}
		if code, stop := a.commonOption(g, c); stop {
			return code
		}
		switch c {
		case 'o':
			if !a.accumulateOptions(&options, g.optarg) {
				return 1
			}
		case 'f':
			format = g.optarg
		case 't':
			cache = g.optarg
		case 'p':
			showProgress = true
		case 'q':
			quiet = true
		case optImageOpts:
			imageOpts = true
		case optForce:
			force = true
		}
	}
	if options == "" {
		return a.usageError("Must specify options (-o)")
	}
	if quiet {
		showProgress = false
	}
	pr := a.newProgress(showProgress, 1.0)
	defer pr.close()
	code := a.amend(pr, g.operands(), options, format, cache, imageOpts, force)
	pr.end()
	return code
}

// amend opens the image and amends it; it returns the exit code.
func (a *App) amend(pr *progress, ops []string, options, format, cache string, imageOpts, force bool) int {
	if format != "" && hasHelpOption(options) {
		return a.printAmendHelp(format)
	}
	if len(ops) != 1 {
		a.errorf("Expecting one image file name")
		return 1
	}
	mode, ok := a.parseCache(cache, false)
	if !ok {
		return 1
	}
	n, ok := a.openImage(ops[0], openSpec{imageOpts: imageOpts, format: format, cache: mode, write: true})
	if !ok {
		return 1
	}
	ok = a.amendImage(pr, n, options, force)
	if err := n.Close(); err != nil && ok {
		a.reportErr("", err)
		ok = false
	}
	if !ok {
		return 1
	}
	return 0
}

// amendImage parses the options against the image's amend options and
// applies them.
func (a *App) amendImage(pr *progress, n *block.Node, options string, force bool) bool {
	name := n.Driver.Name()
	if hasHelpOption(options) {
		return a.printAmendHelp(name) == 0
	}
	am, ok := n.Image.(block.Amender)
	if !ok {
		a.errorf("Format driver '%s' does not support option amendment", name)
		return false
	}
	opts := block.NewOptions(am.AmendSpecs())
	if err := opts.Parse(options); err != nil {
		// An option only creation takes gets a word of explanation.
		if c, ok := n.Driver.(block.Creator); ok {
			all := block.NewOptions(block.MergeSpecs(am.AmendSpecs(), c.CreateSpecs()))
			if all.Parse(options) == nil {
				err = &hintedErr{err: err, hint: "This option is only supported for image creation\n"}
			}
		}
		a.reportErr("", err)
		return false
	}
	pr.print(0, 0)
	err := am.Amend(opts, force, func(done, total int64) {
		pr.print(100*float32(done)/float32(total), 0)
	})
	pr.print(100, 0)
	if err != nil {
		a.reportErr("", err)
		return false
	}
	return true
}

// printAmendHelp lists a format's amend options, as `-o help` does.
func (a *App) printAmendHelp(format string) int {
	d, ok := a.env().Registry.Lookup(format)
	if !ok {
		a.errorf("Unknown file format '%s'", format)
		return 1
	}
	s, ok := d.(amendSpecser)
	if !ok {
		a.errorf("Format driver '%s' does not support option amendment", format)
		return 1
	}
	a.printf("Amend options for '%s':\n", format)
	io.WriteString(a.Stdout, block.HelpText(s.AmendSpecs()))
	return 0
}

// hintedErr adds an explanation to an error, printed on the lines after it.
type hintedErr struct {
	err  error
	hint string
}

func (e *hintedErr) Error() string { return e.err.Error() }

func (e *hintedErr) Unwrap() error { return e.err }

// ErrorHint returns the explanation, after any the error has.
func (e *hintedErr) ErrorHint() string {
	var h interface{ ErrorHint() string }
	if errors.As(e.err, &h) {
		return h.ErrorHint() + e.hint
	}
	return e.hint
}
