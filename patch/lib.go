//go:build linux

package patch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

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
	path   string // the library file, as given (absolute, symlinks resolved)
	handle uint64
	mod    *elfsym.Module // the module mapped from the library's memfd
	rec    uint64         // its record in the target (see libRecord)
	name   string         // its memfd's name
}

// ref is what a patch's record says of its library.
func (l *loadedLib) ref() *LibRef {
	return &LibRef{Path: l.path, Record: l.rec, Handle: l.handle, Name: l.name}
}

// prepareLib resolves the functions to replace, reads the library's bytes
// once and checks their pins against the modules that hold them, then
// loads exactly those bytes into the target for patch id (through a
// sealed memfd and a remote dlopen) and reloads the target's symbols.
// With no library it returns nil and changes nothing.
func (t *Target) prepareLib(ctx context.Context, id string, reps []Replacement, o ApplyOptions) (map[string]elfsym.Symbol, *loadedLib, error) {
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
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, &Error{Op: "apply", Pid: t.pid, Err: fmt.Errorf("%w: patch library: %w", ErrBadRequest, err)}
	}
	pins, err := pinsOf(path, data)
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
					Hint: fmt.Sprintf("declare HOTPATCH_PIN(\"%s\"); in the patch (patch/include/hotpatch.h), or accept an unpinned library (ApplyOptions.Unpinned)", old.Module.BuildID)}
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
	if testHookLibChecked != nil {
		testHookLibChecked(path)
	}
	lib, err := t.dlopen(ctx, id, path, data, o.withDefaults().Timeout)
	if err != nil {
		return nil, nil, &Error{Op: "apply", Pid: t.pid, Err: err}
	}
	return olds, lib, nil
}

