package storage

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// LocalOptions says how to open a local file.
type LocalOptions struct {
	// Write opens the file read-write; otherwise it is read-only.
	Write bool
	// Create creates the file if it does not exist and truncates it to
	// zero length if it does (implies Write).
	Create bool
	// Direct bypasses the host page cache (O_DIRECT). Requests that are not
	// aligned go through aligned bounce buffers.
	Direct bool
	// NoSync makes Sync a no-op, for cache=unsafe.
	NoSync bool
}

// directAlign is the alignment used for O_DIRECT buffers, offsets and
// lengths. 4096 satisfies every device with 512 or 4096 byte sectors.
const directAlign = 4096

// LocalFile is a host file or block device.
type LocalFile struct {
	f      *os.File
	name   string
	write  bool
	device bool
	direct bool
	noSync bool
	// rmw serialises read-modify-write cycles of unaligned O_DIRECT writes
	// against aligned writes to the same blocks.
	rmw sync.RWMutex
}

// OpenLocal opens a host file or block/character device. Directories and
// other non-regular files are refused with QEMU's message.
func OpenLocal(name string, o LocalOptions) (*LocalFile, error) {
	flags := os.O_RDONLY
	if o.Write || o.Create {
		flags = os.O_RDWR
	}
	if o.Create {
		flags |= os.O_CREATE
	}
	if o.Direct {
		flags |= unix.O_DIRECT
	}
	if name == "" && !o.Create {
		return nil, ErrNoFilename
	}
	f, err := os.OpenFile(name, flags|unix.O_CLOEXEC, 0o644)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) && pe.Err == unix.EINVAL && o.Direct {
			// As QEMU does, tell a file system without O_DIRECT
			// from other invalid opens by trying without it.
			g, err2 := os.OpenFile(name, (flags&^unix.O_DIRECT)|unix.O_CLOEXEC, 0o644)
			if err2 != nil {
				return nil, &OpenError{Name: name, Err: err2, Create: o.Create}
			}
			g.Close()
			return nil, &OpenError{Name: name, Err: errors.New("filesystem does not support O_DIRECT"), Create: o.Create}
		}
		return nil, &OpenError{Name: name, Err: err, Create: o.Create}
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, &SysError{Op: "Could not stat file", Err: err}
	}
	lf := &LocalFile{f: f, name: name, write: flags&os.O_RDWR != 0, direct: o.Direct, noSync: o.NoSync}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
	case unix.S_IFBLK, unix.S_IFCHR:
		lf.device = true
	default:
		f.Close()
		return nil, &NotRegularError{Name: name}
	}
	if o.Create && !lf.device {
		if err := f.Truncate(0); err != nil {
			f.Close()
			return nil, &SysError{Op: "Could not resize file", Err: err}
		}
	}
	return lf, nil
}

// Name returns the name the file was opened under.
func (l *LocalFile) Name() string { return l.name }

// IsDevice reports whether the file is a block or character device.
func (l *LocalFile) IsDevice() bool { return l.device }

// Fd returns the file descriptor, for locking.
func (l *LocalFile) Fd() uintptr { return l.f.Fd() }

// Size returns the length of the file or device.
func (l *LocalFile) Size() (int64, error) {
	if l.device {
		if n, err := unix.IoctlGetUint64(int(l.f.Fd()), unix.BLKGETSIZE64); err == nil {
			return int64(n), nil
		}
		n, err := l.f.Seek(0, io.SeekEnd)
		if err != nil {
			return 0, err
		}
		return n, nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(l.f.Fd()), &st); err != nil {
		return 0, err
	}
	return st.Size, nil
}

// AllocatedSize returns st_blocks*512, the storage the file occupies.
func (l *LocalFile) AllocatedSize() (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(l.f.Fd()), &st); err != nil {
		return 0, err
	}
	return st.Blocks * 512, nil
}

func aligned(p []byte, off int64) bool {
	if len(p) == 0 {
		return true
	}
	return off%directAlign == 0 && len(p)%directAlign == 0 &&
		uintptr(unsafe.Pointer(&p[0]))%directAlign == 0
}

// AlignedBuffer returns a zeroed buffer of n bytes whose address is aligned
// for O_DIRECT.
func AlignedBuffer(n int) []byte {
	buf := make([]byte, n+directAlign)
	shift := int((directAlign - uintptr(unsafe.Pointer(&buf[0]))%directAlign) % directAlign)
	return buf[shift : shift+n : shift+n]
}

// ReadAt reads len(p) bytes at off, retrying short reads; at the end of the
// file it returns what it read and io.EOF.
func (l *LocalFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%s: negative offset %d", l.name, off)
	}
	if !l.direct || aligned(p, off) {
		return l.f.ReadAt(p, off)
	}
	start := off &^ (directAlign - 1)
	end := (off + int64(len(p)) + directAlign - 1) &^ (directAlign - 1)
	buf := AlignedBuffer(int(end - start))
	n, err := l.f.ReadAt(buf, start)
	avail := int64(n) - (off - start)
	if avail <= 0 {
		if err == nil {
			err = io.EOF
		}
		return 0, err
	}
	c := copy(p, buf[off-start:off-start+min(avail, int64(len(p)))])
	if c < len(p) {
		if err == nil {
			err = io.EOF
		}
		return c, err
	}
	return c, nil
}

