package tracee

// Remote function calls are not ported to arm64 yet (see call_amd64.go for
// what a port provides): Call and CallOn refuse with ErrCallUnsupported
// before touching the target. These definitions only keep call.go building.

import (
	"golang.org/x/sys/unix"
)

const callSupported = false

const redZone = 0

const (
	fpRegSet         = unix.NT_PRFPREG
	fpRegSetFallback = unix.NT_PRFPREG
)

const maxCallArgs = 8

func (r *Regs) setupCall(fn, sp uint64, args []uint64) {}
func (r *Regs) callResult() uint64                     { return r.Regs[0] }
func (r *Regs) resumeState() Regs                      { return *r }
func ctxData(r Regs, fp fpState) []byte                { return nil }
func returnStub(data, pc uint64, xsave bool) []byte    { return nil }

const (
	ctxResult = 0
	ctxDone   = 8
)
