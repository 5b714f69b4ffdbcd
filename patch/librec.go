//go:build linux

package patch

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/internal/consistency"
	"github.com/hotpatch-dev/hotpatch/internal/tracee"
)

// A patch library loaded into a target has a record of its own there, so
// that whatever step a tool is killed at, a later one finds the library,
// its descriptor and its handle, and unloads it (see docs/reliability.md):
// one page of anonymous memory, mapped (tracee.MmapMarkedFlags, with the
// header as its mark) before the memfd is created and unmapped only once
// the library is unloaded. The record is filled in by whoever knows a
// value first:
//
//	0     magic "HPLIBREC"
//	8     u64 size of the mapping
//	16    u64 descriptor + 1 of the memfd (0: none open), written by
//	      memfd_create's mark (tracee.MemfdCreateMarked), zeroed after close
//	24    u64 dlopen handle (0: not loaded), written by the target itself
//	      as dlopen returns (tracee.Thread.CallStore)
//	32    u64 device, 40 u64 inode of the memfd
//	48    the patch's ID (16 bytes, NUL-padded)
//	64    the memfd's name, NUL-terminated: hotpatch:ID:BASE, unique, so
//	      that the descriptor and the mappings are known by it
//	320   the library's path as given, NUL-terminated
//	1344  the path given to dlopen (/proc/self/fd/N), NUL-terminated
const (
	libRecMagic   = "HPLIBREC"
	libOffSize    = 8
	libOffFd      = 16
	libOffHandle  = 24
	libOffDev     = 32
	libOffIno     = 40
	libOffID      = 48
	libOffName    = 64
	libOffPath    = 320
	libOffOpen    = 1344
	libRecSize    = pageSize
	libNamePrefix = "hotpatch:"
)

// libRecord is a patch library's record as read from the target.
type libRecord struct {
	addr     uint64
	fd       int // -1: none known open
	handle   uint64
	dev, ino uint64
	id       string
	name     string // the memfd's name
	path     string // the library, as given
	open     string // the path dlopen was given
}

// memfdName is the name of a library's memfd for patch id: unique, and
// with the library's base name, so that the target's maps show
// /memfd:hotpatch:ID:NAME.
func memfdName(id, path string) string {
	name := libNamePrefix + id + ":" + filepath.Base(path)
	if len(name) > memfdNameMax {
		name = name[:memfdNameMax]
	}
	return name
}

// libRecordImage is the first content of a library's record.
func libRecordImage(id, path, name string) []byte {
	b := make([]byte, libOffOpen)
	copy(b, libRecMagic)
	binary.LittleEndian.PutUint64(b[libOffSize:], libRecSize)
	copy(b[libOffID:libOffName], id)
	copy(b[libOffName:libOffPath-1], name)
	copy(b[libOffPath:libOffOpen-1], path)
	return b
}

// mapLibRecord maps the record of a library about to be loaded.
func (t *Target) mapLibRecord(id, path, name string) (uint64, error) {
	img := libRecordImage(id, path, name)
	addr, err := t.proc.MmapMarkedFlags(0, libRecSize, tracee.ProtRead|tracee.ProtWrite, tracee.MapNoreserve, img, 0)
	if err != nil {
		return 0, fmt.Errorf("map the patch library's record in the target: %w", err)
	}
	return addr, nil
}

// setLibWord writes one word of the record at rec.
func (t *Target) setLibWord(rec uint64, off int, v uint64) error {
	return t.writeMem(rec+uint64(off), binary.LittleEndian.AppendUint64(nil, v))
}

// parseLibRecord reads a library's record from b, the page at addr.
func parseLibRecord(addr uint64, b []byte) (libRecord, bool) {
	if len(b) < libRecSize || string(b[:len(libRecMagic)]) != libRecMagic || binary.LittleEndian.Uint64(b[libOffSize:]) != libRecSize {
		return libRecord{}, false
	}
	le := binary.LittleEndian
	cstr := func(b []byte) string {
		if i := bytes.IndexByte(b, 0); i >= 0 {
			return string(b[:i])
		}
		return string(b)
	}
	lr := libRecord{addr: addr, fd: int(le.Uint64(b[libOffFd:])) - 1, handle: le.Uint64(b[libOffHandle:]),
		dev: le.Uint64(b[libOffDev:]), ino: le.Uint64(b[libOffIno:]),
		id: cstr(b[libOffID:libOffName]), name: cstr(b[libOffName:libOffPath]), path: cstr(b[libOffPath:libOffOpen]), open: cstr(b[libOffOpen:])}
	if lr.fd < -1 || !bytes.HasPrefix([]byte(lr.name), []byte(libNamePrefix)) {
		return libRecord{}, false
	}
	return lr, true
}

