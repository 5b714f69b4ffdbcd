// Command armvm is the arm64 VM test lane: it cross-compiles the test
// binaries of the packages in Packages and every fixture of
// internal/fixture.Catalog for arm64, packs them with a tiny init
// (./vminit), the arm64 glibc runtime and nothing else into an initramfs,
// boots it on a Debian arm64 kernel in qemu-system-aarch64 (TCG), and reads
// the results from the serial console. It exits non-zero unless every test
// binary passed.
//
// It installs what it needs when missing (qemu-system-arm, cpio, the
// aarch64 cross compiler, and the kernel, downloaded with apt for the arm64
// architecture and cached under $XDG_CACHE_HOME/hotpatch or
// ~/.cache/hotpatch). Run it from the module root: go run ./internal/armvm.
// make test builds the image (-prepare DIR) while its host stages run, and
// boots it (-initrd DIR) after them.
package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hotpatch-dev/hotpatch/internal/fixture"
)

// Package is a Go package whose tests run in the VM.
type Package struct {
	Path string // relative to the module root
	// Skip is a -test.skip pattern for tests that cannot run on arm64 yet;
	// SkipWhy says why (printed with the results).
	Skip, SkipWhy string
	// Run, when set, is a -test.run pattern: only those tests run (the
	// package's others are listed in the issue notes with the reason).
	Run string
	// Timeout bounds the test binary (default 3m).
	Timeout time.Duration
}

// Packages is the one list of packages the lane runs. Add a package here
// when its tests are meaningful on arm64.
var Packages = []Package{
	{Path: "internal/tracee"},
	{Path: "internal/fixture"},
	{Path: "internal/gopcln"},
	// Goroutines of targets built by every supported Go release.
	{Path: "internal/goruntime"},
	{Path: "internal/cfi"},
	{Path: "internal/unwind"},
	{Path: "elfsym"},
	{Path: "internal/consistency"},
	// The trampolines are pure computation chosen by the target's ELF
	// machine: the x86-64 tests run here too, and the arm64 relocated code
	// and dispatch stubs are executed on the arm64 CPU.
	{Path: "trampoline", Skip: "TestARM64CompilerOutput",
		SkipWhy: "compiles C with the aarch64 cross gcc, which the VM has not; it runs on the host (make test-arm64-user)"},
	{Path: "internal/execmem"},
	// The CLI, run as its own process against live targets, and the demo.
	// Its Go plugin tests apply prebuilt plugins, seconds each under TCG.
	{Path: "examples/hotpatch", Timeout: 10 * time.Minute},
	// Process-level patches of the C and Go services on arm64.
	// Every test of the package; Example compiles its target with gcc.
	{Path: "patch", Skip: "^Example$", SkipWhy: "compiles its target with gcc, which the VM has not (the tests run the same patch on prebuilt fixtures)", Timeout: 15 * time.Minute},
	// Tests that patch themselves through the self-patch helper.
	{Path: "patch/patchtest"},
	// The in-process agent that applies Go plugins (its socket, peer
	// check and build-information checks; the plugins themselves are
	// applied by examples/hotpatch's TestPlugin* tests).
	{Path: "patch/agent"},
}

const marker = "@@hotpatch-vm"

var (
	keep    = flag.Bool("keep", false, "keep the work directory")
	timeout = flag.Duration("timeout", 25*time.Minute, "hard limit on the VM's run time (the full lane's ran 14-18 minutes on 2 quiet cores in December 2026; much longer when the cores are shared)")
	only    = flag.String("pkg", "", "run only the packages whose path contains this")
	extra   = flag.String("args", "", "more flags for every test binary (e.g. -test.count=10 -test.run=TestX, to chase a flake)")
	prepare = flag.String("prepare", "", "only build the VM's image (test binaries, fixtures, initramfs) into this directory; boot it later with -initrd")
	initrd  = flag.String("initrd", "", "boot the image -prepare built in this directory instead of building one")
)

