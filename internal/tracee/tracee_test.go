package tracee

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"golang.org/x/sys/unix"

	"github.com/hotpatch-dev/hotpatch/internal/fixture"
)

func openT(t testing.TB, pid int) *Process {
	t.Helper()
	p, err := Open(pid)
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func TestOpenNoProcess(t *testing.T) {
	for _, pid := range []int{0, -1, 0x7ffffff0} {
		t.Run(fmt.Sprint(pid), func(t *testing.T) {
			_, err := Open(pid)
			require.ErrorIs(t, err, ErrNoProcess)
			assert.Contains(t, err.Error(), fmt.Sprint(pid))
		})
	}
}

func TestDiagnose(t *testing.T) {
	const pid = 42
	tests := []struct {
		name   string
		f      permFacts
		reason string // "" = allowed
		noProc bool
	}{
		{name: "same uid, no yama", f: permFacts{Yama: -1, UID: 1000, TargetUIDs: []int{1000, 1000, 1000, 1000}}},
		{name: "root", f: permFacts{Yama: 1, UID: 0, CapPtrace: true, TargetUIDs: []int{1000, 1000, 1000, 1000}}},
		{name: "gone", f: permFacts{Yama: -1, UID: 1000, ProbeErr: syscall.ENOENT}, noProc: true},
		{name: "gone esrch", f: permFacts{Yama: -1, UID: 1000, ProbeErr: syscall.ESRCH}, noProc: true},
		{name: "yama 3 even root", f: permFacts{Yama: 3, UID: 0, CapPtrace: true, TargetUIDs: []int{0, 0, 0, 0}}, reason: "ptrace_scope=3"},
		{name: "yama 2", f: permFacts{Yama: 2, UID: 1000, TargetUIDs: []int{1000, 1000, 1000, 1000}}, reason: "ptrace_scope=2"},
		{name: "yama 2 with cap", f: permFacts{Yama: 2, UID: 1000, CapPtrace: true, TargetUIDs: []int{1000, 1000, 1000, 1000}}},
		{name: "yama 1 not descendant", f: permFacts{Yama: 1, UID: 1000, TargetUIDs: []int{1000, 1000, 1000, 1000}, ProbeErr: syscall.EACCES}, reason: "ptrace_scope=1"},
		{name: "yama 1 descendant", f: permFacts{Yama: 1, UID: 1000, Descendant: true, TargetUIDs: []int{1000, 1000, 1000, 1000}}},
		{name: "yama 1 PR_SET_PTRACER (probe ok)", f: permFacts{Yama: 1, UID: 1000, TargetUIDs: []int{1000, 1000, 1000, 1000}}},
		{name: "other uid", f: permFacts{Yama: -1, UID: 1000, TargetUIDs: []int{1001, 1001, 1001, 1001}, ProbeErr: syscall.EACCES}, reason: "owned by uid 1001, we are uid 1000"},
		{name: "setuid saved uid", f: permFacts{Yama: 0, UID: 1000, TargetUIDs: []int{1000, 1000, 0, 1000}, ProbeErr: syscall.EACCES}, reason: "owned by uid 0, we are uid 1000"},
		{name: "other uid yama 1", f: permFacts{Yama: 1, UID: 1000, TargetUIDs: []int{1001, 1001, 1001, 1001}, ProbeErr: syscall.EACCES}, reason: "owned by uid 1001, we are uid 1000"},
		{name: "not dumpable", f: permFacts{Yama: 0, UID: 1000, TargetUIDs: []int{1000, 1000, 1000, 1000}, ProbeErr: syscall.EACCES}, reason: "not dumpable"},
		{name: "not dumpable eperm", f: permFacts{Yama: -1, UID: 1000, TargetUIDs: []int{1000, 1000, 1000, 1000}, ProbeErr: syscall.EPERM}, reason: "not dumpable"},
		{name: "yama 1 descendant not dumpable", f: permFacts{Yama: 1, UID: 1000, Descendant: true, TargetUIDs: []int{1000, 1000, 1000, 1000}, ProbeErr: syscall.EACCES}, reason: "not dumpable"},
		{name: "root refused (LSM)", f: permFacts{Yama: -1, UID: 0, CapPtrace: true, TargetUIDs: []int{0, 0, 0, 0}, ProbeErr: syscall.EACCES}, reason: syscall.EACCES.Error()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.f.Pid = pid
			err := diagnose(tc.f)
			switch {
			case tc.noProc:
				require.ErrorIs(t, err, ErrNoProcess)
			case tc.reason == "":
				require.NoError(t, err)
			default:
				require.ErrorIs(t, err, ErrPermission)
				var pe *PermissionError
				require.ErrorAs(t, err, &pe)
				assert.Equal(t, pid, pe.Pid)
				assert.Equal(t, tc.reason, pe.Reason)
				assert.NotEmpty(t, pe.Hint)
				if tc.f.ProbeErr != nil {
					assert.ErrorIs(t, err, tc.f.ProbeErr, "the kernel's refusal is kept")
				}
			}
		})
	}
	// Another errno is passed through, not blamed on permissions.
	err := diagnose(permFacts{Pid: pid, Yama: -1, ProbeErr: syscall.EIO})
	require.ErrorIs(t, err, syscall.EIO)
	require.NotErrorIs(t, err, ErrPermission)
}

