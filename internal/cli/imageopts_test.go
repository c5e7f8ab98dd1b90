package cli

import (
	"errors"
	"reflect"
	"testing"

	"github.com/qimg/qimg/block"
)

func TestSplitQemuOpts(t *testing.T) {
	tests := []struct {
		in    string
		first string
		want  []keyValue
	}{
		{"x", "file", []keyValue{{key: "file", value: "x"}}},
		{"x,,y,driver=raw", "file", []keyValue{{key: "file", value: "x,y"}, {key: "driver", value: "raw"}}},
		{"driver=raw,x", "file", []keyValue{{key: "driver", value: "raw"}, {key: "x", value: "on", flag: true}}},
		{"a=1,noro", "", []keyValue{{key: "a", value: "1"}, {key: "ro", value: "off", flag: true, prefix: "no"}}},
		{"help", "", []keyValue{{key: "help", value: "on", flag: true}}},
		{"a=,b", "", []keyValue{{key: "a", value: ""}, {key: "b", value: "on", flag: true}}},
		{"", "file", nil},
	}
	for _, tc := range tests {
		if got := splitQemuOpts(tc.in, tc.first); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("splitQemuOpts(%q, %q) = %+v, want %+v", tc.in, tc.first, got, tc.want)
		}
	}
}

func TestParseImageOpts(t *testing.T) {
	known := func(d string) bool { return d == "raw" || d == "qcow2" }
	tests := []struct {
		spec       string
		forceShare bool
		// Either the outcome...
		filename string
		format   string
		drvOpts  map[string]string
		cache    block.CacheMode
		locking  block.LockMode
		share    bool
		warnings int
		// ...or the error, and whether it is a parse error (printed
		// without "Could not open").
		err   string
		parse bool
	}{
		{spec: "driver=raw,file.filename=x", filename: "x", format: "raw"},
		{spec: "file.filename=x", filename: "x"},
		{spec: "file.driver=file,file.filename=a,,b", filename: "a,b"},
		{spec: "driver=raw,file.filename=x,offset=1k,size=512", filename: "x", format: "raw", drvOpts: map[string]string{"offset": "1k", "size": "512"}},
		{spec: "driver=raw,file.filename=x,offset=1k,offset=2k", filename: "x", format: "raw", drvOpts: map[string]string{"offset": "2k"}},
		{spec: "driver=raw,file.filename=x,cache.direct=on", filename: "x", format: "raw", cache: block.CacheNone},
		{spec: "driver=raw,file.filename=x,file.cache.direct=on", filename: "x", format: "raw", cache: block.CacheNone},
		{spec: "driver=raw,file.filename=x,cache.no-flush=on", filename: "x", format: "raw", cache: block.CacheUnsafe},
		{spec: "driver=raw,file.filename=x,file.locking=off", filename: "x", format: "raw", locking: block.LockOff},
		{spec: "driver=raw,file.filename=x,force-share=on", filename: "x", format: "raw", share: true},
		{spec: "driver=raw,file.filename=x", forceShare: true, filename: "x", format: "raw", share: true},
		{spec: "driver=raw,file.filename=x,force-share=on", forceShare: true, filename: "x", format: "raw", share: true},
		{spec: "driver=raw,file.filename=x,read-only", filename: "x", format: "raw", warnings: 1},
		{spec: "driver=raw,file.filename=x,noauto-read-only", filename: "x", format: "raw", warnings: 1},
		{spec: "driver=raw,file.filename=x,id=a1", filename: "x", format: "raw", drvOpts: map[string]string{"id": "a1"}},
		{spec: "driver=raw,file.filename=x,discard=unmap,detect-zeroes=unmap", filename: "x", format: "raw"},
		{spec: "driver=raw,file.filename=x,file.aio=threads,file.aio-max-batch=8,file.drop-cache=off", filename: "x", format: "raw"},

		{spec: "x", err: "Cannot find device='x' nor node-name='x'"},
		{spec: "help", err: "Cannot find device='help' nor node-name='help'"},
		{spec: "driver=raw,file.filename=x,file=y", err: "Cannot reference an existing block device with additional options or a new filename"},
		{spec: "filename=x", err: "Must specify either driver or file"},
		{spec: "", err: "Must specify either driver or file"},
		{spec: "driver=raw", err: "A block device must be specified for \"file\""},
		{spec: "driver=raw,filename=x", err: "A block device must be specified for \"file\""},
		{spec: "driver=bogus,file.filename=x", err: "Unknown driver 'bogus'"},
		{spec: "driver=raw,,file.filename=x", err: "Unknown driver 'raw,file.filename=x'"},
		{spec: "driver=raw,file.driver=bogus,file.filename=x", err: "Unknown driver 'bogus'"},
		{spec: "driver=raw,file.filename=", err: "The 'file' block driver requires a file name"},
		{spec: "driver=raw,file.driver=file", err: "The 'file' block driver requires a file name"},
		{spec: "driver=raw,file.driver=host_device,file.filename=/", err: "'host_device' driver requires '/' to be either a character or block device"},
		{spec: "driver=raw,file.filename=x,file.bogus=1", err: "Block protocol 'file' doesn't support the option 'bogus'"},
		{spec: "driver=raw,file.filename=x,file.aio=bogus", err: "invalid parameter value: bogus"},
		{spec: "driver=raw,file.filename=x,file.aio=native", err: "aio=native was specified, but it requires cache.direct=on, which was not specified."},
		{spec: "driver=raw,file.filename=x,file.locking=maybe", err: "invalid parameter value: maybe"},
		{spec: "driver=raw,file.filename=x,file.pr-manager=p", err: "No persistent reservation manager with id 'p'"},
		{spec: "driver=raw,file.filename=x,file.aio-max-batch=x", err: "Parameter 'aio-max-batch' expects a number"},
		{spec: "driver=raw,file.filename=x,cache.direct=maybe", err: "Parameter 'cache.direct' expects 'on' or 'off'"},
		{spec: "driver=raw,file.filename=x,read-only=maybe", err: "Parameter 'read-only' expects 'on' or 'off'"},
		{spec: "driver=raw,file.filename=x,discard=bogus", err: "Invalid discard option"},
		{spec: "driver=raw,file.filename=x,detect-zeroes=bogus", err: "invalid parameter value: bogus"},
		{spec: "driver=raw,file.filename=x,detect-zeroes=unmap", err: "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap"},
		{spec: "driver=raw,file.filename=x,node-name=1x", err: "Invalid node-name: '1x'"},
		{spec: "driver=raw,file.filename=x,id=1", err: "Parameter 'id' expects an identifier", parse: true},
		{spec: "driver=raw,file.filename=x,force-share=off", forceShare: true, err: "--force-share/-U conflicts with image options", parse: true},
		{spec: "driver=raw,file.filename=x,force-share=yes", forceShare: true, err: "--force-share/-U conflicts with image options", parse: true},
		{spec: "driver=file,filename=x,locking=off", filename: "x", format: "file", locking: block.LockOff},
		{spec: "driver=file,file.filename=x", err: "The 'file' block driver requires a file name"},
		{spec: "driver=file,filename=x,offset=1", err: "Block protocol 'file' doesn't support the option 'offset'"},
		{spec: "driver=host_device,filename=x", err: "Opening the protocol driver 'host_device' as an image is not supported by qimg"},
		{spec: "driver=raw,file.driver=nbd,file.host=h", err: "The protocol driver 'nbd' is not supported by qimg"},
	}
	for _, tc := range tests {
		o := block.OpenOptions{Write: true, ForceShare: tc.forceShare}
		res, err := parseImageOpts(tc.spec, &o, tc.forceShare, known)
		if tc.err != "" {
			var pe *parseError
			if err == nil || err.Error() != tc.err || errors.As(err, &pe) != tc.parse {
				t.Errorf("%q: error %v (parse error %v), want %q (parse error %v)", tc.spec, err, errors.As(err, &pe), tc.err, tc.parse)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.spec, err)
			continue
		}
		if res.filename != tc.filename || o.Format != tc.format || !reflect.DeepEqual(o.DriverOptions, tc.drvOpts) ||
			o.Cache != tc.cache || o.Locking != tc.locking || o.ForceShare != tc.share || len(res.warnings) != tc.warnings {
			t.Errorf("%q: filename %q format %q options %v cache %v locking %v share %v warnings %v",
				tc.spec, res.filename, o.Format, o.DriverOptions, o.Cache, o.Locking, o.ForceShare, res.warnings)
		}
	}
	// read-only=on turns a write open into a read-only one.
	o := block.OpenOptions{Write: true}
	if _, err := parseImageOpts("driver=raw,file.filename=x,read-only=on", &o, false, known); err != nil || o.Write {
		t.Errorf("read-only=on: write %v, %v", o.Write, err)
	}
	// The deprecation warning names the flag as written.
	res, _ := parseImageOpts("driver=raw,file.filename=x,noread-only", &block.OpenOptions{}, false, known)
	if want := [2]string{"warning: short-form boolean option 'noread-only' deprecated", "Please use read-only=off instead"}; len(res.warnings) != 1 || res.warnings[0] != want {
		t.Errorf("warnings %q", res.warnings)
	}
}