func main() {
	flag.Parse()
	start := time.Now()
	if err := lane(); err != nil {
		fmt.Fprintf(os.Stderr, "armvm: %v\n", err)
		fmt.Fprintf(os.Stderr, "armvm: FAIL after %.1fs\n", time.Since(start).Seconds())
		os.Exit(1)
	}
	if *prepare != "" {
		fmt.Printf("armvm: image in %s (boot it with -initrd %s)\n", *prepare, *prepare)
		return
	}
	fmt.Printf("armvm: PASS in %.1fs\n", time.Since(start).Seconds())
}

func lane() error {
	if *prepare != "" && *initrd != "" {
		return errors.New("-prepare and -initrd: one builds the image, the other boots one")
	}
	if err := ensureTools(); err != nil {
		return err
	}
	kernel, err := ensureKernel()
	if err != nil {
		return err
	}
	if *initrd != "" {
		pkgs, err := preparedPackages(*initrd)
		if err != nil {
			return err
		}
		return bootAndReport(kernel, filepath.Join(*initrd, "initrd.gz"), pkgs)
	}
	work := *prepare
	if work == "" {
		if work, err = os.MkdirTemp("", "hotpatch-armvm-"); err != nil {
			return err
		}
		if *keep {
			fmt.Println("armvm: work directory", work)
		} else {
			defer os.RemoveAll(work)
		}
	} else if err := os.MkdirAll(work, 0o755); err != nil {
		return err
	}
	pkgs, err := buildImage(work)
	if err != nil || *prepare != "" {
		return err
	}
	return bootAndReport(kernel, filepath.Join(work, "initrd.gz"), pkgs)
}

// buildImage builds the test binaries, the fixtures and the initramfs
// (work/initrd.gz), and lists the packages whose tests it holds in
// work/packages (for -initrd).
func buildImage(work string) ([]Package, error) {
	sleep, err := ensureDistroSleep()
	if err != nil {
		return nil, err
	}
	root := filepath.Join(work, "root")
	if err := os.RemoveAll(root); err != nil {
		return nil, err
	}
	t0 := time.Now()
	pkgs, err := buildRoot(root)
	if err != nil {
		return nil, err
	}
	if err := copyFile(sleep, filepath.Join(root, "bin", "sleep")); err != nil {
		return nil, err
	}
	if err := packInitramfs(root, filepath.Join(work, "initrd.gz")); err != nil {
		return nil, err
	}
	if !*keep {
		os.RemoveAll(root) // the initramfs holds it
	}
	var list strings.Builder
	for _, p := range pkgs {
		list.WriteString(p.Path + "\n")
	}
	if err := os.WriteFile(filepath.Join(work, "packages"), []byte(list.String()), 0o644); err != nil {
		return nil, err
	}
	fmt.Printf("armvm: built %d test binaries, %d fixtures and the initramfs in %.1fs\n",
		len(pkgs), len(fixture.Catalog), time.Since(t0).Seconds())
	return pkgs, nil
}

// preparedPackages returns the packages whose tests the image -prepare
// built in dir holds.
func preparedPackages(dir string) ([]Package, error) {
	b, err := os.ReadFile(filepath.Join(dir, "packages"))
	if err != nil {
		return nil, fmt.Errorf("-initrd %s: %w (build the image with -prepare %s first)", dir, err, dir)
	}
	var pkgs []Package
	for _, path := range strings.Fields(string(b)) {
		i := slices.IndexFunc(Packages, func(p Package) bool { return p.Path == path })
		if i < 0 {
			return nil, fmt.Errorf("-initrd %s: the image holds the tests of %s, which Packages no longer lists: build it again", dir, path)
		}
		pkgs = append(pkgs, Packages[i])
	}
	return pkgs, nil
}

func bootAndReport(kernel, initrd string, pkgs []Package) error {
	out, bootErr := boot(kernel, initrd)
	return report(pkgs, Parse(out), bootErr)
}

