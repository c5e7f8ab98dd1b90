#!/bin/sh
# Regenerates the test images with the real qemu-img/qemu-io 7.2.
# Usage: sh gen.sh   (in this directory; needs qemu-utils)
set -eu
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
cd "$t"
io() { f=$1; shift; for c in "$@"; do qemu-io -f qcow2 -c "$c" "$f" >/dev/null; done; }
qemu-img create -q -f qcow2 -o cluster_size=512 v3-512.qcow2 64k
io v3-512.qcow2 'write -P 0x11 0 1k' 'write -c -P 0x22 4k 512' 'write -z 8k 1k' 'write -P 0x33 60k 3k'
qemu-img create -q -f qcow2 -o cluster_size=512,compat=0.10 v2-512.qcow2 64k
io v2-512.qcow2 'write -P 0x44 1k 2k'
qemu-img create -q -f qcow2 -o cluster_size=1k,refcount_bits=1 rc1.qcow2 64k
io rc1.qcow2 'write -P 0x55 0 5k'
qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=64,compression_type=zstd zstd.qcow2 32k
io zstd.qcow2 'write -c -P 0x66 0 512' 'write -c -P 0x67 512 512'
qemu-img create -q -f qcow2 -o cluster_size=512 -b v3-512.qcow2 -F qcow2 backed.qcow2
io backed.qcow2 'write -P 0x77 512 512'
qemu-img create -q -f qcow2 -o cluster_size=512,lazy_refcounts=on lazy.qcow2 16k
qemu-img create -q -f qcow2 -o cluster_size=512 snap.qcow2 16k
io snap.qcow2 'write -P 1 0 1k'
qemu-img snapshot -c first snap.qcow2
io snap.qcow2 'write -P 2 512 1k'
qemu-img snapshot -c second snap.qcow2
qemu-img create -q -f qcow2 -o cluster_size=512,data_file=data.raw datafile.qcow2 16k
io datafile.qcow2 'write -P 8 0 1k'
qemu-img create -q -f qcow2 -o cluster_size=4k bitmaps.qcow2 64k
qemu-img bitmap --add bitmaps.qcow2 b0
qemu-img bitmap --add -g 8k --disable bitmaps.qcow2 b1
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=16k extl2.qcow2 1M
io extl2.qcow2 'write -P 9 1k 2k' 'write -z 8k 1k'
cd - >/dev/null
for f in "$t"/*; do gzip -9 -n -c "$f" >"$(basename "$f").gz"; done
