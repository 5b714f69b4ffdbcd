//go:build linux

package patch_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/hotpatch-dev/hotpatch/internal/consistency"
	"github.com/hotpatch-dev/hotpatch/internal/fixture"
	"github.com/hotpatch-dev/hotpatch/internal/tracee"
	"github.com/hotpatch-dev/hotpatch/patch"
)

// BenchmarkPause measures, side by side in one run, the pause of an apply
// and its floor: interrupting, waiting for and resuming the same threads,
// already attached (attachedFloor), and what stopping costs as tracee does it
// without a hold (Stop and Resume: seize, interrupt, wait, detach) and with
// the threads held beforehand, as applies to C targets do ("held-stop-
// resume": interrupt, wait, continue through tracee). Each iteration
// measures both, then applies and reverts; for Go targets it also measures the
// snapshot alone, walking every goroutine in the stop ("take-full", what the
// pause did before goroutines were walked ahead) and walking again only
// those whose inputs changed ("take-incremental"). Medians (µs) are
// reported per target: C with N threads that sleep or spin, Go (GOMAXPROCS
// 8) with N parked goroutines. make bench draws docs/performance.md from it.
//
//	go test ./patch -run '^$' -bench Pause -benchtime 20x
func BenchmarkPause(b *testing.B) {
	for _, c := range []struct {
		threads int
		mode    string
	}{{1, "sleep"}, {8, "sleep"}, {64, "sleep"}, {256, "sleep"}, {1, "busy"}, {8, "busy"}} {
		b.Run(fmt.Sprintf("c-%s-%d", c.mode, c.threads), func(b *testing.B) {
			p := fixture.Start(b, fixture.BuildC(b, "cservice", "-O2"), strconv.Itoa(c.threads-1), c.mode)
			p.Expect(b, regexp.MustCompile(`^result`), 10*time.Second)
			benchPause(b, attach(b, p.Pid), "compute", "compute_fixed", false)
		})
	}
	for _, n := range []int{0, 1000, 10000, 100000} {
		b.Run(fmt.Sprintf("go-%d", n), func(b *testing.B) {
			cmd := exec.Command(fixture.BuildGo(b, "gotasks", ""))
			cmd.Env = append(os.Environ(), "GOMAXPROCS=8")
			p := fixture.StartCmd(b, cmd)
			p.Expect(b, tickOld, 10*time.Second)
			if n > 0 {
				command(b, p, fmt.Sprintf("park %d", n), regexp.MustCompile(`^parked \d+$`))
			}
			benchPause(b, attach(b, p.Pid), "main.compute", "main.computeFixed", true)
		})
	}
}

// benchPause runs b.N iterations on tg and reports the medians.
func benchPause(b *testing.B, tg *patch.Target, old, new string, goTarget bool) {
	src, err := patch.SourceOf(tg)
	if err != nil {
		b.Fatal(err)
	}
	proc := src.Proc
	var attached, floor, held, apply, revert, full, incr []time.Duration
	threads, tasks := 0, 0
	for i := 0; i < b.N; i++ {
		d, err := attachedFloor(proc.Pid())
		if err != nil {
			b.Fatal(err)
		}
		attached = append(attached, d)
		start := time.Now()
		if err := proc.Stop(); err != nil {
			b.Fatal(err)
		}
		threads = len(proc.Threads())
		if err := proc.Resume(); err != nil {
			b.Fatal(err)
		}
		floor = append(floor, time.Since(start))
		held = append(held, heldPause(b, proc))
		if goTarget {
			var snap consistency.Snapshot
			snap, full = takePause(b, src, nil, full)
			tasks = len(snap.Tasks)
			prior, err := src.Prewalk()
			if err != nil {
				b.Fatal(err)
			}
			_, incr = takePause(b, src, prior, incr)
			if prior.NativeErr != nil {
				b.Fatal(prior.NativeErr)
			}
			if err := prior.Close(); err != nil {
				b.Fatal(err)
			}
		}
		res, err := tg.Apply(context.Background(), []patch.Replacement{{Old: old, New: new}}, patch.ApplyOptions{})
		if err != nil {
			b.Fatal(err)
		}
		rr, err := tg.Revert(context.Background(), res.ID, patch.ApplyOptions{})
		if err != nil {
			b.Fatal(err)
		}
		apply, revert = append(apply, res.Pause), append(revert, rr.Pause)
	}
	b.StopTimer()
	reportPauses(b, "floor", attached)
	reportPauses(b, "seize-stop-detach", floor)
	reportPauses(b, "held-stop-resume", held)
	reportPauses(b, "apply-pause", apply)
	reportPauses(b, "revert-pause", revert)
	if goTarget {
		reportPauses(b, "take-full", full)
		reportPauses(b, "take-incremental", incr)
		b.ReportMetric(float64(tasks), "tasks")
	}
	b.ReportMetric(float64(threads), "threads")
	b.ReportMetric(float64(runtime.NumCPU()), "cpus")
}

// heldPause measures a stop as an apply makes it: the
// threads held (seized) beforehand, Stop and Resume are interrupt, wait,
// continue, as in the floor but through tracee.
func heldPause(b *testing.B, proc *tracee.Process) time.Duration {
	if err := proc.Hold(); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	if err := proc.Stop(); err != nil {
		b.Fatal(err)
	}
	if err := proc.Resume(); err != nil {
		b.Fatal(err)
	}
	d := time.Since(start)
	if err := proc.Release(); err != nil {
		b.Fatal(err)
	}
	return d
}

// takePause stops the target, takes a snapshot (reusing prior's walks when
// given) and resumes it, and appends how long it was stopped to pauses.
func takePause(b *testing.B, src consistency.Source, prior *consistency.Walks, pauses []time.Duration) (consistency.Snapshot, []time.Duration) {
	start := time.Now()
	if err := src.Proc.Stop(); err != nil {
		b.Fatal(err)
	}
	snap, err := src.TakeAfter(prior)
	if rerr := src.Proc.Resume(); rerr != nil {
		b.Fatal(rerr)
	}
	if err != nil {
		b.Fatal(err)
	}
	return snap, append(pauses, time.Since(start))
}
