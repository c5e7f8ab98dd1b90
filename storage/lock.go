package storage

// Byte-range locks as QEMU's file protocol takes them.
//
// QEMU turns the block-layer permissions a user of an image holds into
// shared (read) locks on single bytes of the image file: permission bit i
// ("consistent read", "write", "write unchanged", "resize") is represented
// by a lock on byte LockPermBase+i while the permission is used, and by a
// lock on byte LockSharedBase+i while it is not shared with others. To open
// an image QEMU first locks its own bytes and then asks, for every byte it
// conflicts with, whether any other open file holds a lock there. Because
// every lock is shared, two users never block each other's locking; only
// the test reveals a conflict.
//
// The locks are open file description (OFD) locks: they belong to one open
// of the file, not to the process, so two opens of a file in one process
// exclude each other as two processes do, and they vanish when the file is
// closed or the process exits. The bytes need not exist in the file.
//
// MemFS handles model the same locks in memory, one lock owner per handle,
// so the block layer's exclusion can be tested without host files. A bare
// MemFile (not opened through a MemFS) has no locks and is exempt.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// The lock byte layout, shared with QEMU (block/file-posix.c); libvirt
// takes byte 0.
const (
	// LockPermBase is the byte locked while permission bit 0 is used.
	LockPermBase = 100
	// LockSharedBase is the byte locked while permission bit 0 is not
	// shared with others.
	LockSharedBase = 200
)

// ByteLocker is a File whose single bytes can be locked as QEMU locks image
// files: shared locks owned by the open file.
type ByteLocker interface {
	// LockByte takes a shared lock on the byte at off. It fails (EAGAIN
	// or EACCES on a host file) only if another open file holds an
	// exclusive lock there.
	LockByte(off int64) error
	// UnlockByte releases this open file's lock on the byte at off.
	UnlockByte(off int64) error
	// ByteLocked reports whether another open file holds any lock on the
	// byte at off (the test QEMU makes with an exclusive F_OFD_GETLK).
	// This open file's own locks do not count.
	ByteLocked(off int64) (bool, error)
}

// LockFS says how a file's file system treats byte-range locks.
type LockFS struct {
	// Type names the file system when it is a network or user-space one,
	// where locks may not work or not reach other machines ("nfs",
	// "cifs", "smb2", "smb", "ceph", "fuse"); it is empty otherwise.
	Type string
	// EnforcedOnIO means the file system enforces byte-range locks
	// against reads and writes, as Windows does: CIFS and SMB mounts
	// without the "nobrl" option. A shared lock there makes the locked
	// bytes unwritable even through the file that holds the lock, so an
	// image whose lock bytes are locked cannot be written.
	EnforcedOnIO bool
}

// LockFSer is a File that can describe its file system's locks.
type LockFSer interface {
	LockFS() LockFS
}

// IsLockConflict reports whether a LockByte error means that another open
// file holds a conflicting lock. QEMU reads EAGAIN and EACCES so.
func IsLockConflict(err error) bool {
	return errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES)
}

// IsLockUnsupported reports whether a lock error means that the file system
// does not do byte-range locks: ENOLCK (NFS without a lock manager),
// EOPNOTSUPP, ENOSYS, or EINVAL (a file system refusing OFD locks).
func IsLockUnsupported(err error) bool {
	for _, e := range []error{unix.ENOLCK, unix.EOPNOTSUPP, unix.ENOSYS, unix.EINVAL} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// OFDLocksAvailable reports whether the kernel has open file description
// locks, probing /dev/null as QEMU does.
func OFDLocksAvailable() bool {
	f, err := os.OpenFile("/dev/null", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart}
	return fcntlFile(f, unix.F_OFD_GETLK, &lk) == nil
}

// fcntlFile runs an OFD lock command on f's descriptor, retrying EINTR. The
// descriptor cannot be closed under it; a closed file gives os.ErrClosed.
func fcntlFile(f *os.File, cmd int, lk *unix.Flock_t) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var opErr error
	err = rc.Control(func(fd uintptr) {
		for {
			opErr = unix.FcntlFlock(fd, cmd, lk)
			if opErr != unix.EINTR {
				return
			}
		}
	})
	if err != nil {
		// Control fails only when the file is closed or closing.
		return os.ErrClosed
	}
	return opErr
}

// setByteLock applies a lock of type typ (F_RDLCK or F_UNLCK) to one byte.
func (l *LocalFile) setByteLock(off int64, typ int16) error {
	lk := unix.Flock_t{Type: typ, Whence: io.SeekStart, Start: off, Len: 1}
	return fcntlFile(l.f, unix.F_OFD_SETLK, &lk)
}

// LockByte takes a shared OFD lock on the byte at off.
func (l *LocalFile) LockByte(off int64) error { return l.setByteLock(off, unix.F_RDLCK) }

// UnlockByte releases the OFD lock on the byte at off.
func (l *LocalFile) UnlockByte(off int64) error { return l.setByteLock(off, unix.F_UNLCK) }

