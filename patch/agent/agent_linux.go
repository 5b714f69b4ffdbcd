//go:build linux

package agent

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"plugin"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/hotpatch-dev/hotpatch/patch"
)

// baseDir is where agents put their sockets: one directory per user,
// /tmp/hotpatch-agent-UID, mode 0700. It is fixed so that a client finds a
// socket from the PID alone (through /proc/PID/root, the service's own
// view of the file system).
var baseDir = "/tmp"

// userDir is the agents' directory of user uid, as the service sees it.
func userDir(uid int) string { return filepath.Join(baseDir, "hotpatch-agent-"+strconv.Itoa(uid)) }

// SocketPath is the control socket of the agent of process pid (as the
// process itself numbers it, in its PID namespace), run by user uid, as
// that process sees the file system.
func SocketPath(uid, pid int) string { return filepath.Join(userDir(uid), strconv.Itoa(pid)+".sock") }

// maxPlugin bounds the size of a plugin the agent reads.
const maxPlugin = 1 << 30

// Agent is a running agent. Close stops it.
type Agent struct {
	ln      *net.UnixListener
	path    string
	plugins string // the private directory of the plugin copies
	log     *slog.Logger
	svc     *debug.BuildInfo

	mu     sync.Mutex // one apply at a time
	loaded map[string]string
	n      int
	keep   []any // the manifests, reachable for good
	wg     sync.WaitGroup

	svcHashesOnce sync.Once
	svcHashes     map[string]string
	svcHashesErr  error
}

// Start starts the agent: it makes its socket and serves connections until
// Close. It fails (leaving the service as it was) when the socket cannot
// be made private.
func Start(o Options) (*Agent, error) {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	svc, ok := debug.ReadBuildInfo()
	if !ok {
		return nil, fmt.Errorf("hotpatch agent: the service has no Go build information (runtime/debug.ReadBuildInfo); plugins cannot be checked against it")
	}
	dir := userDir(os.Getuid())
	if err := privateDir(dir); err != nil {
		return nil, fmt.Errorf("hotpatch agent: %w", err)
	}
	sweep(dir)
	pid := os.Getpid()
	a := &Agent{path: SocketPath(os.Getuid(), pid), plugins: filepath.Join(dir, "plugins-"+strconv.Itoa(pid)), log: log, svc: svc, loaded: map[string]string{}}
	// A socket of the same name is left by a dead process that had our
	// PID, unless an agent answers on it (a process of another PID
	// namespace sharing this directory).
	if c, err := net.Dial("unixpacket", a.path); err == nil {
		c.Close()
		return nil, fmt.Errorf("hotpatch agent: another process serves %s (one of another PID namespace that shares %s?); give each namespace its own /tmp", a.path, dir)
	}
	if err := os.Remove(a.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("hotpatch agent: remove stale socket: %w", err)
	}
	// No one else can enter dir: the socket is private from the start,
	// and owner-only (0600) once chmod made it so.
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: a.path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("hotpatch agent: listen: %w", err)
	}
	ln.SetUnlinkOnClose(true)
	if err := os.Chmod(a.path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("hotpatch agent: %w", err)
	}
	a.ln = ln
	a.wg.Add(1)
	go a.serve()
	log.Info("hotpatch agent listening", "socket", a.path)
	return a, nil
}

// Path returns the agent's socket path.
func (a *Agent) Path() string { return a.path }

// Close stops the agent and removes its socket. The patches it applied
// stay.
func (a *Agent) Close() error {
	err := a.ln.Close()
	a.wg.Wait()
	return err
}

// sweep removes from dir the sockets and plugin copies of agents whose
// process is gone (killed: no Close ran). A plugin stays mapped as long as
// its process lives, so its copy stays until then.
func sweep(dir string) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		name := e.Name()
		num := strings.TrimSuffix(strings.TrimPrefix(name, "plugins-"), ".sock")
		pid, err := strconv.Atoi(num)
		if err != nil || pid <= 0 || num == name {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); !errors.Is(err, os.ErrNotExist) {
			continue
		}
		os.RemoveAll(filepath.Join(dir, name))
	}
}

// privateDir makes dir (mode 0700), or checks that the one there is a
// directory of ours that no one else can enter.
func privateDir(dir string) error {
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	st, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	switch {
	case !st.IsDir():
		return fmt.Errorf("%s is not a directory (a symbolic link?); remove it", dir)
	case !ok || int(sys.Uid) != os.Getuid():
		return fmt.Errorf("%s belongs to another user; remove it", dir)
	case st.Mode().Perm()&0o077 != 0:
		return fmt.Errorf("%s has mode %v, others may enter it; remove it or chmod 0700", dir, st.Mode().Perm())
	}
	return nil
}

func (a *Agent) serve() {
	defer a.wg.Done()
	for {
		c, err := a.ln.AcceptUnix()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				a.log.Error("hotpatch agent: accept", "err", err)
			}
			return
		}
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			defer c.Close()
			a.handle(c)
		}()
	}
}

