package block

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/qimg/qimg/storage"
)

// sizeFmt is a test format whose file is "SIZEFMT <virtual size>".
type sizeFmt struct{}

func (sizeFmt) Name() string { return "sizefmt" }

func (sizeFmt) Probe(p *ProbeInput) int {
	if strings.HasPrefix(string(p.Header), "SIZEFMT ") {
		return 100
	}
	return 0
}

func (sizeFmt) Open(f storage.File, _ *DriverOptions) (Image, error) {
	head := make([]byte, 64)
	n, _ := f.ReadAt(head, 0)
	size, err := strconv.ParseInt(strings.TrimSpace(strings.TrimPrefix(string(head[:n]), "SIZEFMT ")), 10, 64)
	if err != nil {
		return nil, err
	}
	return &sizeImage{size: size}, nil
}

type sizeImage struct {
	lockImage
	size int64
}

func (i *sizeImage) Size() int64 { return i.size }

// TestOpenRefusesHugeSizes: a driver that reports a negative size or one
// beyond QEMU's BDRV_MAX_LENGTH (a qcow2 header size near 2^64 whose L1
// index computation wraps around) is refused as QEMU refuses it, instead of
// reaching commands with a negative size ("virtual size: 16 EiB (-512
// bytes)").
func TestOpenRefusesHugeSizes(t *testing.T) {
	fs := storage.NewMemFS()
	env := &Env{Registry: NewRegistry(sizeFmt{}), Files: fs}
	for _, tc := range []struct {
		size int64
		ok   bool
	}{
		{0, true}, {1 << 40, true}, {MaxLength, true},
		{MaxLength + 512, false}, {1<<63 - 1, false}, {-512, false}, {-1 << 63, false},
	} {
		name := fmt.Sprint(tc.size)
		f, err := fs.Create(name, storage.OpenOptions{})
		if err != nil {
			t.Fatal(err)
		}
		f.WriteAt([]byte(fmt.Sprintf("SIZEFMT %d", tc.size)), 0)
		f.Close()
		n, err := env.Open(name, OpenOptions{})
		if tc.ok {
			if err != nil || n.Size() != tc.size {
				t.Errorf("size %d: %v", tc.size, err)
			}
			if n != nil {
				n.Close()
			}
			continue
		}
		if err == nil || err.Error() != "Could not refresh total sector count: File too large" {
			t.Errorf("size %d: %v", tc.size, err)
		}
	}
}
