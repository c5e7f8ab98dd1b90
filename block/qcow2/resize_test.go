package qcow2

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/qimg/qimg/block"
)

// TestShrinkAndGrow shrinks images in memory (with snapshots, compressed
// and zero clusters, many refcount blocks) and grows them again: the
// content up to the smallest size survives, the area grown back reads as
// zeroes, and the refcounts stay exact.
func TestShrinkAndGrow(t *testing.T) {
	for _, opts := range []string{"cluster_size=512", "cluster_size=4k,extended_l2=off", "extended_l2=on", "compat=0.10,cluster_size=4k"} {
		t.Run(opts, func(t *testing.T) {
			const size = 8 << 20
			_, n := memCreate(t, opts, size)
			defer n.Close()
			img := n.Image.(*Image)
			ops := &imageOps{t: t, img: n, m: &model{data: make([]byte, size)}, rng: rand.New(rand.NewPCG(11, 12))}
			ops.write(0, 300000)
			ops.write(3<<20, 100000)
			ops.write(size-5000, 5000)
			if opts != "compat=0.10,cluster_size=4k" {
				ops.compressed(6<<20, int(img.clusterSize))
				ops.zero(5<<20, 2*img.clusterSize, 0)
			}
			r := n.Image.(block.Resizer)
			if err := r.Resize(1<<20+512, block.PreallocOff); err != nil {
				t.Fatal(err)
			}
			checkConsistent(t, n)
			if err := r.Resize(size, block.PreallocOff); err != nil {
				t.Fatal(err)
			}
			clear(ops.m.data[1<<20+512:])
			ops.verify()
			checkConsistent(t, n)
		})
	}
}

// TestShrinkWithSnapshot shrinks an image whose clusters a snapshot
// shares: the snapshot keeps its data and its size.
func TestShrinkWithSnapshot(t *testing.T) {
	_, n := memCreate(t, "cluster_size=4k", 4<<20)
	defer n.Close()
	p := bytes.Repeat([]byte{5}, 3<<20)
	if _, err := n.WriteAt(p, 0); err != nil {
		t.Fatal(err)
	}
	sn := snapshotter(n)
	if err := sn.CreateSnapshot(block.SnapshotInfo{Name: "s", VMStateSize: 5000}); err != nil {
		t.Fatal(err)
	}
	if err := n.Image.(block.Resizer).Resize(1<<20, block.PreallocOff); err != nil {
		t.Fatal(err)
	}
	checkConsistent(t, n)
	if err := sn.ApplySnapshot("s"); err != nil {
		t.Fatal(err)
	}
	if n.Size() != 4<<20 {
		t.Fatalf("size %d after applying the snapshot", n.Size())
	}
	got := make([]byte, len(p))
	if _, err := n.ReadAt(got, 0); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("snapshot content after shrinking and applying: %v", err)
	}
	checkConsistent(t, n)
	if list, _ := sn.Snapshots(); len(list) != 1 || list[0].VMStateSize != 5000 {
		t.Fatalf("snapshots %+v", list)
	}
}
