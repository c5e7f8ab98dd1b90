package block

// Image locking, compatible with QEMU 7.2.
//
// Every file qimg opens for an image (the image's own file, the files it
// names such as an external data file, and each backing file) is locked
// the way QEMU locks it, so that qimg and QEMU processes see each other's
// locks: a qcow2 image a virtual machine writes cannot be opened by
// `qimg info` without -U, and `qemu-img` refuses an image qimg is writing.
//
// The model is QEMU's permission system reduced to what a command-line tool
// needs. Whoever opens an image (a "root" user: a qemu-img command) asks for
// permissions on it and says which it shares with others (rootPerms). A
// format driver passes them down to its container file according to the
// file's role (filePerms, QEMU's bdrv_default_perms): a file holding
// metadata always needs consistent reads, needs write and resize whenever
// the image is writable, and never shares write or resize; a backing file
// gets consistent reads only (cowPerms). The container file then holds a
// shared byte-range lock on byte 100+bit for every permission it uses and on
// byte 200+bit for every permission it does not share (storage.LockPermBase,
// storage.LockSharedBase). Taking permissions is two-phase, as in QEMU's
// raw_handle_perm_lock: lock our own bytes, then test the bytes of the
// others we conflict with (their "shared" bytes for what we use, their
// "perm" bytes for what we do not share), and roll back on a conflict.
//
// Like QEMU, an image is locked twice while it opens: first as its format
// driver alone needs it (when QEMU attaches the file to the format node,
// before anything is read), then, once the whole chain is open, with the
// permissions of the command that opened it (when QEMU attaches the
// BlockBackend). Which message a conflict gives depends on that order.
//
// Locks are released by Node.Close (and by closing the files, or the
// process exiting, since they are open file description locks).
//
// Files that cannot lock (storage.File values that are not
// storage.ByteLocker, such as a bare storage.MemFile or a wrapper) are
// opened without locks. MemFS handles model the locks, so exclusion can be
// tested in memory.

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/qimg/qimg/storage"
)

// Perm is a set of QEMU block-layer permissions (BLK_PERM_*): what a user
// of an image does with it, or lets others do.
type Perm uint8

// The permissions, with QEMU's bit values; bit i is locked at byte 100+i
// and 200+i.
const (
	// PermConsistentRead is reading data that no one else changes under
	// the reader.
	PermConsistentRead Perm = 1 << iota
	// PermWrite is changing the data.
	PermWrite
	// PermWriteUnchanged is writing data that does not change what a
	// reader sees (copy-on-read).
	PermWriteUnchanged
	// PermResize is changing the size.
	PermResize

	// PermAll is every permission.
	PermAll = PermConsistentRead | PermWrite | PermWriteUnchanged | PermResize
)

// permBits is how many permission bits there are.
const permBits = 4

// String lists the permissions by QEMU's names, comma-separated ("write,
// resize"), as bdrv_perm_names does.
func (p Perm) String() string {
	var names []string
	for i := range permBits {
		if p&(1<<i) != 0 {
			names = append(names, permName(i))
		}
	}
	return strings.Join(names, ", ")
}

// permName is QEMU's name of permission bit i.
func permName(i int) string {
	switch i {
	case 0:
		return "consistent read"
	case 1:
		return "write"
	case 2:
		return "write unchanged"
	}
	return "resize"
}

// ChildRole says what a file is to the image that uses it (QEMU's
// BDRV_CHILD_*), which decides the permissions the image takes on it.
type ChildRole uint8

// The roles.
const (
	// RoleData is a file holding guest data.
	RoleData ChildRole = 1 << iota
	// RoleMetadata is a file holding the format's metadata.
	RoleMetadata
	// RoleFiltered is a file the image passes through unchanged (raw
	// without offset or size).
	RoleFiltered
	// RoleCOW is a backing file.
	RoleCOW
	// RolePrimary is the image's main file.
	RolePrimary

	// RoleImage is the main file of a format with a header: data and
	// metadata. It is the role of every format's file unless the driver
	// says otherwise (FileUser).
	RoleImage = RoleData | RoleMetadata | RolePrimary
)

