//go:build !linux

package patch

// Func replaces target with replacement in this process. On this system it
// returns ErrNotSupported: patching needs Linux (ptrace) on x86-64 or arm64.
func Func[F any](target, replacement F) (*Handle, error) {
	return nil, ErrNotSupported
}

// FuncWith is Func with options; here it returns ErrNotSupported.
func FuncWith[F any](target, replacement F, o FuncOptions) (*Handle, error) {
	return nil, ErrNotSupported
}

// Handle is a patch applied by Func. None exists on this system.
type Handle struct{}

// ID returns the patch's ID ("" here).
func (h *Handle) ID() string { return "" }

// Revert returns ErrNotSupported.
func (h *Handle) Revert() error { return ErrNotSupported }

// Resume returns ErrNotSupported.
func (h *Handle) Resume() error { return ErrNotSupported }

// FuncByName replaces the function named name; here it returns
// ErrNotSupported.
func FuncByName[F any](name string, replacement F) (*Handle, error) {
	return nil, ErrNotSupported
}

// FuncByNameWith is FuncByName with options; here it returns
// ErrNotSupported.
func FuncByNameWith[F any](name string, replacement F, o FuncOptions) (*Handle, error) {
	return nil, ErrNotSupported
}

// Wrap replaces target with the function wrap builds from its original;
// here it returns ErrNotSupported.
func Wrap[F any](target F, wrap func(original F) F) (*Handle, error) {
	return nil, ErrNotSupported
}

// WrapWith is Wrap with options; here it returns ErrNotSupported.
func WrapWith[F any](target F, wrap func(original F) F, o FuncOptions) (*Handle, error) {
	return nil, ErrNotSupported
}
