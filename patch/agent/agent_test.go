//go:build linux

package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/patch"
)

// envDial makes the test binary a client: it connects to the socket named
// there, says hello, and prints the agent's answer or the error.
const envDial = "HOTPATCH_AGENT_TEST_DIAL"

func TestMain(m *testing.M) {
	if path := os.Getenv(envDial); path != "" {
		os.Exit(dial(path))
	}
	os.Exit(m.Run())
}

func dial(path string) int {
	c, err := net.Dial("unixpacket", path)
	if err != nil {
		fmt.Printf("connect: %v\n", err)
		return 0
	}
	defer c.Close()
	b, _ := json.Marshal(Request{Op: "hello"})
	// A refusal is sent before the request is read: a failed send
	// still reads it.
	c.Write(b)
	buf := make([]byte, 64<<10)
	n, err := c.Read(buf)
	if err != nil {
		fmt.Printf("read: %v\n", err)
		return 0
	}
	fmt.Printf("answer: %s\n", buf[:n])
	return 0
}

// startTestAgent starts an agent in this process, its directory in a
// fresh base directory, logging into the returned buffer.
func startTestAgent(t *testing.T) (*Agent, *syncBuffer) {
	t.Helper()
	old := baseDir
	baseDir = openDir(t)
	t.Cleanup(func() { baseDir = old })
	log := &syncBuffer{}
	a, err := Start(Options{Logger: slog.New(slog.NewTextHandler(log, nil))})
	require.NoError(t, err)
	t.Cleanup(func() { a.Close() })
	return a, log
}

// openDir makes a directory (removed at the end of the test) that every
// user may enter.
func openDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "hotpatch-agent-test-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o755))
	return dir
}

// TestSocketPrivate: the socket is found from the PID, is owner-only
// (0600) in a directory of mode 0700, answers its owner, and is gone after
// Close. Start refuses a directory others may enter.
func TestSocketPrivate(t *testing.T) {
	a, _ := startTestAgent(t)
	path := SocketPath(os.Getuid(), os.Getpid())
	require.Equal(t, path, a.Path())
	st, err := os.Lstat(path)
	require.NoError(t, err)
	require.Equal(t, os.ModeSocket|0o600, st.Mode()&(os.ModeType|os.ModePerm), "socket mode")
	dir, err := os.Lstat(filepath.Dir(path))
	require.NoError(t, err)
	require.Equal(t, os.ModeDir|0o700, dir.Mode()&(os.ModeType|os.ModePerm), "directory mode")

	found, err := Find(os.Getpid())
	require.NoError(t, err)
	require.Equal(t, fmt.Sprintf("/proc/%d/root%s", os.Getpid(), path), found)
	require.NoError(t, Hello(context.Background(), os.Getpid()))

	require.NoError(t, a.Close())
	_, err = os.Lstat(path)
	require.ErrorIs(t, err, os.ErrNotExist)
	require.ErrorIs(t, Hello(context.Background(), os.Getpid()), ErrNoAgent)

	require.NoError(t, os.Chmod(filepath.Dir(path), 0o755))
	_, err = Start(Options{})
	require.ErrorContains(t, err, "others may enter it")
}

// TestPeerRefused: a client of another user is refused. With the socket
// owner-only, it cannot even connect; with the file mode opened up (as a
// mistake would), the agent's peer-credential check still refuses it,
// and logs it.
func TestPeerRefused(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root, to run a client as user nobody")
	}
	a, log := startTestAgent(t)
	// A copy of this test binary that nobody may run.
	bin := filepath.Join(openDir(t), "client")
	self, err := os.ReadFile("/proc/self/exe")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(bin, self, 0o755))
	asNobody := func() string {
		cmd := exec.Command(bin)
		// User and group nobody (65534), no supplementary groups: set
		// by the child itself, as setpriv would, so that no tool is
		// needed (the arm64 VM lane has none).
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
		cmd.Env = append(os.Environ(), envDial+"="+a.Path())
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", out)
		return string(out)
	}
	dir := filepath.Dir(a.Path())
	require.Contains(t, asNobody(), "permission denied", "the directory is 0700")
	require.NoError(t, os.Chmod(dir, 0o711))
	require.Contains(t, asNobody(), "permission denied", "the socket is 0600")
	require.NoError(t, os.Chmod(a.Path(), 0o666))
	out := asNobody()
	require.Contains(t, out, "answer: ")
	var resp response
	require.NoError(t, json.Unmarshal([]byte(strings.TrimSpace(strings.TrimPrefix(out, "answer: "))), &resp), out)
	require.ErrorIs(t, resp.Err.err(os.Getpid()), ErrPeer)
	require.Contains(t, resp.Err.Msg, "uid 65534")
	require.Eventually(t, func() bool { return strings.Contains(log.String(), "refused a connection from another user") }, time.Second, 10*time.Millisecond)
	require.Contains(t, log.String(), "uid=65534")
	// Its owner is served as before.
	require.NoError(t, Hello(context.Background(), os.Getpid()))
}

