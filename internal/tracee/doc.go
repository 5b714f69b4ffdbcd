// Package tracee controls a live Linux process through ptrace: it stops every
// thread (catching threads born during the stop), reads and writes registers
// and memory, runs system calls inside the target, and resumes it.
//
// It is the only package of the module that imports golang.org/x/sys/unix.
// Every ptrace request is issued from one locked OS thread, because the kernel
// binds a tracee to the thread that attached it.
//
// Between pauses the target is not traced at all: Stop seizes every thread and
// Resume detaches them again. A patcher that dies at any moment therefore
// leaves a running, untraced target behind (the kernel detaches the tracees of
// a dead tracer); PTRACE_O_EXITKILL is never used.
package tracee