// run runs a command, showing its output only when it fails.
func run(cmd *exec.Cmd) error {
	b, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w\n%s", strings.Join(cmd.Args, " "), err, b)
	}
	return nil
}

func sudo(args ...string) *exec.Cmd {
	if os.Getuid() != 0 {
		args = append([]string{"sudo"}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	return cmd
}

const crossLib = "/usr/aarch64-linux-gnu/lib"

// ensureTools installs qemu, cpio and the cross compiler when missing.
func ensureTools() error {
	var missing []string
	for tool, pkg := range map[string]string{
		"qemu-system-aarch64": "qemu-system-arm", "cpio": "cpio", "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu",
	} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, pkg)
		}
	}
	if _, err := os.Stat(filepath.Join(crossLib, "libc.so.6")); err != nil {
		missing = append(missing, "libc6-dev-arm64-cross")
	}
	if len(missing) == 0 {
		return nil
	}
	sort.Strings(missing)
	fmt.Println("armvm: installing", strings.Join(missing, " "))
	if err := run(sudo("apt-get", "update", "-qq")); err != nil {
		return err
	}
	return run(sudo(append([]string{"apt-get", "install", "-y", "-qq", "--no-install-recommends"}, missing...)...))
}

func cacheDir() string {
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "hotpatch", "arm64")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "hotpatch", "arm64")
}

// ensureKernel returns the path of a cached Debian cloud-arm64 kernel,
// downloading it with apt (arm64 added as a foreign architecture) the first
// time.
func ensureKernel() (string, error) {
	dir := cacheDir()
	vmlinuz := filepath.Join(dir, "vmlinuz")
	if _, err := os.Stat(vmlinuz); err == nil {
		return vmlinuz, nil
	}
	fmt.Println("armvm: fetching the Debian arm64 cloud kernel into", dir)
	if err := ensureArm64Packages(); err != nil {
		return "", err
	}
	deps, err := exec.Command("apt-cache", "depends", "linux-image-cloud-arm64:arm64").Output()
	if err != nil {
		return "", fmt.Errorf("apt-cache depends linux-image-cloud-arm64:arm64: %w", err)
	}
	m := regexp.MustCompile(`Depends: (linux-image-[^\s:]+-cloud-arm64)`).FindSubmatch(deps)
	if m == nil {
		return "", fmt.Errorf("no kernel package behind linux-image-cloud-arm64:arm64:\n%s", deps)
	}
	// The unsigned flavour is not always published; the signed one holds
	// the same image.
	x, err := aptExtract(filepath.Join(dir, "download"), string(m[1])+"-unsigned:arm64", string(m[1])+":arm64")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(filepath.Join(dir, "download"))
	imgs, _ := filepath.Glob(filepath.Join(x, "boot", "vmlinuz-*"))
	if len(imgs) != 1 {
		return "", fmt.Errorf("%s holds %d kernel images", m[1], len(imgs))
	}
	if err := os.Rename(imgs[0], vmlinuz); err != nil {
		return "", err
	}
	return vmlinuz, nil
}

// ensureArm64Packages makes apt serve arm64 packages (arm64 added as a
// foreign architecture), which the kernel and sleep(1) downloads need.
func ensureArm64Packages() error {
	archs, err := exec.Command("dpkg", "--print-foreign-architectures").Output()
	if err != nil {
		return fmt.Errorf("dpkg: %w (the lane needs a Debian host)", err)
	}
	if strings.Contains(string(archs), "arm64") {
		return nil
	}
	if err := run(sudo("dpkg", "--add-architecture", "arm64")); err != nil {
		return err
	}
	return run(sudo("apt-get", "update", "-qq"))
}