// FileUse says how a format driver uses the file its image lives in, for
// locking.
type FileUse struct {
	// Role is the file's role.
	Role ChildRole
	// WriteOnRequest takes write and resize on the file only when the
	// image's users take them, not whenever the image is writable
	// (QEMU's raw and luks drivers).
	WriteOnRequest bool
	// ShareWrite shares write and resize on the file whenever the image's
	// users share them (QEMU's luks driver, for compatibility).
	ShareWrite bool
}

// FileUser is a driver that uses its image's file otherwise than as data
// and metadata (RoleImage), which is what drivers without this method get.
type FileUser interface {
	FileUse(o *DriverOptions) FileUse
}

// fileUse returns how drv uses the file of an image opened with o.
func fileUse(drv Driver, o *DriverOptions) FileUse {
	if u, ok := drv.(FileUser); ok {
		return u.FileUse(o)
	}
	return FileUse{Role: RoleImage}
}

// LockMode is QEMU's file.locking option.
type LockMode uint8

// The locking modes.
const (
	// LockAuto locks when the system has open file description locks
	// (always on Linux since 3.15). It is the default.
	LockAuto LockMode = iota
	// LockOn locks, and fails if the system cannot.
	LockOn
	// LockOff opens without locks: nothing keeps other programs from
	// writing the image at the same time.
	LockOff
)

// String returns the option value: "auto", "on" or "off".
func (m LockMode) String() string {
	switch m {
	case LockOn:
		return "on"
	case LockOff:
		return "off"
	}
	return "auto"
}

// ParseLockMode reads a file.locking value, with QEMU's error for others.
func ParseLockMode(s string) (LockMode, error) {
	switch s {
	case "auto":
		return LockAuto, nil
	case "on":
		return LockOn, nil
	case "off":
		return LockOff, nil
	}
	return LockAuto, fmt.Errorf("invalid parameter value: %s", s)
}

// ErrLockUnsupported is wrapped by lock errors caused by a file system
// without usable byte-range locks.
var ErrLockUnsupported = errors.New("file system does not support byte-range locks")

// LockError is a failure to take or test an image file's lock bytes. Its
// text is QEMU's; the hint, printed on the lines after it, explains.
type LockError struct {
	// Msg is the error line, as QEMU words it ("Failed to get shared
	// \"write\" lock").
	Msg string
	// Hint is the explanation ("Is another process using the image
	// [x.qcow2]?"), possibly empty.
	Hint string
	// Errs are what the error wraps: ErrLocked for a conflict,
	// ErrLockUnsupported for a file system without locks, and the system
	// error.
	Errs []error
}

func (e *LockError) Error() string { return e.Msg }

// ErrorHint returns the explanation printed after the error.
func (e *LockError) ErrorHint() string { return e.Hint }

// Unwrap returns the errors wrapped.
func (e *LockError) Unwrap() []error { return e.Errs }

// inUseHint is QEMU's hint after a conflict.
func inUseHint(name string) string {
	return fmt.Sprintf("Is another process using the image [%s]?\n", name)
}

// lockingOffHint is the way out of locking for commands with --image-opts.
func lockingOffHint(name string) string {
	return fmt.Sprintf("Commands that take --image-opts can instead open the image without locking:\n"+
		"--image-opts driver=FORMAT,file.filename=%s,file.locking=off\n", name)
}

// unsupportedHint explains a file system without byte-range locks.
func unsupportedHint(name string) string {
	return fmt.Sprintf("The file system holding '%s' does not support the byte-range locks that keep\n"+
		"other programs from using an image at the same time. Mount it with working locks\n"+
		"(NFS: run the lock manager, or mount with 'local_lock=all'; CIFS: mount with 'nobrl').\n", name) +
		lockingOffHint(name)
}

// errNoOFD reports that the kernel has no OFD locks at all.
var errNoOFD = errors.New("File lock requested but OFD locking syscall is unavailable")

// fileLock is the lock state of one open file: QEMU's BDRVRawState perm,
// shared_perm, locked_perm and locked_shared_perm.
type fileLock struct {
	f    storage.ByteLocker
	name string
	mode LockMode
	// fs describes the file system, for messages; nil if unknown.
	fs func() storage.LockFS
	// perm and shared are the permissions in force.
	perm, shared Perm
	// lockedPerm and lockedShared are the bits whose bytes are locked
	// (at 100+bit and 200+bit).
	lockedPerm, lockedShared Perm
	// off is set when locking turned out to be unavailable in auto mode,
	// or the file was closed.
	off bool
}

