package raw_test

import (
	"testing"

	"github.com/qimg/qimg/block/blocktest"
	"github.com/qimg/qimg/block/raw"
)

func TestConformance(t *testing.T) {
	blocktest.Run(t, blocktest.Factory{Driver: raw.New(), Granularity: 4096})
}