func TestCacheFromFlags(t *testing.T) {
	tests := []struct {
		base                block.CacheMode
		direct, setDirect   bool
		noFlush, setNoFlush bool
		want                block.CacheMode
	}{
		{block.CacheWriteback, true, true, false, false, block.CacheNone},
		{block.CacheWritethrough, true, true, false, false, block.CacheDirectSync},
		{block.CacheNone, false, true, false, false, block.CacheWriteback},
		{block.CacheDirectSync, false, true, false, false, block.CacheWritethrough},
		{block.CacheWriteback, false, false, true, true, block.CacheUnsafe},
		{block.CacheUnsafe, false, false, false, true, block.CacheWriteback},
		{block.CacheNone, false, false, false, false, block.CacheNone},
	}
	for _, tc := range tests {
		if got := cacheFromFlags(tc.base, tc.direct, tc.setDirect, tc.noFlush, tc.setNoFlush); got != tc.want {
			t.Errorf("cacheFromFlags(%v, direct %v/%v, no-flush %v/%v) = %v, want %v",
				tc.base, tc.direct, tc.setDirect, tc.noFlush, tc.setNoFlush, got, tc.want)
		}
	}
}

func TestJSONName(t *testing.T) {
	tests := []struct {
		format string
		opts   map[string]string
		want   string
	}{
		{"raw", nil, ""},
		{"raw", map[string]string{"other": "1"}, ""},
		{"qcow2", map[string]string{"offset": "1"}, ""},
		{"raw", map[string]string{"offset": "100"}, `json:{"offset": "100", "driver": "raw", "file": {"driver": "file", "filename": "d/x"}}`},
		{"raw", map[string]string{"offset": "1M", "size": "512"}, `json:{"offset": "1M", "driver": "raw", "size": "512", "file": {"driver": "file", "filename": "d/x"}}`},
		{"raw", map[string]string{"size": "512"}, `json:{"driver": "raw", "size": "512", "file": {"driver": "file", "filename": "d/x"}}`},
	}
	for _, tc := range tests {
		if got := jsonName(tc.format, "d/x", tc.opts); got != tc.want {
			t.Errorf("jsonName(%s, %v) = %s, want %s", tc.format, tc.opts, got, tc.want)
		}
	}
}