// newFileLock prepares locking f, or returns nil when f is not locked: mode
// off, or a file that cannot lock. A file that will be written on a file
// system that enforces locks on I/O is refused, since its own locks would
// block its writes.
func newFileLock(f storage.File, name string, mode LockMode, write bool) (*fileLock, error) {
	bl, ok := f.(storage.ByteLocker)
	if mode == LockOff || !ok {
		return nil, nil
	}
	l := &fileLock{f: bl, name: name, mode: mode, shared: PermAll}
	if fser, ok := f.(storage.LockFSer); ok {
		l.fs = fser.LockFS
		if write {
			if fs := fser.LockFS(); fs.EnforcedOnIO {
				return nil, &LockError{
					Msg: fmt.Sprintf("Cannot lock '%s': the %s mount enforces byte-range locks on reads and writes", name, fs.Type),
					Hint: "Locking the image's lock bytes would make them unwritable, even by qimg (a mount\n" +
						"without 'nobrl'). Mount it with 'nobrl'.\n" + lockingOffHint(name),
					Errs: []error{ErrLockUnsupported},
				}
			}
		}
	}
	return l, nil
}

// set moves the file to new permissions, as QEMU's raw_handle_perm_lock
// does in its prepare and commit steps: lock the union of old and new
// bytes, test the others' bytes against the new permissions, then drop the
// bytes no longer needed. On failure the old state is restored.
func (l *fileLock) set(perm, shared Perm) error {
	if l == nil || l.off {
		return nil
	}
	if l.perm|perm != l.perm || l.shared&shared != l.shared {
		err := l.apply(l.perm|perm, ^l.shared|^shared, false)
		if err == nil {
			err = l.check(perm, shared)
		}
		if err != nil {
			l.apply(l.perm, ^l.shared, true)
			if errors.Is(err, os.ErrClosed) {
				// A file its driver has closed holds no locks.
				l.off = true
				return nil
			}
			if errors.Is(err, errNoOFD) && l.mode == LockAuto {
				l.off = true
				return nil
			}
			return err
		}
	}
	l.apply(perm, ^shared, true)
	l.perm, l.shared = perm, shared
	return nil
}

// release drops every lock byte.
func (l *fileLock) release() {
	if l == nil || l.off {
		return
	}
	l.apply(0, 0, true)
	l.perm, l.shared = 0, PermAll
}

// apply locks the bytes of perm (at 100+bit) and of unshared (at 200+bit)
// that are not locked yet and, with unlock, unlocks the others, as QEMU's
// raw_apply_lock_bytes.
func (l *fileLock) apply(perm, unshared Perm, unlock bool) error {
	if err := l.applyBytes(storage.LockPermBase, perm, &l.lockedPerm, unlock); err != nil {
		return err
	}
	return l.applyBytes(storage.LockSharedBase, unshared&PermAll, &l.lockedShared, unlock)
}

func (l *fileLock) applyBytes(base int64, want Perm, locked *Perm, unlock bool) error {
	for i := range permBits {
		bit, off := Perm(1)<<i, base+int64(i)
		switch {
		case want&bit != 0 && *locked&bit == 0:
			if err := l.f.LockByte(off); err != nil {
				return l.lockError(fmt.Sprintf("Failed to lock byte %d", off), err, false)
			}
			*locked |= bit
		case unlock && *locked&bit != 0 && want&bit == 0:
			if err := l.f.UnlockByte(off); err != nil {
				return fmt.Errorf("Failed to unlock byte %d: %s: %w", off, storage.Strerror(err), err)
			}
			*locked &^= bit
		}
	}
	return nil
}

// check tests whether another open file conflicts with perm and shared: a
// lock on a "shared" byte of a permission we use, or on a "perm" byte of a
// permission we do not share, as QEMU's raw_check_lock_bytes.
func (l *fileLock) check(perm, shared Perm) error {
	for i := range permBits {
		if bit := Perm(1) << i; perm&bit != 0 {
			if err := l.test(storage.LockSharedBase+int64(i), fmt.Sprintf("Failed to get \"%s\" lock", bit)); err != nil {
				return err
			}
		}
	}
	for i := range permBits {
		if bit := Perm(1) << i; shared&bit == 0 {
			if err := l.test(storage.LockPermBase+int64(i), fmt.Sprintf("Failed to get shared \"%s\" lock", bit)); err != nil {
				return err
			}
		}
	}
	return nil
}

