package block

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"

	"github.com/qimg/qimg/storage"
)

// DefaultMaxChainDepth bounds backing chains when the Env sets no limit.
const DefaultMaxChainDepth = 256

// MaxLength is the largest virtual size an image may have: INT64_MAX
// rounded down to 1 GiB, QEMU's BDRV_MAX_LENGTH.
const MaxLength = 1<<63 - 1<<30

// CheckLength refuses a new length beyond MaxLength with the message of
// QEMU's request checks, which every resize passes through for each layer
// (the image, then its file).
func CheckLength(n int64) error {
	if n > MaxLength {
		return fmt.Errorf("offset(%d) exceeds maximum(%d)", n, int64(MaxLength))
	}
	return nil
}

// errTooLarge is QEMU's error for an image whose driver reports a size
// beyond MaxLength (bdrv_open_driver's refresh_total_sectors).
var errTooLarge = errors.New("Could not refresh total sector count: File too large")

// Env is the environment images are opened and created in: which drivers
// exist, where files come from, what an image may make us open, and where
// warnings go. An Env holds no per-image state and may be shared.
type Env struct {
	// Registry holds the format drivers.
	Registry *Registry
	// Files opens files by name; nil means host files.
	Files storage.Opener
	// Policy decides which files named by images may be opened.
	Policy Policy
	// Secrets holds --object secret values by id.
	Secrets map[string][]byte
	// MaxChainDepth bounds backing chains; 0 means DefaultMaxChainDepth.
	MaxChainDepth int
	// Stderr receives warnings; nil discards them.
	Stderr io.Writer
	// Prog is the program name warnings are prefixed with.
	Prog string
}

func (e *Env) files() storage.Opener {
	if e.Files == nil {
		return storage.Local{}
	}
	return e.Files
}

// Warn prints "prog: warning: msg" to Stderr.
func (e *Env) Warn(msg string) {
	if e.Stderr != nil {
		fmt.Fprintf(e.Stderr, "%s: warning: %s\n", e.Prog, msg)
	}
}

// Notice prints text to Stderr as it is.
func (e *Env) Notice(text string) {
	if e.Stderr != nil {
		io.WriteString(e.Stderr, text)
	}
}

// OpenOptions says how to open an image.
type OpenOptions struct {
	// Format is the driver name; empty means probe the content.
	Format string
	// Write opens the image read-write.
	Write bool
	// WriteBacking opens the backing chain read-write too (for commit).
	WriteBacking bool
	// WriteBackingLevel, when WriteBacking is set and it is positive,
	// opens read-write (and locks for writing) only the backing image
	// that many levels below: the base of a commit, which QEMU alone
	// reopens for writing. 1 is the image's own backing file.
	WriteBackingLevel int
	// Cache is the cache mode.
	Cache CacheMode
	// ForceShare opens even if another process holds a write lock (-U);
	// the image then shares every permission (lock.go). Read-only only.
	ForceShare bool
	// Locking is the file.locking option: lock the image's files as QEMU
	// does (auto, the zero value, and on) or not (off). It applies to the
	// image's backing chain and the files it names too.
	Locking LockMode
	// NoIO opens the image only to look at its metadata, taking no
	// "consistent read" permission (QEMU's BDRV_O_NO_IO; qemu-img info).
	NoIO bool
	// Resize takes the "resize" permission (BDRV_O_RESIZE; qemu-img
	// resize).
	Resize bool
	// NoShare shares only reads with others (BDRV_O_NO_SHARE; the sources
	// of qemu-img convert).
	NoShare bool
	// NoBacking leaves the backing chain closed; unallocated ranges then
	// read as zeroes.
	NoBacking bool
	// ForCheck opens the image to check or repair it (QEMU's
	// BDRV_O_CHECK): a format may then open an image it would otherwise
	// refuse, such as one marked corrupt, so that check -r can fix it.
	ForCheck bool
	// DriverOptions are the format's runtime options ("l2-cache-size").
	DriverOptions map[string]string
}

