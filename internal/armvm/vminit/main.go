// Command vminit is the init (PID 1) of the arm64 VM lane's initramfs: it
// mounts the kernel file systems, runs every test binary listed in
// /tests/plan, one at a time, with -test.v and a hard per-binary timeout,
// prints begin/end markers, exit statuses and CPU times on the console for
// the lane to parse, and powers the machine off. It is built static
// (CGO_ENABLED=0) for arm64.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Marker starts every line vminit prints for the lane (internal/armvm
// parses them).
const Marker = "@@hotpatch-vm"

func main() {
	setup()
	start := time.Now()
	fmt.Printf("%s boot %s\n", Marker, uptime())
	if err := runPlan("/tests/plan"); err != nil {
		fmt.Printf("%s error %v\n", Marker, err)
	}
	fmt.Printf("%s done %.1fs\n", Marker, time.Since(start).Seconds())
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}

func setup() {
	for _, m := range []struct{ src, dst, typ string }{
		{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"}, {"tmpfs", "/tmp", "tmpfs"},
	} {
		os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.typ, 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			fmt.Fprintf(os.Stderr, "%s error mount %s: %v\n", Marker, m.dst, err)
		}
	}
	os.Chmod("/tmp", 0o1777)
	// The console, whatever the kernel gave us as fds 0-2.
	if fd, err := unix.Open("/dev/console", unix.O_RDWR|unix.O_NOCTTY, 0); err == nil {
		unix.Dup3(fd, 1, 0)
		unix.Dup3(fd, 2, 0)
		if fd > 2 {
			unix.Close(fd)
		}
	}
	if fd, err := unix.Open("/dev/null", unix.O_RDONLY, 0); err == nil {
		unix.Dup3(fd, 0, 0)
	}
	// The loopback interface, for the services the tests talk to.
	if err := loopbackUp(); err != nil {
		fmt.Fprintf(os.Stderr, "%s error loopback: %v\n", Marker, err)
	}
	os.Setenv("PATH", "/bin:/usr/bin")
	os.Setenv("HOME", "/tmp")
	os.Setenv("TMPDIR", "/tmp")
	os.Setenv("HOTPATCH_FIXTURES", "/fixtures")
	// The host path the fixtures were built at, which some of them embed
	// (a library linked by path, an rpath): make it lead to /fixtures.
	if b, err := os.ReadFile("/tests/fixtures-built-at"); err == nil {
		if at := strings.TrimSpace(string(b)); filepath.IsAbs(at) && at != "/fixtures" {
			os.MkdirAll(filepath.Dir(at), 0o755)
			if err := os.Symlink("/fixtures", at); err != nil {
				fmt.Fprintf(os.Stderr, "%s error link %s to /fixtures: %v\n", Marker, at, err)
			}
		}
	}
	os.Setenv("HOTPATCH_VM", "arm64")
	// The CLI and the demo service, cross-built by the lane.
	os.Setenv("HOTPATCH_CLI", "/bin/hotpatch")
	os.Setenv("HOTPATCH_DEMO_SERVICE", "/bin/demosvc")
}

func uptime() string {
	b, _ := os.ReadFile("/proc/uptime")
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0] + "s"
}

// runPlan runs each line of the plan: "NAME TIMEOUT [ARGS...]", the test
// binary /tests/NAME with -test.v and ARGS. One at a time: the lane's tests
// keep the emulated CPUs busy, and two binaries side by side each took
// twice as long (some of their deadlines, meant for one, passed).
func runPlan(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	for _, line := range strings.Split(string(b), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		timeout, err := time.ParseDuration(fields[1])
		if err != nil {
			return fmt.Errorf("plan line %q: %w", line, err)
		}
		run(fields[0], timeout, fields[2:])
	}
	return nil
}

// run runs one test binary, its output on the console, and prints its exit
// status, how long it ran and the CPU time it and the processes it waited
// for used.
func run(name string, timeout time.Duration, args []string) {
	dir := filepath.Join("/tmp/run", name)
	os.MkdirAll(dir, 0o755)
	fmt.Printf("%s begin %s\n", Marker, name)
	start := time.Now()
	// The test binary's own timeout panics with every goroutine's stack;
	// the context is the hard stop if even that hangs.
	ctx, cancel := context.WithTimeout(context.Background(), timeout+30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join("/tests", name),
		append([]string{"-test.v", "-test.count=1", "-test.timeout=" + timeout.String()}, args...)...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.SysProcAttr = &unix.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return unix.Kill(-cmd.Process.Pid, unix.SIGKILL) }
	err := cmd.Run()
	status := 0
	if err != nil {
		status = -1
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			status = ee.ExitCode()
		}
		fmt.Printf("%s note %s: %v\n", Marker, name, err)
		if strings.Contains(err.Error(), "signal: killed") {
			// Not by us (the timeout is reported as such): say whether
			// the kernel's OOM killer did it.
			for _, l := range kernelLog("Out of memory", "oom-kill", "Killed process") {
				fmt.Printf("%s note %s: kernel: %s\n", Marker, name, l)
			}
		}
	}
	// Kill whatever the test left behind in its process group.
	unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
	cpu := "?"
	if cmd.ProcessState != nil {
		cpu = fmt.Sprintf("%.1fs", (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds())
	}
	fmt.Printf("%s end %s status=%d elapsed=%.1fs cpu=%s\n", Marker, name, status, time.Since(start).Seconds(), cpu)
}

// loopbackUp sets the lo interface up (the kernel brings it up with its
// 127.0.0.1 address configured but down).
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// kernelLog returns the messages of the kernel's log (/dev/kmsg, read
// without waiting) that contain one of words.
func kernelLog(words ...string) []string {
	fd, err := unix.Open("/dev/kmsg", unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return []string{"cannot read /dev/kmsg: " + err.Error()}
	}
	defer unix.Close(fd)
	var out []string
	buf := make([]byte, 8192)
	for {
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EPIPE) {
			continue // records were overwritten meanwhile
		}
		if err != nil || n <= 0 {
			return out
		}
		// "PRIORITY,SEQ,TIME,FLAGS;MESSAGE\n"
		_, msg, _ := strings.Cut(strings.TrimRight(string(buf[:n]), "\n"), ";")
		for _, w := range words {
			if strings.Contains(msg, w) {
				out = append(out, msg)
				break
			}
		}
	}
}
