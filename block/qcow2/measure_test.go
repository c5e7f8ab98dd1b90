package qcow2

import (
	"testing"

	"github.com/qimg/qimg/block"
)

// TestMeasureSizes checks Measure against sizes qemu-img 7.2 measure printed
// for a 1 GiB image without input.
func TestMeasureSizes(t *testing.T) {
	env := &block.Env{Secrets: map[string][]byte{"s0": []byte("x")}}
	luks := "encrypt.format=luks,encrypt.key-secret=s0"
	for _, tc := range []struct {
		opts           string
		required, full int64
		err            string
	}{
		{"", 393216, 1074135040, ""},
		{luks, 2490368, 1076232192, ""},
		{luks + ",encrypt.cipher-alg=aes-128", 1507328, 1075249152, ""},
		{luks + ",encrypt.cipher-alg=aes-256,encrypt.cipher-mode=cbc", 1507328, 1075249152, ""},
		{luks + ",encrypt.cipher-alg=aes-192", 1966080, 1075707904, ""},
		{luks + ",cluster_size=2M", 12582912, 1086324736, ""},
		{luks + ",cluster_size=512", 23453696, 1097195520, ""},
		{"encrypt.format=aes", 393216, 1074135040, ""},
		{"encrypt.format=luks", 0, 0, "Parameter 'encrypt.key-secret' is required for cipher"},
		{"encrypt.format=luks,encrypt.key-secret=nope", 0, 0, "No secret with id 'nope'"},
		{luks + ",encrypt.cipher-alg=bogus", 0, 0, "Parameter 'cipher-alg' does not accept value 'bogus'"},
		{luks + ",encrypt.cipher-alg=3des", 0, 0, "Algorithm '3des' not supported"},
		{"compat=v3", 0, 0, "Invalid compatibility level: 'v3'"},
		{"cluster_size=3k", 0, 0, "Cluster size must be a power of two between 512 and 2048k"},
		{"preallocation=bogus", 0, 0, "invalid parameter value: bogus"},
	} {
		d := New()
		opts := block.NewOptions(block.MergeSpecs(d.CreateSpecs(), block.FileProtocolSpecs()))
		if tc.opts != "" {
			if err := opts.Parse(tc.opts); err != nil {
				t.Fatal(err)
			}
		}
		opts.SetNumber("size", 1<<30)
		info, err := d.Measure(opts, nil, env)
		switch {
		case tc.err != "":
			if err == nil || err.Error() != tc.err {
				t.Errorf("%q: error %v, want %q", tc.opts, err, tc.err)
			}
		case err != nil:
			t.Errorf("%q: %v", tc.opts, err)
		case info.Required != tc.required || info.FullyAllocated != tc.full || info.HasBitmaps:
			t.Errorf("%q: %+v, want required %d, fully allocated %d", tc.opts, info, tc.required, tc.full)
		}
	}
}