// ByteLocked reports whether another open file description holds a lock on
// the byte at off.
func (l *LocalFile) ByteLocked(off int64) (bool, error) {
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart, Start: off, Len: 1}
	if err := fcntlFile(l.f, unix.F_OFD_GETLK, &lk); err != nil {
		return false, err
	}
	return lk.Type != unix.F_UNLCK, nil
}

// lockFSType names the file systems whose locks deserve a word in error
// messages, by statfs magic.
func lockFSType(magic int64) string {
	switch magic {
	case unix.NFS_SUPER_MAGIC:
		return "nfs"
	case unix.CIFS_SUPER_MAGIC:
		return "cifs"
	case unix.SMB2_SUPER_MAGIC:
		return "smb2"
	case unix.SMB_SUPER_MAGIC:
		return "smb"
	case unix.CEPH_SUPER_MAGIC:
		return "ceph"
	case unix.FUSE_SUPER_MAGIC:
		return "fuse"
	}
	return ""
}

// LockFS describes the file system the file lives on. CIFS and SMB mounts
// count as enforcing locks on I/O unless /proc/self/mountinfo shows them
// mounted with "nobrl"; when the mount cannot be found they are given the
// benefit of the doubt.
func (l *LocalFile) LockFS() LockFS {
	var sfs unix.Statfs_t
	var st unix.Stat_t
	rc, err := l.f.SyscallConn()
	if err != nil {
		return LockFS{}
	}
	var opErr error
	if err := rc.Control(func(fd uintptr) {
		if opErr = unix.Fstatfs(int(fd), &sfs); opErr == nil {
			opErr = unix.Fstat(int(fd), &st)
		}
	}); err != nil || opErr != nil {
		return LockFS{}
	}
	fs := LockFS{Type: lockFSType(int64(sfs.Type))}
	switch fs.Type {
	case "cifs", "smb2", "smb":
		mi, err := os.Open("/proc/self/mountinfo")
		if err != nil {
			return fs
		}
		defer mi.Close()
		opts, ok := mountOptions(mi, unix.Major(st.Dev), unix.Minor(st.Dev))
		fs.EnforcedOnIO = ok && !hasOption(opts, "nobrl")
	}
	return fs
}

// mountOptions finds the mount of device major:minor in a
// /proc/self/mountinfo listing and returns its per-mount and super-block
// options, comma-joined. ok is false when no line names the device.
//
// A line reads: id parent major:minor root mountpoint options [optional
// fields...] - fstype source superoptions.
func mountOptions(r io.Reader, major, minor uint32) (opts string, ok bool) {
	want := fmt.Sprintf("%d:%d", major, minor)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 6 || f[2] != want {
			continue
		}
		opts = f[5]
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				if i+3 < len(f) {
					opts += "," + f[i+3]
				}
				break
			}
		}
		return opts, true
	}
	return "", false
}

// hasOption reports whether a comma-separated option list has name, alone
// or as name=value.
func hasOption(opts, name string) bool {
	for _, o := range strings.Split(opts, ",") {
		if o == name || strings.HasPrefix(o, name+"=") {
			return true
		}
	}
	return false
}

// memLocks is the lock table of a MemFile: for each locked byte, the
// handles holding a shared lock on it.
type memLocks map[int64]map[*memHandle]struct{}

// withLocks runs fn on the handle's file with its lock table held for
// writing, unless the handle is closed.
func (h *memHandle) withLocks(fn func(m *MemFile)) error {
	m := h.MemFile
	m.mu.Lock()
	defer m.mu.Unlock()
	if h.closed {
		return os.ErrClosed
	}
	fn(m)
	return nil
}

// LockByte takes a shared lock on the byte at off for this handle.
func (h *memHandle) LockByte(off int64) error {
	return h.withLocks(func(m *MemFile) {
		if m.locks == nil {
			m.locks = memLocks{}
		}
		if m.locks[off] == nil {
			m.locks[off] = map[*memHandle]struct{}{}
		}
		m.locks[off][h] = struct{}{}
	})
}

// UnlockByte releases this handle's lock on the byte at off.
func (h *memHandle) UnlockByte(off int64) error {
	return h.withLocks(func(m *MemFile) { m.unlockLocked(h, off) })
}

// ByteLocked reports whether another handle on the same MemFile holds a
// lock on the byte at off.
func (h *memHandle) ByteLocked(off int64) (bool, error) {
	m := h.MemFile
	m.mu.RLock()
	defer m.mu.RUnlock()
	if h.closed {
		return false, os.ErrClosed
	}
	for o := range m.locks[off] {
		if o != h {
			return true, nil
		}
	}
	return false, nil
}

// unlockLocked drops h's lock on off; m.mu is held.
func (m *MemFile) unlockLocked(h *memHandle, off int64) {
	if holders := m.locks[off]; holders != nil {
		delete(holders, h)
		if len(holders) == 0 {
			delete(m.locks, off)
		}
	}
}

// Close releases the handle's locks, as closing a host file does. The
// content stays in the MemFS, and the handle still reads and writes.
func (h *memHandle) Close() error {
	m := h.MemFile
	m.mu.Lock()
	defer m.mu.Unlock()
	if !h.closed {
		h.closed = true
		for off := range m.locks {
			m.unlockLocked(h, off)
		}
	}
	return nil
}
