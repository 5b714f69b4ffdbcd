//go:build linux

package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hotpatch-dev/hotpatch/patch"
)

// Find returns the path, as this process reaches it, of the control
// socket of the agent in process pid: the agent's SocketPath seen through
// /proc/PID/root (the process's mount namespace), with the PID the process
// has in its own PID namespace. It fails with ErrNoAgent when there is
// none.
func Find(pid int) (string, error) {
	uid, nspid, err := procIDs(pid)
	if err != nil {
		return "", err
	}
	path := fmt.Sprintf("/proc/%d/root%s", pid, SocketPath(uid, nspid))
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("%w: pid %d has no control socket (%s); a Go service runs one when it calls agent.Start from package github.com/hotpatch-dev/hotpatch/patch/agent", ErrNoAgent, pid, SocketPath(uid, nspid))
		}
		return "", fmt.Errorf("%w: pid %d: %w", ErrNoAgent, pid, err)
	}
	return path, nil
}

// procIDs reads the real uid of process pid and its PID in its own PID
// namespace (the last NSpid field), from /proc/PID/status.
func procIDs(pid int) (uid, nspid int, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, 0, fmt.Errorf("%w: pid %d", patch.ErrNoProcess, pid)
		}
		return 0, 0, err
	}
	defer f.Close()
	uid, nspid = -1, pid
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), ":")
		fields := strings.Fields(v)
		switch {
		case k == "Uid" && len(fields) > 0:
			uid, err = strconv.Atoi(fields[0])
		case k == "NSpid" && len(fields) > 0:
			nspid, err = strconv.Atoi(fields[len(fields)-1])
		}
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/%d/status: %s: %w", pid, k, err)
		}
	}
	if uid < 0 {
		return 0, 0, fmt.Errorf("/proc/%d/status has no Uid line", pid)
	}
	return uid, nspid, sc.Err()
}

// Apply hands the plugin in file to the agent of process pid and returns
// what the apply did, as patch.Target.Apply does: a Result (also with an
// error, when the patch was left in a transition), and errors matching the
// service's (errors.Is: patch.ErrSignature, ErrToolchain, ...; errors.As:
// *patch.SignatureError, *ModuleError, ...) wrapped in a *patch.Error.
func Apply(ctx context.Context, pid int, file *os.File, req Request) (*patch.Result, error) {
	req.Op, req.WantProgress = "apply", req.Progress != nil
	resp, err := call(ctx, pid, req, file)
	if err != nil {
		return nil, &patch.Error{Op: "apply", Pid: pid, Err: err}
	}
	if err := resp.Err.err(pid); err != nil {
		return resp.Result, err
	}
	return resp.Result, nil
}

// Hello checks that process pid runs an agent that answers.
func Hello(ctx context.Context, pid int) error {
	resp, err := call(ctx, pid, Request{Op: "hello"}, nil)
	if err == nil {
		err = resp.Err.err(pid)
	}
	return err
}

// call sends one request to the agent of pid and reads its answer.
func call(ctx context.Context, pid int, req Request, file *os.File) (*response, error) {
	path, err := Find(pid)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unixpacket", path)
	if err != nil {
		return nil, fmt.Errorf("%w: connect to %s: %w", ErrNoAgent, path, err)
	}
	c := nc.(*net.UnixConn)
	defer c.Close()
	// The socket is the agent's only if the process at the other end is
	// pid itself (the kernel gives its PID in our namespace).
	cred, err := peer(c)
	if err != nil {
		return nil, fmt.Errorf("%w: peer credentials: %w", ErrProtocol, err)
	}
	if int(cred.Pid) != pid {
		return nil, fmt.Errorf("%w: %s is served by pid %d, not by pid %d", ErrNoAgent, path, cred.Pid, pid)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	var oob []byte
	if file != nil {
		oob = syscall.UnixRights(int(file.Fd()))
	}
	_, _, serr := c.WriteMsgUnix(b, oob, nil)
	// A refusal (another user) comes before the request is read: read
	// it even when the send failed.
	buf := make([]byte, 4<<20)
	for {
		n, err := c.Read(buf)
		if err != nil && serr != nil {
			return nil, fmt.Errorf("%w: send: %w", ErrProtocol, serr)
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("%w (the agent may still finish the apply; status tells)", ctx.Err())
			}
			return nil, fmt.Errorf("%w: the agent did not answer: %w", ErrProtocol, err)
		}
		var resp response
		if err := json.Unmarshal(buf[:n], &resp); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrProtocol, err)
		}
		if resp.Progress == nil {
			return &resp, nil
		}
		if req.Progress != nil {
			req.Progress(*resp.Progress)
		}
	}
}
