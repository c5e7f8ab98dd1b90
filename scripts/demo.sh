#!/bin/sh
# Runs qimg's main job on a small built-in example: create a disk, write a
# recognisable pattern into it, convert it to a compressed qcow2 image, show
# what info says about it, check it, and convert it back to prove the round trip is
# exact.
set -eu
QIMG=${1:-bin/qimg}
dir=demo
rm -rf "$dir"
mkdir -p "$dir"
run() { echo "\$ qimg $*"; "$QIMG" "$@"; echo; }

run create -f raw "$dir/disk.raw" 64M
# The pattern: text at the start, 1 MiB of pseudo-random data at 8 MiB, and
# text again at 32 MiB; everything else stays a hole.
printf 'qimg demo: start of disk' | dd of="$dir/disk.raw" conv=notrunc status=none
awk 'BEGIN { srand(42); for (i = 0; i < 65536; i++) printf "%08x%08x", int(rand()*4294967295), i }' |
	dd of="$dir/disk.raw" bs=1M seek=8 count=1 iflag=fullblock conv=notrunc status=none
printf 'qimg demo: 32 MiB in' | dd of="$dir/disk.raw" bs=1M seek=32 conv=notrunc status=none

run convert -c -f raw -O qcow2 "$dir/disk.raw" "$dir/disk.qcow2"
run info "$dir/disk.qcow2"
run check "$dir/disk.qcow2"
run convert -f qcow2 -O raw "$dir/disk.qcow2" "$dir/roundtrip.raw"
if cmp -s "$dir/disk.raw" "$dir/roundtrip.raw"; then
	echo "round trip raw -> qcow2 (compressed) -> raw: identical"
else
	echo "round trip raw -> qcow2 (compressed) -> raw: DIFFERENT" >&2
	exit 1
fi
