//go:build linux

package patch

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/elfsym"
)

// Memory we map is found whatever name the kernel gives it: a mapping
// that covers a Go program's (never moved) break is "[heap]" in its maps,
// and BenchmarkPause/go-100000 once saw its patch's 16 MiB of memory there
// and Revert answer "not applied".
func TestAnonymousMappings(t *testing.T) {
	for path, want := range map[string]bool{
		"":                 true,
		"[anon:hotpatch]":  true,
		"[heap]":           true,
		"[stack]":          false,
		"[vdso]":           false,
		"/usr/lib/libc.so": false,
		"[anon:other]":     false,
	} {
		require.Equal(t, want, anonymous(elfsym.Mapping{Path: path}), "%q", path)
	}
}
