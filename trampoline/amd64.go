package trampoline

import "debug/elf"

// AMD64 is the x86-64 Arch.
type AMD64 struct{}

// Machine returns elf.EM_X86_64.
func (AMD64) Machine() elf.Machine { return elf.EM_X86_64 }
func (AMD64) Jump(from, to uint64) []byte { return nil }
func (AMD64) MaxThunkSize() int { return 0 }
func (AMD64) Plan(fn Func, newAddr, thunkAddr uint64) (*Plan, error) { return nil, nil }
