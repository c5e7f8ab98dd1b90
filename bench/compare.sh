#!/bin/sh
# Times qemu-img convert against qimg convert on generated inputs; see bench/compare/main.go.
cd "$(dirname "$0")/.." && exec go run ./bench/compare "$@"
