package qcow2

import (
	"testing"

	"github.com/qimg/qimg/block/blocktest"
)

// TestConformance runs the block layer's conformance suite on qcow2 with
// small, default and extended-L2 clusters, and a version 2 image.
func TestConformance(t *testing.T) {
	for _, c := range []struct {
		opts string
		gran int64
	}{
		{"cluster_size=4096", 4096},
		{"", 65536},
		{"extended_l2=on,cluster_size=32k", 32768},
		{"compat=0.10,cluster_size=2k", 2048},
	} {
		t.Run(c.opts, func(t *testing.T) {
			blocktest.Run(t, blocktest.Factory{Driver: New(), Options: c.opts, Granularity: c.gran})
		})
	}
}
