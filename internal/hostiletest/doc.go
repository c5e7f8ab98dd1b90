// Package hostiletest runs the hostile images of internal/mutate through the
// qimg binary, as an image service runs qemu-img on uploads, and checks
// what issue 13 promises: every command exits 0 or with a clean error, in
// bounded time and memory, never modifies the image it only reads, reveals
// nothing of a host file the image names, and connects nowhere. It has no
// code outside its tests.
package hostiletest