// testHookLibChecked, when set (by tests), runs between the pin check of a
// patch library and its load, with the library's path (the file may change
// meanwhile: what is loaded is the bytes checked).
var testHookLibChecked func(path string)

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
		if s, err := t.syms.LookupIn(lib.mod, name); err == nil {
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

// dlopen loads data, the bytes of the library at path, into the target
// for patch id: it maps the library's record (see libRecord), puts the
// bytes into a sealed memfd of the target (see stageLib), then calls
// dlopen (or __libc_dlopen_mode) remotely on /proc/self/fd/N, on a thread
// borrowed while the others keep running (the loader takes locks other
// threads may hold), closes the memfd (the mappings keep it) and reloads
// the target's symbols so that the library's functions resolve. Each load
// is a file of its own, so the loader maps these bytes even when the same
// path or the same bytes were loaded before. The record gets each value
// (descriptor, handle) before the tool could lose it. On failure the
// library is unloaded again (once no task is in it, within timeout).
func (t *Target) dlopen(ctx context.Context, id, path string, data []byte, timeout time.Duration) (_ *loadedLib, err error) {
	fn, via, err := t.libcFunc(dlopenFuncs...)
	if err != nil {
		return nil, err
	}
	name := memfdName(id, path)
	rec, err := t.mapLibRecord(id, path, name)
	if err != nil {
		return nil, err
	}
	step("lib:record-mapped")
	defer func() {
		if err == nil {
			return
		}
		lr, ok := t.libRecordAt(rec)
		if !ok {
			return
		}
		if uerr := t.unloadLib(ctx, lr, timeout); uerr != nil {
			err = fmt.Errorf("%w; the library could not be unloaded again (Leftovers lists it): %w", err, uerr)
		}
	}()
	lc, err := t.stageLib(rec, path, data)
	if err != nil {
		return nil, err
	}
	lib, err := t.dlopenCopy(path, lc, fn.Addr, via, rec)
	if err != nil {
		return nil, err
	}
	if err := t.closeLibFds(libRecord{addr: rec, fd: lc.fd, name: name, path: path}); err != nil {
		return nil, err
	}
	step("lib:fd-closed")
	lib.rec, lib.name = rec, name
	return lib, nil
}

// dlopenCopy loads the library at path from its copy lc by a remote call
// of the loader fn (named via) on /proc/self/fd/N, written into the
// library's record at rec, which receives the handle, and reloads the
// target's symbols.
func (t *Target) dlopenCopy(path string, lc libCopy, fn uint64, via string, rec uint64) (*loadedLib, error) {
	// glibc hands back an object loaded earlier under the same name, and
	// the descriptor number of an earlier load may be ours now: the names
	// other patch libraries were loaded by are skipped, and a name taken
	// otherwise shows as our memfd not being mapped, and is skipped too.
	taken := map[string]bool{}
	lrs, err := t.libRecords()
	if err != nil {
		return nil, err
	}
	for _, lr := range lrs {
		if lr.addr != rec {
			taken[lr.open] = true
		}
	}
	n := len(taken) + t.memfdFiles()
	for try := 0; try <= n; try++ {
		name := lc.procPath(try)
		if taken[name] {
			continue
		}
		if len(name) >= libRecSize-libOffOpen {
			return nil, fmt.Errorf("%s: %d libraries are loaded from memfds in the target: too many to name one more", path, n)
		}
		if err := t.proc.WriteMem(rec+libOffOpen, append([]byte(name), 0)); err != nil {
			return nil, err
		}
		lib, err := t.callDlopen(path, fn, via, rec+libOffOpen, rec+libOffHandle)
		if err != nil {
			return nil, err
		}
		step("lib:dlopened")
		if err := t.reloadSymbols(); err != nil {
			return nil, err
		}
		mod, mapped := t.mappedModule(lc)
		if mod != nil {
			lib.mod = mod
			t.log.Debug("loaded patch library", "path", path, "as", name, "handle", fmt.Sprintf("%#x", lib.handle))
			return lib, nil
		}
		if mapped {
			return nil, fmt.Errorf("%s was loaded but its symbols could not be read from the target's memfd (%w); the target is unchanged", path, errors.Join(t.syms.Warnings...))
		}
		// Another object, loaded earlier by this name: give back the
		// reference the dlopen took, then forget its handle.
		t.dlcloseHandle(path, lib.handle)
		if err := t.setLibWord(rec, libOffHandle, 0); err != nil {
			return nil, err
		}
	}
	return nil, fmt.Errorf("%s was loaded but no mapping of its memfd is in /proc/%d/maps; the target is unchanged", path, t.pid)
}

// callDlopen calls the loader fn (named via) on the path at address at in
// the target, and on failure dlerror, on one thread: the error text is
// thread-local. The target writes the handle at store as the loader
// returns. A NULL handle is a *LoadError naming lib.
func (t *Target) callDlopen(lib string, fn uint64, via string, at, store uint64) (*loadedLib, error) {
	mode := uint64(rtldNow)
	if via == "__libc_dlopen_mode" {
		mode |= rtldDlopen
	}
	dlerr, _, dlerrErr := t.libcFunc("dlerror")
	var handle, msg uint64
	// Read before: the function Borrow runs may not use the Process (it
	// runs on the ptrace thread, which a read would wait for).
	arg := t.readCString(at, 4096)
	err := t.proc.Borrow(0, func(th *tracee.Thread) error {
		var err error
		if handle, err = th.CallStore(via, fn, store, at, mode); err != nil {
			return fmt.Errorf("remote %s(%q): %w", via, arg, err)
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
		le := &LoadError{Lib: lib, Via: via}
		if msg != 0 {
			le.Dlerror = t.readCString(msg, 4096)
		}
		return nil, le
	}
	return &loadedLib{path: lib, handle: handle}, nil
}

// dlcloseHandle gives back a reference to an object the target's loader
// handed out (logged on failure).
func (t *Target) dlcloseHandle(path string, handle uint64) {
	fn, _, err := t.libcFunc("dlclose", "__libc_dlclose")
	if err == nil {
		_, err = t.proc.Call("dlclose", fn.Addr, handle)
	}
	if err != nil {
		t.log.Warn("could not give back a loader reference", "path", path, "err", err)
	}
}

// reloadSymbols reads the target's modules again (after a library was
// loaded or unloaded) and prepares their unwind tables.
func (t *Target) reloadSymbols() error {
	syms, err := elfsym.Load(t.pid, t.proc)
	if err != nil {
		return err
	}
	unw := unwinderOf(syms)
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