// Node is an opened image together with its container file and its opened
// backing chain. It implements Image; writes honour the cache mode.
type Node struct {
	Image
	// Filename is the name the image was opened under.
	Filename string
	// Driver is the image's format driver.
	Driver Driver
	// File is the container the image is stored in.
	File storage.File
	// Backing is the opened backing image, or nil.
	Backing *Node
	// Probed is set when the format was guessed from content.
	Probed bool

	env   *Env
	cache CacheMode
	write bool
	locks *nodeLocks
}

// Open opens the named image and, unless o.NoBacking, its backing chain.
func (e *Env) Open(name string, o OpenOptions) (*Node, error) {
	return e.open(name, o, nil, true)
}

// open opens a named image; top says it is the top of the chain being
// opened (not a backing file).
func (e *Env) open(name string, o OpenOptions, seen []storage.File, top bool) (*Node, error) {
	f, err := e.files().Open(name, storage.OpenOptions{Write: o.Write, Direct: o.Cache.Direct(), NoSync: o.Cache.IgnoreFlush()})
	if err != nil {
		return nil, err
	}
	open := e.openFile
	if top {
		open = e.OpenFile
	}
	n, err := open(f, name, o, seen)
	if err != nil {
		f.Close()
		return nil, err
	}
	return n, nil
}

// OpenFile opens an image stored in an already opened file. On success the
// Node owns f. The image and its chain are locked as QEMU locks them
// (lock.go).
func (e *Env) OpenFile(f storage.File, name string, o OpenOptions, seen []storage.File) (*Node, error) {
	n, err := e.openFile(f, name, o, seen)
	if err != nil {
		return nil, err
	}
	if err := n.lockChain(o); err != nil {
		n.closeAllButFile()
		return nil, err
	}
	return n, nil
}

// openFile opens an image as OpenFile does, locked as its driver alone
// needs it (see lock.go); lockChain adds the opener's permissions.
func (e *Env) openFile(f storage.File, name string, o OpenOptions, seen []storage.File) (*Node, error) {
	for _, s := range seen {
		if storage.SameFile(s, f) {
			return nil, fmt.Errorf("Backing file '%s' creates an infinite loop.", name)
		}
	}
	maxDepth := e.MaxChainDepth
	if maxDepth <= 0 {
		maxDepth = DefaultMaxChainDepth
	}
	if len(seen) > maxDepth {
		return nil, fmt.Errorf("Backing chain of '%s' is deeper than %d images", name, maxDepth)
	}
	var drv Driver
	probed := false
	if o.Format != "" {
		d, ok := e.Registry.Lookup(o.Format)
		if !ok {
			return nil, fmt.Errorf("Unknown driver '%s'", o.Format)
		}
		drv = d
	} else {
		d, err := e.Registry.ProbeFile(f)
		if err != nil {
			return nil, err
		}
		drv, probed = d, true
	}
	if o.ForceShare && o.Write {
		return nil, errors.New("force-share=on can only be used with read-only images")
	}
	locks := newNodeLocks(o)
	dopts, err := e.driverOptions(drv, name, o, probed, locks)
	if err != nil {
		return nil, err
	}
	if err := locks.add(f, name, fileUse(drv, dopts)); err != nil {
		return nil, err
	}
	img, err := drv.Open(f, dopts)
	if err != nil {
		locks.release()
		return nil, err
	}
	if size := img.Size(); size < 0 || size > MaxLength {
		img.Close()
		locks.release()
		return nil, errTooLarge
	}
	n := &Node{Image: img, Filename: name, Driver: drv, File: f, Probed: probed, env: e, cache: o.Cache, write: o.Write, locks: locks}
	if b, ok := img.(Backed); ok && !o.NoBacking {
		if err := e.openBacking(n, b, o, append(seen, f)); err != nil {
			n.closeAllButFile()
			return nil, err
		}
	}
	if err := unknownOption(drv, o); err != nil {
		n.closeAllButFile()
		return nil, err
	}
	return n, nil
}

