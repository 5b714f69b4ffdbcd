package elfsym

import (
	"bufio"
	"bytes"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/internal/arch"
)

const cLibSrc = `
__attribute__((noinline, visibility("default"))) int hp_dup(int x) { return x + 7; }
__attribute__((noinline, visibility("default"))) int hp_only_a(int x) { return x * 5; }
`

const cProgSrc = `
#include <stdio.h>
#include <time.h>

int hp_only_a(int x);

__attribute__((noinline, visibility("default"))) int exported_add(int a, int b) { return a + b; }
__attribute__((noinline, visibility("default"))) int hp_dup(int x) { return x - 7; }

/* tiny is followed by filler up to its 64-byte aligned neighbour. */
__attribute__((noinline, aligned(64))) static int tiny(int x) { return x + 1; }
__attribute__((noinline, aligned(64))) static int after_tiny(int x) { return x * 3; }

int main(void) {
	volatile int v = 0;
	printf("ready\n");
	fflush(stdout);
	for (;;) {
		v = exported_add(v, tiny(after_tiny(v)));
#ifdef WITH_LIB
		v = hp_only_a(v) + hp_dup(v);
#endif
		struct timespec ts = {0, 20000000};
		nanosleep(&ts, 0);
	}
}
`

const goProgSrc = `package main

import (
	"fmt"
	"time"
)

//go:noinline
func work(i int) int { return i*3 + 1 }

func main() {
	fmt.Println("ready")
	for i := 0; ; i++ {
		_ = work(i)
		time.Sleep(20 * time.Millisecond)
	}
}
`

func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed: %v", tool, err)
		}
	}
}

func run(t *testing.T, dir string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s %v:\n%s", name, args, out)
	return string(out)
}

// cTools is a C toolchain and the binutils that read its output, for one
// target machine.
type cTools struct {
	name             string
	cc, nm, strip    string
	machine          elf.Machine
	hostRunsBinaries bool
}

// cToolsets returns the host's toolchain and, on an x86-64 host, the
// aarch64 cross toolchain, so that what elfsym reads from an arm64 file is
// checked on any host (a set whose compiler is missing skips).
func cToolsets(t *testing.T) []cTools {
	host := cTools{name: runtime.GOARCH, cc: "gcc", nm: "nm", strip: "strip", machine: hostMachine(t), hostRunsBinaries: true}
	if runtime.GOARCH != "amd64" {
		return []cTools{host}
	}
	return []cTools{host, {name: "arm64", cc: "aarch64-linux-gnu-gcc", nm: "aarch64-linux-gnu-nm", strip: "aarch64-linux-gnu-strip", machine: elf.EM_AARCH64}}
}

// buildC writes src and compiles it with gcc and flags; returns the binary.
func buildC(t *testing.T, dir, name, src string, flags ...string) string {
	t.Helper()
	return cToolsets(t)[0].build(t, dir, name, src, flags...)
}

// build writes src and compiles it with the set's compiler and flags.
func (c cTools) build(t *testing.T, dir, name, src string, flags ...string) string {
	t.Helper()
	need(t, c.cc)
	f := filepath.Join(dir, name+".c")
	require.NoError(t, os.WriteFile(f, []byte(src), 0o644))
	out := filepath.Join(dir, name)
	run(t, dir, c.cc, append(append([]string{"-O2", "-g0", "-Wl,--build-id"}, flags...), "-o", out, f)...)
	return out
}

// buildGo builds goProgSrc with extra go build flags.
func buildGo(t *testing.T, dir, name string, flags ...string) string {
	t.Helper()
	return cToolsets(t)[0].buildGo(t, dir, name, flags...)
}

// buildGo builds goProgSrc for the set's machine (cgo and external links
// with its C compiler).
func (c cTools) buildGo(t *testing.T, dir, name string, flags ...string) string {
	t.Helper()
	need(t, "go")
	if strings.Contains(strings.Join(flags, " "), "external") {
		need(t, c.cc)
	}
	src := filepath.Join(dir, "gosrc")
	if _, err := os.Stat(src); err != nil {
		require.NoError(t, os.MkdirAll(src, 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(src, "main.go"), []byte(goProgSrc), 0o644))
		require.NoError(t, os.WriteFile(filepath.Join(src, "go.mod"), []byte("module fixture\n\ngo 1.22\n"), 0o644))
	}
	out := filepath.Join(dir, name)
	cmd := exec.Command("go", append(append([]string{"build", "-o", out}, flags...), ".")...)
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "GOARCH="+c.goarch(), "CC="+c.cc, "CGO_ENABLED=1")
	b, err := cmd.CombinedOutput()
	require.NoError(t, err, "go build %v:\n%s", flags, b)
	return out
}

