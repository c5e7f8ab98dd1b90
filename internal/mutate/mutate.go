// Package mutate generates hostile disk images: valid images of every format
// qimg supports, damaged in the ways an attacker or a broken disk damages
// them (bit flips, truncations, huge sizes and counts, offsets outside the
// file or misaligned, tables pointing into each other, decompression bombs),
// and images that name files they must not reach (host files by absolute
// path, by "..", through symbolic links, json: and network names, devices
// and pipes, the image itself, loops and over-long backing chains).
//
// The images are data, not tests: internal/hostiletest runs each through
// the qimg binary and checks that it exits cleanly in bounded time and
// memory, reveals nothing of a planted secret file and connects nowhere;
// the same images seed the fuzz targets that open arbitrary images in
// memory.
//
// # Adding a format
//
// Each format registers a [Format] under its driver name in
// [NewRegistry] (one file per format: raw.go, qcow2.go, …):
//
//   - Bases returns valid images of the format (made by the real qemu-img
//     and stored in testdata/, or built in code), each with the files it
//     names and the byte ranges that hold its metadata.
//   - Mutators are the format's own, structure-aware damages: header
//     fields set to boundary values, table entries pointed outside the
//     file, compressed data that inflates too far, and so on.
//   - References are the ways an image of the format names another file
//     (a backing file, a data file, an extent). The generator embeds every
//     hostile name of [HostileNames] through each of them, and builds
//     loops and deep chains through those of kind "backing".
//
// The generic mutators (truncations, bit flips, word stomps, range fills)
// apply to every base of every format without further work, aimed at the
// base's metadata ranges.
//
// Everything is deterministic: the same Target (and Seed) gives the same
// cases, so a failure names a case that can be generated again.
package mutate

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

//go:embed testdata/*.gz
var testdata embed.FS

// Target describes the host the images will be placed on: what they must
// never reach.
type Target struct {
	// Secret is the absolute path of a host file outside the images'
	// directories; no command may reveal its content.
	Secret string
	// NetAddr is the host:port of a listener that no command may connect
	// to; network names in images point there.
	NetAddr string
	// Seed seeds the random mutators.
	Seed uint64
	// Short makes fewer random mutations (for -short).
	Short bool
	// Sample keeps about one in Sample of the cases that are not
	// essential (the generic mutations and the format mutators not marked
	// Essential), chosen by a hash of their names so that the choice is
	// stable; 0 or 1 keeps every case. The essential ones (valid bases,
	// hostile names, loops and chains, bombs, huge tables) are always
	// kept.
	Sample int
}

// File is one file of a case.
type File struct {
	// Data is the file's content from offset 0.
	Data []byte
	// Chunks are further content at offsets beyond Data; the gaps are
	// holes.
	Chunks []Chunk
	// Size, when larger than the content, extends the file with a hole.
	Size int64
	// Link makes the file a symbolic link to Link instead.
	Link string
	// FIFO makes the file a named pipe instead.
	FIFO bool
	// Dir makes the file an empty directory instead.
	Dir bool
}

// Chunk is content at an offset.
type Chunk struct {
	Off  int64
	Data []byte
}

// Range is a byte range of a file.
type Range struct {
	Off, Len int64
}

// Base is a valid image to mutate.
type Base struct {
	// Name names the base within its format ("v3", "snap").
	Name string
	// Main is the image's file name; Files holds it and every file it
	// names, by name relative to the image's directory.
	Main  string
	Files map[string]File
	// Meta lists the byte ranges of Main that hold metadata; the random
	// mutators aim there.
	Meta []Range
	// Flips is how many bit-flip cases the generic mutator makes from
	// this base (0: none), before Short halves it; word stomps are half as
	// many.
	Flips int
	// NoGeneric leaves the base out of the generic mutators.
	NoGeneric bool
}

// clone returns a deep copy of the base's files, so that a mutation never
// changes the base.
func (b Base) clone() Base {
	c := b
	c.Files = make(map[string]File, len(b.Files))
	for k, f := range b.Files {
		f.Data = slices.Clone(f.Data)
		f.Chunks = slices.Clone(f.Chunks)
		c.Files[k] = f
	}
	return c
}

