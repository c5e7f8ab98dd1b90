package oracle

import (
	"slices"
	"testing"
)

func TestParseProcLocks(t *testing.T) {
	text := []byte(`1: OFDLCK ADVISORY  READ -1 fe:00:9979780 203 203
2: OFDLCK ADVISORY  READ -1 fe:00:9979780 100 101
3: POSIX  ADVISORY  WRITE 4242 fe:00:9979780 0 EOF
4: OFDLCK ADVISORY  READ -1 fe:00:1234 102 102
5: FLOCK  ADVISORY  WRITE 77 00:1a:9979780 100 100
6: OFDLCK ADVISORY  READ -1 fe:00:9979780 201 201
6: -> OFDLCK ADVISORY  READ -1 fe:00:9979780 202 202
`)
	got := parseProcLocks(text, 0xfe, 0, 9979780)
	if want := []int64{100, 101, 201, 203}; !slices.Equal(got, want) {
		t.Fatalf("parseProcLocks = %v, want %v", got, want)
	}
	if got := parseProcLocks(text, 0xfe, 1, 9979780); len(got) != 0 {
		t.Fatalf("another device: %v", got)
	}
}
