package block

import (
	"reflect"
	"strings"
	"testing"
)

// FuzzSplitOptionList checks that an option list, re-encoded as key=value
// items with commas doubled, parses back to the same items.
func FuzzSplitOptionList(f *testing.F) {
	for _, s := range []string{"", "a=1,b=2", "a=1,,2", "flag,noflag", "help", "=x", "a=,,", "size=1M,,2,?", ",", ",,a", "no"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		items, _ := SplitOptionList(s)
		var parts []string
		for _, kv := range items {
			if strings.ContainsAny(kv.Key, "=,") {
				t.Fatalf("%q: key %q holds a separator", s, kv.Key)
			}
			parts = append(parts, kv.Key+"="+strings.ReplaceAll(kv.Value, ",", ",,"))
		}
		again, help := SplitOptionList(strings.Join(parts, ","))
		if help {
			t.Fatalf("%q: re-encoded list asks for help", s)
		}
		if len(items) != len(again) || len(items) > 0 && !reflect.DeepEqual(items, again) {
			t.Fatalf("%q: %q parses back as %q", s, items, again)
		}
	})
}
