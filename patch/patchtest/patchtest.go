// Package patchtest swaps a function for the length of a test:
//
//	func TestReport(t *testing.T) {
//		fixed := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
//		patchtest.Func(t, time.Now, func() time.Time { return fixed })
//		... // time.Now() returns fixed until the test ends
//	}
//
// Func applies the patch with patch.Func (the same safety check as any
// patch: no goroutine may be inside the function) and registers its revert
// with t.Cleanup. A patch changes the function for the whole test binary,
// not for one goroutine: tests that patch different functions may run in
// parallel; two parallel tests that patch the same function are refused
// with a message that names both. Other tests running in parallel that call
// a patched function see the replacement.
//
// Off Linux (x86-64 and arm64), where patching is not supported, Func skips
// the test: a test file that uses this package builds everywhere.
package patchtest

import (
	"errors"
	"reflect"
	"runtime"
	"sync"
	"testing"

	"github.com/hotpatch-dev/hotpatch/patch"
)

// owners maps a patched function's name (as the Go function table spells
// it) to the test that patched it.
var owners = struct {
	sync.Mutex
	m map[string]string
}{m: map[string]string{}}

// Func replaces target with replacement until the test (or subtest) t
// ends. It fails the test with a message that says why when the patch
// cannot be applied, and reports a failed revert as a test error.
func Func[F any](t testing.TB, target, replacement F) *patch.Handle {
	return FuncWith(t, target, replacement, patch.FuncOptions{})
}

// FuncWith is Func with options.
func FuncWith[F any](t testing.TB, target, replacement F, o patch.FuncOptions) *patch.Handle {
	t.Helper()
	name, typ := describe(target)
	return apply(t, name, typ, func() (*patch.Handle, error) { return patch.FuncWith(target, replacement, o) })
}

// Wrap replaces target, until t ends, with the function wrap builds from
// target's original (see patch.Wrap).
func Wrap[F any](t testing.TB, target F, wrap func(original F) F) *patch.Handle {
	t.Helper()
	name, typ := describe(target)
	return apply(t, name, typ, func() (*patch.Handle, error) { return patch.Wrap(target, wrap) })
}

// FuncByName replaces the function named name (unexported ones too; see
// patch.FuncByName) until t ends.
func FuncByName[F any](t testing.TB, name string, replacement F) *patch.Handle {
	t.Helper()
	return apply(t, name, "", func() (*patch.Handle, error) { return patch.FuncByName(name, replacement) })
}

// apply claims the function name (typ names a target that is not one),
// applies the patch and registers its revert.
func apply(t testing.TB, name, typ string, do func() (*patch.Handle, error)) *patch.Handle {
	t.Helper()
	entry := name
	if name == "" {
		name = typ
	}
	if !claim(t, name, entry) {
		return nil
	}
	h, err := do()
	if err != nil {
		release(entry)
		if errors.Is(err, patch.ErrNotSupported) {
			t.Skipf("patchtest: cannot patch %s here: %v", name, err)
			return nil
		}
		t.Fatalf("patchtest: patch %s for %s: %v", name, t.Name(), err)
		return nil
	}
	t.Cleanup(func() {
		defer release(entry)
		if err := h.Revert(); err != nil {
			t.Errorf("patchtest: revert the patch of %s made by %s: %v", name, t.Name(), err)
		}
	})
	return h
}

// claim records that t patches the function at entry, or fails t when
// another test holds it.
func claim(t testing.TB, name string, entry string) bool {
	t.Helper()
	owners.Lock()
	defer owners.Unlock()
	if entry == "" {
		return true // not a function: patch.Func says why
	}
	if other, ok := owners.m[entry]; ok {
		if other == t.Name() {
			t.Fatalf("patchtest: %s patches %s twice; patch it once per test", t.Name(), name)
		} else {
			t.Fatalf("patchtest: %s is already patched by %s, which runs in parallel with %s; tests that patch the same function must not both call t.Parallel()",
				name, other, t.Name())
		}
		return false
	}
	owners.m[entry] = t.Name()
	return true
}

func release(entry string) {
	owners.Lock()
	defer owners.Unlock()
	delete(owners.m, entry)
}

// describe names a function value ("" and its type for something else).
func describe(f any) (string, string) {
	v := reflect.ValueOf(f)
	if v.Kind() == reflect.Func && !v.IsNil() {
		if fn := runtime.FuncForPC(v.Pointer()); fn != nil {
			return fn.Name(), ""
		}
	}
	return "", reflect.TypeOf(f).String()
}
