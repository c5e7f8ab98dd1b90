package block

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestHasProtocol(t *testing.T) {
	tests := map[string]bool{
		"nbd://host/x":      true,
		"nbd:localhost:123": true,
		"json:{}":           true,
		"http://h/a":        true,
		"file:x":            true,
		"x":                 false,
		"dir/x:y":           false, // the slash comes first
		"/abs/x:y":          false,
		"./a:b":             false,
		":x":                true,
		"":                  false,
	}
	for in, want := range tests {
		if got := HasProtocol(in); got != want {
			t.Errorf("HasProtocol(%q) = %v", in, got)
		}
	}
	for in, want := range map[string]bool{"/x": true, "nbd:x": true, "x": false, "./x": false, "": false} {
		if got := IsAbsolute(in); got != want {
			t.Errorf("IsAbsolute(%q) = %v", in, got)
		}
	}
}

// TestCombinePath checks CombinePath against QEMU's
// bdrv_get_full_backing_filename_from_filename (path_combine for relative
// names).
func TestCombinePath(t *testing.T) {
	tests := []struct{ base, name, want string }{
		{"img", "b", "b"},
		{"dir/img", "b", "dir/b"},
		{"dir/img", "sub/b", "dir/sub/b"},
		{"/a/b/img", "../c", "/a/b/../c"}, // not cleaned
		{"/a/b/img", "/abs", "/abs"},
		{"/img", "b", "/b"},
		{"dir/", "b", "dir/b"},
		{"a//img", "b", "a//b"},
		{"dir/img", "nbd://h/x", "nbd://h/x"},
		{"dir/img", "json:{}", "json:{}"},
		// A protocol prefix of the base counts as its directory.
		{"nbd:localhost:10809", "b", "nbd:b"},
		{"http://host/dir/img", "b", "http://host/dir/b"},
		{"http://host", "b", "http://b"},
		{"dir/x:y", "b", "dir/b"},
		{"", "b", "b"},
	}
	for _, tc := range tests {
		if got := CombinePath(tc.base, tc.name); got != tc.want {
			t.Errorf("CombinePath(%q, %q) = %q, want %q", tc.base, tc.name, got, tc.want)
		}
	}
}

func TestPolicyTrusted(t *testing.T) {
	var p Policy
	tests := []struct{ image, named, want string }{
		{"dir/img", "back", "dir/back"},
		{"dir/img", "/etc/passwd", "/etc/passwd"},
		{"dir/img", "../x", "dir/../x"},
	}
	for _, tc := range tests {
		got, err := p.Check(tc.image, tc.named, "backing file")
		if err != nil || got != tc.want {
			t.Errorf("Check(%q, %q) = %q, %v", tc.image, tc.named, got, err)
		}
	}
	// Protocol names need the switch.
	_, err := p.Check("img", "nbd://evil/x", "backing file")
	want := "backing file 'nbd://evil/x' is a protocol or json: name, which is not opened unless --allow-image-protocols is given"
	if !errors.Is(err, ErrNotAllowed) || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("protocol name: %v", err)
	}
	p.AllowProtocols = true
	if got, err := p.Check("dir/img", "json:{\"x\":1}", "data file"); err != nil || got != "json:{\"x\":1}" {
		t.Errorf("allowed protocol name = %q, %v", got, err)
	}
}