// test reports a lock by another file on the byte at off as msg.
func (l *fileLock) test(off int64, msg string) error {
	locked, err := l.f.ByteLocked(off)
	if err != nil {
		return l.lockError(msg, err, true)
	}
	if locked {
		return &LockError{Msg: msg, Hint: inUseHint(l.name), Errs: []error{ErrLocked}}
	}
	return nil
}

// lockError words a failed lock call as QEMU does: a conflict (EAGAIN,
// EACCES) without the system's reason, anything else with it. inUse adds
// QEMU's "Is another process using the image" hint, which QEMU gives after
// failed tests. A file system without locks gets an explanation instead.
func (l *fileLock) lockError(msg string, err error, inUse bool) error {
	if errors.Is(err, os.ErrClosed) {
		return err
	}
	if storage.IsLockUnsupported(err) && !storage.OFDLocksAvailable() {
		if l.mode == LockAuto {
			return errNoOFD
		}
		return &LockError{Msg: errNoOFD.Error(), Errs: []error{errNoOFD, ErrLockUnsupported, err}}
	}
	e := &LockError{Msg: msg, Errs: []error{err}}
	if inUse {
		e.Hint = inUseHint(l.name)
	}
	switch {
	case storage.IsLockConflict(err):
		e.Errs = append(e.Errs, ErrLocked)
		if fs := l.fsType(); !inUse && fs != "" {
			e.Hint = fmt.Sprintf("Another program holds an exclusive lock on '%s', or the %s file system\n"+
				"refuses byte-range locks.\n", l.name, fs) + lockingOffHint(l.name)
		}
	case storage.IsLockUnsupported(err):
		e.Msg += ": " + storage.Strerror(err)
		e.Hint = unsupportedHint(l.name)
		e.Errs = append(e.Errs, ErrLockUnsupported)
	default:
		e.Msg += ": " + storage.Strerror(err)
	}
	return e
}

// fsType names the file's file system when it is a network one.
func (l *fileLock) fsType() string {
	if l.fs == nil {
		return ""
	}
	return l.fs().Type
}

// rootPerms are the permissions a command takes on the image it opens and
// those it shares, from its open options (QEMU's blk_new_open).
func rootPerms(o OpenOptions) (perm, shared Perm) {
	if !o.NoIO {
		perm = PermConsistentRead
		if o.Write {
			perm |= PermWrite
		}
	}
	if o.Resize {
		perm |= PermResize
	}
	shared = PermAll
	if o.NoShare {
		shared = PermConsistentRead | PermWriteUnchanged
	}
	return perm, shared
}

// filePerms are the permissions an image takes and shares on one of its
// files, given those its users take and share (QEMU's bdrv_default_perms
// and the raw and luks drivers' adjustments). writable says the image is
// open for writing; noIO that it is opened for its metadata only.
func filePerms(use FileUse, perm, shared Perm, writable, noIO bool) (Perm, Perm) {
	var np, ns Perm
	switch {
	case use.Role&RoleFiltered != 0:
		np, ns = perm, shared
	case use.Role&RoleCOW != 0:
		np, ns = cowPerms(perm, shared)
	default:
		np, ns = perm, shared
		if use.Role&RoleMetadata != 0 {
			// The driver may write metadata whenever the image is
			// writable, and nobody else may change what it reads.
			if writable {
				np |= PermWrite | PermResize
			}
			if !noIO {
				np |= PermConsistentRead
			}
			ns &^= PermWrite | PermResize
		}
		if use.Role&RoleData != 0 {
			ns &^= PermResize
			if np&PermWriteUnchanged != 0 {
				np |= PermWrite
			}
			if np&PermWrite != 0 {
				np |= PermResize
			}
		}
	}
	if use.WriteOnRequest {
		np = np&^(PermWrite|PermResize) | perm&(PermWrite|PermResize)
	}
	if use.ShareWrite {
		ns |= shared & (PermWrite | PermResize)
	}
	return np, ns
}

