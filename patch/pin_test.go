//go:build linux

package patch

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParsePins(t *testing.T) {
	for _, c := range []struct {
		name string
		data string
		want []string
		err  bool
	}{
		{"none", "", nil, false},
		{"one", "e3103c603f624119a9e5c025e4e5dc430f8519b0\x00", []string{"e3103c603f624119a9e5c025e4e5dc430f8519b0"}, false},
		{"two, upper case, padding", "ABCDEF0123\x00\x00\x00deadbeef\x00", []string{"abcdef0123", "deadbeef"}, false},
		{"not hex", "xyz12345\x00", nil, true},
		{"odd length", "abcdef012\x00", nil, true},
		{"too short", "abcd\x00", nil, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := parsePins([]byte(c.data))
			if c.err {
				if !errors.Is(err, ErrBadRequest) {
					t.Fatalf("parsePins = %v, %v; want ErrBadRequest", got, err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, c.want) {
				t.Fatalf("parsePins = %q, %v; want %q", got, err, c.want)
			}
		})
	}
}

func FuzzParsePins(f *testing.F) {
	f.Add([]byte("deadbeef\x00cafebabe\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		pins, err := parsePins(data)
		if err != nil {
			return
		}
		for _, p := range pins {
			if len(p) < 8 || len(p)%2 != 0 {
				t.Fatalf("accepted pin %q", p)
			}
		}
	})
}

func TestBuildIDErrorNamesBoth(t *testing.T) {
	e := &BuildIDError{Lib: "/x/fix.so", Pins: []string{"aaaa1111"}, Module: "/usr/sbin/d", Func: "f", Actual: "bbbb2222"}
	if !errors.Is(e, ErrBuildIDMismatch) {
		t.Fatal("not ErrBuildIDMismatch")
	}
	for _, s := range []string{"aaaa1111", "bbbb2222", "/usr/sbin/d", "/x/fix.so"} {
		if !contains(e.Error(), s) {
			t.Errorf("%q does not name %s", e.Error(), s)
		}
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
