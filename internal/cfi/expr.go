package cfi

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// ErrExpr is matched by every *ExprError.
var ErrExpr = errors.New("DWARF expression cannot be evaluated")

// ExprError is a DWARF expression that failed: malformed, using an
// operation the evaluator does not know, or reading a register or memory
// the frame does not have.
type ExprError struct {
	Off int // byte offset in the expression
	Op  byte
	Msg string
}

func (e *ExprError) Error() string {
	return fmt.Sprintf("cfi: DWARF expression at byte %d (op %#x): %s", e.Off, e.Op, e.Msg)
}

// Is reports target == ErrExpr.
func (e *ExprError) Is(target error) bool { return target == ErrExpr }

// Machine is what an expression may read: the frame's registers and the
// process's memory.
type Machine struct {
	// Reg returns register n (DWARF number) of the frame; ok is false when
	// the frame does not know it.
	Reg func(n int) (v uint64, ok bool)
	// Mem reads size bytes (1, 2, 4 or 8) at addr, little- or big-endian as
	// the target is.
	Mem func(addr uint64, size int) (uint64, error)
	// PtrSize is the address size (8 or 4).
	PtrSize int
	// Order is the target's byte order (nil: little-endian).
	Order binary.ByteOrder
}

// maxExprSteps bounds the operations one evaluation runs (expressions may
// branch backwards).
const maxExprSteps = 10000

// Eval evaluates a DWARF location expression as the call frame information
// uses it (DWARF 5 §6.4.2): initial is pushed first (the CFA for
// DW_CFA_expression and DW_CFA_val_expression, nothing for
// DW_CFA_def_cfa_expression), and the top of the stack is the result. It
// implements the operations valid in CFI: literals and constants, register
// reads (DW_OP_reg*, DW_OP_breg*, DW_OP_bregx), memory reads (DW_OP_deref,
// DW_OP_deref_size), stack manipulation, arithmetic, logic, comparisons and
// branches.
func Eval(expr []byte, m Machine, initial ...uint64) (uint64, error) {
	order := m.Order
	if order == nil {
		order = binary.LittleEndian
	}
	ptr := m.PtrSize
	if ptr == 0 {
		ptr = 8
	}
	mask := ^uint64(0)
	if ptr == 4 {
		mask = 0xffffffff
	}
	stack := append([]uint64(nil), initial...)
	r := &reader{d: expr, order: order, ptr: ptr}
	var op byte
	var opOff int
	fail := func(msg string, args ...any) error {
		return &ExprError{Off: opOff, Op: op, Msg: fmt.Sprintf(msg, args...)}
	}
	need := func(n int) error {
		if len(stack) < n {
			return fail("stack holds %d values, the operation needs %d", len(stack), n)
		}
		return nil
	}
	pop := func() uint64 { v := stack[len(stack)-1]; stack = stack[:len(stack)-1]; return v }
	push := func(v uint64) { stack = append(stack, v&mask) }
	reg := func(n int) (uint64, error) {
		if m.Reg == nil {
			return 0, fail("register %d is not available", n)
		}
		v, ok := m.Reg(n)
		if !ok {
			return 0, fail("register %d is unknown in this frame", n)
		}
		return v, nil
	}
	mem := func(addr uint64, size int) (uint64, error) {
		if m.Mem == nil {
			return 0, fail("memory is not available")
		}
		v, err := m.Mem(addr, size)
		if err != nil {
			return 0, fail("read %d bytes at %#x: %v", size, addr, err)
		}
		return v, nil
	}
	for steps := 0; r.off < len(r.d); steps++ {
		if steps > maxExprSteps {
			return 0, fail("more than %d operations (a loop?)", maxExprSteps)
		}
		opOff = r.off
		op = r.u8()
		switch {
		case op >= 0x30 && op <= 0x4f: // lit0..lit31
			push(uint64(op - 0x30))
		case op >= 0x50 && op <= 0x6f: // reg0..reg31: the register's value
			v, err := reg(int(op - 0x50))
			if err != nil {
				return 0, err
			}
			push(v)
		case op >= 0x70 && op <= 0x8f: // breg0..breg31
			off := r.sleb()
			v, err := reg(int(op - 0x70))
			if err != nil {
				return 0, err
			}
			push(uint64(int64(v) + off))
		default:
			if err := evalOp(op, r, &stack, push, pop, need, reg, mem, fail, ptr); err != nil {
				return 0, err
			}
		}
		if r.err != nil {
			return 0, fail("truncated")
		}
	}
	if len(stack) == 0 {
		return 0, &ExprError{Off: len(expr), Msg: "the stack is empty at the end"}
	}
	return stack[len(stack)-1], nil
}

