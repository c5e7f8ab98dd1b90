package block

import (
	"errors"
	"testing"
)

// layoutImage is an image whose block status is a fixed list of runs;
// ranges the list does not cover are unallocated.
type layoutImage struct {
	size    int64
	runs    []Extent
	backing string
	err     error
	// emptyRun makes BlockStatus return a run of no length.
	emptyRun bool
}

func (l *layoutImage) Format() string                              { return "layout" }
func (l *layoutImage) Size() int64                                 { return l.size }
func (l *layoutImage) ReadAt(p []byte, off int64) (int, error)     { clear(p); return len(p), nil }
func (l *layoutImage) WriteAt(p []byte, off int64) (int, error)    { return 0, ErrReadOnly }
func (l *layoutImage) WriteZeroes(off, n int64, f ZeroFlags) error { return ErrReadOnly }
func (l *layoutImage) Discard(off, n int64) error                  { return nil }
func (l *layoutImage) Flush() error                                { return nil }
func (l *layoutImage) Close() error                                { return nil }
func (l *layoutImage) BackingFile() (string, string)               { return l.backing, "" }
func (l *layoutImage) SetBacking(Image)                            {}

func (l *layoutImage) BlockStatus(off, n int64) (Extent, error) {
	if l.err != nil {
		return Extent{}, l.err
	}
	if l.emptyRun {
		return Extent{Offset: off, Status: Allocated | Data}, nil
	}
	end := off + n
	for _, r := range l.runs {
		if off >= r.Offset && off < r.Offset+r.Length {
			r.Length = min(r.Offset+r.Length, end) - off
			r.Offset = off
			return r, nil
		}
		if r.Offset > off {
			end = min(end, r.Offset)
		}
	}
	return Extent{Offset: off, Length: end - off}, nil
}

func TestBlockStatusAbove(t *testing.T) {
	const k = 1024
	data := Allocated | Data
	zero := Allocated | Zero
	// base: data [0, 64k), 128k long.
	// mid:  zero [16k, 32k), 256k long.
	// top:  data [48k, 80k), 256k long.
	base := &Node{Image: &layoutImage{size: 128 * k, backing: "", runs: []Extent{{Offset: 0, Length: 64 * k, Status: data}}}}
	mid := &Node{Image: &layoutImage{size: 256 * k, backing: "base", runs: []Extent{{Offset: 16 * k, Length: 16 * k, Status: zero}}}, Backing: base}
	top := &Node{Image: &layoutImage{size: 256 * k, backing: "mid", runs: []Extent{{Offset: 48 * k, Length: 32 * k, Status: data}}}, Backing: mid}

	cases := []struct {
		name   string
		base   Image
		off, n int64
		want   Extent
		layer  Image
	}{
		{"from the bottom", nil, 0, 256 * k, Extent{Offset: 0, Length: 16 * k, Status: data}, base},
		{"zero in the middle", nil, 16 * k, 256*k - 16*k, Extent{Offset: 16 * k, Length: 16 * k, Status: zero}, mid},
		{"bottom again", nil, 32 * k, 16 * k, Extent{Offset: 32 * k, Length: 16 * k, Status: data}, base},
		{"top", nil, 40 * k, 200 * k, Extent{Offset: 40 * k, Length: 8 * k, Status: data}, base},
		{"top data", nil, 48 * k, 200 * k, Extent{Offset: 48 * k, Length: 32 * k, Status: data}, top},
		{"bottom unallocated", nil, 80 * k, 32 * k, Extent{Offset: 80 * k, Length: 32 * k, Status: Zero}, nil},
		{"past the bottom's end", nil, 128 * k, 64 * k, Extent{Offset: 128 * k, Length: 64 * k, Status: zero}, base},
		{"above mid", mid, 0, 256 * k, Extent{Offset: 0, Length: 48 * k}, nil},
		{"above mid, top data", mid, 50 * k, 256*k - 50*k, Extent{Offset: 50 * k, Length: 30 * k, Status: data}, top},
		{"above base", base, 16 * k, 100 * k, Extent{Offset: 16 * k, Length: 16 * k, Status: zero}, mid},
		{"above itself", top, 0, 100 * k, Extent{Offset: 0, Length: 100 * k}, nil},
	}
	for _, tc := range cases {
		got, layer, err := BlockStatusAbove(top, tc.base, tc.off, tc.n)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if got != tc.want || layer != tc.layer {
			t.Errorf("%s: got %+v from %p, want %+v from %p", tc.name, got, layer, tc.want, tc.layer)
		}
	}

	// An image that names a backing file the caller cannot see: unknown.
	hidden := &layoutImage{size: 64 * k, backing: "somewhere"}
	if got, _, _ := BlockStatusAbove(hidden, nil, 0, 64*k); got.Status != 0 {
		t.Errorf("unseen backing: status %v, want none", got.Status)
	}
	// Without a backing file, unallocated reads as zeroes.
	alone := &layoutImage{size: 64 * k}
	if got, _, _ := BlockStatusAbove(alone, nil, 0, 64*k); got.Status != Zero {
		t.Errorf("no backing: status %v, want Zero", got.Status)
	}

	bad := []struct {
		name string
		img  Image
		off  int64
		n    int64
	}{
		{"out of range", top, 200 * k, 100 * k},
		{"failing", &layoutImage{size: 64 * k, err: errors.New("boom")}, 0, k},
		{"empty run", &layoutImage{size: 64 * k, emptyRun: true}, 0, k},
	}
	for _, tc := range bad {
		if _, _, err := BlockStatusAbove(tc.img, nil, tc.off, tc.n); err == nil {
			t.Errorf("%s: no error", tc.name)
		}
	}
}