// WriteAt writes p at off, retrying short writes.
func (l *LocalFile) WriteAt(p []byte, off int64) (int, error) {
	if !l.write {
		return 0, ErrReadOnly
	}
	if off < 0 {
		return 0, fmt.Errorf("%s: negative offset %d", l.name, off)
	}
	if !l.direct || aligned(p, off) {
		if l.direct {
			l.rmw.RLock()
			defer l.rmw.RUnlock()
		}
		return l.f.WriteAt(p, off)
	}
	l.rmw.Lock()
	defer l.rmw.Unlock()
	size, err := l.Size()
	if err != nil {
		return 0, err
	}
	start := off &^ (directAlign - 1)
	end := (off + int64(len(p)) + directAlign - 1) &^ (directAlign - 1)
	buf := AlignedBuffer(int(end - start))
	if n, err := l.f.ReadAt(buf, start); err != nil && err != io.EOF {
		return 0, err
	} else {
		clear(buf[n:])
	}
	copy(buf[off-start:], p)
	if _, err := l.f.WriteAt(buf, start); err != nil {
		return 0, err
	}
	if newEnd := off + int64(len(p)); end > size && !l.device {
		if err := l.f.Truncate(max(size, newEnd)); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// Truncate sets the file length. Devices cannot change size; asking for
// their current size succeeds.
func (l *LocalFile) Truncate(size int64) error {
	if !l.write {
		return ErrReadOnly
	}
	if l.device {
		cur, err := l.Size()
		if err != nil {
			return err
		}
		if size > cur {
			return errors.New("Cannot grow device files")
		}
		return nil
	}
	return l.f.Truncate(size)
}

// Sync flushes written data to stable storage (fdatasync).
func (l *LocalFile) Sync() error {
	if !l.write || l.noSync {
		return nil
	}
	for {
		err := unix.Fdatasync(int(l.f.Fd()))
		if err != unix.EINTR {
			return err
		}
	}
}

// Close closes the file.
func (l *LocalFile) Close() error { return l.f.Close() }

func (l *LocalFile) fallocate(mode uint32, off, n int64) error {
	if !l.write {
		return ErrReadOnly
	}
	for {
		err := unix.Fallocate(int(l.f.Fd()), mode, off, n)
		switch err {
		case nil:
			return nil
		case unix.EINTR:
			continue
		case unix.EOPNOTSUPP, unix.ENOSYS, unix.EINVAL:
			return ErrNotSupported
		default:
			return err
		}
	}
}

// PunchHole deallocates [off, off+n), keeping the file size.
func (l *LocalFile) PunchHole(off, n int64) error {
	return l.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}

// ZeroRange zeroes [off, off+n) keeping it allocated; the file grows if the
// range passes its end.
func (l *LocalFile) ZeroRange(off, n int64) error {
	if l.device {
		return ErrNotSupported
	}
	return l.fallocate(unix.FALLOC_FL_ZERO_RANGE, off, n)
}

// Preallocate reserves blocks for [off, off+n); the file grows if the range
// passes its end.
func (l *LocalFile) Preallocate(off, n int64) error {
	return l.fallocate(0, off, n)
}

// SeekData returns the first data offset at or after off.
func (l *LocalFile) SeekData(off int64) (int64, error) {
	if l.device {
		return off, nil
	}
	pos, err := unix.Seek(int(l.f.Fd()), off, unix.SEEK_DATA)
	switch err {
	case nil:
		return pos, nil
	case unix.ENXIO:
		return 0, ErrNoData
	case unix.EINVAL, unix.EOPNOTSUPP:
		return 0, ErrNotSupported
	}
	return 0, err
}

// SeekHole returns the first hole at or after off (the end of the file is a
// hole).
func (l *LocalFile) SeekHole(off int64) (int64, error) {
	if l.device {
		return l.Size()
	}
	pos, err := unix.Seek(int(l.f.Fd()), off, unix.SEEK_HOLE)
	switch err {
	case nil:
		return pos, nil
	case unix.ENXIO:
		return off, nil
	case unix.EINVAL, unix.EOPNOTSUPP:
		return 0, ErrNotSupported
	}
	return 0, err
}

// CopyRange copies n bytes from this file at srcOff into dst at dstOff with
// copy_file_range. dst must be a *LocalFile.
func (l *LocalFile) CopyRange(dst File, srcOff, dstOff, n int64) (int64, error) {
	d, ok := dst.(*LocalFile)
	if !ok || l.direct != d.direct {
		return 0, ErrNotSupported
	}
	var done int64
	for done < n {
		so, do := srcOff+done, dstOff+done
		c, err := unix.CopyFileRange(int(l.f.Fd()), &so, int(d.f.Fd()), &do, int(min(n-done, 1<<30)), 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			if done == 0 && (err == unix.EXDEV || err == unix.ENOSYS || err == unix.EOPNOTSUPP || err == unix.EINVAL) {
				return 0, ErrNotSupported
			}
			return done, err
		}
		if c == 0 {
			return done, io.ErrUnexpectedEOF
		}
		done += int64(c)
	}
	return done, nil
}

// SetNoCOW sets the file's no-copy-on-write attribute (btrfs), as QEMU's
// nocow option does. File systems without the attribute ignore it.
func (l *LocalFile) SetNoCOW() error {
	const fsNoCOWFL = 0x00800000
	attr, err := unix.IoctlGetInt(int(l.f.Fd()), unix.FS_IOC_GETFLAGS)
	if err != nil {
		return nil
	}
	return ignoreUnsupported(unix.IoctlSetPointerInt(int(l.f.Fd()), unix.FS_IOC_SETFLAGS, attr|fsNoCOWFL))
}

func ignoreUnsupported(err error) error {
	if err == unix.ENOTTY || err == unix.EOPNOTSUPP || err == unix.EINVAL {
		return nil
	}
	return err
}

// FileID returns the device and inode numbers, which identify the file.
func (l *LocalFile) FileID() (dev, ino uint64, ok bool) {
	var st unix.Stat_t
	if err := unix.Fstat(int(l.f.Fd()), &st); err != nil {
		return 0, 0, false
	}
	return st.Dev, st.Ino, true
}
