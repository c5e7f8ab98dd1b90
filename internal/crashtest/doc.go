// Package crashtest holds process-level crash tests: the qimg binary (and a
// write workload run by the test binary itself) is killed with SIGKILL at
// seeded random moments during a long convert, commit or series of writes,
// and the image left behind must check with at most leaks, be repaired by
// check -r all, and hold every byte a flush acknowledged. The package has
// no code outside its tests.
package crashtest
