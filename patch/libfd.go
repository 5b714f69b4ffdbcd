//go:build linux

package patch

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/hotpatch-dev/hotpatch/elfsym"
)

// A patch library reaches the target as a sealed memfd holding the very
// bytes whose pins were checked: the target never opens the library's path
// (which another mount namespace may resolve to another file, or which may
// be replaced after the check), and each load is a file of its own (so the
// loader never hands back an older library loaded from the same path).

// memfdSeals forbid any change of a patch library's memfd: of its bytes,
// its size, its seals.
const memfdSeals = unix.F_SEAL_WRITE | unix.F_SEAL_GROW | unix.F_SEAL_SHRINK | unix.F_SEAL_SEAL

// memfdNameMax is the longest name memfd_create takes (NAME_MAX minus
// "memfd:").
const memfdNameMax = 249

// errNotFresh is a memfd that was not the empty, unsealed file just
// created when we opened it.
var errNotFresh = errors.New("not the empty memfd just created (was the descriptor closed and reused by the target meanwhile?)")

// libCopy is a sealed memfd of the target holding a patch library.
type libCopy struct {
	fd       int    // the target's descriptor
	dev, ino uint64 // the file, to know its mappings
}

// procPath is the path under which the target's loader opens the copy:
// /proc/self/fd/N, with try "./" before N to give the loader a name it has
// not seen (it matches objects loaded earlier by name first).
func (c libCopy) procPath(try int) string {
	return "/proc/self/fd/" + strings.Repeat("./", try) + strconv.Itoa(c.fd)
}

// stageLib creates a memfd in the target, named by the name in the
// library's record at rec, which gets its descriptor before the tool can
// lose it (tracee.MemfdCreateMarked); writes data, the bytes of the
// library at path, into it through /proc/PID/fd/N and records its device
// and inode; seals it, and checks it holds data and nothing else. On
// failure the memfd is closed again (by the caller: see dlopen).
func (t *Target) stageLib(rec uint64, path string, data []byte) (libCopy, error) {
	fd, err := t.proc.MemfdCreateMarked(rec+libOffName, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING, rec+libOffFd)
	if err != nil {
		return libCopy{}, fmt.Errorf("patch library %s: create a memfd in the target: %w", path, err)
	}
	step("lib:memfd-created")
	link := fmt.Sprintf("/proc/%d/fd/%d", t.pid, fd)
	c := libCopy{fd: fd}
	if c.dev, c.ino, err = writeFresh(link, data); err != nil {
		return libCopy{}, fmt.Errorf("patch library %s: write it into the target's memfd %d: %w", path, fd, err)
	}
	if err := t.setLibWord(rec, libOffDev, c.dev); err != nil {
		return libCopy{}, err
	}
	if err := t.setLibWord(rec, libOffIno, c.ino); err != nil {
		return libCopy{}, err
	}
	if _, err := t.proc.Fcntl(fd, unix.F_ADD_SEALS, memfdSeals); err != nil {
		return libCopy{}, fmt.Errorf("patch library %s: seal the target's memfd %d: %w", path, fd, err)
	}
	step("lib:memfd-sealed")
	if err := checkCopy(link, c, data); err != nil {
		return libCopy{}, fmt.Errorf("patch library %s: the target's memfd %d: %w", path, fd, err)
	}
	return c, nil
}

// writeFresh writes data into the empty, unsealed file at link and returns
// the file's device and inode.
func writeFresh(link string, data []byte) (dev, ino uint64, err error) {
	f, err := os.OpenFile(link, os.O_WRONLY, 0)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return 0, 0, fmt.Errorf("fstat: %w", err)
	}
	if seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0); err != nil || seals != 0 || st.Size != 0 {
		return 0, 0, errNotFresh
	}
	if _, err := f.Write(data); err != nil {
		return 0, 0, err
	}
	return st.Dev, st.Ino, f.Close()
}

// checkCopy checks the file at link is c's, sealed, and holds exactly
// data. Sealed, it cannot change after.
func checkCopy(link string, c libCopy, data []byte) error {
	f, err := os.Open(link)
	if err != nil {
		return err
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("fstat: %w", err)
	}
	if st.Dev != c.dev || st.Ino != c.ino {
		return errNotFresh
	}
	seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
	if err != nil {
		return fmt.Errorf("read its seals: %w", err)
	}
	if seals != memfdSeals {
		return fmt.Errorf("sealed %#x, want %#x", seals, memfdSeals)
	}
	got, err := io.ReadAll(io.LimitReader(f, int64(len(data))+1))
	if err != nil {
		return fmt.Errorf("read it back: %w", err)
	}
	if !bytes.Equal(got, data) {
		return fmt.Errorf("read back %d bytes that differ from the %d checked", len(got), len(data))
	}
	return nil
}

// memfdFiles counts the memfds mapped in the target: an upper bound of the
// patch libraries loaded earlier whose names the loader may match.
func (t *Target) memfdFiles() int {
	ms, err := elfsym.ReadMappings(t.pid)
	if err != nil {
		return 0
	}
	inodes := map[uint64]bool{}
	for _, m := range ms {
		if strings.HasPrefix(m.Path, "/memfd:") {
			inodes[m.Inode] = true
		}
	}
	return len(inodes)
}

// mappedModule returns the module of c's code mapped in the target, and
// whether c is mapped at all.
func (t *Target) mappedModule(c libCopy) (*elfsym.Module, bool) {
	ms, err := elfsym.ReadMappings(t.pid)
	if err != nil {
		return nil, false
	}
	dev := fmt.Sprintf("%02x:%02x", unix.Major(c.dev), unix.Minor(c.dev))
	mapped := false
	for _, m := range ms {
		if m.Inode != c.ino || m.Dev != dev {
			continue
		}
		mapped = true
		if mod, ok := t.syms.ModuleAt(m.Start); ok && strings.Contains(m.Perms, "x") {
			return mod, true
		}
	}
	return nil, mapped
}
