package cli

import (
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/storage"
)

// Snapshot actions, as img_snapshot numbers them.
const (
	snapshotNone = iota
	snapshotList
	snapshotApply
	snapshotCreate
	snapshotDelete
)

// snapshotNameSize is the size of QEMU's QEMUSnapshotInfo name buffer: a
// name given to -c is cut to one byte less.
const snapshotNameSize = 256

// cmdSnapshot is `qemu-img snapshot`: list, create, apply or delete the
// internal snapshots of an image. With no action it opens the image for
// writing and does nothing, as qemu-img does.
func cmdSnapshot(a *App, args []string) int {
	g := newGetopt(args, ":la:c:d:hqU", []longOpt{
		{"help", noArgument, 'h'},
		{"object", requiredArgument, optObject},
		{"image-opts", noArgument, optImageOpts},
		{"force-share", noArgument, 'U'},
	})
	action := snapshotNone
	var name string
	imageOpts, forceShare := false, false
	for {
		c := g.next()
		if c == -1 {
			break
		}
		if code, stop := a.commonOption(g, c); stop {
			return code
		}
		switch c {
		case 'l', 'a', 'c', 'd':
			if action != snapshotNone {
				return a.usageError("Cannot mix '-l', '-a', '-c', '-d'")
			}
			action = map[int]int{'l': snapshotList, 'a': snapshotApply, 'c': snapshotCreate, 'd': snapshotDelete}[c]
			name = g.optarg
		case 'q':
			// Nothing the command prints is progress or chatter.
		case 'U':
			forceShare = true
		case optImageOpts:
			imageOpts = true
		}
	}
	ops := g.operands()
	if len(ops) != 1 {
		return a.usageError("Expecting one image file name")
	}
	n, ok := a.openImage(ops[0], openSpec{imageOpts: imageOpts, forceShare: forceShare, write: action != snapshotList})
	if !ok {
		return 1
	}
	sn, _ := n.Image.(block.Snapshotter)
	ok = true
	switch action {
	case snapshotList:
		a.listSnapshots(sn)
	case snapshotCreate:
		ok = a.createSnapshot(sn, name)
	case snapshotApply:
		if sn == nil {
			a.reopenForFallback(n)
		}
		ok = a.applySnapshot(sn, name)
	case snapshotDelete:
		ok = a.deleteSnapshot(sn, name)
	}
	if err := n.Close(); err != nil && ok {
		a.reportErr("", err)
		ok = false
	}
	if !ok {
		return 1
	}
	return 0
}

// listSnapshots prints the snapshot table, or nothing for an image that has
// none or cannot have any (QEMU's dump_snapshots).
func (a *App) listSnapshots(sn block.Snapshotter) {
	if sn == nil {
		return
	}
	list, err := sn.Snapshots()
	if err != nil || len(list) == 0 {
		return
	}
	a.printf("Snapshot list:\n%s\n", snapshotHeader())
	for _, s := range list {
		a.printf("%s\n", snapshotLine(s))
	}
}

// createSnapshot takes a snapshot named name (cut as QEMU cuts it) dated
// now, with no VM state, a zero VM clock and a zero icount, as qemu-img
// records offline snapshots.
func (a *App) createSnapshot(sn block.Snapshotter, name string) bool {
	err := error(syscall.ENOTSUP)
	if sn != nil {
		now := time.Now().UnixMicro()
		err = sn.CreateSnapshot(block.SnapshotInfo{
			Name:     cString(name, snapshotNameSize),
			DateSec:  now / 1e6,
			DateNsec: now % 1e6 * 1000,
		})
	}
	if err != nil {
		errno := errnoOf(err)
		a.errorf("Could not create snapshot '%s': %d (%s)", name, -int(errno), storage.Strerror(errno))
		return false
	}
	return true
}

// applySnapshot reverts the image to a snapshot named by ID or name.
func (a *App) applySnapshot(sn block.Snapshotter, name string) bool {
	err := errors.New("Block driver does not support snapshots")
	if sn != nil {
		err = sn.ApplySnapshot(name)
	}
	if err != nil {
		var r interface{ ErrorReports() []string }
		if errors.As(err, &r) {
			for _, msg := range r.ErrorReports() {
				a.errorf("%s", msg)
			}
		}
		a.reportErr(fmt.Sprintf("Could not apply snapshot '%s': ", name), err)
		return false
	}
	return true
}

// reopenForFallback opens a raw image's format layer again, as QEMU's
// bdrv_snapshot_goto does after handing a snapshot request down to the
// file of a format without snapshots: the warnings the open prints (a
// probed raw image written to) appear a second time.
func (a *App) reopenForFallback(n *block.Node) {
	if n.Driver.Name() != "raw" {
		return
	}
	var specs []block.OptionSpec
	if s, ok := n.Driver.(block.OpenSpecser); ok {
		specs = s.OpenSpecs()
	}
	img, err := n.Driver.Open(n.File, &block.DriverOptions{
		Filename: n.Filename, Write: n.Writable(), Probed: n.Probed,
		Options: block.NewOptions(specs), Env: a.env(),
	})
	if err == nil {
		img.Close()
	}
}

// deleteSnapshot deletes the first snapshot with that name, as qemu-img
// does: only names are looked up, in the list as QEMU lists it.
func (a *App) deleteSnapshot(sn block.Snapshotter, name string) bool {
	var found *block.SnapshotInfo
	if sn != nil {
		list, err := sn.Snapshots()
		if err == nil {
			for k := range list {
				if list[k].Name == name {
					found = &list[k]
					break
				}
			}
		}
	}
	if found == nil {
		a.errorf("Could not delete snapshot '%s': snapshot not found", name)
		return false
	}
	if err := sn.DeleteSnapshot(found.ID, found.Name); err != nil {
		a.reportErr(fmt.Sprintf("Could not delete snapshot '%s': ", name), err)
		return false
	}
	return true
}

// cString cuts s to fit a C buffer of size bytes with its NUL, as QEMU's
// pstrcpy does.
func cString(s string, size int) string {
	if len(s) >= size {
		return s[:size-1]
	}
	return s
}

// errnoOf returns the errno QEMU would report for err.
func errnoOf(err error) syscall.Errno {
	var errno syscall.Errno
	switch {
	case errors.As(err, &errno):
		return errno
	case errors.Is(err, block.ErrUnsupported):
		return syscall.ENOTSUP
	case errors.Is(err, block.ErrReadOnly):
		return syscall.EACCES
	case errors.Is(err, block.ErrTooBig):
		return syscall.EFBIG
	}
	return syscall.EIO
}