// aptExtract downloads the first of the packages apt can fetch into dl (made
// anew) and unpacks it there, returning the unpacked tree.
func aptExtract(dl string, pkgs ...string) (string, error) {
	os.RemoveAll(dl)
	if err := os.MkdirAll(dl, 0o755); err != nil {
		return "", err
	}
	var err error
	for _, pkg := range pkgs {
		get := exec.Command("apt-get", "download", pkg)
		get.Dir = dl
		if err = run(get); err == nil {
			break
		}
	}
	if err != nil {
		return "", err
	}
	debs, _ := filepath.Glob(filepath.Join(dl, "*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("apt-get download %s left %d packages in %s", pkgs[0], len(debs), dl)
	}
	x := filepath.Join(dl, "x")
	return x, run(exec.Command("dpkg-deb", "-x", debs[0], x))
}

// ensureDistroSleep returns a cached arm64 sleep(1) of Debian's coreutils
// package, downloaded with apt the first time: a distribution binary built
// without frame pointers and stripped to .dynsym, which
// TestUnwindDistributionBinary unwinds in the VM.
func ensureDistroSleep() (string, error) {
	dir := cacheDir()
	sleep := filepath.Join(dir, "sleep")
	if _, err := os.Stat(sleep); err == nil {
		return sleep, nil
	}
	if err := ensureArm64Packages(); err != nil {
		return "", err
	}
	dl := filepath.Join(dir, "coreutils")
	defer os.RemoveAll(dl)
	x, err := aptExtract(dl, "coreutils:arm64")
	if err != nil {
		return "", err
	}
	for _, p := range []string{"bin/sleep", "usr/bin/sleep"} {
		if _, err := os.Stat(filepath.Join(x, p)); err == nil {
			return sleep, os.Rename(filepath.Join(x, p), sleep)
		}
	}
	return "", fmt.Errorf("coreutils:arm64 has no sleep binary")
}

// binName is a package's test binary name in the VM.
func binName(p Package) string { return strings.ReplaceAll(p.Path, "/", "_") + ".test" }

// buildRoot fills the initramfs tree: /init, /tests, /fixtures, the glibc
// runtime.
func buildRoot(root string) ([]Package, error) {
	var pkgs []Package
	for _, p := range Packages {
		if strings.Contains(p.Path, *only) {
			pkgs = append(pkgs, p)
		}
	}
	for _, d := range []string{"tests", "fixtures", "lib/aarch64-linux-gnu", "bin", "proc", "sys", "dev", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return nil, err
		}
	}
	env := append(os.Environ(), "GOARCH=arm64", "GOOS=linux")
	initCmd := exec.Command("go", "build", "-o", filepath.Join(root, "init"), "./internal/armvm/vminit")
	initCmd.Env = append(env, "CGO_ENABLED=0")
	if err := run(initCmd); err != nil {
		return nil, err
	}
	// The CLI and the demo service its tests run (examples/hotpatch).
	for bin, pkg := range map[string]string{"hotpatch": "./examples/hotpatch", "demosvc": "./examples/hotpatch/demosvc"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(root, "bin", bin), pkg)
		cmd.Env = append(env, "CGO_ENABLED=0")
		if err := run(cmd); err != nil {
			return nil, err
		}
	}
	// The fixtures build while the test binaries do (both use every CPU
	// only part of the time: a link is one process).
	fixtures, err := filepath.Abs(filepath.Join(root, "fixtures"))
	if err != nil {
		return nil, err
	}
	fixturesDone := make(chan error, 1)
	go func() {
		fixturesDone <- fixture.Prebuild(fixtures, fixture.Target{CC: "aarch64-linux-gnu-gcc", GOARCH: "arm64"})
	}()
	testsErr := buildTests(root, pkgs, env)
	if err := cmp.Or(<-fixturesDone, testsErr); err != nil {
		return nil, err
	}
	// Fixtures may name each other by absolute path (a program linked
	// with a library's path, a library's -L directory): the VM links the
	// path they were built at to /fixtures (vminit, /tests/fixtures-built-at).
	if err := os.WriteFile(filepath.Join(root, "tests", "fixtures-built-at"), []byte(fixtures+"\n"), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(root, "tests", "plan"), plan(pkgs), 0o644); err != nil {
		return nil, err
	}
	// The dynamic linker where binaries look for it, and the libraries
	// where it looks for them.
	libs := []string{"ld-linux-aarch64.so.1", "libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2",
		"librt.so.1", "libresolv.so.2", "libgcc_s.so.1", "libnss_files.so.2"}
	for _, l := range libs {
		if err := copyFile(filepath.Join(crossLib, l), filepath.Join(root, "lib/aarch64-linux-gnu", l)); err != nil {
			return nil, err
		}
	}
	for _, link := range []struct{ name, target string }{
		{"lib/ld-linux-aarch64.so.1", "aarch64-linux-gnu/ld-linux-aarch64.so.1"},
		{"lib64", "lib"},
		{"usr/lib", "../lib"},
	} {
		os.MkdirAll(filepath.Dir(filepath.Join(root, link.name)), 0o755)
		if err := os.Symlink(link.target, filepath.Join(root, link.name)); err != nil {
			return nil, err
		}
	}
	return pkgs, nil
}

