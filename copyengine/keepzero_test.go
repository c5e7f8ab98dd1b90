package copyengine

import (
	"testing"

	"github.com/qimg/qimg/block"
)

func TestCopyKeepZeroData(t *testing.T) {
	// A data run that holds zeroes, then a run the source reports as
	// zeroes: with KeepZeroData the data run is written whole and the zero
	// run is still zeroed.
	size := 4 * mib
	data := random(3, 2*mib)
	clear(data[64*kib : 512*kib])
	src := newFake(size).fill(data, 0)
	src.layout = []block.Extent{
		{Offset: 0, Length: 2 * mib, Status: block.Allocated | block.Data},
		{Offset: 2 * mib, Length: 2 * mib, Status: block.Allocated | block.Zero},
	}
	for _, keep := range []bool{false, true} {
		dst := newFake(size).fill(random(4, size), 0)
		st := copyInto(t, dst, []Source{{Image: src}}, Options{KeepZeroData: keep})
		want := make([]byte, size)
		copy(want, data)
		sameBytes(t, dst.bytes(), want)
		wantWritten, wantZeroed := 2*mib-448*kib, 2*mib+448*kib
		if keep {
			wantWritten, wantZeroed = 2*mib, 2*mib
		}
		if st.Written != wantWritten || st.Zeroed != wantZeroed {
			t.Errorf("KeepZeroData %v: wrote %d and zeroed %d bytes, want %d and %d", keep, st.Written, st.Zeroed, wantWritten, wantZeroed)
		}
		if z := sumOps(dst.recorded(), opZero); z != wantZeroed {
			t.Errorf("KeepZeroData %v: zero requests cover %d bytes, want %d", keep, z, wantZeroed)
		}
	}
}
