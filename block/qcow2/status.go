package qcow2

// StatusBoundary returns the end of the L2 table slice that holds off: QEMU
// describes the block status of a qcow2 image one slice at a time, so that
// no run it reports crosses it (block.StatusBounder). BlockStatus itself
// merges runs across slices.
func (i *Image) StatusBoundary(off int64) int64 {
	i.mu.Lock()
	span := int64(i.l2SliceSize) << i.clusterBits
	i.mu.Unlock()
	return off - off%span + span
}