func evalOp(op byte, r *reader, stack *[]uint64, push func(uint64), pop func() uint64, need func(int) error,
	reg func(int) (uint64, error), mem func(uint64, int) (uint64, error), fail func(string, ...any) error, ptr int) error {
	binop := func(f func(a, b uint64) (uint64, error)) error {
		if err := need(2); err != nil {
			return err
		}
		b, a := pop(), pop()
		v, err := f(a, b)
		if err != nil {
			return err
		}
		push(v)
		return nil
	}
	cmp := func(f func(a, b int64) bool) error {
		return binop(func(a, b uint64) (uint64, error) {
			if f(int64(a), int64(b)) {
				return 1, nil
			}
			return 0, nil
		})
	}
	unop := func(f func(a uint64) uint64) error {
		if err := need(1); err != nil {
			return err
		}
		push(f(pop()))
		return nil
	}
	branch := func(delta int16) error {
		to := r.off + int(delta)
		if to < 0 || to > len(r.d) {
			return fail("branch to byte %d outside the expression", to)
		}
		r.off = to
		return nil
	}
	switch op {
	case 0x03: // addr
		if ptr == 4 {
			push(uint64(r.u32()))
		} else {
			push(r.u64())
		}
	case 0x06: // deref
		if err := need(1); err != nil {
			return err
		}
		v, err := mem(pop(), ptr)
		if err != nil {
			return err
		}
		push(v)
	case 0x08: // const1u
		push(uint64(r.u8()))
	case 0x09: // const1s
		push(uint64(int64(int8(r.u8()))))
	case 0x0a:
		push(uint64(r.u16()))
	case 0x0b:
		push(uint64(int64(int16(r.u16()))))
	case 0x0c:
		push(uint64(r.u32()))
	case 0x0d:
		push(uint64(int64(int32(r.u32()))))
	case 0x0e:
		push(r.u64())
	case 0x0f:
		push(r.u64())
	case 0x10: // constu
		push(r.uleb())
	case 0x11: // consts
		push(uint64(r.sleb()))
	case 0x12: // dup
		if err := need(1); err != nil {
			return err
		}
		push((*stack)[len(*stack)-1])
	case 0x13: // drop
		if err := need(1); err != nil {
			return err
		}
		pop()
	case 0x14: // over
		if err := need(2); err != nil {
			return err
		}
		push((*stack)[len(*stack)-2])
	case 0x15: // pick
		i := int(r.u8())
		if err := need(i + 1); err != nil {
			return err
		}
		push((*stack)[len(*stack)-1-i])
	case 0x16: // swap
		if err := need(2); err != nil {
			return err
		}
		s := *stack
		s[len(s)-1], s[len(s)-2] = s[len(s)-2], s[len(s)-1]
	case 0x17: // rot
		if err := need(3); err != nil {
			return err
		}
		s := *stack
		n := len(s)
		s[n-1], s[n-2], s[n-3] = s[n-2], s[n-3], s[n-1]
	case 0x19: // abs
		return unop(func(a uint64) uint64 {
			if int64(a) < 0 {
				return -a
			}
			return a
		})
	case 0x1a: // and
		return binop(func(a, b uint64) (uint64, error) { return a & b, nil })
	case 0x1b: // div (signed)
		return binop(func(a, b uint64) (uint64, error) {
			if b == 0 {
				return 0, fail("division by zero")
			}
			return uint64(int64(a) / int64(b)), nil
		})
	case 0x1c: // minus
		return binop(func(a, b uint64) (uint64, error) { return a - b, nil })
	case 0x1d: // mod
		return binop(func(a, b uint64) (uint64, error) {
			if b == 0 {
				return 0, fail("modulo by zero")
			}
			return a % b, nil
		})
	case 0x1e: // mul
		return binop(func(a, b uint64) (uint64, error) { return a * b, nil })
	case 0x1f: // neg
		return unop(func(a uint64) uint64 { return -a })
	case 0x20: // not
		return unop(func(a uint64) uint64 { return ^a })
	case 0x21: // or
		return binop(func(a, b uint64) (uint64, error) { return a | b, nil })
	case 0x22: // plus
		return binop(func(a, b uint64) (uint64, error) { return a + b, nil })
	case 0x23: // plus_uconst
		c := r.uleb()
		return unop(func(a uint64) uint64 { return a + c })
	case 0x24: // shl
		return binop(func(a, b uint64) (uint64, error) {
			return shift(a, b, func(a uint64, s uint) uint64 { return a << s }), nil
		})
	case 0x25: // shr
		return binop(func(a, b uint64) (uint64, error) {
			return shift(a, b, func(a uint64, s uint) uint64 { return a >> s }), nil
		})
	case 0x26: // shra
		return binop(func(a, b uint64) (uint64, error) {
			if b >= 64 {
				return uint64(int64(a) >> 63), nil
			}
			return uint64(int64(a) >> b), nil
		})
	case 0x27: // xor
		return binop(func(a, b uint64) (uint64, error) { return a ^ b, nil })
	case 0x28: // bra
		delta := int16(r.u16())
		if err := need(1); err != nil {
			return err
		}
		if pop() != 0 {
			return branch(delta)
		}
	case 0x29:
		return cmp(func(a, b int64) bool { return a == b })
	case 0x2a:
		return cmp(func(a, b int64) bool { return a >= b })
	case 0x2b:
		return cmp(func(a, b int64) bool { return a > b })
	case 0x2c:
		return cmp(func(a, b int64) bool { return a <= b })
	case 0x2d:
		return cmp(func(a, b int64) bool { return a < b })
	case 0x2e:
		return cmp(func(a, b int64) bool { return a != b })
	case 0x2f: // skip
		return branch(int16(r.u16()))
	case 0x90: // regx
		v, err := reg(int(r.uleb()))
		if err != nil {
			return err
		}
		push(v)
	case 0x92: // bregx
		n := int(r.uleb())
		off := r.sleb()
		v, err := reg(n)
		if err != nil {
			return err
		}
		push(uint64(int64(v) + off))
	case 0x94: // deref_size
		size := int(r.u8())
		if size != 1 && size != 2 && size != 4 && size != 8 {
			return fail("deref_size of %d bytes", size)
		}
		if err := need(1); err != nil {
			return err
		}
		v, err := mem(pop(), size)
		if err != nil {
			return err
		}
		push(v)
	case 0x96: // nop
	default:
		return fail("operation not supported in call frame information")
	}
	return nil
}

func shift(a, b uint64, f func(uint64, uint) uint64) uint64 {
	if b >= 64 {
		return 0
	}
	return f(a, uint(b))
}
