// Command qimg is a disk image toolkit compatible with qemu-img. Invoked as
// qemu-img or kvm-img (for example through a symbolic link) it behaves as
// qemu-img; as qemu-nbd or qemu-io it is those tools; "qimg nbd …" and
// "qimg io …" reach them by subcommand.
package main

import (
	"os"

	"github.com/qimg/qimg/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args, os.Stdin, os.Stdout, os.Stderr))
}
