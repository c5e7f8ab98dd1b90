#!/bin/sh
# Regenerates the valid base images the qcow2 mutators start from, with the
# real qemu-img/qemu-io 7.2. Usage: sh gen.sh (in this directory; needs
# qemu-utils). The images are small; they are stored gzipped.
set -eu
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
cd "$t"
io() { f=$1; shift; for c in "$@"; do qemu-io -f qcow2 -c "$c" "$f" >/dev/null; done; }
# Version 3, 4 KiB clusters: data, a compressed cluster, a zero cluster.
qemu-img create -q -f qcow2 -o cluster_size=4k v3.qcow2 1M
io v3.qcow2 'write -P 0x11 0 8k' 'write -c -P 0x22 64k 4k' 'write -z 128k 4k' 'write -P 0x33 1020k 4k'
# Version 2, 512-byte clusters (many small L2 tables).
qemu-img create -q -f qcow2 -o cluster_size=512,compat=0.10 v2.qcow2 256k
io v2.qcow2 'write -P 0x44 1k 2k' 'write -P 0x45 130k 1k'
# Default 64 KiB clusters, zlib-compressed clusters.
qemu-img create -q -f qcow2 c64k.qcow2 4M
io c64k.qcow2 'write -P 0x46 0 64k' 'write -c -P 0x47 1M 64k' 'write -c -P 0x48 2M 64k'
# zstd compression, 64-bit refcounts.
qemu-img create -q -f qcow2 -o cluster_size=4k,compression_type=zstd,refcount_bits=64 zstd.qcow2 256k
io zstd.qcow2 'write -c -P 0x55 0 4k' 'write -c -P 0x56 4k 4k' 'write -P 0x57 16k 4k'
# Extended L2 entries: subclusters allocated and zeroed.
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=16k extl2.qcow2 1M
io extl2.qcow2 'write -P 9 1k 2k' 'write -z 8k 1k' 'write -P 10 64k 16k'
# Two internal snapshots.
qemu-img create -q -f qcow2 -o cluster_size=4k snap.qcow2 64k
io snap.qcow2 'write -P 1 0 4k'
qemu-img snapshot -c first snap.qcow2
io snap.qcow2 'write -P 2 4k 4k'
qemu-img snapshot -c second snap.qcow2
# Two persistent bitmaps.
qemu-img create -q -f qcow2 -o cluster_size=4k bitmaps.qcow2 64k
qemu-img bitmap --add bitmaps.qcow2 b0
qemu-img bitmap --add -g 8k --disable bitmaps.qcow2 b1
io bitmaps.qcow2 'write -P 3 0 4k'
# An overlay on a qcow2 backing file and one on a raw backing file.
qemu-img create -q -f qcow2 -o cluster_size=4k base.qcow2 64k
io base.qcow2 'write -P 4 0 8k'
qemu-img create -q -f qcow2 -o cluster_size=4k -b base.qcow2 -F qcow2 overlay.qcow2
io overlay.qcow2 'write -P 5 4k 4k'
qemu-img create -q -f raw base.raw 64k
qemu-io -f raw -c 'write -P 6 0 16k' base.raw >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=4k -b base.raw -F raw rawbacked.qcow2
# An external data file.
qemu-img create -q -f qcow2 -o cluster_size=4k,data_file=data.raw datafile.qcow2 64k
io datafile.qcow2 'write -P 8 0 8k'
# Lazy refcounts, left dirty by a qemu-io that dies after a write.
qemu-img create -q -f qcow2 -o cluster_size=4k,lazy_refcounts=on dirty.qcow2 64k
qemu-io -f qcow2 -c 'write -P 7 0 4k' -c 'sigraise 9' dirty.qcow2 >/dev/null 2>&1 || true
cd - >/dev/null
for f in "$t"/*; do gzip -9 -n -c "$f" >"$(basename "$f").gz"; done