// buildTests builds the packages' test binaries into root/tests with one
// go command (which builds them in parallel), named by binName.
func buildTests(root string, pkgs []Package, env []string) error {
	dir := filepath.Join(root, "tests", "by-package")
	args := []string{"test", "-c", "-o", dir + "/"}
	for _, p := range pkgs {
		args = append(args, "./"+p.Path)
	}
	cmd := exec.Command("go", args...)
	cmd.Env = append(env, "CGO_ENABLED=1", "CC=aarch64-linux-gnu-gcc")
	if err := run(cmd); err != nil {
		return err
	}
	for _, p := range pkgs {
		// go test -o DIR/ names each binary after its package's last element.
		if err := os.Rename(filepath.Join(dir, filepath.Base(p.Path)+".test"), filepath.Join(root, "tests", binName(p))); err != nil {
			return fmt.Errorf("test binary of %s: %w", p.Path, err)
		}
	}
	return os.Remove(dir)
}

// plan returns vminit's plan: a line per test binary, "NAME TIMEOUT
// [FLAGS...]", in the order of pkgs.
func plan(pkgs []Package) []byte {
	var plan bytes.Buffer
	for _, p := range pkgs {
		fmt.Fprintf(&plan, "%s %s", binName(p), p.timeout())
		if p.Skip != "" {
			fmt.Fprintf(&plan, " -test.skip=%s", p.Skip)
		}
		if p.Run != "" {
			fmt.Fprintf(&plan, " -test.run=%s", p.Run)
		}
		if *extra != "" {
			fmt.Fprintf(&plan, " %s", *extra)
		}
		plan.WriteString("\n")
	}
	return plan.Bytes()
}

// timeout is the bound on p's test binary.
func (p Package) timeout() time.Duration { return cmp.Or(p.Timeout, 3*time.Minute) }

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}

// packInitramfs writes root as a gzipped newc cpio archive owned by root.
func packInitramfs(root, out string) error {
	var list bytes.Buffer
	err := filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if rel, _ := filepath.Rel(root, p); rel != "." {
			list.WriteString(rel + "\n")
		}
		return nil
	})
	if err != nil {
		return err
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	cpio := exec.Command("cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0")
	cpio.Dir, cpio.Stdin = root, &list
	gz := exec.Command("gzip", "-1")
	gz.Stdout = f
	pipe, err := cpio.StdoutPipe()
	if err != nil {
		return err
	}
	gz.Stdin = pipe
	var stderr bytes.Buffer
	cpio.Stderr, gz.Stderr = &stderr, &stderr
	if err := gz.Start(); err != nil {
		return err
	}
	if err := cpio.Run(); err != nil {
		return fmt.Errorf("cpio: %w\n%s", err, stderr.Bytes())
	}
	if err := gz.Wait(); err != nil {
		return fmt.Errorf("gzip: %w\n%s", err, stderr.Bytes())
	}
	return nil
}

