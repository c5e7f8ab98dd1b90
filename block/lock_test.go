package block

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/qimg/qimg/internal/oracle"
	"github.com/qimg/qimg/storage"
	"golang.org/x/sys/unix"
)

// lockMagic starts the files of the test formats.
const lockMagic = "LOCKFMT\n"

// lockFmt is a test format shaped like qcow2 for locking: its file holds
// data and metadata (the default role). The file is lockMagic, then a line
// with the backing file name and a line with a data file name.
type lockFmt struct{}

func (lockFmt) Name() string { return "lockfmt" }

func (lockFmt) Probe(p *ProbeInput) int {
	if strings.HasPrefix(string(p.Header), lockMagic) {
		return 100
	}
	return 0
}

func (lockFmt) Open(f storage.File, o *DriverOptions) (Image, error) {
	head := make([]byte, 512)
	n, _ := f.ReadAt(head, 0)
	lines := strings.Split(string(head[:n]), "\n")
	img := &lockImage{}
	if len(lines) > 1 {
		img.backing = lines[1]
	}
	if len(lines) > 2 && lines[2] != "" {
		df, err := o.OpenRelated(lines[2], o.Write)
		if err != nil {
			return nil, err
		}
		img.data = df
	}
	return img, nil
}

func (lockFmt) CreateSpecs() []OptionSpec { return nil }

func (lockFmt) Create(f storage.File, r *CreateRequest) error {
	_, err := f.WriteAt([]byte(lockMagic), 0)
	return err
}

// lockRaw is a test format shaped like raw for locking: a filter of its
// file, or a window of it with the "window" option.
type lockRaw struct{}

func (lockRaw) Name() string          { return "lockraw" }
func (lockRaw) Probe(*ProbeInput) int { return 1 }
func (lockRaw) Open(storage.File, *DriverOptions) (Image, error) {
	return &lockImage{}, nil
}
func (lockRaw) OpenSpecs() []OptionSpec {
	return []OptionSpec{{Name: "window", Type: OptSize, Help: "window size"}}
}
func (lockRaw) FileUse(o *DriverOptions) FileUse {
	if o.Options.Has("window") {
		return FileUse{Role: RoleData | RolePrimary, WriteOnRequest: true}
	}
	return FileUse{Role: RoleFiltered | RolePrimary, WriteOnRequest: true}
}

type lockImage struct {
	backing string
	data    storage.File
}

func (*lockImage) Format() string                           { return "lockfmt" }
func (*lockImage) Size() int64                              { return 1 << 20 }
func (*lockImage) ReadAt(p []byte, off int64) (int, error)  { clear(p); return len(p), nil }
func (*lockImage) WriteAt(p []byte, off int64) (int, error) { return len(p), nil }
func (*lockImage) BlockStatus(off, n int64) (Extent, error) {
	return Extent{Offset: off, Length: n}, nil
}
func (*lockImage) WriteZeroes(off, n int64, _ ZeroFlags) error { return nil }
func (*lockImage) Discard(off, n int64) error                  { return nil }
func (*lockImage) Flush() error                                { return nil }
func (i *lockImage) BackingFile() (string, string)             { return i.backing, "lockfmt" }
func (*lockImage) SetBacking(Image)                            {}
func (i *lockImage) Close() error {
	if i.data != nil {
		return i.data.Close()
	}
	return nil
}

// lockLog records lock operations, "name: lock 100", "name: test 201",
// "name: unlock 100".
type lockLog struct {
	mu  sync.Mutex
	ops []string
}

func (l *lockLog) add(op string) {
	l.mu.Lock()
	l.ops = append(l.ops, op)
	l.mu.Unlock()
}

func (l *lockLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	ops := l.ops
	l.ops = nil
	return ops
}

// recFS is a MemFS whose handles record their lock operations and fail
// those named in fail ("name: lock 100") with the given error.
type recFS struct {
	*storage.MemFS
	log  *lockLog
	fail map[string]error
	fs   storage.LockFS
}

func newRecFS(files map[string]string) *recFS {
	fs := &recFS{MemFS: storage.NewMemFS(), log: &lockLog{}, fail: map[string]error{}}
	for name, content := range files {
		m := storage.NewMemFile(name)
		m.WriteAt([]byte(content), 0)
		fs.Put(name, m)
	}
	return fs
}

