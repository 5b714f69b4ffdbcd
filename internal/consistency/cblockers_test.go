package consistency_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/internal/consistency"
	"github.com/hotpatch-dev/hotpatch/internal/fixture"
	"github.com/hotpatch-dev/hotpatch/internal/tracee"
	"github.com/hotpatch-dev/hotpatch/internal/unwind"
)

// comm returns a thread's name.
func comm(t *testing.T, pid, tid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/comm", pid, tid))
	require.NoError(t, err)
	return strings.TrimSpace(string(b))
}

// A C program built -O2 -fomit-frame-pointer with threads blocked in read,
// nanosleep, pthread_cond_wait and epoll_wait, inside and outside the
// function blocking(), and one thread in a signal handler: every stack
// unwinds by CFI alone to the thread's start routine, through
// __restore_rt for the signal frame, and the activeness check names
// exactly the threads inside blocking().
func TestCBlockers(t *testing.T) {
	p := fixture.Start(t, fixture.BuildC(t, "cblockers", "-O2", "-fomit-frame-pointer"))
	p.Expect(t, regexp.MustCompile(`^ready$`), 10*time.Second)
	time.Sleep(100 * time.Millisecond)
	tab, snap := snapshot(t, p.Pid)
	require.Len(t, snap.Tasks, 10, "main, 4 in, 4 out, 1 signal")

	libc := `(libc\.so\.6\+0x[0-9a-f]+|[a-z_0-9]+)`
	calls := map[string]string{
		"read":  `^(__)?read`,
		"sleep": `^(__)?(clock_)?nanosleep`,
		"cond":  `(^| < )pthread_cond_wait`,
		"epoll": `^(__)?epoll_p?wait`, // arm64 glibc implements epoll_wait with epoll_pwait
	}
	want := map[string]string{"main": `^(__)?pause.* < main < .*__libc_start_main.* < _start$`}
	for k, call := range calls {
		want["in-"+k] = call + `.* < block < blocking < in_thread < ` + threadRoot
		want["out-"+k] = call + `.* < block < out_thread < ` + threadRoot
	}
	// The handler's frames, the signal trampoline (a libc offset: libc's
	// __restore_rt has no .dynsym name), then the interrupted loop.
	// The signal trampoline: libc's __restore_rt on x86-64, the vDSO's
	// __kernel_rt_sigreturn on arm64.
	want["in-signal"] = `nanosleep.* < handler_sleep < on_usr2 < (` + libc + `|\[vdso\]\+0x[0-9a-f]+) < spin < sig_thread < ` + threadRoot

	byName := map[string]int{}
	for _, task := range snap.Tasks {
		name := "main"
		if task.ID != p.Pid {
			name = comm(t, p.Pid, task.ID)
		}
		byName[name] = task.ID
		got := strings.Join(names(tab, task), " < ")
		require.True(t, task.Stack.Reliable, "%s: %s: %s", name, got, task.Stack.Reason)
		re, ok := want[name]
		require.True(t, ok, "unexpected thread %q", name)
		require.Regexp(t, regexp.MustCompile(re), got, name)
		if name == "in-signal" {
			var sig int
			for _, f := range task.Stack.Frames {
				if f.Signal {
					sig++
				}
			}
			require.Equal(t, 1, sig, "one signal frame")
		}
	}
	require.Len(t, byName, 10)

	blockers := func(fn string) []string {
		sym, err := tab.Lookup(fn)
		require.NoError(t, err)
		var out []string
		for _, b := range consistency.Check(snap, []consistency.Region{{Name: fn, Start: sym.Addr, End: sym.Addr + sym.Size}}) {
			require.Equal(t, fn, b.Func, "only %s blocks, no unreliable stack: %s", fn, b.Reason)
			out = append(out, comm(t, p.Pid, b.Task.ID))
		}
		sort.Strings(out)
		return out
	}
	require.Equal(t, []string{"in-cond", "in-epoll", "in-read", "in-sleep"}, blockers("blocking"))
	require.Equal(t, []string{"in-signal"}, blockers("spin"), "the interrupted function blocks")
	require.Equal(t, []string{"in-signal"}, blockers("handler_sleep"))
	require.Equal(t, []string{"in-cond", "in-epoll", "in-read", "in-sleep", "out-cond", "out-epoll", "out-read", "out-sleep"}, blockers("block"))
	require.Len(t, blockers("out_thread"), 4)
}

