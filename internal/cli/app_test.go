package cli

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qimg/qimg/block"
)

// runMain runs Main with args (args[0] is the program name) and returns the
// exit code and both streams.
func runMain(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := Main(args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

func TestToolByName(t *testing.T) {
	notYet := func(tool string) string {
		return tool + ": " + tool + " is not yet available in qimg " + Version + "\n"
	}
	tests := []struct {
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{[]string{"qemu-nbd"}, 1, "", notYet("qemu-nbd")},
		{[]string{"/usr/local/bin/qemu-nbd", "-c", "/dev/nbd0", "x"}, 1, "", notYet("qemu-nbd")},
		{[]string{"qemu-io", "-c", "read 0 1", "x"}, 1, "", notYet("qemu-io")},
		{[]string{"/opt/qemu-io"}, 1, "", notYet("qemu-io")},
		{[]string{"qimg", "nbd", "--help"}, 1, "", notYet("qemu-nbd")},
		{[]string{"/bin/qimg", "io"}, 1, "", notYet("qemu-io")},
		// qemu-img has no such commands.
		{[]string{"qemu-img", "nbd"}, 1, "", "qemu-img: Command not found: nbd\nTry 'qemu-img --help' for more information\n"},
		{[]string{"kvm-img", "io"}, 1, "", "kvm-img: Command not found: io\nTry 'kvm-img --help' for more information\n"},
		{[]string{"qimg"}, 1, "", "qimg: Not enough arguments\nTry 'qimg --help' for more information\n"},
		{[]string{"qemu-img", "bogus"}, 1, "", "qemu-img: Command not found: bogus\nTry 'qemu-img --help' for more information\n"},
		{[]string{"qemu-img", "-V"}, 0, versionText(), ""},
		{[]string{"kvm-img", "--version"}, 0, versionText(), ""},
		{[]string{"qimg", "--vers"}, 0, versionText(), ""},
		{[]string{"qemu-img", "-Vh"}, 0, versionText(), ""},
		{[]string{"qemu-img", "--bogus"}, 1, "", "qemu-img: unrecognized option '--bogus'\nTry 'qemu-img --help' for more information\n"},
		{[]string{"qemu-img", "-T"}, 1, "", "qemu-img: missing argument for option '-T'\nTry 'qemu-img --help' for more information\n"},
	}
	for _, tc := range tests {
		code, stdout, stderr := runMain(tc.args...)
		if code != tc.code || stdout != tc.stdout || stderr != tc.stderr {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want %d, %q, %q", tc.args, code, stdout, stderr, tc.code, tc.stdout, tc.stderr)
		}
	}
}

func TestVersion(t *testing.T) {
	v := versionText()
	if !strings.HasPrefix(v, "qemu-img version "+QemuVersion+" (qimg "+Version+")\n") || !strings.Contains(v, "compatible with qemu-img 7.2") {
		t.Errorf("version text %q", v)
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{
		{"qemu-img", "-h"},
		{"qemu-img", "--help"},
		{"qemu-img", "-hV"},
		{"qemu-img", "info", "--help"},
		{"qemu-img", "create", "-h"},
		{"qemu-img", "info", "x", "-h"},
		{"qimg", "--help"},
		{"kvm-img", "-h"},
	} {
		code, stdout, stderr := runMain(args...)
		if code != 0 || stderr != "" {
			t.Errorf("%q: exit %d, stderr %q", args, code, stderr)
			continue
		}
		if !strings.HasPrefix(stdout, versionText()) {
			t.Errorf("%q: help does not start with the version", args)
		}
		if !strings.Contains(stdout, "usage: "+filepath.Base(args[0])+" [standard options] command [command options]\n") {
			t.Errorf("%q: usage line missing", args)
		}
		for _, c := range commands() {
			if !strings.Contains(stdout, "\n  "+c.usage+"\n") {
				t.Errorf("%q: help lacks %q", args, c.name)
			}
		}
		if !strings.Contains(stdout, "\nSupported formats: ") || !strings.Contains(stdout, " raw") && !strings.Contains(stdout, ": raw") {
			t.Errorf("%q: help lacks the format list", args)
		}
	}
}

func TestTraceOption(t *testing.T) {
	dir := t.TempDir()
	events := filepath.Join(dir, "events")
	if err := os.WriteFile(events, []byte("foo\n#comment\n\nbar*\n-baz\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		spec           string
		code           int
		stdout, stderr string
	}{
		{"foo", 0, "", "qemu-img: warning: trace event 'foo' does not exist\n"},
		{"enable=foo", 0, "", "qemu-img: warning: trace event 'foo' does not exist\n"},
		{"foo*", 0, "", ""},
		{"", 0, "", ""},
		{"file=/nonexistent/trace.log", 0, "", ""},
		{"enable=help", 0, "", ""},
		{"help", 0, "", ""},
		{"foo,help", 1, "trace options:\n  enable=<str>\n  events=<str>\n  file=<str>\n", ""},
		{"bogus=1", 1, "", "qemu-img: Invalid parameter 'bogus'\n"},
		{"foo,bar", 1, "", "qemu-img: warning: short-form boolean option 'bar' deprecated\nPlease use bar=on instead\nqemu-img: Invalid parameter 'bar'\n"},
		{"foo,nofile", 0, "", "qemu-img: warning: short-form boolean option 'nofile' deprecated\nPlease use file=off instead\n" +
			"qemu-img: warning: trace event 'foo' does not exist\n"},
		{"events=" + events, 0, "", "qemu-img:" + events + ":1: warning: trace event 'foo' does not exist\n" +
			"qemu-img:" + events + ":5: warning: trace event 'baz' does not exist\n"},
		{"events=" + filepath.Join(dir, "none"), 1, "", "qemu-img:" + filepath.Join(dir, "none") + ": No such file or directory\n"},
	}
	for _, tc := range tests {
		code, stdout, stderr := runMain("qemu-img", "-T", tc.spec)
		if code != tc.code || stdout != tc.stdout || stderr != tc.stderr {
			t.Errorf("-T %q: exit %d, stdout %q, stderr %q; want %d, %q, %q", tc.spec, code, stdout, stderr, tc.code, tc.stdout, tc.stderr)
		}
	}
}

func TestParseCache(t *testing.T) {
	for _, tc := range []struct {
		mode   string
		source bool
		want   block.CacheMode
		err    string
	}{
		{"writeback", false, block.CacheWriteback, ""},
		{"none", true, block.CacheNone, ""},
		{"off", false, block.CacheNone, ""},
		{"directsync", false, block.CacheDirectSync, ""},
		{"writethrough", true, block.CacheWritethrough, ""},
		{"unsafe", false, block.CacheUnsafe, ""},
		{defaultCache, false, block.CacheWriteback, ""},
		{defaultConvertCache, false, block.CacheUnsafe, ""},
		{"x", false, 0, "qemu-img: Invalid cache option: x\n"},
		{"x", true, 0, "qemu-img: Invalid source cache option: x\n"},
		{"", false, 0, "qemu-img: Invalid cache option: \n"},
		{"None", true, 0, "qemu-img: Invalid source cache option: None\n"},
	} {
		var errb bytes.Buffer
		a := &App{Prog: "qemu-img", Stderr: &errb}
		got, ok := a.parseCache(tc.mode, tc.source)
		if ok != (tc.err == "") || errb.String() != tc.err || (ok && got != tc.want) {
			t.Errorf("parseCache(%q, %v) = %v, %v, stderr %q", tc.mode, tc.source, got, ok, errb.String())
		}
	}
}

// newTestApp returns an App writing into buffers.
func newTestApp() (*App, *bytes.Buffer, *bytes.Buffer) {
	var out, errb bytes.Buffer
	return &App{Prog: "qemu-img", Stdout: &out, Stderr: &errb}, &out, &errb
}

func TestObjectSecrets(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pw := write("pw", "file secret\n")
	b64 := write("b64", "c2VjcmV0\n")
	key := bytes.Repeat([]byte{7}, 32)
	keyFile := write("key", string(key))
	iv := bytes.Repeat([]byte{9}, 16)
	// The secret "password" encrypted with AES-256-CBC and PKCS#7 padding,
	// as `qemu-img --object secret,keyid=…` expects it.
	plain := append([]byte("password"), bytes.Repeat([]byte{8}, 8)...)
	ct := make([]byte, len(plain))
	blk, _ := aes.NewCipher(key)
	cipher.NewCBCEncrypter(blk, iv).CryptBlocks(ct, plain)
	ivB64, ctB64 := base64.StdEncoding.EncodeToString(iv), base64.StdEncoding.EncodeToString(ct)

	tests := []struct {
		objects []string
		id      string
		want    string
	}{
		{[]string{"secret,id=s,data=abc"}, "s", "abc"},
		{[]string{"secret,id=s,data="}, "s", ""},
		{[]string{"secret,id=s,data=a,,b"}, "s", "a,b"},
		{[]string{"secret,id=s,file=" + pw}, "s", "file secret\n"},
		{[]string{"secret,id=s,file=" + b64 + ",format=base64"}, "s", "secret"},
		{[]string{"secret,id=s,data=c2VjcmV0,format=base64"}, "s", "secret"},
		{[]string{"secret,id=s,data=c2Vj\ncmV0,format=raw"}, "s", "c2Vj\ncmV0"},
		{[]string{"qom-type=secret,id=s,data=x"}, "s", "x"},
		{[]string{"secret,id=s,data=x,data=y"}, "s", "y"},
		{[]string{`{"qom-type": "secret", "id": "s", "data": "json"}`}, "s", "json"},
		{[]string{"secret,id=k,file=" + keyFile, "secret,id=s,keyid=k,iv=" + ivB64 + ",data=" + ctB64 + ",format=base64"}, "s", "password"},
		{[]string{"main-loop,id=m", "secret,id=s,data=x"}, "s", "x"},
	}
	for _, tc := range tests {
		a, _, errb := newTestApp()
		for _, o := range tc.objects {
			if code, stop := a.objectOption(o); stop {
				t.Fatalf("%q: exit %d: %s", o, code, errb)
			}
		}
		if got := string(a.env().Secrets[tc.id]); got != tc.want {
			t.Errorf("%q: secret %q, want %q", tc.objects, got, tc.want)
		}
	}
}

func TestObjectErrors(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "key")
	os.WriteFile(key, bytes.Repeat([]byte{1}, 32), 0o600)
	missing := filepath.Join(dir, "missing")
	tests := []struct {
		objects []string
		stderr  string
	}{
		{[]string{"secret,id=s"}, "Either 'file' or 'data' must be provided"},
		{[]string{"secret,data=x"}, "Parameter 'id' is missing"},
		{[]string{""}, "Parameter 'qom-type' is missing"},
		{[]string{"id=s,data=x"}, "Parameter 'qom-type' is missing"},
		{[]string{"bogus,id=s"}, "Parameter 'qom-type' does not accept value 'bogus'"},
		{[]string{"Secret,id=s,data=x"}, "Parameter 'qom-type' does not accept value 'Secret'"},
		{[]string{"secret,id=1s,data=x"}, "Parameter 'id' expects an identifier\nIdentifiers consist of letters, digits, '-', '.', '_', starting with a letter."},
		{[]string{"secret,id=s,,data=x"}, "Parameter 'id' expects an identifier\nIdentifiers consist of letters, digits, '-', '.', '_', starting with a letter."},
		{[]string{"secret,id=s,data=x,file=" + key}, "'file' and 'data' are mutually exclusive"},
		{[]string{"secret,id=s,file=" + missing}, "Unable to read " + missing + ": Failed to open file “" + missing + "”: No such file or directory"},
		{[]string{"secret,id=s,file=" + dir}, "Unable to read " + dir + ": Error reading file “" + dir + "”: Is a directory"},
		{[]string{"secret,id=s,data=@@,format=base64"}, "Base64 data contains invalid characters"},
		{[]string{"secret,id=s,data=x,format=hex"}, "Parameter 'format' does not accept value 'hex'"},
		{[]string{"secret,id=s,data=x,bogus=1"}, "Parameter 'bogus' is unexpected"},
		{[]string{"secret,id=s,a.b=1"}, "Parameter 'a' is unexpected"},
		{[]string{"secret,id=s,data=x,data.a=1"}, "Parameters 'data.*' used inconsistently"},
		{[]string{"secret,id=s,data"}, "Expected '=' after parameter 'data'"},
		{[]string{"secret,id=s,1x=2"}, "Invalid parameter '1x'"},
		{[]string{"secret,id=s,data=x,loaded=on"}, "Property 'secret.loaded' is not writable"},
		{[]string{"secret,id=s,data=x,loaded=maybe"}, "Parameter 'loaded' expects 'on' or 'off'"},
		{[]string{"main-loop,id=m,bogus=1"}, "Parameter 'bogus' is unexpected"},
		{[]string{"secret,id=s,data=x", "secret,id=s,data=y"}, "attempt to add duplicate property 's' to object (type 'container')"},
		{[]string{"main-loop,id=s", "secret,id=s,data=y"}, "attempt to add duplicate property 's' to object (type 'container')"},
		{[]string{"secret,id=s,data=x,keyid=k"}, "No secret with id 'k'"},
		{[]string{"secret,id=s,data=x,keyid=s"}, "Secret with id 's' has no data"},
		{[]string{"main-loop,id=m", "secret,id=s,data=x,keyid=m"}, "Object with id 'm' is not a secret"},
		{[]string{"secret,id=k,data=short", "secret,id=s,data=x,keyid=k,iv=AAAA"}, "Key should be 32 bytes in length"},
		{[]string{"secret,id=k,file=" + key, "secret,id=s,data=x,keyid=k"}, "IV is required to decrypt secret"},
		{[]string{"secret,id=k,file=" + key, "secret,id=s,data=x,keyid=k,iv=AAAA"}, "IV should be 16 bytes in length not 3"},
		{[]string{"secret,id=k,file=" + key, "secret,id=s,data=abcd,keyid=k,iv=AAAAAAAAAAAAAAAAAAAAAA=="}, "Length 4 must be a multiple of block size 16"},
		{[]string{`{"qom-type": "secret", "id": "s", "data": 5}`}, "Invalid parameter type for 'data', expected: string"},
		{[]string{`{"qom-type": "secret"`}, "JSON parse error, premature EOI"},
	}
	for _, tc := range tests {
		a, _, errb := newTestApp()
		code, stop := 0, false
		for _, o := range tc.objects {
			if code, stop = a.objectOption(o); stop {
				break
			}
		}
		if want := "qemu-img: " + tc.stderr + "\n"; !stop || code != 1 || errb.String() != want {
			t.Errorf("%q: exit %d (stop %v), stderr %q; want %q", tc.objects, code, stop, errb.String(), want)
		}
	}
}

func TestObjectHelp(t *testing.T) {
	types := "List of user creatable objects:\n  authz-list\n  authz-list-file\n  authz-simple\n  main-loop\n  pr-manager-helper\n" +
		"  secret\n  secret_keyring\n  thread-context\n  throttle-group\n  tls-cipher-suites\n  tls-creds-anon\n  tls-creds-psk\n  tls-creds-x509\n"
	secret := "secret options:\n  data=<string>\n  file=<string>\n  format=<QCryptoSecretFormat>\n  iv=<string>\n  keyid=<string>\n"
	for spec, want := range map[string]string{
		"help": types, "?": types, "help,id=s": types, "bogus,help": types,
		"secret,help": secret, "secret,?": secret, "secret,id=s,data=x,help": secret,
		"main-loop,help": "main-loop options:\n  aio-max-batch=<int>\n  thread-pool-max=<int>\n  thread-pool-min=<int>\n",
	} {
		a, out, errb := newTestApp()
		code, stop := a.objectOption(spec)
		if !stop || code != 0 || out.String() != want || errb.Len() != 0 {
			t.Errorf("--object %q: exit %d (stop %v), stdout %q, stderr %q", spec, code, stop, out, errb)
		}
	}
	// Through a command, help exits 0 before anything else happens.
	code, stdout, stderr := runMain("qemu-img", "info", "--object", "help", "/nonexistent")
	if code != 0 || stdout != types || stderr != "" {
		t.Errorf("info --object help: %d %q %q", code, stdout, stderr)
	}
}

func TestQbase64Decode(t *testing.T) {
	tests := []struct {
		in, want, err string
	}{
		{"c2VjcmV0", "secret", ""},
		{"YQ==", "a", ""},
		{"YWI=", "ab", ""},
		{"YWJj\nZGVm\n", "abcdef", ""},
		{"x", "", ""},         // an incomplete group is dropped, as GLib does
		{"YWJjZA", "abc", ""}, // likewise
		{"", "", ""},
		{"YW J=", "", "Base64 data contains invalid characters"},
		{"YWI-", "", "Base64 data contains invalid characters"},
		{"YW\x00I", "", "Base64 data contains embedded NUL characters"},
	}
	for _, tc := range tests {
		got, err := qbase64Decode(tc.in)
		if tc.err != "" {
			if err == nil || err.Error() != tc.err {
				t.Errorf("qbase64Decode(%q): %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || string(got) != tc.want {
			t.Errorf("qbase64Decode(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}
