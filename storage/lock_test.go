package storage

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// lockOpeners gives two ways to get handles on one file: host files and a
// MemFS. Both must behave the same.
func lockOpeners(t *testing.T) map[string]func() (Opener, string) {
	return map[string]func() (Opener, string){
		"local": func() (Opener, string) {
			name := filepath.Join(t.TempDir(), "img")
			if err := os.WriteFile(name, make([]byte, 512), 0o644); err != nil {
				t.Fatal(err)
			}
			return Local{}, name
		},
		"mem": func() (Opener, string) {
			fs := NewMemFS()
			fs.Put("img", NewMemFile("img"))
			return fs, "img"
		},
	}
}

func openLocker(t *testing.T, o Opener, name string, write bool) ByteLocker {
	t.Helper()
	f, err := o.Open(name, OpenOptions{Write: write})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	bl, ok := f.(ByteLocker)
	if !ok {
		t.Fatalf("%T is not a ByteLocker", f)
	}
	return bl
}

func wantLocked(t *testing.T, who string, l ByteLocker, off int64, want bool) {
	t.Helper()
	got, err := l.ByteLocked(off)
	if err != nil {
		t.Fatalf("%s: ByteLocked(%d): %v", who, off, err)
	}
	if got != want {
		t.Fatalf("%s: ByteLocked(%d) = %v, want %v", who, off, got, want)
	}
}

func TestByteLocks(t *testing.T) {
	for kind, mk := range lockOpeners(t) {
		t.Run(kind, func(t *testing.T) {
			o, name := mk()
			a := openLocker(t, o, name, true)
			b := openLocker(t, o, name, false)
			if err := a.LockByte(LockPermBase); err != nil {
				t.Fatal(err)
			}
			wantLocked(t, "owner", a, LockPermBase, false)
			wantLocked(t, "other", b, LockPermBase, true)
			wantLocked(t, "other", b, LockPermBase+1, false)
			wantLocked(t, "other", b, LockPermBase-1, false)
			// Shared locks never block each other.
			if err := b.LockByte(LockPermBase); err != nil {
				t.Fatalf("second shared lock: %v", err)
			}
			if err := a.UnlockByte(LockPermBase); err != nil {
				t.Fatal(err)
			}
			wantLocked(t, "a after unlock", a, LockPermBase, true)
			wantLocked(t, "b after a's unlock", b, LockPermBase, false)
			// Unlocking a byte not held is harmless.
			if err := a.UnlockByte(LockSharedBase + 3); err != nil {
				t.Fatal(err)
			}
			// Locks far past the end of the file are fine.
			if err := a.LockByte(LockSharedBase + 3); err != nil {
				t.Fatal(err)
			}
			wantLocked(t, "b", b, LockSharedBase+3, true)
			// Closing releases every lock of the handle, only those.
			if err := b.(File).Close(); err != nil {
				t.Fatal(err)
			}
			wantLocked(t, "a after b closed", a, LockPermBase, false)
			c := openLocker(t, o, name, false)
			wantLocked(t, "c", c, LockSharedBase+3, true)
			if err := a.(File).Close(); err != nil {
				t.Fatal(err)
			}
			wantLocked(t, "c after a closed", c, LockSharedBase+3, false)
			// A closed handle cannot lock.
			if err := a.LockByte(LockPermBase); !errors.Is(err, os.ErrClosed) {
				t.Fatalf("LockByte on closed handle: %v, want os.ErrClosed", err)
			}
			if _, err := a.ByteLocked(LockPermBase); !errors.Is(err, os.ErrClosed) {
				t.Fatalf("ByteLocked on closed handle: %v, want os.ErrClosed", err)
			}
		})
	}
}

// TestByteLocksSeeForeignLocks checks that host-file locks are the OFD locks
// other programs see: an exclusive lock taken directly with fcntl blocks
// LockByte, and a LockByte lock is seen by a plain F_OFD_GETLK.
func TestByteLocksSeeForeignLocks(t *testing.T) {
	l, name := openTempLocal(t)
	other, err := os.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	ex := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart, Start: LockPermBase + 1, Len: 1}
	if err := unix.FcntlFlock(other.Fd(), unix.F_OFD_SETLK, &ex); err != nil {
		t.Fatal(err)
	}
	err = l.LockByte(LockPermBase + 1)
	if !IsLockConflict(err) {
		t.Fatalf("LockByte under a foreign exclusive lock: %v, want a conflict", err)
	}
	if IsLockUnsupported(err) {
		t.Fatalf("conflict %v also classified as unsupported", err)
	}
	if err := l.LockByte(LockSharedBase + 2); err != nil {
		t.Fatal(err)
	}
	probe := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart, Start: LockSharedBase + 2, Len: 1}
	if err := unix.FcntlFlock(other.Fd(), unix.F_OFD_GETLK, &probe); err != nil {
		t.Fatal(err)
	}
	if probe.Type != unix.F_RDLCK || probe.Start != LockSharedBase+2 || probe.Len != 1 {
		t.Fatalf("foreign F_OFD_GETLK sees %+v, want a read lock on byte %d", probe, LockSharedBase+2)
	}
}