// peer returns the credentials of the other end of c.
func peer(c *net.UnixConn) (*syscall.Ucred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, cerr
}

func (a *Agent) handle(c *net.UnixConn) {
	cred, err := peer(c)
	if err != nil {
		a.log.Error("hotpatch agent: peer credentials", "err", err)
		return
	}
	// The request is read (and its descriptor closed unused) before a
	// refusal, so that the refusal reaches the client rather than a reset.
	req, file, rerr := readRequest(c)
	if file != nil {
		defer file.Close()
	}
	if int(cred.Uid) != os.Getuid() && cred.Uid != 0 {
		a.log.Warn("hotpatch agent: refused a connection from another user", "uid", cred.Uid, "pid", cred.Pid)
		a.reply(c, response{Pid: os.Getpid(), Err: toWire(fmt.Errorf("%w: uid %d is neither the service's user (%d) nor root", ErrPeer, cred.Uid, os.Getuid()))})
		return
	}
	if rerr != nil {
		a.reply(c, response{Pid: os.Getpid(), Err: toWire(rerr)})
		return
	}
	resp := response{Pid: os.Getpid()}
	switch req.Op {
	case "hello":
	case "apply":
		if file == nil {
			resp.Err = toWire(fmt.Errorf("%w: an apply comes with the plugin's file descriptor", ErrProtocol))
			break
		}
		a.log.Info("hotpatch agent: plugin received", "uid", cred.Uid, "pid", cred.Pid)
		var progress func(patch.Progress)
		if req.WantProgress {
			progress = func(p patch.Progress) { a.reply(c, response{Pid: os.Getpid(), Progress: &p}) }
		}
		resp.Result, err = a.apply(req, file, progress)
		resp.Err = toWire(err)
	default:
		resp.Err = toWire(fmt.Errorf("%w: unknown request %q", ErrProtocol, req.Op))
	}
	a.reply(c, resp)
}

func (a *Agent) reply(c *net.UnixConn, resp response) {
	b, err := json.Marshal(resp)
	if err == nil {
		_, err = c.Write(b)
	}
	if err != nil {
		a.log.Warn("hotpatch agent: reply", "err", err)
	}
}

// readRequest reads one request and the descriptor that comes with it.
func readRequest(c *net.UnixConn) (Request, *os.File, error) {
	var req Request
	buf := make([]byte, 64<<10)
	oob := make([]byte, syscall.CmsgSpace(4*4))
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return req, nil, fmt.Errorf("%w: read: %w", ErrProtocol, err)
	}
	var files []*os.File
	if msgs, err := syscall.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for _, m := range msgs {
			fds, err := syscall.ParseUnixRights(&m)
			if err != nil {
				continue
			}
			for _, fd := range fds {
				syscall.CloseOnExec(fd)
				files = append(files, os.NewFile(uintptr(fd), "plugin"))
			}
		}
	}
	bad := func(why string) (Request, *os.File, error) {
		for _, f := range files {
			f.Close()
		}
		return req, nil, fmt.Errorf("%w: %s", ErrProtocol, why)
	}
	if flags&(syscall.MSG_TRUNC|syscall.MSG_CTRUNC) != 0 {
		return bad("request or descriptors truncated")
	}
	if len(files) > 1 {
		return bad("more than one descriptor")
	}
	if err := json.Unmarshal(buf[:n], &req); err != nil {
		return bad(err.Error())
	}
	if len(files) == 1 {
		return req, files[0], nil
	}
	return req, nil, nil
}

// apply checks, loads and applies the plugin in file.
func (a *Agent) apply(req Request, file *os.File, progress func(patch.Progress)) (*patch.Result, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	data, hash, err := a.check(file)
	if err != nil {
		return nil, err
	}
	path, err := a.privateCopy(hash, data)
	if err != nil {
		return nil, err
	}
	// From here on the plugin is loaded for good, whatever follows.
	a.loaded[hash] = "its apply was refused"
	m, err := openManifest(path)
	if err != nil {
		return nil, err
	}
	a.keep = append(a.keep, m)
	fixes, err := pluginFixes(m)
	if err != nil {
		return nil, err
	}
	o := patch.PluginOptions{FuncOptions: patch.FuncOptions{Mode: req.Mode, Timeout: req.Timeout, OnTimeout: req.OnTimeout},
		Force: req.Force, Interval: req.Interval, Progress: progress, Supersede: req.Supersede}
	h, err := patch.ApplyPlugin(fixes, o)
	if h == nil {
		return nil, err
	}
	a.keep = append(a.keep, h)
	res := h.Result()
	a.loaded[hash] = "applied as patch " + res.ID
	a.log.Info("hotpatch agent: plugin applied", "id", res.ID, "state", res.State, "plugin", path)
	return res, err
}