// boot runs the VM and returns its console output, echoing it live.
func boot(kernel, initrd string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	// As many CPUs as the host has, from 2 to 4 (a test binary and the
	// processes it starts keep about two busy; more than the host has would
	// wait for its cores), and 1.5 GiB of memory for each (3 GiB for two,
	// as the lane always had: 4 GiB was no faster).
	cpus := min(max(runtime.NumCPU(), 2), 4)
	cmd := exec.CommandContext(ctx, "qemu-system-aarch64",
		"-M", "virt", "-cpu", "max,pauth-impdef=on", "-smp", strconv.Itoa(cpus), "-m", strconv.Itoa(1536*cpus),
		"-nographic", "-no-reboot", "-nic", "none", "-monitor", "none", "-serial", "stdio",
		"-kernel", kernel, "-initrd", initrd,
		"-append", "console=ttyAMA0 rdinit=/init panic=-1 quiet loglevel=3 mitigations=off")
	var out bytes.Buffer
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr, cmd.Stdin = pw, pw, nil
	done := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := strings.TrimRight(sc.Text(), "\r")
			out.WriteString(line + "\n")
			fmt.Println("vm| " + line)
		}
		close(done)
	}()
	start := time.Now()
	fmt.Printf("armvm: booting qemu-system-aarch64 -M virt (TCG), %d CPUs\n", cpus)
	err := cmd.Run()
	pw.Close()
	<-done
	if ctx.Err() != nil {
		err = fmt.Errorf("qemu-system-aarch64 killed after %v (the VM did not power off)", *timeout)
	}
	fmt.Printf("armvm: VM ran %.1fs\n", time.Since(start).Seconds())
	return out.String(), err
}

// Result is what the VM reported for one test binary.
type Result struct {
	Name    string
	Status  int
	Ended   bool
	Elapsed string
	// CPU is the CPU time the binary and the processes it waited for
	// used ("" from a vminit that did not say).
	CPU              string
	Pass, Fail, Skip int // top-level tests
	// SubPass, SubFail, SubSkip count subtests (a parent whose subtests
	// all skipped still reports PASS).
	SubPass, SubFail, SubSkip int
	// Failures are the lines that say what failed: --- FAIL lines, the
	// assertions' Error/Messages lines, test logs and panics.
	Failures []string
}

// failureLine reports whether a line of a test binary's output says what
// failed (so that it is repeated where a truncated CI log still shows it).
func failureLine(line string) bool {
	l := strings.TrimSpace(line)
	if strings.HasPrefix(l, "--- FAIL") || strings.HasPrefix(l, "panic:") || strings.HasPrefix(l, "Error:") ||
		strings.HasPrefix(l, "Messages:") || strings.HasPrefix(l, "Error Trace:") {
		return true
	}
	return testLogRe.MatchString(l)
}

var testLogRe = regexp.MustCompile(`^\S+_test\.go:\d+:`)

// Output is the parsed console of a VM run.
type Output struct {
	Boot    string // kernel uptime when init started
	Done    bool
	Results []*Result
}

var (
	endRe  = regexp.MustCompile(`^` + marker + ` end (\S+) status=(-?\d+) elapsed=(\S+)(?: cpu=(\S+))?`)
	testRe = regexp.MustCompile(`^(\s*)--- (PASS|FAIL|SKIP): `)
)