func (r *recFS) wrap(f storage.File, err error) (storage.File, error) {
	if err != nil {
		return nil, err
	}
	return &recFile{File: f, bl: f.(storage.ByteLocker), fs: r}, nil
}

func (r *recFS) Open(name string, o storage.OpenOptions) (storage.File, error) {
	return r.wrap(r.MemFS.Open(name, o))
}

func (r *recFS) Create(name string, o storage.OpenOptions) (storage.File, error) {
	return r.wrap(r.MemFS.Create(name, o))
}

type recFile struct {
	storage.File
	bl storage.ByteLocker
	fs *recFS
}

func (f *recFile) op(kind string, off int64) error {
	op := fmt.Sprintf("%s: %s %d", f.Name(), kind, off)
	f.fs.log.add(op)
	return f.fs.fail[op]
}

func (f *recFile) LockByte(off int64) error {
	if err := f.op("lock", off); err != nil {
		return err
	}
	return f.bl.LockByte(off)
}

func (f *recFile) UnlockByte(off int64) error {
	if err := f.op("unlock", off); err != nil {
		return err
	}
	return f.bl.UnlockByte(off)
}

func (f *recFile) ByteLocked(off int64) (bool, error) {
	if err := f.op("test", off); err != nil {
		return false, err
	}
	return f.bl.ByteLocked(off)
}

func (f *recFile) LockFS() storage.LockFS { return f.fs.fs }

func lockEnv(fs storage.Opener) *Env {
	return &Env{Registry: NewRegistry(lockFmt{}, lockRaw{}), Files: fs}
}

