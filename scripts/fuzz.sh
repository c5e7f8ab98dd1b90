#!/bin/sh
# Runs every go fuzz target in the module for a short time each.
# Usage: scripts/fuzz.sh [duration]   (default 4s)
set -eu
cd "$(dirname "$0")/.."
t=${1:-4s}
for pkg in $(go list ./...); do
	targets=$(go test -list '^Fuzz' "$pkg" 2>/dev/null | grep '^Fuzz' || true)
	for f in $targets; do
		echo "fuzz $pkg $f ($t)"
		go test -run '^$' -fuzz "^$f\$" -fuzztime "$t" "$pkg" >/tmp/qimg-fuzz.log 2>&1 || {
			cat /tmp/qimg-fuzz.log
			exit 1
		}
	done
done