// closeAllButFile undoes an open that failed after the driver opened the
// image; the caller closes the file.
func (n *Node) closeAllButFile() {
	n.Image.Close()
	n.locks.release()
	if n.Backing != nil {
		n.Backing.Close()
	}
}

// unknownOption reports the first runtime option the driver does not have.
// As in QEMU, this comes after the image and its chain are open (and
// locked), so a lock conflict is reported first.
func unknownOption(drv Driver, o OpenOptions) error {
	var specs []OptionSpec
	if s, ok := drv.(OpenSpecser); ok {
		specs = s.OpenSpecs()
	}
	for _, k := range sortedKeys(o.DriverOptions) {
		if findSpec(specs, k) == nil {
			return fmt.Errorf("Block format '%s' does not support the option '%s'", drv.Name(), k)
		}
	}
	return nil
}

// driverOptions checks the values of the runtime options the driver has
// and builds what Driver.Open gets.
func (e *Env) driverOptions(drv Driver, name string, o OpenOptions, probed bool, locks *nodeLocks) (*DriverOptions, error) {
	var specs []OptionSpec
	if s, ok := drv.(OpenSpecser); ok {
		specs = s.OpenSpecs()
	}
	opts := NewOptions(specs)
	for _, k := range sortedKeys(o.DriverOptions) {
		if findSpec(specs, k) == nil {
			continue // unknownOption reports it once the image is open
		}
		if err := opts.Set(k, o.DriverOptions[k]); err != nil {
			return nil, err
		}
	}
	return &DriverOptions{
		Filename: name,
		Write:    o.Write,
		Probed:   probed,
		NoIO:     o.NoIO,
		ForCheck: o.ForCheck,
		Options:  opts,
		Env:      e,
		OpenRelated: func(related string, write bool) (storage.File, error) {
			return e.openRelated(name, related, "file", write, o.Cache, locks)
		},
		OpenDataFile: func(related string, write bool) (storage.File, error) {
			full, err := e.ResolveDataFile(name, related)
			if err != nil {
				return nil, err
			}
			return e.openResolved(full, write, o.Cache, locks)
		},
		Warn: e.Warn,
	}, nil
}

// ResolveDataFile decides, through the Env's policy, which file to open
// for the external data file that the image called image names. QEMU 7.2
// opens a relative data file name from the working directory, not from the
// image's directory as it does backing files; in the default mode qimg does
// the same when that file exists, and otherwise looks beside the image, so
// that an image works from every directory where QEMU's works and from
// more. When neither exists, the working directory's name is returned, the
// one QEMU's error quotes. Untrusted mode only looks beside the image.
func (e *Env) ResolveDataFile(image, named string) (string, error) {
	if e.Policy.Untrusted || IsAbsolute(named) {
		return e.Policy.Check(image, named, "file")
	}
	if e.files().Exists(named) || !e.files().Exists(CombinePath(image, named)) {
		return named, nil
	}
	return CombinePath(image, named), nil
}

// OpenRelated opens a file that the image called image names (such as an
// extent), resolving it against the image's directory
// and checking the Env's policy. what names the kind of file for messages.
// The file is locked as a data file read (or written) by its image until
// it is closed.
func (e *Env) OpenRelated(image, named, what string, write bool, cache CacheMode) (storage.File, error) {
	return e.openRelated(image, named, what, write, cache, nil)
}

// openRelated opens a file an image names and adds it to the image's locks
// as a data file, or, without locks, locks it on its own.
func (e *Env) openRelated(image, named, what string, write bool, cache CacheMode, locks *nodeLocks) (storage.File, error) {
	full, err := e.Policy.Check(image, named, what)
	if err != nil {
		return nil, err
	}
	return e.openResolved(full, write, cache, locks)
}