// libRecordAt reads the record of a library at addr.
func (t *Target) libRecordAt(addr uint64) (libRecord, bool) {
	b := make([]byte, libRecSize)
	if n, _ := t.proc.ReadAt(b, int64(addr)); n != len(b) {
		return libRecord{}, false
	}
	return parseLibRecord(addr, b)
}

// libRecords lists the records of the patch libraries in the target.
func (t *Target) libRecords() ([]libRecord, error) {
	maps, err := elfsym.ReadMappings(t.pid)
	if err != nil {
		return nil, err
	}
	var out []libRecord
	for _, m := range maps {
		if !anonymous(m) || m.Perms != "rw-p" || m.End-m.Start < libRecSize {
			continue
		}
		hdr := make([]byte, len(libRecMagic))
		if n, _ := t.proc.ReadAt(hdr, int64(m.Start)); n != len(hdr) || string(hdr) != libRecMagic {
			continue
		}
		if lr, ok := t.libRecordAt(m.Start); ok {
			out = append(out, lr)
		}
	}
	return out, nil
}

// libUsers returns the records of libraries a patch still uses (one that
// is not "prepared" or "reverted": its entries may lead there), and their
// handles.
func libUsers(recs []Record) (byRecord map[uint64]string, byHandle map[uint64]string) {
	byRecord, byHandle = map[uint64]string{}, map[uint64]string{}
	for _, r := range recs {
		if r.Lib == nil || r.State == StatePrepared || r.State == StateReverted {
			continue
		}
		byRecord[r.Lib.Record] = r.ID
		byHandle[r.Lib.Handle] = r.ID
	}
	return byRecord, byHandle
}

// copyMappings returns the mappings of the library copy lr names.
func copyMappings(lr libRecord, maps []elfsym.Mapping) []elfsym.Mapping {
	var out []elfsym.Mapping
	for _, m := range maps {
		if m.Path == "/memfd:"+lr.name && (lr.ino == 0 || m.Inode == lr.ino) {
			out = append(out, m)
		}
	}
	return out
}

// libFds returns the target's open descriptors of lr's memfd: the one the
// record names if it still is that memfd (the number may have been closed
// and reused by the target), else — the record killed before it got the
// number — every descriptor whose link is that memfd's unique name.
func (t *Target) libFds(lr libRecord) []int {
	want := "/memfd:" + lr.name + " (deleted)"
	is := func(fd int) bool {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", t.pid, fd))
		return err == nil && l == want
	}
	if lr.fd >= 0 {
		if is(lr.fd) {
			return []int{lr.fd}
		}
		return nil
	}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", t.pid))
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && is(fd) {
			out = append(out, fd)
		}
	}
	return out
}

// closeLibFds closes lr's open descriptors (each checked to be that
// memfd right before) and clears the record's.
func (t *Target) closeLibFds(lr libRecord) error {
	for _, fd := range t.libFds(lr) {
		if err := t.proc.CloseFd(fd); err != nil {
			return fmt.Errorf("close the descriptor %d of patch library %s in the target: %w", fd, lr.path, err)
		}
	}
	return t.setLibWord(lr.addr, libOffFd, 0)
}

// unloadLib unloads the library lr records, once no task runs in it or
// will return into it (any of its mappings, its whole range: a task may
// be in a helper the replacement called), retrying until timeout; then it
// closes its descriptor and unmaps the record. A library whose copy is not
// mapped (never loaded, or unloaded by a tool killed before it unmapped
// the record) needs no check: its descriptor, if open, is closed and the
// record unmapped. A busy library stays loaded and recorded: the error
// matches ErrBlocked.
func (t *Target) unloadLib(ctx context.Context, lr libRecord, timeout time.Duration) error {
	maps, err := elfsym.ReadMappings(t.pid)
	if err != nil {
		return err
	}
	if cm := copyMappings(lr, maps); len(cm) > 0 {
		if err := t.dlcloseCopy(ctx, lr, cm, timeout); err != nil {
			return err
		}
	}
	if err := t.closeLibFds(lr); err != nil {
		return err
	}
	if err := t.proc.Munmap(lr.addr, libRecSize); err != nil {
		return fmt.Errorf("unmap the record of patch library %s: %w", lr.path, err)
	}
	step("lib:unloaded")
	t.log.Debug("unloaded patch library", "path", lr.path, "id", lr.id)
	return nil
}

