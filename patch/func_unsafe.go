package patch

import "unsafe"

// funcvalOf returns the funcval pointer a func value holds: the address of
// {fn, captured variables...}, which a call through the value loads into
// the closure context register. f must hold a func (a pointer-shaped type,
// kept in the interface's data word).
func funcvalOf(f any) uintptr {
	return uintptr((*[2]unsafe.Pointer)(unsafe.Pointer(&f))[1])
}

// origFuncval is the funcval of the func value Wrap hands to its wrap
// function: fn is the entry it calls, rewritten by the helper (through
// /proc/PID/mem) to the original's entry before the patch switches, and
// set back to the function itself once it is reverted.
type origFuncval struct {
	fn uintptr
}

// funcFromFuncval returns a func value of type F calling through fv.
func funcFromFuncval[F any](fv *origFuncval) F {
	var f F
	*(*unsafe.Pointer)(unsafe.Pointer(&f)) = unsafe.Pointer(fv)
	return f
}

// fnSlot is the address of fv.fn.
func fnSlot(fv *origFuncval) uintptr { return uintptr(unsafe.Pointer(&fv.fn)) }
