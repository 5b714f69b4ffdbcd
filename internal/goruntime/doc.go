// Package goruntime reads the Go runtime's goroutine structures out of a
// stopped target: where runtime.allgs is, and for every g its status, stack
// bounds, saved registers (g.sched), goroutine ID, wait reason and the thread
// it runs on. Field offsets come from the target's DWARF, or for binaries
// built without it from a per-release table (Known); an unknown release
// without DWARF is an error, never a guess.
package goruntime
