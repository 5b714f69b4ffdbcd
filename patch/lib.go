package patch

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/internal/tracee"
)

// LoadError is a patch library the target's dynamic linker refused.
type LoadError struct {
	Lib string // the path given to dlopen
	Via string // the function called: "dlopen" or "__libc_dlopen_mode"
	// Dlerror is the target's dlerror() text ("" when the loader has no
	// dlerror to ask, as with __libc_dlopen_mode).
	Dlerror string
}

func (e *LoadError) Error() string {
	msg := e.Dlerror
	if msg == "" {
		msg = "no dlerror() text available"
	}
	return fmt.Sprintf("%v: %s(%q) in the target returned NULL: %s; the target is unchanged — make the library and its dependencies loadable by the target (ldd %s)",
		ErrLoadLibrary, e.Via, e.Lib, msg, e.Lib)
}

// Is reports target == ErrLoadLibrary.
func (e *LoadError) Is(target error) bool { return target == ErrLoadLibrary }

// dlopen flags (glibc). __RTLD_DLOPEN marks a load through
// __libc_dlopen_mode as a dlopen (as glibc's own callers of it do).
const (
	rtldNow    = 0x2
	rtldDlopen = 0x80000000
)

// dlopenFuncs are the loader entry points tried in order: dlopen (libc.so.6
// in glibc ≥ 2.34, libdl.so.2 before), then the private
// __libc_dlopen_mode that older glibc exports from libc.so.6.
var dlopenFuncs = []string{"dlopen", "__libc_dlopen_mode"}

// loadedLib is a patch library loaded into the target for an Apply.
type loadedLib struct {
	path   string // as given to dlopen (absolute, symlinks resolved)
	handle uint64
	mod    *elfsym.Module // nil if not found in the maps (should not happen)
}

// prepareLib resolves the functions to replace, checks the library's pins
// against the modules that hold them, then loads the library into the target
// (remote dlopen) and reloads the target's symbols. With no library it
// returns nil and changes nothing.
func (t *Target) prepareLib(reps []Replacement, o ApplyOptions) (map[string]elfsym.Symbol, *loadedLib, error) {
	if o.Lib == "" {
		return nil, nil, nil
	}
	path, err := filepath.Abs(o.Lib)
	if err == nil {
		path, err = filepath.EvalSymlinks(path)
	}
	if err != nil {
		return nil, nil, &Error{Op: "apply", Pid: t.pid, Err: fmt.Errorf("%w: patch library %s: %w", ErrBadRequest, o.Lib, err)}
	}
	pins, err := ReadPins(path)
	if err != nil {
		return nil, nil, &Error{Op: "apply", Pid: t.pid, Err: err, Hint: "give a shared object built with -shared -fPIC"}
	}
	olds := map[string]elfsym.Symbol{}
	for _, rep := range reps {
		old, err := t.syms.Lookup(rep.Old)
		if err != nil {
			return nil, nil, &Error{Op: "apply", Pid: t.pid, Func: rep.Old, Err: err}
		}
		olds[rep.Old] = old
		if len(pins) == 0 {
			if !o.Unpinned {
				return nil, nil, &Error{Op: "apply", Pid: t.pid, Func: rep.Old, Err: ErrUnpinned,
					Hint: fmt.Sprintf("declare HOTPATCH_PIN(\"%s\"); in the patch (patch/include/hotpatch.h), or pass --unpinned", old.Module.BuildID)}
			}
			continue
		}
		found := false
		for _, p := range pins {
			found = found || p == old.Module.BuildID
		}
		if !found {
			return nil, nil, &Error{Op: "apply", Pid: t.pid, Func: rep.Old,
				Err: &BuildIDError{Lib: path, Pins: pins, Module: old.Module.Path, Func: rep.Old, Actual: old.Module.BuildID}}
		}
	}
	lib, err := t.dlopen(path)
	if err != nil {
		return nil, nil, &Error{Op: "apply", Pid: t.pid, Err: err}
	}
	return olds, lib, nil
}

// lookupOld returns a function to replace, as resolved before the library
// was loaded (a replacement may have the same name).
func (t *Target) lookupOld(name string, olds map[string]elfsym.Symbol) (elfsym.Symbol, error) {
	if s, ok := olds[name]; ok {
		return s, nil
	}
	return t.syms.Lookup(name)
}

// lookupNew resolves a replacement: in the patch library first, then in the
// whole target.
func (t *Target) lookupNew(name string, lib *loadedLib) (elfsym.Symbol, error) {
	if lib != nil && lib.mod != nil && !strings.Contains(name, ":") {
		if s, err := t.syms.Lookup(lib.mod.Path + ":" + name); err == nil {
			return s, nil
		}
	}
	return t.syms.Lookup(name)
}