// Parse reads the markers vminit prints and the top-level test results
// between them.
func Parse(console string) Output {
	var o Output
	var cur *Result
	var pending []string
	for _, line := range strings.Split(console, "\n") {
		line = strings.TrimRight(line, "\r")
		switch {
		case strings.HasPrefix(line, marker+" boot "):
			o.Boot = strings.TrimPrefix(line, marker+" boot ")
		case strings.HasPrefix(line, marker+" begin "):
			cur = &Result{Name: strings.TrimPrefix(line, marker+" begin ")}
			o.Results = append(o.Results, cur)
		case strings.HasPrefix(line, marker+" done"):
			o.Done = true
		case endRe.MatchString(line):
			m := endRe.FindStringSubmatch(line)
			if cur != nil && cur.Name == m[1] {
				fmt.Sscan(m[2], &cur.Status)
				cur.Ended, cur.Elapsed, cur.CPU = true, m[3], m[4]
			}
			cur = nil
		case cur != nil:
			// Lines of the test running now are kept until it ends; a
			// failure keeps them, a pass drops them.
			switch {
			case strings.HasPrefix(strings.TrimSpace(line), "=== RUN"):
				pending = pending[:0]
			case strings.HasPrefix(strings.TrimSpace(line), "--- FAIL") || strings.HasPrefix(strings.TrimSpace(line), "panic:"):
				cur.Failures = append(append(cur.Failures, pending...), line)
				pending = pending[:0]
			case failureLine(line):
				pending = append(pending, line)
			}
			if m := testRe.FindStringSubmatch(line); m != nil {
				counts := [3]*int{&cur.Pass, &cur.Fail, &cur.Skip}
				if m[1] != "" {
					counts = [3]*int{&cur.SubPass, &cur.SubFail, &cur.SubSkip}
				}
				*counts[strings.Index("PASSFAILSKIP", m[2])/4]++
			}
		}
	}
	return o
}

// maxFailureLines bounds the failure lines repeated per failed package.
const maxFailureLines = 30

// ErrLaneFailed is returned when a test binary failed or did not run.
var ErrLaneFailed = errors.New("arm64 VM lane failed")

func report(pkgs []Package, o Output, bootErr error) error {
	fmt.Printf("armvm: init started at kernel uptime %s\n", o.Boot)
	byName := map[string]*Result{}
	for _, r := range o.Results {
		byName[r.Name] = r
	}
	var bad []string
	for _, p := range pkgs {
		r := byName[binName(p)]
		switch {
		case r == nil:
			fmt.Printf("armvm: %-24s did not run\n", p.Path)
			bad = append(bad, p.Path)
		case !r.Ended || r.Status != 0 || r.Fail > 0 || r.SubFail > 0:
			fmt.Printf("armvm: %-24s FAIL status=%d tests pass=%d fail=%d skip=%d, subtests pass=%d fail=%d skip=%d (%s)\n",
				p.Path, r.Status, r.Pass, r.Fail, r.Skip, r.SubPass, r.SubFail, r.SubSkip, r.Elapsed)
			bad = append(bad, p.Path)
		default:
			fmt.Printf("armvm: %-24s ok   tests pass=%d skip=%d, subtests pass=%d skip=%d (%s, CPU %s)\n",
				p.Path, r.Pass, r.Skip, r.SubPass, r.SubSkip, r.Elapsed, cmp.Or(r.CPU, "?"))
		}
		if p.Skip != "" {
			fmt.Printf("armvm: %-24s not run on arm64: %s (%s)\n", "", p.Skip, p.SkipWhy)
		}
	}
	// What failed, last, where a log cut to its tail still shows it.
	for _, p := range pkgs {
		r := byName[binName(p)]
		if r == nil || (r.Ended && r.Status == 0 && r.Fail == 0 && r.SubFail == 0) {
			continue
		}
		lines := r.Failures
		if len(lines) > maxFailureLines {
			fmt.Printf("armvm: %s: %d lines of failures, the last %d:\n", p.Path, len(lines), maxFailureLines)
			lines = lines[len(lines)-maxFailureLines:]
		}
		for _, l := range lines {
			fmt.Printf("armvm: %s| %s\n", p.Path, strings.TrimSpace(l))
		}
	}
	if bootErr != nil {
		return fmt.Errorf("%w: %v", ErrLaneFailed, bootErr)
	}
	if !o.Done {
		return fmt.Errorf("%w: the VM's init did not finish (see the console above)", ErrLaneFailed)
	}
	if len(bad) > 0 {
		return fmt.Errorf("%w: %s", ErrLaneFailed, strings.Join(bad, ", "))
	}
	return nil
}