// dlcloseCopy unloads the mapped copy cm of lr by a remote dlclose of its
// handle, after a pause that proves no task is in it, and checks the
// mappings are gone.
func (t *Target) dlcloseCopy(ctx context.Context, lr libRecord, cm []elfsym.Mapping, timeout time.Duration) error {
	if lr.handle == 0 {
		return fmt.Errorf("patch library %s is mapped but its dlopen handle was never recorded: it stays loaded", lr.path)
	}
	region := consistency.Region{Name: "patch library " + filepath.Base(lr.path), Start: cm[0].Start, End: cm[0].End}
	for _, m := range cm {
		region.Start, region.End = min(region.Start, m.Start), max(region.End, m.End)
	}
	src, err := t.source()
	if err != nil {
		return err
	}
	if _, err := consistency.StopAndCheck(ctx, src, []consistency.Region{region}, consistency.Policy{Timeout: timeout}, t.syms.Symbolize,
		func(consistency.Snapshot) error {
			step("lib:unload-checked")
			return nil
		}); err != nil {
		return fmt.Errorf("patch library %s stays loaded: %w", lr.path, err)
	}
	// Nothing jumps there any more (its patch is reverted, or never
	// switched): no task can enter it after the check.
	fn, _, err := t.libcFunc("dlclose", "__libc_dlclose")
	if err != nil {
		return err
	}
	res, err := t.proc.Call("dlclose", fn.Addr, lr.handle)
	if err != nil {
		return fmt.Errorf("remote dlclose of patch library %s: %w", lr.path, err)
	}
	step("lib:dlclosed")
	if err := t.reloadSymbols(); err != nil {
		t.log.Warn("reload symbols", "err", err)
	}
	maps, err := elfsym.ReadMappings(t.pid)
	if err != nil {
		return err
	}
	if left := copyMappings(lr, maps); len(left) > 0 {
		return fmt.Errorf("patch library %s: dlclose returned %d but %d of its mappings stay (another dlopen of it holds it?): it stays loaded and recorded", lr.path, int32(res), len(left))
	}
	return nil
}

// unloadUnused unloads every patch library no patch uses (see libUsers),
// each within o's timeout. Those it could not unload stay recorded; the
// error says why (ErrBlocked: a task was in one).
func (t *Target) unloadUnused(ctx context.Context, o ApplyOptions) error {
	lrs, err := t.libRecords()
	if err != nil || len(lrs) == 0 {
		return err
	}
	recs, err := t.Status()
	if err != nil {
		return err
	}
	byRec, byHandle := libUsers(recs)
	var errs []error
	for _, lr := range lrs {
		if byRec[lr.addr] != "" || (lr.handle != 0 && byHandle[lr.handle] != "") {
			// In use: only a descriptor left open goes.
			if err := t.closeLibFds(lr); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if err := t.unloadLib(ctx, lr, o.withDefaults().Timeout); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// unloadAfterRevert unloads the library of a patch just reverted, unless
// another patch uses it. It returns why the library stays loaded ("" when
// unloaded, or there was none).
func (t *Target) unloadAfterRevert(ctx context.Context, ref *LibRef, o ApplyOptions) string {
	if ref == nil {
		return ""
	}
	lr, ok := t.libRecordAt(ref.Record)
	if !ok || lr.handle != ref.Handle {
		return "" // unloaded already (a tool killed before it finished)
	}
	recs, err := t.Status()
	if err != nil {
		return fmt.Sprintf("patch library %s stays loaded: %v", ref.Path, err)
	}
	byRec, byHandle := libUsers(recs)
	if id := cmp.Or(byRec[lr.addr], byHandle[lr.handle]); id != "" {
		return fmt.Sprintf("patch library %s stays loaded: patch %s uses it", ref.Path, id)
	}
	if err := t.unloadLib(ctx, lr, o.withDefaults().Timeout); err != nil {
		t.log.Warn("patch library stays loaded", "path", ref.Path, "err", err)
		return err.Error()
	}
	return ""
}
