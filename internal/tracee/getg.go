package tracee

// getg returns the address of the calling goroutine's runtime descriptor
// (getg_amd64.s, getg_arm64.s): it identifies the goroutine while it runs.
// onLoop compares it with the ptrace goroutine's, where a gettid system
// call cost a microsecond or more on every call into the Process —
// several in each pause.
func getg() uintptr