// main returns a copy of the main image's bytes.
func (b Base) main() []byte { return slices.Clone(b.Files[b.Main].Data) }

// with returns a copy of the base whose main image holds data.
func (b Base) with(data []byte) Base {
	c := b.clone()
	f := c.Files[c.Main]
	f.Data = data
	c.Files[c.Main] = f
	return c
}

// Case is one hostile image with the files around it.
type Case struct {
	// Name is "format/base/mutation"; it is unique within a Generate
	// result.
	Name string
	// Format is the driver name of the base image.
	Format string
	// Main is the file to run commands on; Files holds it and the files
	// around it, by name relative to the case's directory.
	Main  string
	Files map[string]File
	// UntrustedOnly marks a case that is only safe in untrusted mode: in
	// default mode qemu-img (and qimg, as a drop-in) would follow the name
	// to a device or pipe and block.
	UntrustedOnly bool
	// Named is the name the image records for another file, for the
	// cases that embed a hostile name.
	Named string
	// Slow marks a case whose commands may legitimately run until a time
	// limit stops them (a small file describing terabytes of data).
	Slow bool
}

// MainBytes returns the main image's content when it is held in memory
// whole (no chunks beyond Data, no trailing hole), for in-memory use such
// as fuzz seeds.
func (c *Case) MainBytes() ([]byte, bool) {
	f := c.Files[c.Main]
	if f.Link != "" || f.FIFO || f.Dir || len(f.Chunks) > 0 || f.Size > int64(len(f.Data)) {
		return nil, false
	}
	return f.Data, true
}

// Write creates the case's files in dir, which must exist.
func (c *Case) Write(dir string) error {
	names := make([]string, 0, len(c.Files))
	for n := range c.Files {
		names = append(names, n)
	}
	slices.Sort(names) // parents before children
	for _, n := range names {
		if err := writeFile(filepath.Join(dir, n), c.Files[n]); err != nil {
			return fmt.Errorf("case %s: %w", c.Name, err)
		}
	}
	return nil
}

func writeFile(path string, f File) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	switch {
	case f.Link != "":
		return os.Symlink(f.Link, path)
	case f.FIFO:
		return syscall.Mkfifo(path, 0o644)
	case f.Dir:
		return os.Mkdir(path, 0o755)
	}
	w, err := os.Create(path)
	if err != nil {
		return err
	}
	_, err = w.Write(f.Data)
	end := int64(len(f.Data))
	for _, c := range f.Chunks {
		if err == nil {
			_, err = w.WriteAt(c.Data, c.Off)
		}
		end = max(end, c.Off+int64(len(c.Data)))
	}
	if err == nil && f.Size > end {
		err = w.Truncate(f.Size)
	}
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	return err
}

// Mutator is one kind of damage to a format's images.
type Mutator struct {
	// Name names the mutator.
	Name string
	// Apply returns the mutations of a base, named within the mutator.
	// It may return none for a base it does not apply to.
	Apply func(b Base, t Target) []Mutation
	// Essential mutations are kept whatever Target.Sample says.
	Essential bool
}

// Mutation is one damaged copy of a base.
type Mutation struct {
	Name string
	Base Base
	// UntrustedOnly, Named and Slow: see Case.
	UntrustedOnly bool
	Named         string
	Slow          bool
	// Essential keeps the mutation whatever Target.Sample says.
	Essential bool
}

// Reference is a way an image of a format names another file.
type Reference struct {
	// Kind is "backing", "data-file", "extent", ….
	Kind string
	// Labels, when set, limits the hostile names embedded to those
	// labels (for a reference that differs from another only in a
	// detail).
	Labels []string
	// Base is the name of the base to embed names into.
	Base string
	// Embed returns a copy of b that names name.
	Embed func(b Base, name string) (Base, error)
}

// Format generates hostile images of one format.
type Format struct {
	// Bases returns the format's valid base images.
	Bases func() ([]Base, error)
	// Mutators are the format's structure-aware mutations.
	Mutators []Mutator
	// References are the ways its images name other files.
	References []Reference
}

// Registry holds the formats, by driver name.
type Registry struct {
	formats map[string]Format
}