// heldBytes lists the lock bytes other handles hold on a MemFS file.
func heldBytes(t *testing.T, fs storage.Opener, name string) []int64 {
	t.Helper()
	f, err := fs.Open(name, storage.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var held []int64
	for _, base := range []int64{storage.LockPermBase, storage.LockSharedBase} {
		for i := range int64(permBits) {
			locked, err := f.(storage.ByteLocker).ByteLocked(base + i)
			if err != nil {
				t.Fatal(err)
			}
			if locked {
				held = append(held, base+i)
			}
		}
	}
	return held
}

// permBytes lists the bytes that perm and shared lock.
func permBytes(perm, shared Perm) []int64 {
	var b []int64
	for i := range int64(permBits) {
		if perm&(1<<i) != 0 {
			b = append(b, storage.LockPermBase+i)
		}
	}
	for i := range int64(permBits) {
		if shared&(1<<i) == 0 {
			b = append(b, storage.LockSharedBase+i)
		}
	}
	return b
}

func TestPermString(t *testing.T) {
	cases := map[Perm]string{
		PermConsistentRead: "consistent read",
		PermWrite:          "write",
		PermWriteUnchanged: "write unchanged",
		PermResize:         "resize",
		PermAll:            "consistent read, write, write unchanged, resize",
		0:                  "",
	}
	for p, want := range cases {
		if got := p.String(); got != want {
			t.Errorf("Perm(%#x).String() = %q, want %q", uint8(p), got, want)
		}
	}
}

// TestLockBytes checks the permission model against the bytes QEMU 7.2
// locks for the same opens, as /proc/locks shows them while qemu-io or
// qemu-img holds the image.
func TestLockBytes(t *testing.T) {
	image := FileUse{Role: RoleImage}
	rawFilter := FileUse{Role: RoleFiltered | RolePrimary, WriteOnRequest: true}
	rawWindow := FileUse{Role: RoleData | RolePrimary, WriteOnRequest: true}
	luks := FileUse{Role: RoleImage, WriteOnRequest: true, ShareWrite: true}
	cases := []struct {
		name string
		use  FileUse
		o    OpenOptions
		want []int64
	}{
		{"qcow2 read-write (qemu-io)", image, OpenOptions{Write: true}, []int64{100, 101, 103, 201, 203}},
		{"qcow2 read-only (qemu-io -r)", image, OpenOptions{}, []int64{100, 201, 203}},
		{"qcow2 info", image, OpenOptions{NoIO: true}, []int64{201, 203}},
		{"qcow2 info -U", image, OpenOptions{NoIO: true, ForceShare: true}, nil},
		{"qcow2 -U (qemu-io -r -U)", image, OpenOptions{ForceShare: true}, []int64{100}},
		{"qcow2 convert source", image, OpenOptions{NoShare: true}, []int64{100, 201, 203}},
		{"raw read-write (qemu-io)", rawFilter, OpenOptions{Write: true}, []int64{100, 101}},
		{"raw read-only", rawFilter, OpenOptions{}, []int64{100}},
		{"raw info", rawFilter, OpenOptions{NoIO: true}, nil},
		{"raw convert source", rawFilter, OpenOptions{NoShare: true}, []int64{100, 201, 203}},
		{"raw resize", rawFilter, OpenOptions{Write: true, Resize: true}, []int64{100, 101, 103}},
		{"raw window read-write", rawWindow, OpenOptions{Write: true}, []int64{100, 101, 203}},
		{"raw window info", rawWindow, OpenOptions{NoIO: true}, []int64{203}},
		{"luks read-write", luks, OpenOptions{Write: true}, []int64{100, 101}},
		{"luks read-only", luks, OpenOptions{}, []int64{100}},
	}
	for _, c := range cases {
		perm, shared := rootPerms(c.o)
		np, ns := filePerms(c.use, perm, shared, c.o.Write, c.o.NoIO)
		if c.o.ForceShare {
			ns = PermAll
		}
		if got := permBytes(np, ns); !slices.Equal(got, c.want) {
			t.Errorf("%s: bytes %v, want %v", c.name, got, c.want)
		}
	}
	// A backing file of a read-write qcow2 image, itself qcow2: reads,
	// and does not share write or resize.
	perm, shared := cowPerms(rootPerms(OpenOptions{Write: true}))
	np, ns := filePerms(image, perm, shared, false, false)
	if got, want := permBytes(np, ns), []int64{100, 201, 203}; !slices.Equal(got, want) {
		t.Errorf("qcow2 backing file: bytes %v, want %v", got, want)
	}
	// A raw backing file of a convert source is not shared for writing.
	perm, shared = cowPerms(rootPerms(OpenOptions{NoShare: true}))
	np, ns = filePerms(rawFilter, perm, shared, false, false)
	if got, want := permBytes(np, ns), []int64{100, 201, 203}; !slices.Equal(got, want) {
		t.Errorf("raw backing file of a convert source: bytes %v, want %v", got, want)
	}
}

// lockSequences are the lock operations QEMU 7.2 makes, in order, for
// some opens (as strace shows them: F_OFD_SETLK F_RDLCK is "lock",
// F_UNLCK "unlock", F_OFD_GETLK "test"), with the equivalent qimg open.
// qemu runs the same open under strace in TestLockSequencesMatchQEMU.
var lockSequenceCases = []struct {
	name    string
	file    string // content of "img"
	format  string
	o       OpenOptions
	drvOpts map[string]string
	create  bool
	open    []string
	close   []string
	qemu    []string // args after the tool, "IMG" for the image
}{
	{
		name: "qcow2 read-write", file: lockMagic, o: OpenOptions{Write: true},
		open:  []string{"lock 100", "lock 101", "lock 103", "lock 201", "lock 203", "test 200", "test 201", "test 203", "test 101", "test 103"},
		close: []string{"unlock 100", "unlock 101", "unlock 103", "unlock 201", "unlock 203"},
		qemu:  []string{"qemu-io", "-f", "qcow2", "-c", "read 0 512", "IMG"},
	},
	{
		name: "qcow2 read-only", file: lockMagic, o: OpenOptions{},
		open:  []string{"lock 100", "lock 201", "lock 203", "test 200", "test 101", "test 103"},
		close: []string{"unlock 100", "unlock 201", "unlock 203"},
		qemu:  []string{"qemu-io", "-r", "-f", "qcow2", "-c", "read 0 512", "IMG"},
	},
	{
		name: "qcow2 info", file: lockMagic, o: OpenOptions{NoIO: true, NoBacking: true},
		open:  []string{"lock 201", "lock 203", "test 101", "test 103"},
		close: []string{"unlock 201", "unlock 203"},
		qemu:  []string{"qemu-img", "info", "IMG"},
	},
	{
		name: "qcow2 info -U", file: lockMagic, o: OpenOptions{NoIO: true, NoBacking: true, ForceShare: true},
		qemu: []string{"qemu-img", "info", "-U", "IMG"},
	},
	{
		name: "raw read-write", file: "", format: "lockraw", o: OpenOptions{Write: true},
		open:  []string{"lock 100", "lock 101", "test 200", "test 201"},
		close: []string{"unlock 100", "unlock 101"},
		qemu:  []string{"qemu-io", "-f", "raw", "-c", "read 0 512", "IMG"},
	},
	{
		name: "raw window read-write", file: "", format: "lockraw", o: OpenOptions{Write: true},
		drvOpts: map[string]string{"window": "1024"},
		open:    []string{"lock 203", "test 103", "lock 100", "lock 101", "test 200", "test 201", "test 103"},
		close:   []string{"unlock 100", "unlock 101", "unlock 203"},
		qemu:    []string{"qemu-io", "--image-opts", "-c", "read 0 512", "driver=raw,size=1024,file.filename=IMG"},
	},
	{
		name: "create", create: true,
		open: []string{"lock 101", "lock 103", "lock 203", "test 201", "test 203", "test 103"},
		qemu: []string{"qemu-img", "create", "-f", "raw", "IMG", "1M"},
	},
}

func prefixed(name string, ops []string) []string {
	out := make([]string, len(ops))
	for i, op := range ops {
		out[i] = name + ": " + op
	}
	return out
}

func TestLockSequences(t *testing.T) {
	for _, c := range lockSequenceCases {
		t.Run(c.name, func(t *testing.T) {
			fs := newRecFS(map[string]string{"img": c.file})
			env := lockEnv(fs)
			if c.create {
				if err := env.Create(CreateParams{Filename: "img", Format: "lockfmt", Size: 1 << 20}); err != nil {
					t.Fatal(err)
				}
				if got := fs.log.take(); !slices.Equal(got, prefixed("img", c.open)) {
					t.Fatalf("create: lock operations\n%q\nwant\n%q", got, prefixed("img", c.open))
				}
				return
			}
			o := c.o
			o.Format, o.DriverOptions = c.format, c.drvOpts
			n, err := env.Open("img", o)
			if err != nil {
				t.Fatal(err)
			}
			if got := fs.log.take(); !slices.Equal(got, prefixed("img", c.open)) {
				t.Errorf("open: lock operations\n%q\nwant\n%q", got, prefixed("img", c.open))
			}
			if err := n.Close(); err != nil {
				t.Fatal(err)
			}
			if got := fs.log.take(); !slices.Equal(got, prefixed("img", c.close)) {
				t.Errorf("close: lock operations\n%q\nwant\n%q", got, prefixed("img", c.close))
			}
		})
	}
}

// straceLockOps runs a command under strace and returns its OFD lock
// operations on byte ranges (not QEMU's probe of /dev/null).
func straceLockOps(t *testing.T, dir string, args ...string) []string {
	t.Helper()
	cmd := exec.Command("strace", append([]string{"-f", "-qq", "-e", "trace=fcntl"}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	out, _ := cmd.CombinedOutput()
	re := regexp.MustCompile(`F_OFD_(SETLK|GETLK), \{l_type=(F_RDLCK|F_WRLCK|F_UNLCK), l_whence=SEEK_SET, l_start=(\d+), l_len=1`)
	var ops []string
	for _, m := range re.FindAllStringSubmatch(string(out), -1) {
		off, _ := strconv.Atoi(m[3])
		switch {
		case m[1] == "GETLK":
			ops = append(ops, fmt.Sprintf("test %d", off))
		case m[2] == "F_UNLCK":
			ops = append(ops, fmt.Sprintf("unlock %d", off))
		default:
			ops = append(ops, fmt.Sprintf("lock %d", off))
		}
	}
	return ops
}

// TestLockSequencesMatchQEMU runs the opens of lockSequenceCases with the
// real qemu-io and qemu-img under strace and checks that QEMU makes the
// lock operations the table says, so TestLockSequences compares qimg with
// QEMU itself. It needs strace, which CI does not install.
func TestLockSequencesMatchQEMU(t *testing.T) {
	if _, err := exec.LookPath("strace"); err != nil {
		t.Skip("strace not installed")
	}
	oracle.QemuImgPath(t)
	oracle.QemuIOPath(t)
	for _, c := range lockSequenceCases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			if !c.create {
				fmtName := "raw"
				if c.file == lockMagic {
					fmtName = "qcow2"
				}
				oracle.MustQemuImg(t, "create", "-f", fmtName, filepath.Join(dir, "img"), "1M")
			}
			args := slices.Clone(c.qemu)
			for i := range args {
				args[i] = strings.ReplaceAll(args[i], "IMG", "img")
			}
			got := straceLockOps(t, dir, args...)
			want := append(slices.Clone(c.open), c.close...)
			if c.create {
				got = got[:min(len(got), len(want))]
			}
			if !slices.Equal(got, want) {
				t.Fatalf("%v: QEMU's lock operations\n%q\ntable\n%q", c.qemu, got, want)
			}
		})
	}
}

