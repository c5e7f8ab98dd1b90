// Package drivers assembles the registry of every image format qimg
// supports.
package drivers

import (
	"github.com/qimg/qimg/block"
	"github.com/qimg/qimg/block/qcow2"
	"github.com/qimg/qimg/block/raw"
)

// Registry returns a new registry holding every format driver. Probing ties
// go to the driver listed first.
func Registry() *block.Registry {
	return block.NewRegistry(
		qcow2.New(),
		raw.New(),
		raw.NewFile(),
	)
}
