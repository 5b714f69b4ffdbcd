//go:build linux

package patch

import (
	"regexp"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/hotpatch-dev/hotpatch/consistency"
	"github.com/hotpatch-dev/hotpatch/elfsym"
)

// TestLibraryErrorsNameNoCLI: the library's refusals say what to do in the
// library's terms (its options); the CLI adds its own flags and commands.
func TestLibraryErrorsNameNoCLI(t *testing.T) {
	cli := regexp.MustCompile(`--[a-z]|\bhotpatch (apply|revert|status|syms|threads)\b`)
	errs := []error{
		&InlinedError{Func: "main.f", Sites: []elfsym.InlineSite{{Caller: "main.g", Addr: 0x1000}}},
		&consistency.BlockedError{Attempts: 3},
	}
	for _, err := range errs {
		assert.NotRegexp(t, cli, err.Error())
	}
}
