package raw

import "github.com/qimg/qimg/block"

// Measure computes the size of a new raw image as QEMU's raw_measure does
// (block.Measurer): the input's virtual size, or the size option rounded
// up to a sector; a raw image is always fully allocated.
func (*Driver) Measure(opts *block.Options, in block.Image, _ *block.Env) (block.MeasureInfo, error) {
	var n int64
	if in != nil {
		n = in.Size()
	} else {
		n = int64((opts.Uint("size", 0) + 511) &^ 511)
	}
	return block.MeasureInfo{Required: n, FullyAllocated: n}, nil
}
