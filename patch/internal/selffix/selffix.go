// Package selffix holds functions that the self-patching tests patch from
// another package: unexported ones (by name) and methods.
package selffix

//go:noinline
func scale(x int) int { return 10 * x }

// Scale returns scale(x), an unexported function.
//
//go:noinline
func Scale(x int) int { return scale(x) }

// Counter counts.
type Counter struct{ N int }

// Add adds x and returns the sum (a pointer-receiver method).
//
//go:noinline
func (c *Counter) Add(x int) int { c.N += x; return c.N }

// Money is an amount.
type Money int

// Double doubles m (a value-receiver method).
//
//go:noinline
func (m Money) Double() Money { return 2 * m }

// Ident returns x (a generic function).
//
//go:noinline
func Ident[X any](x X) X { return x }

// small is inlined into Inlines. Its call of panic keeps a trace of the
// inlining in the caller's inline tree (a body the compiler merges entirely
// into the caller's instructions leaves none).
func small(x int) int {
	if x > 1000 {
		panic("small: too big")
	}
	return x + 7
}

// Small is small, which callers outside this package can take the value
// of (the compiler keeps an out-of-line copy for that).
var Small = small

// Inlines calls small, which the compiler inlines here.
//
//go:noinline
func Inlines(x int) int { return small(x) * 2 }