// check reads the plugin and makes every check that needs it not loaded:
// cgo, loaded before, build information, package fingerprints. It returns
// the bytes checked and their hash.
func (a *Agent) check(file *os.File) ([]byte, string, error) {
	if err := checkCgo(a.svc); err != nil {
		return nil, "", err
	}
	data, err := readPlugin(file)
	if err != nil {
		return nil, "", err
	}
	sum := sha256.Sum256(data)
	hash := hex.EncodeToString(sum[:])
	if what, ok := a.loaded[hash]; ok {
		return nil, "", fmt.Errorf("%w (sha256 %s, %s); plugins cannot be unloaded, and one loaded twice would be refused by the runtime. Build a new plugin (another fix, or the same fix with another -ldflags=-pluginpath=NAME)", ErrLoadedTwice, hash[:16], what)
	}
	bi, err := readPluginInfo(data)
	if err != nil {
		return nil, "", err
	}
	if err := checkMatch(bi, a.svc); err != nil {
		return nil, "", err
	}
	if err := a.checkPackages(data); err != nil {
		return nil, "", err
	}
	return data, hash, nil
}

// checkPackages compares the package fingerprints of the plugin with the
// service's (read once from the executable).
func (a *Agent) checkPackages(data []byte) error {
	ef, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNotPlugin, err)
	}
	plug, err := pkgHashes(ef)
	if err != nil {
		return fmt.Errorf("%w: its symbols: %w", ErrNotPlugin, err)
	}
	a.svcHashesOnce.Do(func() {
		var f *elf.File
		if f, a.svcHashesErr = elf.Open("/proc/self/exe"); a.svcHashesErr == nil {
			defer f.Close()
			a.svcHashes, a.svcHashesErr = pkgHashes(f)
		}
	})
	if a.svcHashesErr != nil {
		return fmt.Errorf("hotpatch agent: the service's package fingerprints: %w", a.svcHashesErr)
	}
	return checkPackages(plug, a.svcHashes)
}

// readPlugin reads the whole file from its start.
func readPlugin(f *os.File) ([]byte, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotPlugin, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: the descriptor is not a regular file (%v)", ErrNotPlugin, st.Mode().Type())
	}
	data, err := io.ReadAll(io.LimitReader(io.NewSectionReader(f, 0, maxPlugin+1), maxPlugin+1))
	if err != nil {
		return nil, fmt.Errorf("%w: read: %w", ErrNotPlugin, err)
	}
	if len(data) > maxPlugin {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrNotPlugin, maxPlugin)
	}
	return data, nil
}

// privateCopy writes data to a new file of a unique name in the agent's
// private directory and checks that no one else can write it: what
// plugin.Open (which needs a path) loads is the bytes checked.
func (a *Agent) privateCopy(hash string, data []byte) (string, error) {
	if err := privateDir(userDir(os.Getuid())); err != nil {
		return "", err
	}
	if err := privateDir(a.plugins); err != nil {
		return "", err
	}
	a.n++
	path := filepath.Join(a.plugins, fmt.Sprintf("%s-%d.so", hash[:16], a.n))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o500)
	if err != nil {
		return "", fmt.Errorf("hotpatch agent: private copy of the plugin: %w", err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = notWritable(path)
	}
	if err != nil {
		os.Remove(path)
		return "", fmt.Errorf("hotpatch agent: private copy of the plugin: %w", err)
	}
	return path, nil
}

// notWritable checks that path is a regular file of ours that only we
// could write, with no other link.
func notWritable(path string) error {
	st, err := os.Lstat(path)
	if err != nil {
		return err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !st.Mode().IsRegular() || !ok || int(sys.Uid) != os.Getuid() || sys.Nlink != 1 || st.Mode().Perm()&0o222 != 0 {
		return fmt.Errorf("%s is not a private read-only file (mode %v)", path, st.Mode())
	}
	return nil
}

// openManifest loads the plugin and finds its manifest.
func openManifest(path string) (*Manifest, error) {
	p, err := plugin.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrPluginOpen, err)
	}
	sym, err := p.Lookup(ManifestSymbol)
	if err != nil {
		return nil, fmt.Errorf("%w: it exports no variable %s (declare var %s = agent.Manifest{...} in its package main)", ErrManifest, ManifestSymbol, ManifestSymbol)
	}
	m, ok := sym.(*Manifest)
	if !ok {
		return nil, fmt.Errorf("%w: its %s is a %T, not an agent.Manifest variable", ErrManifest, ManifestSymbol, sym)
	}
	if len(m.Fixes) == 0 {
		return nil, fmt.Errorf("%w: its %s lists no fixes", ErrManifest, ManifestSymbol)
	}
	return m, nil
}

// pluginFixes turns a manifest into the patch's fixes.
func pluginFixes(m *Manifest) ([]patch.PluginFix, error) {
	var out []patch.PluginFix
	for i, f := range m.Fixes {
		pf := patch.PluginFix{Replacement: f.New, Wrap: f.Wrap}
		switch old := f.Old.(type) {
		case string:
			pf.Name = old
		case nil:
			return nil, fmt.Errorf("%w: fix %d names no Old function", ErrManifest, i)
		default:
			pf.Target = old
		}
		out = append(out, pf)
	}
	return out, nil
}
