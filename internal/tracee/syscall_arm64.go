package tracee

import "encoding/binary"

// stubReach is how far from the interrupted pc the system call stub may
// lie: it returns with a direct branch (B, ±128 MiB), the only way back on
// arm64 that leaves every register as it was. A stub placed farther
// returns through a hop (syscallHop) placed within reach.
const stubReach = 128<<20 - 4096

// Layout of a syscallStub: code, then the registers it restores.
const (
	ssCode = 24 * 4       // the instructions (23, padded to 8 bytes)
	ssRegs = ssCode       // x0..x30
	ssSP   = ssCode + 248 // sp
	ssNZCV = ssCode + 256 // pstate (its NZCV flags are restored)
	ssEnd  = ssCode + 264
)

// syscallStubSize is the size of a syscallStub.
const syscallStubSize = ssEnd

// A64 encodings of the system call stub (see also call_arm64.go).
func a64Ldr(rt, rn, off uint32) uint32 { return 0xf9400000 | (off/8)<<10 | rn<<5 | rt }
func a64Ldp(rt, rt2, rn, off uint32) uint32 {
	return 0xa9400000 | (off/8&0x7f)<<15 | rt2<<10 | rn<<5 | rt
}
func a64Adr(rd uint32, off int64) uint32 {
	return 0x10000000 | uint32(off&3)<<29 | uint32(off>>2&0x7ffff)<<5 | rd
}
func a64B(off int64) uint32       { return 0x14000000 | uint32(off>>2)&0x3ffffff }
func a64MsrNZCV(rt uint32) uint32 { return 0xd51b4200 | rt }

// syscallStub is the code, at address at, that runs a remote system call
// (number and arguments in their registers) and then — only if the tracer
// is gone by then; a live tracer takes the thread at its syscall-exit stop
// and restores it through ptrace — puts back the interrupted state r by
// itself and branches to it:
//
//	svc #0
//	x16 = &regs; sp = regs.sp; nzcv = regs.pstate
//	x0..x15, x17..x30 = regs; x16 = regs.x16
//	b r.pc
//
// The stub writes no memory and touches neither the FP/SIMD state nor the
// signal mask nor the alternate signal stack (no rt_sigreturn: it would
// reset the restart block of a thread continuing through restart_syscall,
// which the stub simply re-enters). r.pc must lie within stubReach of at,
// unless hop is not 0: then the stub's x16 slot holds hop, its last
// instruction is br x16, and the hop (syscallHop, within stubReach of
// r.pc) loads x16 and branches to r.pc.
func syscallStub(at, hop uint64, r *Regs) []byte {
	w := []uint32{a64Svc0, a64Adr(16, ssRegs-4)}
	w = append(w,
		a64Ldr(17, 16, ssSP-ssRegs), a64Add(31, 17, 0, 0), // mov sp, x17
		a64Ldr(17, 16, ssNZCV-ssRegs), a64MsrNZCV(17),
	)
	for i := uint32(0); i < 16; i += 2 {
		w = append(w, a64Ldp(i, i+1, 16, 8*i))
	}
	for i := uint32(17); i < 31; i += 2 {
		w = append(w, a64Ldp(i, i+1, 16, 8*i))
	}
	w = append(w, a64Ldr(16, 16, 8*16))
	if hop != 0 {
		w = append(w, a64BrX16)
	} else {
		w = append(w, a64B(int64(r.Pc)-int64(at+uint64(4*len(w)))))
	}
	c := make([]byte, ssEnd)
	le := binary.LittleEndian
	for i, v := range w {
		le.PutUint32(c[4*i:], v)
	}
	for i, v := range r.Regs {
		le.PutUint64(c[ssRegs+8*i:], v)
	}
	if hop != 0 {
		le.PutUint64(c[ssRegs+8*16:], hop)
	}
	le.PutUint64(c[ssSP:], r.Sp)
	le.PutUint64(c[ssNZCV:], r.Pstate)
	return c
}

// A64 encodings of the hop.
const (
	a64BrX16  = 0xd61f0200 // br x16
	a64BtiJC  = 0xd50324df // bti jc: a landing pad for any branch (a nop without BTI)
	a64Nop    = 0xd503201f
	a64LdrLit = 0x58000000 // ldr Xt, label: | imm19<<5 | t
)

// syscallHopSize is the size of a syscallHop.
const syscallHopSize = 24

// syscallHop is the code, at address at within stubReach of r.pc, through
// which a system call stub placed out of reach returns (br x16, every other
// register already restored):
//
//	bti jc            (the hop may lie in a BTI-guarded page)
//	ldr x16, .+12     (r.x16)
//	b r.pc
//	nop
//	.quad r.x16
func syscallHop(at uint64, r *Regs) []byte {
	le := binary.LittleEndian
	c := make([]byte, 0, syscallHopSize)
	c = le.AppendUint32(c, a64BtiJC)
	c = le.AppendUint32(c, a64LdrLit|(12/4)<<5|16)
	c = le.AppendUint32(c, a64B(int64(r.Pc)-int64(at+8)))
	c = le.AppendUint32(c, a64Nop)
	return le.AppendUint64(c, r.Regs[16])
}

// setupSyscallStub makes r run system call nr with args on the stub at pc.
// BTYPE is cleared (see setupCall): the stub's first instruction is no
// landing pad.
func (r *Regs) setupSyscallStub(pc, nr uint64, args []uint64) {
	r.setupSyscall(pc, nr, args)
	r.Pstate &^= pstateBTYPE
}