func TestLockExclusion(t *testing.T) {
	rw := OpenOptions{Write: true}
	ro := OpenOptions{}
	info := OpenOptions{NoIO: true, NoBacking: true}
	rawRW := OpenOptions{Format: "lockraw", Write: true}
	cases := []struct {
		name          string
		first, second OpenOptions
		want          string // error of the second open; "" for none
	}{
		{"two writers", rw, rw, `Failed to get "write" lock`},
		{"reader after writer", rw, ro, `Failed to get shared "write" lock`},
		{"writer after reader", ro, rw, `Failed to get "write" lock`},
		{"info after writer", rw, info, `Failed to get shared "write" lock`},
		{"two readers", ro, ro, ""},
		{"info after reader", ro, info, ""},
		{"-U reader after writer", rw, OpenOptions{ForceShare: true}, ""},
		{"info -U after writer", rw, OpenOptions{NoIO: true, ForceShare: true}, ""},
		{"locking=off writer after writer", rw, OpenOptions{Write: true, Locking: LockOff}, ""},
		{"writer after locking=off writer", OpenOptions{Write: true, Locking: LockOff}, rw, ""},
		{"locking=on writer after writer", rw, OpenOptions{Write: true, Locking: LockOn}, `Failed to get "write" lock`},
		{"two raw writers", rawRW, rawRW, ""},
		{"raw writer after writer", rw, rawRW, `Failed to get "write" lock`},
		{"reader after raw writer", rawRW, ro, `Failed to get shared "write" lock`},
		{"convert source after raw writer", rawRW, OpenOptions{Format: "lockraw", NoShare: true}, `Failed to get shared "write" lock`},
		{"raw writer after convert source", OpenOptions{Format: "lockraw", NoShare: true}, rawRW, `Failed to get "write" lock`},
		{"resize after raw writer", rawRW, OpenOptions{Format: "lockraw", Write: true, Resize: true}, ""},
		{"resize after reader", ro, OpenOptions{Format: "lockraw", Write: true, Resize: true}, `Failed to get "write" lock`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fs := storage.NewMemFS()
			m := storage.NewMemFile("img")
			m.WriteAt([]byte(lockMagic), 0)
			fs.Put("img", m)
			env := lockEnv(fs)
			a, err := env.Open("img", c.first)
			if err != nil {
				t.Fatal(err)
			}
			held := heldBytes(t, fs, "img")
			b, err := env.Open("img", c.second)
			if c.want == "" {
				if err != nil {
					t.Fatalf("second open: %v", err)
				}
				b.Close()
			} else {
				var le *LockError
				if err == nil || err.Error() != c.want || !errors.As(err, &le) {
					t.Fatalf("second open: %v, want %q", err, c.want)
				}
				if le.ErrorHint() != "Is another process using the image [img]?\n" || !errors.Is(err, ErrLocked) {
					t.Fatalf("hint %q, ErrLocked %v", le.ErrorHint(), errors.Is(err, ErrLocked))
				}
				// The failed open left no lock behind.
				if got := heldBytes(t, fs, "img"); !slices.Equal(got, held) {
					t.Fatalf("after a failed open, bytes %v are locked; the first open holds %v", got, held)
				}
			}
			if err := a.Close(); err != nil {
				t.Fatal(err)
			}
			if got := heldBytes(t, fs, "img"); len(got) != 0 {
				t.Fatalf("after Close, bytes %v are still locked", got)
			}
			// Once the first is closed, the second opens.
			b, err = env.Open("img", c.second)
			if err != nil {
				t.Fatalf("second open after Close: %v", err)
			}
			b.Close()
		})
	}
}

