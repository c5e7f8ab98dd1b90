package block_test

import (
	"golang.org/x/sys/unix"

	"github.com/qimg/qimg/storage"
)

// isDirect reports whether a host file was opened with O_DIRECT.
func isDirect(f storage.File) bool {
	fd, ok := f.(storage.Fder)
	if !ok {
		return false
	}
	flags, err := unix.FcntlInt(fd.Fd(), unix.F_GETFL, 0)
	return err == nil && flags&unix.O_DIRECT != 0
}