// TestApplyProtocol: an apply without a descriptor, or with a file that is
// not a plugin, is refused with a typed error.
func TestApplyProtocol(t *testing.T) {
	startTestAgent(t)
	_, err := call(context.Background(), os.Getpid(), Request{Op: "apply"}, nil)
	require.NoError(t, err)
	f, err := os.Open("/proc/self/exe")
	require.NoError(t, err)
	defer f.Close()
	_, err = Apply(context.Background(), os.Getpid(), f, Request{})
	var pe *patch.Error
	require.ErrorAs(t, err, &pe)
	if bi, ok := debug.ReadBuildInfo(); ok && checkCgo(bi) != nil {
		require.ErrorIs(t, err, ErrNoCgo)
		return
	}
	require.ErrorIs(t, err, ErrNotPlugin, "a test binary is no plugin")
	r, w, err := os.Pipe()
	require.NoError(t, err)
	defer r.Close()
	w.Close()
	_, err = Apply(context.Background(), os.Getpid(), r, Request{})
	require.ErrorIs(t, err, ErrNotPlugin, "a pipe is no plugin")
	require.ErrorContains(t, err, "not a regular file")
}

// TestCheckMatch compares build information as the agent does before
// plugin.Open.
func TestCheckMatch(t *testing.T) {
	svc := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "example.com/svc", Version: "(devel)"},
		Deps:     []*debug.Module{{Path: "golang.org/x/sys", Version: "v0.49.0", Sum: "h1:a"}, {Path: "example.com/lib", Version: "v1.0.0", Replace: &debug.Module{Path: "../lib"}}},
		Settings: []debug.BuildSetting{{Key: "-trimpath", Value: "true"}, {Key: "CGO_ENABLED", Value: "1"}, {Key: "GOARCH", Value: "amd64"}, {Key: "GOAMD64", Value: "v1"}}}
	plug := func(edit func(*debug.BuildInfo)) *debug.BuildInfo {
		b := *svc
		b.Deps = append([]*debug.Module(nil), svc.Deps...)
		b.Settings = append([]debug.BuildSetting{{Key: "-buildmode", Value: "plugin"}}, svc.Settings...)
		if edit != nil {
			edit(&b)
		}
		return &b
	}
	tests := []struct {
		name string
		plug *debug.BuildInfo
		want error
		as   any
	}{
		{"same", plug(nil), nil, nil},
		{"toolchain", plug(func(b *debug.BuildInfo) { b.GoVersion = "go1.26.7" }), ErrToolchain, new(*ToolchainError)},
		{"dep version", plug(func(b *debug.BuildInfo) { b.Deps[0] = &debug.Module{Path: "golang.org/x/sys", Version: "v0.48.0"} }), ErrModuleVersion, new(*ModuleError)},
		{"dep sum", plug(func(b *debug.BuildInfo) {
			b.Deps[0] = &debug.Module{Path: "golang.org/x/sys", Version: "v0.49.0", Sum: "h1:b"}
		}), ErrModuleVersion, new(*ModuleError)},
		{"dep replaced", plug(func(b *debug.BuildInfo) {
			b.Deps[0] = &debug.Module{Path: "golang.org/x/sys", Version: "v0.49.0", Replace: &debug.Module{Path: "../sys"}}
		}), ErrModuleVersion, new(*ModuleError)},
		{"replace kept", plug(nil), nil, nil},
		{"plugin-only dep", plug(func(b *debug.BuildInfo) {
			b.Deps = append(b.Deps, &debug.Module{Path: "example.com/new", Version: "v0.1.0"})
		}), nil, nil},
		{"main module as dep", plug(func(b *debug.BuildInfo) {
			b.Main = debug.Module{Path: "example.com/fix"}
			b.Deps = append(b.Deps, &debug.Module{Path: "example.com/svc", Version: "v1.2.3"})
		}), ErrModuleVersion, new(*ModuleError)},
		{"trimpath", plug(func(b *debug.BuildInfo) { b.Settings = b.Settings[:1] }), ErrBuildSetting, new(*BuildSettingError)},
		{"GOAMD64", plug(func(b *debug.BuildInfo) {
			b.Settings = append(b.Settings, debug.BuildSetting{Key: "GOAMD64", Value: "v3"})
		}), ErrBuildSetting, new(*BuildSettingError)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkMatch(tt.plug, svc)
			if tt.want == nil {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, tt.want)
			require.ErrorAs(t, err, tt.as)
		})
	}
	require.ErrorIs(t, checkCgo(&debug.BuildInfo{Settings: []debug.BuildSetting{{Key: "CGO_ENABLED", Value: "0"}}}), ErrNoCgo)
	require.NoError(t, checkCgo(svc))
}