// TestLockRollback checks the two-phase step on its own: an attempt that
// conflicts leaves the file with exactly the locks it had before.
func TestLockRollback(t *testing.T) {
	fs := storage.NewMemFS()
	fs.Put("img", storage.NewMemFile("img"))
	open := func() storage.File {
		f, err := fs.Open("img", storage.OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	fa, fb := open(), open()
	defer fb.Close()
	a, _ := newFileLock(fa, "img", LockAuto, false)
	b, _ := newFileLock(fb, "img", LockAuto, false)
	// b reads and shares all but resize.
	if err := b.set(PermConsistentRead, PermAll&^PermResize); err != nil {
		t.Fatal(err)
	}
	// a writes and shares nothing: it conflicts on b's reading.
	err := a.set(PermWrite, 0)
	if err == nil || err.Error() != `Failed to get shared "consistent read" lock` {
		t.Fatalf("conflicting set: %v", err)
	}
	if a.lockedPerm != 0 || a.lockedShared != 0 || a.perm != 0 || a.shared != PermAll {
		t.Fatalf("after rollback: %+v", a)
	}
	// b upgrades to resize: a holds nothing that conflicts.
	if err := b.set(PermConsistentRead|PermResize, PermAll&^PermResize); err != nil {
		t.Fatal(err)
	}
	// b drops permissions: no test is needed and the bytes go.
	if err := b.set(0, PermAll); err != nil {
		t.Fatal(err)
	}
	if b.lockedPerm != 0 || b.lockedShared != 0 {
		t.Fatalf("after dropping: %+v", b)
	}
	fa.Close()
	if got := heldBytes(t, fs, "img"); len(got) != 0 {
		t.Fatalf("bytes %v locked", got)
	}
}

func TestLockErrors(t *testing.T) {
	cases := []struct {
		name      string
		fail      map[string]error
		fs        storage.LockFS
		o         OpenOptions
		want      string // error; "" for none
		hint      []string
		sentinels []error
	}{
		{
			name: "no locks (NFS without lock manager)", fail: map[string]error{"img: lock 100": unix.ENOLCK},
			want:      "Failed to lock byte 100: No locks available",
			hint:      []string{"does not support the byte-range locks", "local_lock=all", "nobrl", "file.filename=img,file.locking=off"},
			sentinels: []error{ErrLockUnsupported, unix.ENOLCK},
		},
		{
			name: "locks not supported", fail: map[string]error{"img: lock 201": unix.EOPNOTSUPP},
			want:      "Failed to lock byte 201: Operation not supported",
			hint:      []string{"file.locking=off"},
			sentinels: []error{ErrLockUnsupported},
		},
		{
			name: "test unsupported", fail: map[string]error{"img: test 200": unix.ENOLCK},
			want:      `Failed to get "consistent read" lock: No locks available`,
			hint:      []string{"file.locking=off"},
			sentinels: []error{ErrLockUnsupported},
		},
		{
			name: "exclusive lock of another program", fail: map[string]error{"img: lock 100": unix.EACCES},
			want: "Failed to lock byte 100", sentinels: []error{ErrLocked},
		},
		{
			name: "lock refused on NFS", fail: map[string]error{"img: lock 100": unix.EAGAIN},
			fs:   storage.LockFS{Type: "nfs"},
			want: "Failed to lock byte 100", hint: []string{"nfs file system", "file.locking=off"},
			sentinels: []error{ErrLocked},
		},
		{
			name: "other error", fail: map[string]error{"img: lock 100": unix.EIO},
			want: "Failed to lock byte 100: Input/output error", sentinels: []error{unix.EIO},
		},
		{
			name: "CIFS without nobrl, writing", fs: storage.LockFS{Type: "cifs", EnforcedOnIO: true},
			o:    OpenOptions{Write: true},
			want: "Cannot lock 'img': the cifs mount enforces byte-range locks on reads and writes",
			hint: []string{"nobrl", "file.locking=off"}, sentinels: []error{ErrLockUnsupported},
		},
		{name: "CIFS without nobrl, reading", fs: storage.LockFS{Type: "cifs", EnforcedOnIO: true}},
		{
			name: "CIFS without nobrl, locking off", fs: storage.LockFS{Type: "cifs", EnforcedOnIO: true},
			o: OpenOptions{Write: true, Locking: LockOff},
		},
		{name: "no locks, locking off", fail: map[string]error{"img: lock 100": unix.ENOLCK}, o: OpenOptions{Locking: LockOff}},
		{
			name: "force share writer", o: OpenOptions{Write: true, ForceShare: true},
			want: "force-share=on can only be used with read-only images",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fs := newRecFS(map[string]string{"img": lockMagic})
			fs.fail, fs.fs = c.fail, c.fs
			n, err := lockEnv(fs).Open("img", c.o)
			if c.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				n.Close()
				return
			}
			if err == nil || err.Error() != c.want {
				t.Fatalf("error %v, want %q", err, c.want)
			}
			var h interface{ ErrorHint() string }
			hint := ""
			if errors.As(err, &h) {
				hint = h.ErrorHint()
			}
			if len(c.hint) == 0 && hint != "" {
				t.Errorf("hint %q, want none (as QEMU)", hint)
			}
			for _, s := range c.hint {
				if !strings.Contains(hint, s) {
					t.Errorf("hint %q lacks %q", hint, s)
				}
			}
			for _, s := range c.sentinels {
				if !errors.Is(err, s) {
					t.Errorf("error does not wrap %v", s)
				}
			}
			if got := heldBytes(t, fs.MemFS, "img"); len(got) != 0 {
				t.Errorf("bytes %v locked after the failed open", got)
			}
		})
	}
}

