package tracee

import "encoding/binary"

// stubReach is how far from the interrupted pc the system call stub may
// lie (0: anywhere; it returns with an absolute jump).
const stubReach = 0

// syscallStubSize is the size of a syscallStub.
const syscallStubSize = 2 + 5 + 1 + 16*10 + 6 + 8

// syscallStub is the code, at address at, that runs a remote system call
// (number and arguments in their registers) and then — only if the tracer
// is gone by then; a live tracer takes the thread at its syscall-exit stop
// and restores it through ptrace — puts back the interrupted state r by
// itself and jumps to it:
//
//	syscall
//	push r.rflags; popfq
//	movabs reg, r.reg      (rax, rdx, ..., r15 but rsp), then rsp
//	jmp [rip+0]; r.rip
//
// Everything is an immediate: the stub reads no data and, but for the 8
// bytes of popfq's push below the red zone (see setupSyscallStub), writes
// no memory. The FP state and the signal mask are never touched.
//
// hop is always 0 here: a stub anywhere reaches r.rip.
func syscallStub(at, hop uint64, r *Regs) []byte {
	c := make([]byte, 0, syscallStubSize)
	c = append(c, syscallInsn...)
	c = append(c, 0x68) // push imm32 (sign-extended; rflags fits in 22 bits)
	c = binary.LittleEndian.AppendUint32(c, uint32(r.Eflags))
	c = append(c, 0x9d) // popfq
	movabs := func(reg int, v uint64) {
		rex := byte(0x48)
		if reg >= 8 {
			rex |= 1 // REX.B
		}
		c = append(c, rex, 0xb8+byte(reg&7))
		c = binary.LittleEndian.AppendUint64(c, v)
	}
	// x86 register numbers of the DWARF order rax, rdx, rcx, rbx, rsi,
	// rdi, rbp, rsp, r8..r15; rsp goes last.
	enc := []int{0, 2, 1, 3, 6, 7, 5, 4, 8, 9, 10, 11, 12, 13, 14, 15}
	dw := r.DWARF()
	for slot, reg := range enc {
		if reg != 4 {
			movabs(reg, dw[slot])
		}
	}
	movabs(4, r.Rsp)
	c = append(c, 0xff, 0x25, 0, 0, 0, 0) // jmp [rip+0]
	c = binary.LittleEndian.AppendUint64(c, r.Rip)
	return c
}

// syscallHopSize and syscallHop: never used on x86-64, where stubReach is 0
// (see syscall_arm64.go).
const syscallHopSize = 0

func syscallHop(at uint64, r *Regs) []byte { return nil }

// setupSyscallStub makes r run system call nr with args on the stub at pc,
// on a stack below the red zone (popfq's push in the stub must not touch
// it). orig_rax = -1 keeps the kernel's syscall-restart logic away from
// these registers when the thread leaves its current stop.
func (r *Regs) setupSyscallStub(pc, nr uint64, args []uint64) {
	r.setupSyscall(pc, nr, args)
	r.Rsp = (r.Rsp - redZone) &^ 15
}