// NewRegistry returns a registry with every format qimg has mutators for.
func NewRegistry() *Registry {
	r := &Registry{formats: make(map[string]Format)}
	r.Register("raw", rawFormat())
	r.Register("qcow2", qcow2Format())
	return r
}

// Register adds (or replaces) the format of a driver.
func (r *Registry) Register(driver string, f Format) { r.formats[driver] = f }

// Names lists the registered drivers, sorted.
func (r *Registry) Names() []string {
	var n []string
	for k := range r.formats {
		n = append(n, k)
	}
	slices.Sort(n)
	return n
}

// Generate returns every case of every registered format.
func (r *Registry) Generate(t Target) ([]Case, error) {
	var out []Case
	for _, name := range r.Names() {
		cs, err := r.GenerateFormat(name, t)
		if err != nil {
			return nil, err
		}
		out = append(out, cs...)
	}
	return out, nil
}

// GenerateFormat returns the cases of one format: its bases, the generic
// mutations of each base, the format's own mutations, hostile names through
// each of its references, and loops and deep chains through its backing
// references.
func (r *Registry) GenerateFormat(driver string, t Target) ([]Case, error) {
	f, ok := r.formats[driver]
	if !ok {
		return nil, fmt.Errorf("no mutators for format '%s'", driver)
	}
	bases, err := f.Bases()
	if err != nil {
		return nil, fmt.Errorf("%s bases: %w", driver, err)
	}
	byName := make(map[string]Base, len(bases))
	var out []Case
	seen := make(map[string]bool)
	same := make(map[[32]byte]bool)
	add := func(base string, m Mutation, essential bool) {
		if !essential && !m.Essential && !t.keep(driver+"/"+base+"/"+m.Name) {
			return
		}
		// A mutation that makes the same files as another (a value
		// that was already there) adds nothing.
		if d := digestFiles(m.Base.Files); same[d] {
			return
		} else {
			same[d] = true
		}
		c := Case{Name: driver + "/" + base + "/" + m.Name, Format: driver, Main: m.Base.Main,
			Files: m.Base.Files, UntrustedOnly: m.UntrustedOnly, Named: m.Named, Slow: m.Slow}
		for k := 2; seen[c.Name]; k++ {
			c.Name = fmt.Sprintf("%s/%s/%s#%d", driver, base, m.Name, k)
		}
		seen[c.Name] = true
		out = append(out, c)
	}
	for _, b := range bases {
		byName[b.Name] = b
		add(b.Name, Mutation{Name: "valid", Base: b.clone()}, true)
		for _, m := range genericMutators() {
			if b.NoGeneric {
				break
			}
			for _, mu := range m.Apply(b, t) {
				mu.Name = m.Name + "-" + mu.Name
				add(b.Name, mu, false)
			}
		}
		for _, m := range f.Mutators {
			for _, mu := range m.Apply(b, t) {
				mu.Name = m.Name + "-" + mu.Name
				add(b.Name, mu, m.Essential)
			}
		}
	}
	for _, ref := range f.References {
		b, ok := byName[ref.Base]
		if !ok {
			return nil, fmt.Errorf("%s: reference %s names unknown base %s", driver, ref.Kind, ref.Base)
		}
		for _, hn := range HostileNames(t, b.Main) {
			if ref.Labels != nil && !slices.Contains(ref.Labels, hn.Label) {
				continue
			}
			nb, err := ref.Embed(b.clone(), hn.Name)
			if err != nil {
				return nil, fmt.Errorf("%s: %s %s: %w", driver, ref.Kind, hn.Label, err)
			}
			for k, v := range hn.Files {
				nb.Files[k] = v
			}
			add(b.Name, Mutation{Name: ref.Kind + "-" + hn.Label, Base: nb, UntrustedOnly: hn.UntrustedOnly, Named: hn.Name}, true)
		}
		if ref.Kind == "backing" {
			ms, err := chains(ref, b)
			if err != nil {
				return nil, fmt.Errorf("%s: chains: %w", driver, err)
			}
			for _, m := range ms {
				add(b.Name, m, true)
			}
		}
	}
	return out, nil
}