func TestParseLockMode(t *testing.T) {
	for s, want := range map[string]LockMode{"auto": LockAuto, "on": LockOn, "off": LockOff} {
		got, err := ParseLockMode(s)
		if err != nil || got != want || got.String() != s {
			t.Errorf("ParseLockMode(%q) = %v, %v", s, got, err)
		}
	}
	for _, s := range []string{"", "ON", "yes", "true", "bogus"} {
		if _, err := ParseLockMode(s); err == nil || err.Error() != "invalid parameter value: "+s {
			t.Errorf("ParseLockMode(%q): %v", s, err)
		}
	}
}

func TestLockBackingChain(t *testing.T) {
	files := map[string]string{"top": lockMagic + "base\n", "base": lockMagic + "\n"}
	cases := []struct {
		name string
		held OpenOptions // how "base" is held
		o    OpenOptions // how "top" is opened
		want string
	}{
		{"base written, top read", OpenOptions{Write: true}, OpenOptions{}, `Could not open backing file: Failed to get shared "write" lock`},
		{"base written, top written", OpenOptions{Write: true}, OpenOptions{Write: true}, `Could not open backing file: Failed to get shared "write" lock`},
		{"base written, top -U", OpenOptions{Write: true}, OpenOptions{ForceShare: true}, ""},
		{"base written, locking off", OpenOptions{Write: true}, OpenOptions{Locking: LockOff}, ""},
		{"base read, top written", OpenOptions{}, OpenOptions{Write: true}, ""},
		{"base read, commit", OpenOptions{}, OpenOptions{Write: true, WriteBacking: true}, `Could not open backing file: Failed to get "write" lock`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fs := newRecFS(files)
			env := lockEnv(fs)
			held, err := env.Open("base", c.held)
			if err != nil {
				t.Fatal(err)
			}
			defer held.Close()
			n, err := env.Open("top", c.o)
			if c.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				n.Close()
				return
			}
			var le *LockError
			if err == nil || err.Error() != c.want || !errors.As(err, &le) || le.ErrorHint() != "Is another process using the image [base]?\n" {
				t.Fatalf("error %v, want %q naming base", err, c.want)
			}
		})
	}
	// The backing file takes the chain's permissions once the chain is
	// open: a top opened for writing reads its base.
	fs := newRecFS(files)
	env := lockEnv(fs)
	n, err := env.Open("top", OpenOptions{Write: true})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := heldBytes(t, fs, "base"), []int64{100, 201, 203}; !slices.Equal(got, want) {
		t.Errorf("base: bytes %v, want %v", got, want)
	}
	n.Close()
	if got := heldBytes(t, fs, "base"); len(got) != 0 {
		t.Errorf("base: bytes %v locked after Close", got)
	}
}