// goarch is the set's machine as a GOARCH.
func (c cTools) goarch() string {
	if c.machine == elf.EM_AARCH64 {
		return "arm64"
	}
	return "amd64"
}

type nmSym struct {
	addr, size uint64
	typ        string
}

// nm runs nm (or go tool nm) and returns name → definitions of text symbols.
func nm(t *testing.T, goTool bool, args ...string) map[string][]nmSym {
	t.Helper()
	tool := "nm"
	if goTool {
		tool = ""
	}
	return nmWith(t, tool, args...)
}

// nmWith is nm with the binutils nm named tool ("" for go tool nm).
func nmWith(t *testing.T, tool string, args ...string) map[string][]nmSym {
	t.Helper()
	var out string
	goTool := tool == ""
	if goTool {
		out = run(t, "", "go", append([]string{"tool", "nm", "-size"}, args...)...)
	} else {
		need(t, tool)
		out = run(t, "", tool, append([]string{"-S", "--defined-only"}, args...)...)
	}
	res := map[string][]nmSym{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 4 {
			continue // nm prints no size for zero-size symbols
		}
		if goTool && len(f) > 4 { // go tool nm: addr size type name (name may have spaces)
			f = append(f[:3], strings.Join(f[3:], " "))
		}
		if f[2] != "T" && f[2] != "t" && f[2] != "W" && f[2] != "i" {
			continue
		}
		a, err1 := strconv.ParseUint(f[0], 16, 64)
		base := 16
		if goTool {
			base = 10
		}
		s, err2 := strconv.ParseUint(f[1], base, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		name := f[3]
		if i := strings.Index(name, "@@"); i > 0 && !goTool {
			name = name[:i] // default symbol version
		}
		res[name] = append(res[name], nmSym{a, s, f[2]})
	}
	return res
}

// readelfBuildID returns the GNU build ID printed by readelf -n.
func readelfBuildID(t *testing.T, path string) string {
	t.Helper()
	need(t, "readelf")
	out := run(t, "", "readelf", "-n", path)
	m := regexp.MustCompile(`Build ID: ([0-9a-f]+)`).FindStringSubmatch(out)
	if m == nil {
		return ""
	}
	return m[1]
}

// firstLoadVaddr returns the lowest PT_LOAD virtual address per readelf -l.
func firstLoadVaddr(t *testing.T, path string) uint64 {
	t.Helper()
	out := run(t, "", "readelf", "-lW", path)
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) > 3 && f[0] == "LOAD" {
			v, err := strconv.ParseUint(strings.TrimPrefix(f[2], "0x"), 16, 64)
			require.NoError(t, err)
			return v
		}
	}
	t.Fatalf("no LOAD in %s", path)
	return 0
}

// proc is a started fixture.
type proc struct {
	cmd *exec.Cmd
	pid int
	mem *os.File
}

// start runs path, waits until it prints "ready" and opens its memory.
func start(t *testing.T, path string, env ...string) *proc {
	t.Helper()
	cmd := exec.Command(path)
	cmd.Env = append(os.Environ(), env...)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	p := &proc{cmd: cmd, pid: cmd.Process.Pid}
	t.Cleanup(func() {
		if p.mem != nil {
			p.mem.Close()
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if sc.Text() == "ready" {
				ready <- true
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not start", path)
	}
	p.mem, err = os.Open("/proc/" + strconv.Itoa(p.pid) + "/mem")
	require.NoError(t, err)
	return p
}

// read reads live memory.
func (p *proc) read(t *testing.T, addr uint64, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	_, err := p.mem.ReadAt(b, int64(addr))
	require.NoError(t, err)
	return b
}

// mapBase returns the start of the mapping of file offset 0 of the object
// whose path ends with suffix, computed from the raw maps text (not with
// ParseMappings).
func mapBase(t *testing.T, pid int, suffix string) (uint64, string) {
	t.Helper()
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/maps")
	require.NoError(t, err)
	for _, line := range strings.Split(string(raw), "\n") {
		f := strings.Fields(line)
		if len(f) >= 6 && f[2] == "00000000" && strings.HasSuffix(f[5], suffix) {
			lo, _, _ := strings.Cut(f[0], "-")
			v, err := strconv.ParseUint(lo, 16, 64)
			require.NoError(t, err)
			return v, f[5]
		}
	}
	t.Fatalf("no mapping of %s in\n%s", suffix, raw)
	return 0, ""
}

func isFiller(machine elf.Machine, b []byte) bool {
	a, err := arch.ForMachine(machine)
	return err == nil && a.FillerRun(b) == len(b) && !bytes.Equal(b, nil)
}
