package patch

import "unsafe"

// funcvalOf returns the funcval pointer a func value holds: the address of
// {fn, captured variables...}, which a call through the value loads into
// the closure context register. f must hold a func (a pointer-shaped type,
// kept in the interface's data word).
func funcvalOf(f any) uintptr {
	return uintptr((*[2]unsafe.Pointer)(unsafe.Pointer(&f))[1])
}