// libcFunc finds a function the C library exports: in libc.so.6 first
// (glibc ≥ 2.34 has dlopen there), then libdl.so.2, then anywhere.
func (t *Target) libcFunc(names ...string) (elfsym.Symbol, string, error) {
	var firstErr error
	for _, n := range names {
		for _, q := range []string{"libc.so.6:" + n, "libdl.so.2:" + n, n} {
			s, err := t.syms.Lookup(q)
			if err == nil {
				return s, n, nil
			}
			if firstErr == nil {
				firstErr = err
			}
		}
	}
	return elfsym.Symbol{}, "", fmt.Errorf("%w: the target has no %s (is it linked with glibc?)", firstErr, strings.Join(names, " or "))
}

// dlopen loads the library at path into the target by a remote call of
// dlopen (or __libc_dlopen_mode), on a thread borrowed while the others
// keep running (the loader takes locks other threads may hold), and
// reloads the target's symbols so that the library's functions resolve.
func (t *Target) dlopen(path string) (*loadedLib, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("%w: patch library: %w", ErrBadRequest, err)
	}
	fn, via, err := t.libcFunc(dlopenFuncs...)
	if err != nil {
		return nil, err
	}
	// The path string goes into patch memory of our own.
	size := roundUp(uint64(len(path)+1), pageSize)
	scratch, err := t.proc.Mmap(0, size, tracee.ProtRead|tracee.ProtWrite, tracee.MapPrivate|tracee.MapAnonymous)
	if err != nil {
		return nil, fmt.Errorf("map memory for the library path: %w", err)
	}
	defer func() {
		if err := t.proc.Munmap(scratch, size); err != nil {
			t.log.Warn("could not unmap the library path", "err", err)
		}
	}()
	if err := t.proc.WriteMem(scratch, append([]byte(path), 0)); err != nil {
		return nil, err
	}
	mode := uint64(rtldNow)
	if via == "__libc_dlopen_mode" {
		mode |= rtldDlopen
	}
	dlerr, _, dlerrErr := t.libcFunc("dlerror")
	// dlopen, and dlerror after a failure, on one thread: the error text is
	// thread-local.
	var handle, msg uint64
	err = t.proc.Borrow(0, func(th *tracee.Thread) error {
		var err error
		if handle, err = th.Call(via, fn.Addr, scratch, mode); err != nil {
			return fmt.Errorf("remote %s(%q): %w", via, path, err)
		}
		if handle == 0 && dlerrErr == nil && via == "dlopen" {
			msg, _ = th.Call("dlerror", dlerr.Addr)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if handle == 0 {
		le := &LoadError{Lib: path, Via: via}
		if msg != 0 {
			le.Dlerror = t.readCString(msg, 4096)
		}
		return nil, le
	}
	lib := &loadedLib{path: path, handle: handle}
	if err := t.reloadSymbols(); err != nil {
		t.dlclose(lib)
		return nil, err
	}
	for _, m := range t.syms.Modules {
		if m.Path == path {
			lib.mod = m
		}
	}
	if lib.mod == nil {
		t.dlclose(lib)
		return nil, fmt.Errorf("%s was loaded but is not in /proc/%d/maps under that path", path, t.pid)
	}
	t.log.Debug("loaded patch library", "path", path, "handle", fmt.Sprintf("%#x", handle))
	return lib, nil
}

// dlclose unloads a library loaded for an Apply that was then refused, so
// that a refusal leaves the target as it was.
func (t *Target) dlclose(lib *loadedLib) {
	fn, _, err := t.libcFunc("dlclose", "__libc_dlclose")
	if err == nil {
		_, err = t.proc.Call("dlclose", fn.Addr, lib.handle)
	}
	if err != nil {
		t.log.Warn("could not unload the patch library", "path", lib.path, "err", err)
	}
	if err := t.reloadSymbols(); err != nil {
		t.log.Warn("reload symbols", "err", err)
	}
}

// reloadSymbols reads the target's modules again (after a library was
// loaded or unloaded) and prepares their unwind tables.
func (t *Target) reloadSymbols() error {
	syms, err := elfsym.Load(t.pid, t.proc)
	if err != nil {
		return err
	}
	unw := syms.Unwinder()
	if err := unw.Prepare(); err != nil {
		t.log.Warn("unwind tables", "err", err)
	}
	t.syms, t.unw = syms, unw
	return nil
}

// readCString reads a NUL-terminated string of at most max bytes.
func (t *Target) readCString(addr uint64, max int) string {
	var out []byte
	buf := make([]byte, 256)
	for len(out) < max {
		n, _ := t.proc.ReadAt(buf, int64(addr)+int64(len(out)))
		if n <= 0 {
			break
		}
		if i := bytes.IndexByte(buf[:n], 0); i >= 0 {
			return string(append(out, buf[:i]...))
		}
		out = append(out, buf[:n]...)
	}
	return string(out)
}
