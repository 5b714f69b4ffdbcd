// Package hidden holds an unexported function for the comparison's
// "unexported function of another package" row.
package hidden

//go:noinline
func double(n int) int { return 2 * n }

// Quad calls the unexported double twice.
func Quad(n int) int { return double(double(n)) }
