package qcow2

import "errors"

// repairRefcounts recomputes the refcounts of a dirty image.
func (i *Image) repairRefcounts() error {
	return errors.New("not implemented")
}
