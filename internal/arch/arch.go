// Package arch describes the target architectures as data. One Arch value,
// chosen from the target's ELF machine by ForMachine, carries what the other
// packages need to know about the target's code — its trap and filler bytes,
// how far a direct jump reaches, where Go code keeps g, the registers'
// DWARF numbers and names — so that no other package switches on the ELF
// machine. It computes nothing about the host: an arm64 target's Arch is the
// same value on an x86-64 host.
package arch

import (
	"debug/elf"
	"errors"
	"fmt"
)

// Arch is one target architecture.
type Arch struct {
	// Name is the Go name of the architecture ("amd64", "arm64").
	Name    string
	Machine elf.Machine
	PtrSize int
	// InsnAlign is the alignment of every instruction (1: variable length).
	InsnAlign int
	// Trap is the instruction that stops a thread that reaches it (int3,
	// BRK #0): the only filler for bytes of code we make unreachable.
	Trap []byte
	// JumpReach is how far the one-instruction direct jump reaches either
	// way (jmp rel32: 2 GiB; B imm26: 128 MiB).
	JumpReach uint64
	// DWARF register numbers of the stack pointer, the frame pointer and the
	// link register (-1: none, the return address is on the stack).
	SP, FP, LR int
	// G is the DWARF number of the register Go's internal ABI keeps the
	// current goroutine's g in (R14 on amd64, R28 on arm64).
	G int
	// TLSAboveTP reports the TLS layout of the ELF ABI: false for variant
	// II (x86-64: the static TLS block ends at the thread pointer), true for
	// variant I (arm64: it starts TCBSize bytes above it).
	TLSAboveTP bool
	TCBSize    uint64
	// RelativeReloc is the ELF relocation type of a load-time relative
	// address (R_X86_64_RELATIVE, R_AARCH64_RELATIVE).
	RelativeReloc uint32
	// regNames are the registers' names by DWARF number.
	regNames []string
	// CompareWords is the machine code of a routine that compares lists of
	// words of a stopped process with what they held before (see
	// compare.go), run in the target by tracee.Routine.
	CompareWords []byte
	// fillerRun is FillerRun for this architecture.
	fillerRun func([]byte) int
}

// AMD64 is x86-64 (System V psABI DWARF numbering).
var AMD64 = &Arch{
	Name: "amd64", Machine: elf.EM_X86_64, PtrSize: 8, InsnAlign: 1,
	Trap:      []byte{0xcc},
	JumpReach: 1 << 31,
	SP:        7, FP: 6, LR: -1, G: 14,
	RelativeReloc: uint32(elf.R_X86_64_RELATIVE),
	regNames: []string{"rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp",
		"r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip"},
	fillerRun:    fillerRunAMD64,
	CompareWords: compareAMD64,
}

// ARM64 is AArch64 (DWARF for AArch64: x0-x30 are 0-30, sp is 31).
var ARM64 = &Arch{
	Name: "arm64", Machine: elf.EM_AARCH64, PtrSize: 8, InsnAlign: 4,
	Trap:      []byte{0x00, 0x00, 0x20, 0xd4}, // BRK #0
	JumpReach: 1 << 27,
	SP:        31, FP: 29, LR: 30, G: 28,
	TLSAboveTP: true, TCBSize: 16,
	RelativeReloc: uint32(elf.R_AARCH64_RELATIVE),
	regNames:      arm64RegNames(),
	fillerRun:     fillerRunARM64,
	CompareWords:  compareARM64,
}

func arm64RegNames() []string {
	names := make([]string, 32)
	for i := range 29 {
		names[i] = fmt.Sprintf("x%d", i)
	}
	names[29], names[30], names[31] = "fp", "lr", "sp"
	return names
}

// All lists every supported architecture.
var All = []*Arch{AMD64, ARM64}

// ErrUnsupported is returned for an ELF machine that is not in All.
var ErrUnsupported = errors.New("unsupported architecture")

// ForMachine returns the Arch of an ELF machine.
func ForMachine(m elf.Machine) (*Arch, error) {
	for _, a := range All {
		if a.Machine == m {
			return a, nil
		}
	}
	return nil, fmt.Errorf("arch: %w: ELF machine %v (supported: %v, %v)", ErrUnsupported, m, AMD64.Machine, ARM64.Machine)
}

func (a *Arch) String() string { return a.Name }

// RegName names the register with DWARF number n ("r14", "x28").
func (a *Arch) RegName(n int) string {
	if n >= 0 && n < len(a.regNames) {
		return a.regNames[n]
	}
	return fmt.Sprintf("dwarf%d", n)
}

// FillerRun returns how many bytes at the start of b are alignment filler
// that no code executes (int3 and nops on x86-64; NOP and zero words on
// arm64).
func (a *Arch) FillerRun(b []byte) int { return a.fillerRun(b) }

// Fill returns n bytes of trap instructions. n must be a multiple of the
// trap's size (every instruction boundary of the target is one of it).
func (a *Arch) Fill(n int) ([]byte, error) {
	if n < 0 || n%len(a.Trap) != 0 {
		return nil, fmt.Errorf("arch: %d bytes cannot be filled with %s traps of %d bytes", n, a.Name, len(a.Trap))
	}
	out := make([]byte, 0, n)
	for len(out) < n {
		out = append(out, a.Trap...)
	}
	return out, nil
}

// Reaches reports whether a direct jump at from reaches to.
func (a *Arch) Reaches(from, to uint64) bool {
	d := int64(to - from)
	return d >= -int64(a.JumpReach) && d < int64(a.JumpReach)
}