// openResolved opens the file at full as openRelated does.
func (e *Env) openResolved(full string, write bool, cache CacheMode, locks *nodeLocks) (storage.File, error) {
	f, err := e.files().Open(full, storage.OpenOptions{Write: write, Direct: cache.Direct(), NoSync: cache.IgnoreFlush()})
	if err != nil {
		return nil, err
	}
	opened := OpenOptions{Write: write}
	own := locks == nil
	if own {
		locks = newNodeLocks(opened)
	}
	err = locks.add(f, full, FileUse{Role: RoleData})
	if err == nil && own {
		err = locks.update(rootPerms(opened))
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func (e *Env) openBacking(n *Node, b Backed, o OpenOptions, seen []storage.File) error {
	name, format := b.BackingFile()
	if name == "" {
		return nil
	}
	full, err := e.Policy.Check(n.Filename, name, "backing file")
	if err != nil {
		return fmt.Errorf("Could not open backing file: %w", err)
	}
	level := o.WriteBackingLevel
	bo := OpenOptions{
		Format:            format,
		Write:             o.WriteBacking && level <= 1,
		WriteBacking:      o.WriteBacking && level != 1,
		WriteBackingLevel: max(level-1, 0),
		Cache:             o.Cache,
		ForceShare:        o.ForceShare,
		Locking:           o.Locking,
		NoIO:              o.NoIO,
	}
	back, err := e.open(full, bo, seen, false)
	if err != nil {
		return fmt.Errorf("Could not open backing file: %w", err)
	}
	n.Backing = back
	b.SetBacking(back)
	return nil
}

// FullBackingFilename returns the backing file name resolved against the
// image's name, as `qemu-img info` shows it, or "" without a backing file.
func (n *Node) FullBackingFilename() string {
	b, ok := n.Image.(Backed)
	if !ok {
		return ""
	}
	name, _ := b.BackingFile()
	if name == "" {
		return ""
	}
	return CombinePath(n.Filename, name)
}

// WriteAt writes and, in a write-through cache mode, flushes.
func (n *Node) WriteAt(p []byte, off int64) (int, error) {
	c, err := n.Image.WriteAt(p, off)
	if err == nil && n.cache.WriteThrough() {
		err = n.Image.Flush()
	}
	return c, err
}

// WriteZeroes zeroes and, in a write-through cache mode, flushes.
func (n *Node) WriteZeroes(off, length int64, flags ZeroFlags) error {
	err := n.Image.WriteZeroes(off, length, flags)
	if err == nil && n.cache.WriteThrough() {
		err = n.Image.Flush()
	}
	return err
}

// Flush makes completed writes durable unless the cache mode is unsafe.
func (n *Node) Flush() error {
	if n.cache.IgnoreFlush() {
		return nil
	}
	return n.Image.Flush()
}

// Close closes the image, its container and its backing chain.
func (n *Node) Close() error {
	err := n.Image.Close()
	n.locks.release()
	if cerr := n.File.Close(); err == nil {
		err = cerr
	}
	if n.Backing != nil {
		if berr := n.Backing.Close(); err == nil {
			err = berr
		}
	}
	return err
}

// Writable reports whether the node was opened for writing.
func (n *Node) Writable() bool { return n.write }

// Info returns what the image says about itself; images without an Infoer
// report no cluster size and a clean dirty flag.
func (n *Node) Info() (Info, error) {
	if i, ok := n.Image.(Infoer); ok {
		return i.Info()
	}
	return Info{}, nil
}

// AllocatedSize returns the storage the image occupies, or -1 if unknown.
func (n *Node) AllocatedSize() int64 {
	if a, ok := n.Image.(AllocatedSizer); ok {
		if s, err := a.AllocatedSize(); err == nil {
			return s
		}
		return -1
	}
	return storage.AllocatedSize(n.File)
}

// Chain returns the node and its opened backing images, top first.
func (n *Node) Chain() []*Node {
	var c []*Node
	for x := n; x != nil; x = x.Backing {
		c = append(c, x)
	}
	return c
}

func sortedKeys(m map[string]string) []string {
	return slices.Sorted(maps.Keys(m))
}

// IsNotFound reports whether err says a file does not exist.
func IsNotFound(err error) bool {
	var oe *storage.OpenError
	return errors.As(err, &oe) && storage.Strerror(oe.Err) == "No such file or directory"
}
