#!/bin/sh
# Runs qimg's main job on a small built-in example: create an image, write a
# pattern into it, convert it, check it, and print what info says.
set -eu
QIMG=${1:-bin/qimg}
dir=demo
rm -rf "$dir"
mkdir -p "$dir"
run() { echo "\$ qimg $*"; "$QIMG" "$@"; echo; }

run create -f raw "$dir/disk.raw" 64M
# A recognisable pattern: the text "qimg demo" at the start and at 32 MiB.
printf 'qimg demo' | dd of="$dir/disk.raw" conv=notrunc status=none
printf 'qimg demo' | dd of="$dir/disk.raw" bs=1M seek=32 conv=notrunc status=none
run info "$dir/disk.raw"
run info --output=json "$dir/disk.raw"