func TestLockErrorClasses(t *testing.T) {
	cases := []struct {
		err                   error
		conflict, unsupported bool
	}{
		{unix.EAGAIN, true, false},
		{unix.EACCES, true, false},
		{fmt.Errorf("wrapped: %w", unix.EAGAIN), true, false},
		{unix.ENOLCK, false, true},
		{unix.EOPNOTSUPP, false, true},
		{unix.ENOSYS, false, true},
		{unix.EINVAL, false, true},
		{unix.EBADF, false, false},
		{os.ErrClosed, false, false},
		{nil, false, false},
	}
	for _, c := range cases {
		if got := IsLockConflict(c.err); got != c.conflict {
			t.Errorf("IsLockConflict(%v) = %v", c.err, got)
		}
		if got := IsLockUnsupported(c.err); got != c.unsupported {
			t.Errorf("IsLockUnsupported(%v) = %v", c.err, got)
		}
	}
}

func TestOFDLocksAvailable(t *testing.T) {
	if !OFDLocksAvailable() {
		t.Fatal("OFD locks unavailable on Linux")
	}
}

// openTempLocal opens a new empty host file, closed when the test ends.
func openTempLocal(t *testing.T) (*LocalFile, string) {
	t.Helper()
	name := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(name, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := OpenLocal(name, LocalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, name
}

func TestLockFSLocal(t *testing.T) {
	l, name := openTempLocal(t)
	var sfs unix.Statfs_t
	if err := unix.Statfs(name, &sfs); err != nil {
		t.Fatal(err)
	}
	want := lockFSType(int64(sfs.Type))
	if got := l.LockFS(); got.Type != want || got.EnforcedOnIO {
		t.Fatalf("LockFS() = %+v, want type %q, not enforced", got, want)
	}
}

const sampleMountinfo = `22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
36 22 0:52 / /mnt/share rw,relatime shared:40 - cifs //srv/share rw,vers=3.1.1,cache=strict,uid=0,noforceuid,nobrl,actimeo=1
37 22 0:53 / /mnt/brl rw,relatime - cifs //srv/other rw,vers=3.0,cache=strict
38 22 0:54 / /mnt/nfs rw,relatime,nolock shared:41 master:2 - nfs srv:/export rw,vers=3,local_lock=all
39 22 0:55 / /mnt/short rw
41 22 0:57 / /mnt/tooshort
40 22 0:56 / /mnt/noopts rw,nobrl -
`

func TestMountOptions(t *testing.T) {
	cases := []struct {
		major, minor uint32
		ok           bool
		nobrl        bool
		has          string
	}{
		{254, 0, true, false, "discard"},
		{0, 52, true, true, "vers=3.1.1"},
		{0, 53, true, false, "cache=strict"},
		{0, 54, true, false, "local_lock"},
		{0, 55, true, false, "rw"},
		{0, 56, true, true, "rw"},
		{0, 57, false, false, ""},
		{1, 2, false, false, ""},
	}
	for _, c := range cases {
		opts, ok := mountOptions(strings.NewReader(sampleMountinfo), c.major, c.minor)
		if ok != c.ok {
			t.Errorf("%d:%d: found %v, want %v", c.major, c.minor, ok, c.ok)
			continue
		}
		if got := hasOption(opts, "nobrl"); got != c.nobrl {
			t.Errorf("%d:%d: options %q: nobrl %v, want %v", c.major, c.minor, opts, got, c.nobrl)
		}
		if c.has != "" && !hasOption(opts, c.has) {
			t.Errorf("%d:%d: options %q lack %q", c.major, c.minor, opts, c.has)
		}
	}
	if hasOption("nobrlx,xnobrl", "nobrl") {
		t.Error("hasOption matched a prefix")
	}
}

func FuzzMountOptions(f *testing.F) {
	f.Add(sampleMountinfo, uint32(0), uint32(52))
	f.Add("1 2 3:4 / / rw - x y z\n", uint32(3), uint32(4))
	f.Add("", uint32(0), uint32(0))
	f.Fuzz(func(t *testing.T, text string, major, minor uint32) {
		opts, ok := mountOptions(strings.NewReader(text), major, minor)
		if !ok && opts != "" {
			t.Fatalf("not found but options %q", opts)
		}
		if ok && !strings.Contains(text, fmt.Sprintf("%d:%d", major, minor)) {
			t.Fatalf("found a device the text does not name")
		}
	})
}
