// Package goruntime reads the Go runtime's goroutine structures out of a
// stopped target: where runtime.allgs is, and for every g its status, stack
// bounds, saved registers (g.sched), goroutine ID, wait reason and the thread
// it runs on. Only the releases of Known are read (Supported): another
// release is refused by version, even when its DWARF would give the g
// layout. Field offsets come from the target's DWARF, or for binaries built
// without it from Known; never from a guess.
package goruntime