// A thread caught inside the vDSO (clock_gettime) unwinds through the
// vDSO's CFI, read from the target's memory, to its start routine.
func TestUnwindThroughVDSO(t *testing.T) {
	p := fixture.Start(t, fixture.BuildC(t, "cblockers", "-O2", "-fomit-frame-pointer"), "vdso")
	p.Expect(t, regexp.MustCompile(`^ready$`), 10*time.Second)
	pr, err := tracee.Open(p.Pid)
	require.NoError(t, err)
	defer pr.Close()
	tab, err := elfsym.Load(p.Pid, pr)
	require.NoError(t, err)
	u := unwind.ForTable(tab)
	var vdso *elfsym.Module
	for _, m := range tab.Modules {
		if m.Path == "[vdso]" {
			vdso = m
		}
	}
	require.NotNil(t, vdso, "the vDSO is loaded from memory")
	seen := 0
	for i := 0; i < 200 && seen < 3; i++ {
		require.NoError(t, pr.Stop())
		snap, err := consistency.Source{Proc: pr, Unwinder: u}.Take()
		require.NoError(t, pr.Resume())
		require.NoError(t, err)
		for _, task := range snap.Tasks {
			if task.ID == p.Pid || comm(t, p.Pid, task.ID) != "in-vdso" {
				continue
			}
			if m, ok := tab.ModuleAt(task.Stack.Frames[0].PC); !ok || m != vdso {
				continue
			}
			seen++
			got := strings.Join(names(tab, task), " < ")
			require.True(t, task.Stack.Reliable, "%s: %s", got, task.Stack.Reason)
			require.Regexp(t, `vdso_spin < `+threadRoot, got)
		}
	}
	require.Positive(t, seen, "never caught the thread inside the vDSO")
}

// A distribution binary built without frame pointers and stripped to
// .dynsym (coreutils' sleep): its stack unwinds reliably by CFI to _start.
func TestUnwindDistributionBinary(t *testing.T) {
	bin, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep(1)")
	}
	cmd := exec.Command(bin, "60")
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	time.Sleep(100 * time.Millisecond)
	tab, snap := snapshot(t, cmd.Process.Pid)
	require.Len(t, snap.Tasks, 1)
	task := snap.Tasks[0]
	got := names(tab, task)
	require.True(t, task.Stack.Reliable, "%v: %s", got, task.Stack.Reason)
	require.GreaterOrEqual(t, len(got), 4, "%v", got)
	require.Regexp(t, `nanosleep`, got[0])
	require.Contains(t, strings.Join(got, " < "), "__libc_start_main")
}

// An executable without section headers (as sstrip leaves it): its unwind
// tables are found from the PT_GNU_EH_FRAME segment, and every stack still
// unwinds reliably through it to the thread's start.
func TestUnwindWithoutSectionHeaders(t *testing.T) {
	bin := fixture.BuildC(t, "cblockers", "-O2", "-fomit-frame-pointer")
	data, err := os.ReadFile(bin)
	require.NoError(t, err)
	// Elf64_Ehdr: e_shoff at 0x28, e_shnum at 0x3c, e_shstrndx at 0x3e.
	for i := 0x28; i < 0x30; i++ {
		data[i] = 0
	}
	data[0x3c], data[0x3d], data[0x3e], data[0x3f] = 0, 0, 0, 0
	noSections := filepath.Join(t.TempDir(), "cblockers-nosections")
	require.NoError(t, os.WriteFile(noSections, data, 0o755))
	tab0, err := elfsym.LoadFile(noSections)
	require.NoError(t, err)
	require.Empty(t, tab0.Search("blocking"), "no symbols without sections")

	p := fixture.Start(t, noSections)
	p.Expect(t, regexp.MustCompile(`^ready$`), 10*time.Second)
	time.Sleep(100 * time.Millisecond)
	tab, snap := snapshot(t, p.Pid)
	require.Len(t, snap.Tasks, 10)
	for _, task := range snap.Tasks {
		got := strings.Join(names(tab, task), " < ")
		require.True(t, task.Stack.Reliable, "%s: %s", got, task.Stack.Reason)
		if task.ID == p.Pid {
			require.Regexp(t, `__libc_start_main.* < cblockers-nosections\+0x[0-9a-f]+$`, got, "main ends at _start")
			continue
		}
		require.Regexp(t, `cblockers-nosections\+0x[0-9a-f]+ < `+threadRoot, got)
	}
}
