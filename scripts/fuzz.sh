#!/bin/sh
# Runs every go fuzz target in the module for a short time each.
# Usage: scripts/fuzz.sh [duration]   (default 4s)
#
# A real finding always writes its input under testdata/fuzz ("Failing
# input written to ..."). Go's fuzzer can also stop with only "context
# deadline exceeded" when the time runs out while a worker is still
# minimizing a new input; such a run is tried once more before it counts
# as a failure.
set -eu
cd "$(dirname "$0")/.."
t=${1:-4s}
log=${TMPDIR:-/tmp}/qimg-fuzz.log
fuzz() {
	go test -run '^$' -fuzz "^$2\$" -fuzztime "$t" "$1" >"$log" 2>&1
}
for pkg in $(go list ./...); do
	targets=$(go test -list '^Fuzz' "$pkg" 2>/dev/null | grep '^Fuzz' || true)
	for f in $targets; do
		echo "fuzz $pkg $f ($t)"
		fuzz "$pkg" "$f" && continue
		if grep -q 'context deadline exceeded' "$log" && ! grep -q 'Failing input written to' "$log"; then
			echo "fuzz $pkg $f: the time ran out while minimizing; once more"
			fuzz "$pkg" "$f" && continue
		fi
		cat "$log"
		exit 1
	done
done