// keep reports whether a non-essential case of this name is in the
// sample.
func (t Target) keep(name string) bool {
	if t.Sample <= 1 {
		return true
	}
	h := uint64(14695981039346656037)
	for i := 0; i < len(name); i++ {
		h = (h ^ uint64(name[i])) * 1099511628211
	}
	return h%uint64(t.Sample) == 0
}

// digestFiles hashes a set of files, names and content.
func digestFiles(files map[string]File) [32]byte {
	h := sha256.New()
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		f := files[n]
		fmt.Fprintf(h, "%q %q %d %t %t %d\n", n, f.Link, f.Size, f.FIFO, f.Dir, len(f.Data))
		h.Write(f.Data)
		for _, c := range f.Chunks {
			fmt.Fprintf(h, "%d %d\n", c.Off, len(c.Data))
			h.Write(c.Data)
		}
	}
	var d [32]byte
	h.Sum(d[:0])
	return d
}

// HostileName is a name an image may record for another file, with the
// files that must exist around the image for the name to mean what it
// says.
type HostileName struct {
	Label string
	Name  string
	Files map[string]File
	// UntrustedOnly: see Case.
	UntrustedOnly bool
}

// HostileNames returns the names an image must not be allowed to reach
// in untrusted mode (and, for the protocol ones, in default mode), for an
// image whose file is called self.
func HostileNames(t Target, self string) []HostileName {
	host, port := t.NetAddr, ""
	if i := strings.LastIndexByte(t.NetAddr, ':'); i >= 0 {
		host, port = t.NetAddr[:i], t.NetAddr[i+1:]
	}
	secretDir, secretBase := filepath.Dir(t.Secret), filepath.Base(t.Secret)
	up := strings.Repeat("../", 40) // reaches / from any depth
	return []HostileName{
		{Label: "absolute-secret", Name: t.Secret},
		{Label: "dotdot-secret", Name: up + strings.TrimPrefix(t.Secret, "/")},
		{Label: "inside-then-dotdot", Name: "sub/../" + up + strings.TrimPrefix(t.Secret, "/"),
			Files: map[string]File{"sub": {Dir: true}}},
		{Label: "symlink-to-secret", Name: "escape.img", Files: map[string]File{"escape.img": {Link: t.Secret}}},
		{Label: "symlink-dir-out", Name: "outside/" + secretBase, Files: map[string]File{"outside": {Link: secretDir}}},
		{Label: "symlink-chain-out", Name: "hop1", Files: map[string]File{"hop1": {Link: "hop2"}, "hop2": {Link: t.Secret}}},
		{Label: "file-protocol", Name: "file:" + t.Secret},
		{Label: "json-file", Name: fmt.Sprintf(`json:{"file":{"driver":"file","filename":%q}}`, t.Secret)},
		{Label: "json-raw-offset", Name: fmt.Sprintf(`json:{"driver":"raw","offset":0,"file":{"driver":"file","filename":%q}}`, t.Secret)},
		{Label: "json-nbd", Name: fmt.Sprintf(`json:{"file":{"driver":"nbd","server":{"type":"inet","host":%q,"port":%q},"export":"x"}}`, host, port)},
		{Label: "nbd-url", Name: "nbd://" + t.NetAddr + "/x"},
		{Label: "nbd-legacy", Name: "nbd:" + host + ":" + port},
		{Label: "http-url", Name: "http://" + t.NetAddr + "/disk.img"},
		{Label: "https-url", Name: "https://" + t.NetAddr + "/disk.img"},
		{Label: "ssh-url", Name: "ssh://" + t.NetAddr + "/disk.img"},
		{Label: "proc-environ", Name: "/proc/self/environ"},
		{Label: "dev-zero", Name: "/dev/zero", UntrustedOnly: true},
		{Label: "dev-stdin", Name: "/dev/stdin", UntrustedOnly: true},
		{Label: "fifo-inside", Name: "pipe", Files: map[string]File{"pipe": {FIFO: true}}, UntrustedOnly: true},
		{Label: "directory-inside", Name: "sub", Files: map[string]File{"sub": {Dir: true}}},
		{Label: "dot", Name: "."},
		{Label: "tilde", Name: "~/.ssh/id_rsa"},
		{Label: "control-chars", Name: "a\nqimg: forged line\r\x1b[2J\x00b"},
		{Label: "long-name", Name: strings.Repeat("d/", 511) + "x"},
		{Label: "self", Name: self},
		{Label: "self-via-symlink", Name: "alias.img", Files: map[string]File{"alias.img": {Link: self}}},
		{Label: "missing", Name: "does-not-exist.img"},
	}
}

