// Package greet is a package of the test service that a plugin can import,
// to name its function by value.
package greet

import "strings"

// Shout has the bug: it does not shout.
//
//go:noinline
func Shout(name string) string { return strings.ToLower(name) }
