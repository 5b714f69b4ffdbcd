package patch

import (
	"reflect"
	"unsafe"
)

// funcValueOfType returns a func value of type t (a func type) calling
// through fv: funcFromFuncval for a type known at run time only.
func funcValueOfType(t reflect.Type, fv *origFuncval) reflect.Value {
	v := reflect.New(t)
	*(*unsafe.Pointer)(v.UnsafePointer()) = unsafe.Pointer(fv)
	return v.Elem()
}
