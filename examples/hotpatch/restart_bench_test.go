package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hotpatch-dev/hotpatch/patch"
)

// BenchmarkHotpatchVsRestart serves the demo service (examples/hotpatch/demosvc)
// to 4 clients calling it without pause, and deploys the fix of
// main.greeting twice: by a hot patch, and by a restart (the service stopped
// and started again on the same address, as a deploy does). Each phase lasts
// a second with the change at 300 ms (the hot patch: attach and apply; it is
// reverted after its phase); a phase without change measures the unpatched
// service. Reported: failed requests and the worst latency (ms)
// of each (unpatched-, hotpatch-, restart-).
//
//	go test ./examples/hotpatch -run '^$' -bench HotpatchVsRestart -benchtime 1x
func BenchmarkHotpatchVsRestart(b *testing.B) {
	bin, err := buildDemo(context.Background(), b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	addr := freeAddr(b)
	svc := startDemo(b, bin, addr)
	defer func() { svc.Process.Kill(); svc.Wait() }()
	url := "http://" + addr + "/hello?name=bench"
	for i := 0; i < b.N; i++ {
		base := underLoad(url, nil)
		var t *patch.Target
		var res *patch.Result
		hot := underLoad(url, func() error {
			if t, err = patch.Attach(svc.Process.Pid, nil); err != nil {
				return err
			}
			res, err = t.Apply(context.Background(), []patch.Replacement{{Old: "main.greeting", New: "main.greetingFixed"}}, patch.ApplyOptions{Timeout: 10 * time.Second})
			return err
		})
		if t != nil {
			if res != nil {
				if _, err := t.Revert(context.Background(), res.ID, patch.ApplyOptions{Timeout: 10 * time.Second}); err != nil {
					b.Fatal(err)
				}
			}
			t.Close()
			b.ReportMetric(float64(res.PauseMicros)/1000, "hotpatch-pause-ms")
		}
		restart := underLoad(url, func() error {
			svc.Process.Kill()
			svc.Wait()
			svc = startDemo(b, bin, addr)
			return nil
		})
		for _, ph := range []struct {
			name string
			p    *phase
		}{{"unpatched", base}, {"hotpatch", hot}, {"restart", restart}} {
			if ph.p.err != nil {
				b.Fatalf("%s: %v", ph.name, ph.p.err)
			}
			b.ReportMetric(float64(ph.p.failed.Load()), ph.name+"-failed")
			b.ReportMetric(float64(time.Duration(ph.p.worst.Load()).Microseconds())/1000, ph.name+"-worst-ms")
			b.ReportMetric(float64(ph.p.ok.Load()), ph.name+"-served")
		}
	}
}

// phase is what the clients saw during one phase.
type phase struct {
	ok, failed, worst atomic.Int64 // worst: nanoseconds
	err               error
}

// underLoad runs 4 clients against url for a second, calling change (when
// given) at 300 ms.
func underLoad(url string, change func() error) *phase {
	var ph phase
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{}}
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				start := time.Now()
				resp, err := client.Get(url)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				d := time.Since(start)
				for w := ph.worst.Load(); int64(d) > w && !ph.worst.CompareAndSwap(w, int64(d)); w = ph.worst.Load() {
				}
				if err != nil {
					ph.failed.Add(1)
					continue
				}
				ph.ok.Add(1)
			}
		}()
	}
	if change != nil {
		time.Sleep(300 * time.Millisecond)
		ph.err = change()
	}
	wg.Wait()
	return &ph
}

// freeAddr returns a loopback address nothing listens on.
func freeAddr(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startDemo starts the demo service on addr and waits until it is ready.
func startDemo(b *testing.B, bin, addr string) *exec.Cmd {
	cmd := exec.Command(bin, "-addr", addr)
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !regexp.MustCompile(`^ready pid=`).MatchString(line) {
		b.Fatalf("demo service did not start (%v): %q", err, line)
	}
	return cmd
}