// TestOpenOtherUID opens a target running as another uid: as root (with
// CAP_SYS_PTRACE) we may trace it. The refusal cases are in TestDiagnose.
func TestOpenOtherUID(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root")
	}
	dir := t.TempDir()
	// Let uid 65534 reach the binary.
	require.NoError(t, os.Chmod(dir, 0o755))
	require.NoError(t, os.Chmod(filepath.Dir(dir), 0o755))
	bin := filepath.Join(dir, "tracee")
	b, err := os.ReadFile(fixture.BuildC(t, "tracee", "-O2"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(bin, b, 0o755))
	cmd := exec.Command(bin, "1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	tg := startTarget(t, cmd)
	p := openT(t, tg.pid)
	require.NoError(t, p.Stop())
	requireAllStopped(t, p)
	require.NoError(t, p.Resume())
	tg.waitBeats(tg.mark(), fixtureBeats(1)...)
}

func TestOpenThreadID(t *testing.T) {
	tg := startFixture(t, 1)
	for tid := range threadStates(t, tg.pid) {
		if tid != tg.pid {
			_, err := Open(tid)
			require.Error(t, err)
			assert.Contains(t, err.Error(), "thread of process")
			return
		}
	}
}

func TestStopResume(t *testing.T) {
	tests := []struct {
		name  string
		start func(testing.TB) *target
		beats []string
		iters int
	}{
		{"C", func(tb testing.TB) *target { return startFixture(tb, 3) }, fixtureBeats(3), 200},
		{"Go", startGoTarget, []string{"main", "spin", "sleeper0"}, 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tg := tc.start(t)
			p := openT(t, tg.pid)
			assert.False(t, p.Stopped())
			assert.Empty(t, p.Threads())

			require.NoError(t, p.Stop())
			assert.True(t, p.Stopped())
			requireAllStopped(t, p)
			require.NoError(t, p.Stop(), "Stop when stopped is a no-op")
			require.NoError(t, p.Resume())
			assert.False(t, p.Stopped())
			assert.Empty(t, p.Threads())
			tg.waitBeats(tg.mark(), tc.beats...)

			for i := 0; i < tc.iters; i++ {
				require.NoError(t, p.Stop(), "iteration %d", i)
				if i%20 == 0 {
					requireAllStopped(t, p)
				}
				require.NoError(t, p.Resume(), "iteration %d", i)
			}
			m := tg.mark()
			tg.waitBeats(m, tc.beats...)
			for tid, st := range threadStates(t, tg.pid) {
				assert.NotEqual(t, "t", string(st), "thread %d still traced", tid)
			}
			assert.Empty(t, tg.errs())
		})
	}
}