// chains builds, through a backing reference, an image that is its own
// backing file (directly and through a symbolic link), two images naming
// each other, and a chain deeper than untrusted mode allows.
func chains(ref Reference, b Base) ([]Mutation, error) {
	embed := func(name string) (File, error) {
		nb, err := ref.Embed(b.clone(), name)
		if err != nil {
			return File{}, err
		}
		return nb.Files[nb.Main], nil
	}
	var out []Mutation
	mk := func(name string, files map[string]File) {
		out = append(out, Mutation{Name: name, Base: Base{Main: "top.img", Files: files}})
	}
	a, err := embed("peer.img")
	if err != nil {
		return nil, err
	}
	p, err := embed("top.img")
	if err != nil {
		return nil, err
	}
	mk("loop-pair", map[string]File{"top.img": a, "peer.img": p})
	l, err := embed("link.img")
	if err != nil {
		return nil, err
	}
	mk("loop-via-symlink", map[string]File{"top.img": l, "link.img": {Link: "top.img"}})
	// A loop that starts further down: top -> c1 -> c2 -> c1.
	c1, err := embed("c2.img")
	if err != nil {
		return nil, err
	}
	c2, err := embed("c1.img")
	if err != nil {
		return nil, err
	}
	t1, err := embed("c1.img")
	if err != nil {
		return nil, err
	}
	mk("loop-below", map[string]File{"top.img": t1, "c1.img": c1, "c2.img": c2})
	// A chain of 40 images, deeper than untrusted mode's limit, ending in
	// an image that names nothing.
	const depth = 40
	files := map[string]File{}
	for k := 0; k < depth; k++ {
		name := fmt.Sprintf("chain%02d.img", k)
		if k == 0 {
			name = "top.img"
		}
		f, err := embed(fmt.Sprintf("chain%02d.img", k+1))
		if err != nil {
			return nil, err
		}
		files[name] = f
	}
	files[fmt.Sprintf("chain%02d.img", depth)] = File{Data: make([]byte, 4096)}
	mk(fmt.Sprintf("chain-depth-%d", depth), files)
	return out, nil
}

// genericMutators damage any image without knowing its format.
func genericMutators() []Mutator {
	return []Mutator{
		{Name: "truncate", Apply: truncations},
		{Name: "flip", Apply: bitFlips},
		{Name: "stomp", Apply: wordStomps},
		{Name: "fill", Apply: rangeFills},
	}
}

// truncations cut the image at fixed small sizes, at the start and middle
// of each metadata range, and one byte short of its end: at most ten cuts
// (five with Short), spread over those places.
func truncations(b Base, t Target) []Mutation {
	data := b.Files[b.Main].Data
	n := int64(len(data))
	cuts := []int64{0, 7, 72, 104, 512, n / 2, n - 1}
	for _, r := range b.Meta {
		cuts = append(cuts, r.Off, r.Off+r.Len/2)
	}
	cuts = slices.DeleteFunc(cuts, func(c int64) bool { return c < 0 || c >= n })
	slices.Sort(cuts)
	cuts = slices.Compact(cuts)
	keep := 10
	if t.Short {
		keep = 5
	}
	cuts = spread(cuts, keep)
	var out []Mutation
	for _, c := range cuts {
		nb := b.with(slices.Clone(data[:c]))
		f := nb.Files[nb.Main]
		f.Chunks, f.Size = nil, 0
		nb.Files[nb.Main] = f
		out = append(out, Mutation{Name: fmt.Sprint(c), Base: nb})
	}
	return out
}