// TestWireErrors: the errors a client sees match the service's.
func TestWireErrors(t *testing.T) {
	sig := &patch.SignatureError{Func: "main.f", New: "fix.f", Old: "main.f(int)", NewSig: "fix.f(string)", Source: "DWARF"}
	for _, err := range []error{
		&patch.Error{Op: "apply", Pid: 1, Func: "main.f", Err: sig, Hint: "h"},
		&ModuleError{Path: "golang.org/x/sys", Plugin: "v1", Service: "v2"},
		&ToolchainError{Plugin: "go1.25", Service: "go1.26"},
		fmt.Errorf("%w: x", ErrLoadedTwice),
		fmt.Errorf("%w: %w", patch.ErrBlocked, context.DeadlineExceeded),
	} {
		b, jerr := json.Marshal(toWire(err))
		require.NoError(t, jerr)
		var w wireError
		require.NoError(t, json.Unmarshal(b, &w))
		got := w.err(42)
		require.ErrorContains(t, got, "apply pid 42")
		for _, target := range []error{patch.ErrSignature, ErrModuleVersion, ErrToolchain, ErrLoadedTwice, patch.ErrBlocked, context.DeadlineExceeded} {
			require.Equal(t, errors.Is(err, target), errors.Is(got, target), "%v: errors.Is %v", err, target)
		}
	}
	var se *patch.SignatureError
	require.ErrorAs(t, (&wireError{Signature: sig}).err(1), &se)
	require.Equal(t, "main.f(int)", se.Old)
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var _ io.Writer = (*syncBuffer)(nil)

// TestSweep: Start removes the sockets and plugin copies of agents whose
// process is gone, and keeps those of live ones.
func TestSweep(t *testing.T) {
	old := baseDir
	baseDir = openDir(t)
	t.Cleanup(func() { baseDir = old })
	dir := userDir(os.Getuid())
	require.NoError(t, os.Mkdir(dir, 0o700))
	dead := 1 << 30 // above pid_max
	for _, name := range []string{fmt.Sprint(dead, ".sock"), fmt.Sprint("plugins-", dead), "1.sock", "plugins-1", "other"} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), nil, 0o600))
	}
	a, err := Start(Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	defer a.Close()
	var left []string
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, e := range ents {
		left = append(left, e.Name())
	}
	require.ElementsMatch(t, []string{"1.sock", "plugins-1", "other", filepath.Base(a.Path())}, left)
}

// TestCheckPackages: a package both have with other fingerprints is
// refused; packages only one has are not compared.
func TestCheckPackages(t *testing.T) {
	svc := map[string]string{"fmt": "01", "example.com/svc/greet": "02"}
	require.NoError(t, checkPackages(map[string]string{"fmt": "01", "example.com/fix": "09"}, svc))
	err := checkPackages(map[string]string{"fmt": "01", "example.com/svc/greet": "03"}, svc)
	require.ErrorIs(t, err, ErrPackage)
	var pe *PackageError
	require.ErrorAs(t, err, &pe)
	require.Equal(t, PackageError{Package: "example.com/svc/greet", Plugin: "03", Service: "02"}, *pe)
}