func TestPolicyUntrusted(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "images")
	outside := filepath.Join(root, "secret")
	for _, d := range []string{dir, filepath.Join(dir, "sub"), outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(name string) {
		if err := os.WriteFile(name, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	link := func(target, name string) {
		if err := os.Symlink(target, name); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(dir, "img"))
	write(filepath.Join(dir, "back"))
	write(filepath.Join(dir, "sub", "back"))
	write(filepath.Join(outside, "key"))
	link(filepath.Join(outside, "key"), filepath.Join(dir, "escape"))       // absolute link out
	link("../secret/key", filepath.Join(dir, "relescape"))                  // relative link out
	link("back", filepath.Join(dir, "inside"))                              // link that stays
	link(outside, filepath.Join(dir, "dirlink"))                            // a directory link out
	link(filepath.Join(dir, "sub"), filepath.Join(dir, "subdirlink"))       // a directory link that stays
	link(filepath.Join(outside, "nothing"), filepath.Join(dir, "dangling")) // dangling, out: refused without telling whether the target exists
	link("nothing", filepath.Join(dir, "danglingin"))                       // dangling, inside: opening it fails later
	link("loop2", filepath.Join(dir, "loop1"))                              // a loop of links
	link("loop1", filepath.Join(dir, "loop2"))
	link("sub/../../secret/key", filepath.Join(dir, "dotdotlink")) // out through .. in a link target
	link("..", filepath.Join(dir, "sub", "up"))                    // up, but still inside
	link("../../secret", filepath.Join(dir, "sub", "up2"))         // up and out
	// The image's own directory reached through a link.
	viaLink := filepath.Join(root, "imagelink")
	link(dir, viaLink)

	img := filepath.Join(dir, "img")
	p := Policy{Untrusted: true, AllowProtocols: true}
	tests := []struct {
		image, named string
		want         string // the path to open, or the start of the error
		ok           bool
	}{
		{img, "back", filepath.Join(dir, "back"), true},
		{img, "sub/back", filepath.Join(dir, "sub/back"), true},
		{img, "./back", dir + "/./back", true},
		{img, "inside", filepath.Join(dir, "inside"), true},
		{img, "subdirlink/back", filepath.Join(dir, "subdirlink/back"), true},
		{img, "missing", filepath.Join(dir, "missing"), true},
		{img, "danglingin", filepath.Join(dir, "danglingin"), true},
		{img, "sub/up/back", filepath.Join(dir, "sub/up/back"), true},
		{img, "missing/deeper/x", filepath.Join(dir, "missing/deeper/x"), true},
		{img, "back/x", filepath.Join(dir, "back/x"), true},
		{filepath.Join(viaLink, "img"), "back", filepath.Join(viaLink, "back"), true},
		{img, "/etc/passwd", "backing file '/etc/passwd' is an absolute path, which untrusted mode does not open", false},
		{img, "../secret/key", "backing file '../secret/key' leaves the image's directory", false},
		{img, "sub/../../secret/key", "backing file 'sub/../../secret/key' leaves the image's directory", false},
		{img, "sub/..", "backing file 'sub/..' leaves the image's directory", false},
		{img, "escape", "backing file 'escape' is a link out of the image's directory", false},
		{img, "relescape", "backing file 'relescape' is a link out of the image's directory", false},
		{img, "dirlink/key", "backing file 'dirlink/key' is a link out of the image's directory", false},
		{img, "sub", "backing file 'sub' is not a regular file", false},
		{img, ".", "backing file '.' is not a regular file", false},
		{img, "dangling", "backing file 'dangling' is a link out of the image's directory", false},
		{img, "dotdotlink", "backing file 'dotdotlink' is a link out of the image's directory", false},
		{img, "sub/up2/key", "backing file 'sub/up2/key' is a link out of the image's directory", false},
		{img, "loop1", "backing file 'loop1' is a loop of symbolic links", false},
		{img, "/x\n\x1b[2Jy", "backing file '/x\\x0a\\x1b[2Jy' is an absolute path", false},
		{img, "../x\nforged", "backing file '../x\\x0aforged' leaves the image's directory", false},
		{img, "nbd://host/x", "backing file 'nbd://host/x' is a protocol or json: name, which untrusted mode does not open", false},
		{img, "json:{}", "backing file 'json:{}' is a protocol or json: name, which untrusted mode does not open", false},
	}
	for _, tc := range tests {
		got, err := p.Check(tc.image, tc.named, "backing file")
		if tc.ok {
			if err != nil || got != tc.want {
				t.Errorf("Check(%q, %q) = %q, %v; want %q", tc.image, tc.named, got, err, tc.want)
			}
			continue
		}
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) || !errors.Is(err, ErrNotAllowed) {
			t.Errorf("Check(%q, %q) = %q, %v; want error %q", tc.image, tc.named, got, err, tc.want)
		}
	}
}

func TestPolicyUntrustedRelativeImage(t *testing.T) {
	// The image is named relative to the working directory.
	dir := t.TempDir()
	t.Chdir(dir)
	if err := os.WriteFile("img", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(secret, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(secret, "out"); err != nil {
		t.Fatal(err)
	}
	p := Policy{Untrusted: true}
	if got, err := p.Check("img", "back", "backing file"); err != nil || got != "back" {
		t.Errorf("Check = %q, %v", got, err)
	}
	if _, err := p.Check("img", "out", "backing file"); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("link out of a relative image's directory: %v", err)
	}
}