// cowPerms are the permissions an image takes and shares on its backing
// image: consistent reads if its users read, and write and resize shared
// if its users share writes.
func cowPerms(perm, shared Perm) (Perm, Perm) {
	np := perm & PermConsistentRead
	ns := PermConsistentRead | PermWriteUnchanged
	if shared&PermWrite != 0 {
		ns |= PermWrite | PermResize
	}
	return np, ns
}

// nodeLocks are the locks of one opened image node: its own file and the
// files it names.
type nodeLocks struct {
	mode       LockMode
	writable   bool
	noIO       bool
	forceShare bool
	files      []lockedFile
}

type lockedFile struct {
	lock *fileLock
	use  FileUse
}

// newNodeLocks returns the lock set of an image opened with o.
func newNodeLocks(o OpenOptions) *nodeLocks {
	return &nodeLocks{mode: o.Locking, writable: o.Write, noIO: o.NoIO, forceShare: o.ForceShare}
}

// add locks a file of the node as the node alone needs it, before the
// node has users (QEMU attaching a file to a format node).
func (s *nodeLocks) add(f storage.File, name string, use FileUse) error {
	l, err := newFileLock(f, name, s.mode, s.writable)
	if err != nil || l == nil {
		return err
	}
	lf := lockedFile{lock: l, use: use}
	if err := s.setFile(lf, 0, PermAll); err != nil {
		return err
	}
	s.files = append(s.files, lf)
	return nil
}

// update moves every file of the node to the permissions its users take
// and share.
func (s *nodeLocks) update(perm, shared Perm) error {
	if s == nil {
		return nil
	}
	for _, lf := range s.files {
		if err := s.setFile(lf, perm, shared); err != nil {
			return err
		}
	}
	return nil
}

func (s *nodeLocks) setFile(lf lockedFile, perm, shared Perm) error {
	np, ns := filePerms(lf.use, perm, shared, s.writable, s.noIO)
	if s.forceShare {
		ns = PermAll
	}
	return lf.lock.set(np, ns)
}

// release drops the node's locks.
func (s *nodeLocks) release() {
	if s == nil {
		return
	}
	for _, lf := range s.files {
		lf.lock.release()
	}
}

// lockChain gives the opened chain top..base the permissions of the
// command that opened it (QEMU attaching the BlockBackend), top first.
func (n *Node) lockChain(o OpenOptions) error {
	perm, shared := rootPerms(o)
	for x, level := n, 0; x != nil; x, level = x.Backing, level+1 {
		if x != n {
			perm, shared = cowPerms(perm, shared)
			if o.WriteBacking && (o.WriteBackingLevel <= 0 || level == o.WriteBackingLevel) {
				perm |= PermWrite | PermResize
			}
			if o.ForceShare {
				shared = PermAll
			}
		}
		if err := x.locks.update(perm, shared); err != nil {
			return err
		}
	}
	return nil
}

// createPerms are what creating an image file takes and shares, as QEMU's
// file protocol creates: write and resize, sharing everything but resize.
const (
	createPerm   = PermWrite | PermResize
	createShared = PermAll &^ PermResize
)

// createLocked opens a file for a new image as QEMU's file protocol does:
// it opens an existing file without truncating it, takes the creation locks
// and checks that no one else uses the file, and only then truncates it. A
// new file is created and locked. The locks last until f is closed; the
// driver must write through f rather than reopen the file by name.
func (e *Env) createLocked(name string) (storage.File, error) {
	var f storage.File
	existing := false
	if e.files().Exists(name) {
		if g, err := e.files().Open(name, storage.OpenOptions{Write: true}); err == nil {
			f, existing = g, true
		}
	}
	if f == nil {
		g, err := e.files().Create(name, storage.OpenOptions{})
		if err != nil {
			return nil, err
		}
		f = g
	}
	l, err := newFileLock(f, name, LockAuto, true)
	if err == nil {
		err = l.set(createPerm, createShared)
	}
	if err == nil && existing {
		if terr := f.Truncate(0); terr != nil {
			err = fmt.Errorf("Could not resize file: %s", storage.Strerror(terr))
		}
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