func TestLockDataFile(t *testing.T) {
	files := map[string]string{"a": lockMagic + "\ndata\n", "b": lockMagic + "\ndata\n", "data": ""}
	fs := newRecFS(files)
	env := lockEnv(fs)
	a, err := env.Open("a", OpenOptions{Write: true})
	if err != nil {
		t.Fatal(err)
	}
	// A written data file: read, written, resized, not shared for resize.
	if got, want := heldBytes(t, fs, "data"), []int64{100, 101, 103, 203}; !slices.Equal(got, want) {
		t.Errorf("data file: bytes %v, want %v", got, want)
	}
	_, err = env.Open("b", OpenOptions{})
	var le *LockError
	if err == nil || err.Error() != `Failed to get shared "resize" lock` || !errors.As(err, &le) || le.ErrorHint() != "Is another process using the image [data]?\n" {
		t.Fatalf("second image on the data file: %v", err)
	}
	a.Close()
	if got := heldBytes(t, fs, "data"); len(got) != 0 {
		t.Errorf("data file: bytes %v locked after Close", got)
	}
	b, err := env.Open("b", OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	// A data file opened on its own is locked until it is closed.
	f, err := env.OpenRelated("a", "data", "data file", true, CacheWriteback)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := heldBytes(t, fs, "data"), []int64{100, 101, 103, 203}; !slices.Equal(got, want) {
		t.Errorf("data file opened alone: bytes %v, want %v", got, want)
	}
	f.Close()
}

func TestLockCreate(t *testing.T) {
	fs := newRecFS(map[string]string{"img": lockMagic + "\n\n\nkeep me\n"})
	env := lockEnv(fs)
	held, err := env.Open("img", OpenOptions{Write: true})
	if err != nil {
		t.Fatal(err)
	}
	err = env.Create(CreateParams{Filename: "img", Format: "lockfmt", Size: 1 << 20})
	var le *LockError
	if err == nil || err.Error() != `Failed to get "write" lock` || !errors.As(err, &le) || le.ErrorHint() != "Is another process using the image [img]?\n" {
		t.Fatalf("create over an image in use: %v", err)
	}
	if got := string(fs.File("img").Bytes()); got != lockMagic+"\n\n\nkeep me\n" {
		t.Fatalf("the image in use was changed: %q", got)
	}
	held.Close()
	if err := env.Create(CreateParams{Filename: "img", Format: "lockfmt", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if got := string(fs.File("img").Bytes()); got != lockMagic {
		t.Fatalf("created %q", got)
	}
	if got := heldBytes(t, fs, "img"); len(got) != 0 {
		t.Errorf("bytes %v locked after create", got)
	}
	if err := env.Create(CreateParams{Filename: "new", Format: "lockfmt", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if got := heldBytes(t, fs, "new"); len(got) != 0 {
		t.Errorf("bytes %v locked after create", got)
	}
}

// TestLockClosedFile checks that a file its driver already closed is
// skipped rather than failing the chain's locking.
func TestLockClosedFile(t *testing.T) {
	fs := storage.NewMemFS()
	fs.Put("img", storage.NewMemFile("img"))
	f, _ := fs.Open("img", storage.OpenOptions{})
	s := newNodeLocks(OpenOptions{})
	if err := s.add(f, "img", FileUse{Role: RoleImage}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := s.update(rootPerms(OpenOptions{})); err != nil {
		t.Fatalf("update with a closed file: %v", err)
	}
	s.release()
}