// spread returns at most n elements of s, evenly spaced, keeping the first
// and the last.
func spread[T any](s []T, n int) []T {
	if len(s) <= n || n < 2 {
		return s
	}
	out := make([]T, 0, n)
	for k := 0; k < n; k++ {
		out = append(out, s[k*(len(s)-1)/(n-1)])
	}
	return out
}

// rng returns a generator seeded from the target's seed and a label, so
// that each base's random mutations are independent of the others.
func rng(t Target, label string) *rand.Rand {
	h := uint64(14695981039346656037)
	for i := 0; i < len(label); i++ {
		h = (h ^ uint64(label[i])) * 1099511628211
	}
	return rand.New(rand.NewPCG(t.Seed, h))
}

// pick returns a random offset, inside a metadata range three times out of
// four.
func pick(r *rand.Rand, b Base, n int64) int64 {
	if len(b.Meta) > 0 && r.IntN(4) != 0 {
		m := b.Meta[r.IntN(len(b.Meta))]
		if off := m.Off + r.Int64N(max(m.Len, 1)); off < n {
			return off
		}
	}
	return r.Int64N(n)
}

// bitFlips flip one to eight random bits, mostly in metadata.
func bitFlips(b Base, t Target) []Mutation {
	data := b.Files[b.Main].Data
	count := b.Flips
	if t.Short {
		count /= 2
	}
	if len(data) == 0 {
		return nil
	}
	r := rng(t, "flip/"+b.Name)
	var out []Mutation
	for k := 0; k < count; k++ {
		d := slices.Clone(data)
		nflips := 1 + r.IntN(8)
		for j := 0; j < nflips; j++ {
			off := pick(r, b, int64(len(d)))
			d[off] ^= 1 << r.IntN(8)
		}
		out = append(out, Mutation{Name: fmt.Sprint(k), Base: b.with(d)})
	}
	return out
}

// interesting are values that break size and offset arithmetic.
var interesting = []uint64{
	0, 1, 0x7f, 0x80, 0xff, 0x1ff, 0x200, 0xfff, 0x1000, 0xffff, 0x10000,
	0x7fffffff, 0x80000000, 0xffffffff, 1 << 32, 1 << 40, 1<<56 - 1, 1 << 62,
	1<<63 - 1, 1 << 63, ^uint64(0),
}

// wordStomps overwrite an aligned 4- or 8-byte big-endian word of metadata
// with an interesting value.
func wordStomps(b Base, t Target) []Mutation {
	data := b.Files[b.Main].Data
	if len(data) < 8 || len(b.Meta) == 0 {
		return nil
	}
	count := max(b.Flips/2, 0)
	if t.Short {
		count /= 2
	}
	r := rng(t, "stomp/"+b.Name)
	var out []Mutation
	for k := 0; k < count; k++ {
		d := slices.Clone(data)
		width := int64(4 << r.IntN(2))
		off := pick(r, b, int64(len(d))) &^ (width - 1)
		if off+width > int64(len(d)) {
			off = int64(len(d)) - width
		}
		// A value that differs from the word there.
		for try := 0; try < 8 && bytes.Equal(d[off:off+width], data[off:off+width]); try++ {
			v := interesting[r.IntN(len(interesting))]
			for i := int64(0); i < width; i++ {
				d[off+i] = byte(v >> (8 * (width - 1 - i)))
			}
		}
		out = append(out, Mutation{Name: fmt.Sprint(k), Base: b.with(d)})
	}
	return out
}

// rangeFills fill each of the first two metadata ranges (the header and
// the first table) with 0xff bytes.
func rangeFills(b Base, _ Target) []Mutation {
	data := b.Files[b.Main].Data
	var out []Mutation
	for k, m := range b.Meta {
		if k >= 2 || m.Off >= int64(len(data)) {
			break
		}
		d := slices.Clone(data)
		end := min(m.Off+m.Len, int64(len(d)))
		for i := m.Off; i < end; i++ {
			d[i] = 0xff
		}
		out = append(out, Mutation{Name: fmt.Sprintf("ff-%d", k), Base: b.with(d)})
	}
	return out
}

// loadTestdata returns a gzipped file from testdata/.
func loadTestdata(name string) ([]byte, error) {
	f, err := testdata.Open("testdata/" + name + ".gz")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, z); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