// TestStopGroupStopped: a SIGSTOP'd process can be stopped and is left in
// its group-stop by Resume.
func TestStopGroupStopped(t *testing.T) {
	tg := startFixture(t, 2)
	require.NoError(t, syscall.Kill(tg.pid, syscall.SIGSTOP))
	waitStates(t, tg.pid, 'T')
	p := openT(t, tg.pid)
	require.NoError(t, p.Stop())
	requireAllStopped(t, p)
	_, err := p.Syscall("getpid", sysGetpid)
	require.NoError(t, err)
	require.NoError(t, p.Resume())
	waitStates(t, tg.pid, 'T')
	m := tg.mark()
	// Give a wrongly woken target the chance to print (not a timing
	// assertion: a correct target prints nothing whatever the delay).
	time.Sleep(200 * time.Millisecond)
	assert.Empty(t, tg.linesFrom(m), "the group-stopped target ran after Resume")
	require.NoError(t, syscall.Kill(tg.pid, syscall.SIGCONT))
	tg.waitBeats(m, fixtureBeats(2)...)
	assert.Empty(t, tg.errs())
}

// waitStates waits until every thread of pid is in state st.
func waitStates(t *testing.T, pid int, st byte) {
	t.Helper()
	deadline := time.Now().Add(safety)
	for {
		all := true
		for _, s := range threadStates(t, pid) {
			if s != st {
				all = false
			}
		}
		if all {
			return
		}
		require.True(t, time.Now().Before(deadline), "safety timeout waiting for state %c: %v", st, threadStates(t, pid))
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSyscallGetpid(t *testing.T) {
	tg := startFixture(t, 2)
	p := openT(t, tg.pid)
	for _, stopped := range []bool{false, true, false} {
		t.Run(fmt.Sprintf("stopped=%v", stopped), func(t *testing.T) {
			if stopped {
				require.NoError(t, p.Stop())
				defer func() { require.NoError(t, p.Resume()) }()
			}
			for i := 0; i < 20; i++ {
				got, err := p.Syscall("getpid", sysGetpid)
				require.NoError(t, err)
				require.Equal(t, uint64(tg.pid), got)
			}
			assert.Equal(t, stopped, p.Stopped())
			if !stopped {
				for tid, st := range threadStates(t, tg.pid) {
					assert.NotEqual(t, "t", string(st), "thread %d left traced", tid)
				}
			}
		})
	}
	tg.waitBeats(tg.mark(), fixtureBeats(2)...)
	assert.Empty(t, tg.errs())
}

func TestSyscallErrors(t *testing.T) {
	tg := startFixture(t, 1)
	p := openT(t, tg.pid)
	err := p.Munmap(0x1001, 4096) // unaligned
	var se *SyscallError
	require.ErrorAs(t, err, &se)
	assert.Equal(t, "munmap", se.Name)
	assert.Equal(t, uint64(syscall.EINVAL), se.Errno)
	assert.ErrorIs(t, err, syscall.EINVAL)
	require.Error(t, p.Mprotect(0x1001, 4096, ProtRead))
	_, err = p.Syscall("x", 1, 1, 2, 3, 4, 5, 6, 7)
	require.Error(t, err)
	_, err = p.GetRegs(tg.pid)
	require.ErrorIs(t, err, ErrNotStopped)
	tg.waitBeats(tg.mark(), fixtureBeats(1)...)
}

// A memfd created in the target, written and sealed from here, then
// closed: its name shows in the target's descriptors, the seals hold, and
// the descriptor is gone after CloseFd.
func TestMemfd(t *testing.T) {
	tg := startFixture(t, 1)
	p := openT(t, tg.pid)
	name, err := p.Mmap(0, 4096, ProtRead|ProtWrite, MapPrivate|MapAnonymous)
	require.NoError(t, err)
	defer func() { require.NoError(t, p.Munmap(name, 4096)) }()
	require.NoError(t, p.WriteMem(name, []byte("hp-test.so\x00")))
	fd, err := p.MemfdCreate(name, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	require.NoError(t, err)
	link := fmt.Sprintf("/proc/%d/fd/%d", tg.pid, fd)
	l, err := os.Readlink(link)
	require.NoError(t, err)
	require.Equal(t, "/memfd:hp-test.so (deleted)", l)
	require.NoError(t, os.WriteFile(link, []byte("hello"), 0))
	seals := uint64(unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE)
	_, err = p.Fcntl(fd, unix.F_ADD_SEALS, seals)
	require.NoError(t, err)
	got, err := p.Fcntl(fd, unix.F_GET_SEALS, 0)
	require.NoError(t, err)
	require.Equal(t, seals, got)
	require.Error(t, os.WriteFile(link, []byte("other"), 0), "sealed")
	b, err := os.ReadFile(link)
	require.NoError(t, err)
	require.Equal(t, "hello", string(b))
	require.NoError(t, p.CloseFd(fd))
	_, err = os.Lstat(link)
	require.ErrorIs(t, err, os.ErrNotExist)
	require.ErrorIs(t, p.CloseFd(fd), syscall.EBADF)
	tg.waitBeats(tg.mark(), fixtureBeats(1)...)
	assert.Empty(t, tg.errs())
}

// MemfdCreateMarked writes the descriptor plus one at the mark before it
// returns, and puts its stub back.
func TestMemfdMarked(t *testing.T) {
	tg := startFixture(t, 1)
	p := openT(t, tg.pid)
	page, err := p.Mmap(0, 4096, ProtRead|ProtWrite, MapPrivate|MapAnonymous)
	require.NoError(t, err)
	defer func() { require.NoError(t, p.Munmap(page, 4096)) }()
	require.NoError(t, p.WriteMem(page, []byte("hp-marked.so\x00")))
	fd, err := p.MemfdCreateMarked(page, unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING, page+64)
	require.NoError(t, err)
	b := make([]byte, 8)
	_, err = p.ReadAt(b, int64(page+64))
	require.NoError(t, err)
	require.Equal(t, uint64(fd+1), binaryLE(b), "the descriptor is recorded in the target")
	l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", tg.pid, fd))
	require.NoError(t, err)
	require.Equal(t, "/memfd:hp-marked.so (deleted)", l)
	stubs, _, err := p.Leftovers()
	require.NoError(t, err)
	require.Empty(t, stubs, "the stub is put back")
	require.NoError(t, p.CloseFd(fd))
	tg.waitBeats(tg.mark(), fixtureBeats(1)...)
	assert.Empty(t, tg.errs())
}

func TestMemory(t *testing.T) {
	tg := startFixture(t, 1)
	p := openT(t, tg.pid)
	for _, stopped := range []bool{false, true} {
		t.Run(fmt.Sprintf("stopped=%v", stopped), func(t *testing.T) {
			if stopped {
				require.NoError(t, p.Stop())
				defer func() { require.NoError(t, p.Resume()) }()
			}
			const size = 3 * 4096
			// Read-write anonymous memory.
			addr, err := p.Mmap(0, size, ProtRead|ProtWrite, MapPrivate|MapAnonymous)
			require.NoError(t, err)
			require.NotZero(t, addr)
			data := bytes.Repeat([]byte("hotpatch"), size/8)
			require.NoError(t, p.WriteMem(addr, data))
			got := make([]byte, size)
			n, err := p.ReadAt(got, int64(addr))
			require.NoError(t, err)
			require.Equal(t, size, n)
			require.Equal(t, data, got)

			// PROT_NONE in the middle: process_vm_readv stops there,
			// /proc/PID/mem reads on.
			require.NoError(t, p.Mprotect(addr+4096, 4096, 0))
			clear(got)
			n, err = p.ReadAt(got, int64(addr))
			require.NoError(t, err)
			require.Equal(t, size, n)
			require.Equal(t, data, got)
			require.NoError(t, p.Munmap(addr, size))

			// Unmapped: error naming the address.
			n, err = p.ReadAt(got[:16], int64(addr))
			require.Error(t, err)
			assert.Less(t, n, 16)
			assert.Contains(t, err.Error(), fmt.Sprintf("%#x", addr))
			require.Error(t, p.WriteMem(addr, got[:16]))

			// Read+execute memory written through /proc/PID/mem.
			addr, err = p.Mmap(0, 4096, ProtRead|ProtExec, MapPrivate|MapAnonymous)
			require.NoError(t, err)
			code := []byte{0x90, 0x90, 0xc3, 0xcc}
			require.NoError(t, p.WriteMem(addr+100, code))
			n, err = p.ReadAt(got[:4], int64(addr+100))
			require.NoError(t, err)
			require.Equal(t, 4, n)
			require.Equal(t, code, got[:4])
			require.NoError(t, p.Munmap(addr, 4096))

			// The r-x text of the fixture itself: write its bytes back.
			text := textMapping(t, tg.pid)
			orig := make([]byte, 64)
			_, err = p.ReadAt(orig, int64(text))
			require.NoError(t, err)
			require.NoError(t, p.WriteMem(text, orig))
			flipped := make([]byte, len(orig))
			for i := range orig {
				flipped[i] = ^orig[i]
			}
			// Write something else and put it back, only while stopped
			// (the text may run).
			if stopped {
				require.NoError(t, p.WriteMem(text, flipped))
				_, err = p.ReadAt(got[:64], int64(text))
				require.NoError(t, err)
				require.Equal(t, flipped, got[:64])
				require.NoError(t, p.WriteMem(text, orig))
			}
			_, err = p.ReadAt(got[:64], int64(text))
			require.NoError(t, err)
			require.Equal(t, orig, got[:64])
		})
	}
	tg.waitBeats(tg.mark(), fixtureBeats(1)...)
	assert.Empty(t, tg.errs())
}

// textMapping returns the start of the first r-x mapping of pid's executable.
func textMapping(t *testing.T, pid int) uint64 {
	t.Helper()
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	require.NoError(t, err)
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	require.NoError(t, err)
	for _, l := range strings.Split(string(maps), "\n") {
		f := strings.Fields(l)
		if len(f) >= 6 && f[1] == "r-xp" && f[5] == exe {
			var lo, hi uint64
			_, err := fmt.Sscanf(f[0], "%x-%x", &lo, &hi)
			require.NoError(t, err)
			return lo
		}
	}
	t.Fatalf("no text mapping of %s", exe)
	return 0
}

// TestSyscallRestartsBlockedThreads runs remote system calls on every thread
// of the fixture, most of them blocked in nanosleep, read or sigsuspend; each
// must restart its call as if nothing happened.
func TestSyscallRestartsBlockedThreads(t *testing.T) {
	const sleepers = 3
	tg := startFixture(t, sleepers)
	p := openT(t, tg.pid)
	for round := 0; round < 20; round++ {
		require.NoError(t, p.Stop())
		for _, tid := range p.Threads() {
			before, err := p.GetRegs(tid)
			require.NoError(t, err)
			got, err := p.syscallOn(tid, "getpid", sysGetpid)
			require.NoError(t, err)
			require.Equal(t, uint64(tg.pid), got)
			after, err := p.GetRegs(tid)
			require.NoError(t, err)
			require.Equal(t, before, after, "registers of thread %d not restored", tid)
		}
		require.NoError(t, p.Resume())
		m := tg.mark()
		line := fmt.Sprintf("round %d", round)
		_, err := fmt.Fprintln(tg.Stdin, line)
		require.NoError(t, err)
		tg.waitLine(m, func(s string) bool { return s == "read "+line })
		tg.waitBeats(m, fixtureBeats(sleepers)...)
	}
	assert.Empty(t, tg.errs())
}

// TestSignalDuringPause: a SIGUSR1 sent while the process is stopped is
// delivered exactly once after Resume, also when the thread that takes it
// ran remote system calls meanwhile.
func TestSignalDuringPause(t *testing.T) {
	for _, withSyscalls := range []bool{false, true} {
		t.Run(fmt.Sprintf("syscalls=%v", withSyscalls), func(t *testing.T) {
			tg := startFixture(t, 1)
			p := openT(t, tg.pid)
			for round := 1; round <= 5; round++ {
				m := tg.mark()
				require.NoError(t, p.Stop())
				require.NoError(t, syscall.Kill(tg.pid, syscall.SIGUSR1))
				if withSyscalls {
					for i := 0; i < 3; i++ {
						for _, tid := range p.Threads() {
							_, err := p.syscallOn(tid, "getpid", sysGetpid)
							require.NoError(t, err)
						}
					}
				}
				require.NoError(t, p.Resume())
				got, _ := tg.waitLine(m, func(s string) bool { return strings.HasPrefix(s, "usr1 ") })
				require.Equal(t, fmt.Sprintf("usr1 %d", round), got)
			}
			assert.Empty(t, tg.errs())
		})
	}
}

// TestMemoryAfterExit: once the target has exited, reads (ReadAt, ReadMany)
// and writes (WriteMem) fail with an error matching ErrExited (and so
// ErrNoProcess); a read of an unmapped address of a live target fails with
// the kernel's cause, not ErrExited.
func TestMemoryAfterExit(t *testing.T) {
	tg := startFixture(t, 1)
	p := openT(t, tg.pid)
	text := textMapping(t, tg.pid)
	buf := make([]byte, 64)
	_, err := p.ReadAt(buf, int64(text))
	require.NoError(t, err)
	_, err = p.ReadAt(buf, 0x1000)
	require.ErrorIs(t, err, syscall.EIO, "an unmapped page: /proc/PID/mem's EIO")
	require.NotErrorIs(t, err, ErrExited)

	require.NoError(t, syscall.Kill(tg.pid, syscall.SIGKILL))
	tg.Wait()
	_, err = p.ReadAt(buf, int64(text))
	require.ErrorIs(t, err, ErrExited)
	require.ErrorIs(t, err, ErrNoProcess)
	require.ErrorContains(t, err, fmt.Sprintf("%#x", text))
	require.ErrorIs(t, p.ReadMany([]uint64{text, text + 4096}, [][]byte{buf, buf}), ErrExited)
	_, err = p.ReadPages([]uint64{text}, [][]byte{buf})
	require.ErrorIs(t, err, ErrExited)
	require.ErrorIs(t, p.WriteMem(text, buf[:1]), ErrExited)
}

// TestReadPages: every region the kernel can read is read, whole and
// straight into its buffer, whatever regions it cannot read come before,
// between or after it; those are reported, not an error.
func TestReadPages(t *testing.T) {
	tg := startFixture(t, 1)
	p := openT(t, tg.pid)
	text := textMapping(t, tg.pid)
	want := func(addr uint64, n int) []byte {
		b := make([]byte, n)
		_, err := p.ReadAt(b, int64(addr))
		require.NoError(t, err)
		return b
	}
	const hole = 0x1000 // never mapped (mmap_min_addr)
	for _, c := range []struct {
		name  string
		addrs []uint64
		sizes []int
	}{
		{"all readable", []uint64{text, text + 4096, text + 100}, []int{4096, 4096, 8}},
		{"hole first", []uint64{hole, text, text + 4096}, []int{4096, 4096, 16}},
		{"hole between", []uint64{text, hole, hole + 4096, text + 4096}, []int{4096, 4096, 4096, 4096}},
		{"hole last", []uint64{text, hole}, []int{4096, 4096}},
		{"only holes", []uint64{hole, hole + 8192}, []int{4096, 4096}},
		{"across into a hole", []uint64{text, hole - 8}, []int{4096, 16}},
		{"empty buffer", []uint64{text, hole, text}, []int{4096, 0, 64}},
	} {
		t.Run(c.name, func(t *testing.T) {
			bufs := make([][]byte, len(c.addrs))
			for i, n := range c.sizes {
				bufs[i] = make([]byte, n)
			}
			ok, err := p.ReadPages(c.addrs, bufs)
			require.NoError(t, err)
			require.Len(t, ok, len(c.addrs))
			for i, a := range c.addrs {
				readable := a >= text && c.sizes[i] > 0 || c.sizes[i] == 0
				require.Equal(t, readable, ok[i], "region %d at %#x", i, a)
				if readable {
					require.Equal(t, want(a, c.sizes[i]), bufs[i], "region %d at %#x", i, a)
				}
			}
		})
	}
	// More regions than one process_vm_readv takes (1024), a hole among them.
	var addrs []uint64
	var bufs [][]byte
	for i := 0; i < 2500; i++ {
		a := text + uint64(i%3)*64
		if i == 1500 {
			a = hole
		}
		addrs, bufs = append(addrs, a), append(bufs, make([]byte, 64))
	}
	ok, err := p.ReadPages(addrs, bufs)
	require.NoError(t, err)
	for i, a := range addrs {
		require.Equal(t, i != 1500, ok[i], "region %d", i)
		if ok[i] {
			require.Equal(t, want(a, 64), bufs[i], "region %d", i)
		}
	}
}

// TestKillWhileStopped: the target dies while stopped; Resume returns an
// ErrExited error without hanging, and so do later calls.
func TestKillWhileStopped(t *testing.T) {
	tg := startFixture(t, 2)
	p := openT(t, tg.pid)
	require.NoError(t, p.Stop())
	require.NoError(t, syscall.Kill(tg.pid, syscall.SIGKILL))
	err := p.Resume()
	if err != nil {
		require.ErrorIs(t, err, ErrExited)
	}
	tg.Wait() // Wait may see ECHILD: the tracer reaped the leader
	err = p.Stop()
	require.ErrorIs(t, err, ErrNoProcess)
	_, err = p.Syscall("getpid", sysGetpid)
	require.ErrorIs(t, err, ErrNoProcess)
	require.NoError(t, p.Close())
	require.ErrorIs(t, p.Stop(), ErrClosed)
}

// TestKillDuringSyscall: the target dies between remote system calls.
func TestExitWhileOpen(t *testing.T) {
	tg := startFixture(t, 1)
	p := openT(t, tg.pid)
	require.NoError(t, syscall.Kill(tg.pid, syscall.SIGKILL))
	tg.Wait()
	require.ErrorIs(t, p.Stop(), ErrNoProcess)
	_, err := p.Syscall("getpid", sysGetpid)
	require.ErrorIs(t, err, ErrNoProcess)
}

// TestTracerDeath: a tracer process that dies (SIGKILL) while the target is
// stopped leaves a running target behind.
func TestTracerDeath(t *testing.T) {
	tests := []struct {
		name  string
		start func(testing.TB) *target
		beats []string
	}{
		{"C", func(tb testing.TB) *target { return startFixture(tb, 2) }, fixtureBeats(2)},
		{"Go", startGoTarget, []string{"main", "spin", "sleeper0"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tg := tc.start(t)
			for i := 0; i < 3; i++ {
				cmd := exec.Command(os.Args[0], "-test.run=^$")
				cmd.Env = append(os.Environ(), helperEnv+"=tracer", fmt.Sprintf("TRACEE_TEST_PID=%d", tg.pid))
				startTarget(t, cmd) // returns once the tracer says "ready stopped N"
				for tid, st := range threadStates(t, tg.pid) {
					if st != 'Z' {
						require.Equal(t, "t", string(st), "thread %d", tid)
					}
				}
				m := tg.mark()
				require.NoError(t, cmd.Process.Kill())
				_ = cmd.Wait()
				tg.waitBeats(m, tc.beats...)
			}
			for tid, st := range threadStates(t, tg.pid) {
				assert.NotEqual(t, "t", string(st), "thread %d still traced", tid)
			}
			assert.Empty(t, tg.errs())
		})
	}
}

func TestCloseResumes(t *testing.T) {
	tg := startFixture(t, 1)
	p, err := Open(tg.pid)
	require.NoError(t, err)
	require.NoError(t, p.Stop())
	require.NoError(t, p.Close())
	require.NoError(t, p.Close())
	require.ErrorIs(t, p.Resume(), ErrClosed)
	tg.waitBeats(tg.mark(), fixtureBeats(1)...)
	_, err = p.ReadAt(make([]byte, 1), 0x1000)
	require.Error(t, err)
	_ = errors.New
}

func BenchmarkStopResume(b *testing.B) {
	tg := startFixture(b, 4) // leader, reader, spinner, signal thread, 4 sleepers
	p := openT(b, tg.pid)
	require.NoError(b, p.Stop())
	require.Len(b, p.Threads(), 8)
	require.NoError(b, p.Resume())
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := p.Stop(); err != nil {
			b.Fatal(err)
		}
		if err := p.Resume(); err != nil {
			b.Fatal(err)
		}
	}
}

// getg (onLoop's test) gives one value in one goroutine, every time, and
// another in another goroutine alive at the same time.
func TestGetg(t *testing.T) {
	mine := getg()
	require.NotZero(t, mine)
	require.Equal(t, mine, getg())
	other, release := make(chan uintptr), make(chan struct{})
	go func() {
		runtime.LockOSThread() // another thread too
		other <- getg()
		<-release
	}()
	require.NotEqual(t, mine, <-other)
	close(release)
	require.Equal(t, mine, getg())
}

// Exclusive runs a whole pause on the ptrace goroutine: every call inside
// it (stop, registers, a remote mmap, writes, a read through a PROT_NONE
// page, resume) runs at once instead of waiting for the goroutine it runs
// on; another goroutine's read of a readable page goes on meanwhile, one of
// the PROT_NONE page fails instead of waiting for it, and another
// goroutine's Stopped waits for the end. A panic in f comes back to the
// caller, and the Process stays usable. Paused is Stop, f and Resume in
// one of them.
func TestExclusive(t *testing.T) {
	tg := startFixture(t, 2)
	p := openT(t, tg.pid)
	const size = 2 * 4096
	data := bytes.Repeat([]byte("exclusive"), size/9+1)[:size]
	var (
		threads, regs int
		inside        []byte
		otherRead     error
		otherNone     error
		waited        = errors.New("waited for the ptrace goroutine")
		stoppedEarly  bool
		stoppedLate   = make(chan bool, 1)
	)
	done := make(chan error, 1)
	go func() {
		done <- p.Exclusive(func() error {
			if err := p.Stop(); err != nil {
				return err
			}
			all, err := p.AllRegs()
			if err != nil {
				return err
			}
			threads, regs = len(p.Threads()), len(all)
			addr, err := p.Mmap(0, size, ProtRead|ProtWrite, MapPrivate|MapAnonymous)
			if err != nil {
				return err
			}
			if err := p.WriteMem(addr, data); err != nil {
				return err
			}
			if err := p.Mprotect(addr+4096, 4096, 0); err != nil {
				return err
			}
			inside = make([]byte, size)
			if _, err := p.ReadAt(inside, int64(addr)); err != nil {
				return err
			}
			read := func(at uint64) error {
				ch := make(chan error, 1)
				go func() {
					_, err := p.ReadAt(make([]byte, 64), int64(at))
					ch <- err
				}()
				select {
				case err := <-ch:
					return err
				case <-time.After(10 * time.Second):
					return waited
				}
			}
			otherRead, otherNone = read(addr), read(addr+4096)
			go func() { stoppedLate <- p.Stopped() }()
			select {
			case <-stoppedLate:
				stoppedEarly = true
			case <-time.After(100 * time.Millisecond):
			}
			if err := p.Munmap(addr, size); err != nil {
				return err
			}
			return p.Resume()
		})
	}()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(60 * time.Second):
		t.Fatal("Exclusive did not return: a call inside it waited for itself")
	}
	require.Positive(t, threads)
	require.Equal(t, threads, regs, "registers of every thread")
	require.Equal(t, data, inside, "read inside, through the PROT_NONE page too")
	require.NoError(t, otherRead)
	require.Error(t, otherNone, "another goroutine's read of a PROT_NONE page has no fallback meanwhile")
	require.NotErrorIs(t, otherNone, waited)
	require.False(t, stoppedEarly, "another goroutine's call ran inside Exclusive")
	require.False(t, <-stoppedLate, "Stopped after Exclusive resumed")

	require.PanicsWithValue(t, "boom", func() {
		_ = p.Exclusive(func() error {
			if err := p.Stop(); err != nil {
				return err // no require here: FailNow would end the ptrace goroutine
			}
			panic("boom")
		})
	})
	require.True(t, p.Stopped(), "the Process is usable after the panic")
	require.NoError(t, p.Resume())
	tg.waitBeats(tg.mark(), fixtureBeats(2)...)

	// Paused: stopped for f, resumed after it, f's error returned.
	boom := errors.New("boom")
	var stoppedInside bool
	pause, err := p.Paused(func() error {
		stoppedInside = p.Stopped()
		return boom
	})
	require.ErrorIs(t, err, boom)
	require.True(t, stoppedInside, "stopped inside Paused")
	require.Positive(t, pause)
	require.False(t, p.Stopped(), "resumed after Paused")
	tg.waitBeats(tg.mark(), fixtureBeats(2)...)
}
