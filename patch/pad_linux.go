//go:build linux

package patch

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/hotpatch-dev/hotpatch/internal/tracee"
)

// padSize is the size of the page donatePadding maps.
const padSize = 64 << 10

var padOnce sync.Once

// donatePadding maps, once, executable memory near this program's text
// for the system call stubs of its self-patch helper
// (tracee.DonatedPadMagic), where a branch back to a thread's pc reaches:
// on arm64 a stub must lie within ±128 MiB of the pc it returns to, and a
// Go binary's text may end with less padding than a stub takes. Elsewhere
// any padding will do and nothing is mapped. A failure only leaves the
// helper to the binary's own padding.
func donatePadding() {
	padOnce.Do(func() {
		if tracee.StubReach == 0 {
			return
		}
		lo, hi, ok := exeRange()
		if !ok {
			return
		}
		// After the program's last mapping, leaving a C heap (brk) room
		// to grow; or below a text mapped high (PIE).
		hints := []uint64{hi + 32<<20, hi + 8<<20, hi + 64<<20}
		if lo > 64<<20 {
			hints = append(hints, lo-32<<20)
		}
		for _, at := range hints {
			if mapPad(at&^(padSize-1)) == nil {
				return
			}
		}
	})
}

// exeRange returns the lowest and highest address of this program's
// executable file's mappings.
func exeRange() (lo, hi uint64, ok bool) {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return 0, 0, false
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return 0, 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 6 || fs[5] != exe {
			continue
		}
		var a, b uint64
		if _, err := fmt.Sscanf(fs[0], "%x-%x", &a, &b); err != nil {
			continue
		}
		if !ok || a < lo {
			lo = a
		}
		hi, ok = max(hi, b), true
	}
	return lo, hi, ok
}

// mapPad maps the donated page at exactly at: writable first, the magic
// written through /proc/self/mem, then read-only and executable.
func mapPad(at uint64) error {
	got, _, errno := unix.Syscall6(unix.SYS_MMAP, uintptr(at), padSize, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED_NOREPLACE, ^uintptr(0), 0)
	if errno != 0 {
		return errno
	}
	undo := func(err error) error {
		unix.Syscall(unix.SYS_MUNMAP, got, padSize, 0)
		return err
	}
	if uint64(got) != at { // a kernel without MAP_FIXED_NOREPLACE took it as a hint
		return undo(fmt.Errorf("mapped at %#x, not %#x", got, at))
	}
	mem, err := os.OpenFile("/proc/self/mem", os.O_RDWR, 0)
	if err != nil {
		return undo(err)
	}
	_, err = mem.WriteAt([]byte(tracee.DonatedPadMagic), int64(at))
	mem.Close()
	if err != nil {
		return undo(err)
	}
	if _, _, errno := unix.Syscall(unix.SYS_MPROTECT, got, padSize, unix.PROT_READ|unix.PROT_EXEC); errno != 0 {
		return undo(errno)
	}
	return nil
}
