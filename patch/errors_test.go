//go:build linux

package patch

import (
	"encoding/json"
	"regexp"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/internal/consistency"
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

// TestJSONEmptyLists: what scripts read has one shape; an empty list is [].
func TestJSONEmptyLists(t *testing.T) {
	for _, v := range []any{Result{}, &Result{}, Record{}, Function{}, Progress{}} {
		b, err := json.Marshal(v)
		assert.NoError(t, err)
		assert.NotContains(t, string(b), "null", "%T: %s", v, b)
	}
	b, err := json.Marshal(Record{Functions: []Function{{Old: "f"}}})
	assert.NoError(t, err)
	assert.Contains(t, string(b), `"inlined_into":[]`)
	assert.Contains(t, string(b), `"pending_tasks":[]`)
}
