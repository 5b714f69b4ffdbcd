//go:build linux

package patch_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/internal/fixture"
	"github.com/hotpatch-dev/hotpatch/patch"
)

// loadRequest sends one request on a client of its own and returns the
// number the service answered (compute's result).
type loadRequest func() (int, error)

// loadStats is what a load generator saw in one phase.
type loadStats struct {
	mu        sync.Mutex
	latencies []time.Duration
	failed    int
	wrong     int
	firstErr  error
}

func (s *loadStats) add(d time.Duration, v int, err error, valid func(int) bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case err != nil:
		s.failed++
		if s.firstErr == nil {
			s.firstErr = err
		}
	case !valid(v):
		s.wrong++
		if s.firstErr == nil {
			s.firstErr = fmt.Errorf("answer %d is neither the old nor the new code's", v)
		}
	default:
		s.latencies = append(s.latencies, d)
	}
}

func (s *loadStats) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := slices.Clone(s.latencies)
	slices.Sort(l)
	q := func(f float64) time.Duration {
		if len(l) == 0 {
			return 0
		}
		return l[min(len(l)-1, int(f*float64(len(l))))]
	}
	var worst time.Duration
	if len(l) > 0 {
		worst = l[len(l)-1]
	}
	return fmt.Sprintf("%d requests, %d failed, %d wrong; p50 %v p99 %v max %v",
		len(l)+s.failed+s.wrong, s.failed, s.wrong, q(0.5), q(0.99), worst)
}

// runLoad runs clients request loops until stop is closed (bounded by
// limit), recording into the stats that *phase points at when each request
// ends.
func runLoad(clients int, newRequest func() loadRequest, valid func(int) bool, phase *stats, stop <-chan struct{}, limit time.Duration) *sync.WaitGroup {
	var wg sync.WaitGroup
	deadline := time.Now().Add(limit)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := newRequest()
			for time.Now().Before(deadline) {
				select {
				case <-stop:
					return
				default:
				}
				start := time.Now()
				v, err := req()
				phase.get().add(time.Since(start), v, err, valid)
			}
		}()
	}
	return &wg
}

// stats is the phase the load is in, switched by the test.
type stats struct {
	mu  sync.Mutex
	cur *loadStats
}

func (p *stats) get() *loadStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cur
}

func (p *stats) set(s *loadStats) {
	p.mu.Lock()
	p.cur = s
	p.mu.Unlock()
}

// TestLoadCycles patches and reverts a service again and again while clients
// load it: a C TCP service and a Go HTTP service, 200 apply/revert cycles
// each (25 in the arm64 VM, whose emulated CPU is slow). Not one request may
// fail or be answered by anything but the old or the new code; the latency
// with and without patching goes to the log.
func TestLoadCycles(t *testing.T) {
	cycles := 200
	if runtime.GOARCH == "arm64" {
		cycles = 25
	}
	t.Run("c-tcp", func(t *testing.T) {
		p := fixture.Start(t, fixture.BuildC(t, "ctcp", "-O2", "-fomit-frame-pointer"), "12") // 8 load clients and the probe
		port := p.ExpectAfter(t, 0, regexp.MustCompile(`^listen (\d+)$`), 10*time.Second)[1]
		p.ExpectAfter(t, 0, regexp.MustCompile(`^ready$`), 10*time.Second)
		newReq := func() loadRequest {
			var conn net.Conn
			var rd *bufio.Reader
			return func() (int, error) {
				if conn == nil {
					c, err := net.DialTimeout("tcp", "127.0.0.1:"+port, 5*time.Second)
					if err != nil {
						return 0, err
					}
					conn, rd = c, bufio.NewReader(c)
				}
				conn.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := fmt.Fprintf(conn, "1000\n"); err != nil {
					return 0, err
				}
				line, err := rd.ReadString('\n')
				if err != nil {
					return 0, err
				}
				return strconv.Atoi(strings.TrimPrefix(strings.TrimSpace(line), "result "))
			}
		}
		loadCycles(t, p, cycles, newReq, "compute", "compute_fixed")
	})
	t.Run("go-http", func(t *testing.T) {
		cmd := exec.Command(fixture.BuildGo(t, "goservice", ""))
		cmd.Env = append(os.Environ(), "GOSERVICE_HTTP=1")
		p := fixture.StartCmd(t, cmd)
		url := "http://" + p.ExpectAfter(t, 0, regexp.MustCompile(`^http (\S+)$`), 10*time.Second)[1]
		newReq := func() loadRequest {
			tr := &http.Transport{MaxIdleConnsPerHost: 1}
			client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			t.Cleanup(tr.CloseIdleConnections)
			return func() (int, error) {
				resp, err := client.Get(url)
				if err != nil {
					return 0, err
				}
				defer resp.Body.Close()
				b, err := io.ReadAll(resp.Body)
				if err != nil {
					return 0, err
				}
				if resp.StatusCode != http.StatusOK {
					return 0, fmt.Errorf("GET %s: %s", url, resp.Status)
				}
				return strconv.Atoi(strings.TrimPrefix(strings.TrimSpace(string(b)), "result "))
			}
		}
		loadCycles(t, p, cycles, newReq, "main.compute", "main.computeFixed")
	})
}

// loadCycles measures the service's latency under load without patching,
// then while old is replaced by new and put back cycles times.
func loadCycles(t *testing.T, p *fixture.Proc, cycles int, newReq func() loadRequest, old, new string) {
	// compute(1000): 2000 with the old code, 3001 with the new.
	valid := func(v int) bool { return v == 2000 || v == 3001 }
	base, patching := &loadStats{}, &loadStats{}
	var phase stats
	phase.set(base)
	stop := make(chan struct{})
	wg := runLoad(8, newReq, valid, &phase, stop, 10*time.Minute)
	defer func() {
		close(stop)
		wg.Wait()
	}()
	time.Sleep(time.Second)
	phase.set(patching)

	tg := attach(t, p.Pid)
	ctx := context.Background()
	reps := []patch.Replacement{{Old: old, New: new}}
	var pauses []time.Duration
	probe := newReq() // the service answers with the code of the moment
	expect := func(want int, what string, i int) {
		v, err := probe()
		require.NoError(t, err, "cycle %d", i)
		require.Equal(t, want, v, "cycle %d: %s", i, what)
	}
	for i := 0; i < cycles; i++ {
		res, err := tg.Apply(ctx, reps, patch.ApplyOptions{Timeout: 10 * time.Second})
		require.NoError(t, err, "cycle %d", i)
		pauses = append(pauses, res.Pause)
		if i%20 == 0 {
			expect(3001, "patched", i)
		}
		rr, err := tg.Revert(ctx, res.ID, patch.ApplyOptions{Timeout: 10 * time.Second})
		require.NoError(t, err, "cycle %d", i)
		require.Equal(t, patch.StateReverted, rr.State)
		pauses = append(pauses, rr.Pause)
		if i%20 == 0 {
			expect(2000, "reverted", i)
		}
	}
	close(stop)
	wg.Wait()
	stop = make(chan struct{}) // for the deferred close

	slices.Sort(pauses)
	t.Logf("%d apply/revert cycles; pauses p50 %v max %v", cycles, pauses[len(pauses)/2], pauses[len(pauses)-1])
	t.Logf("without patching: %s", base)
	t.Logf("while patching:   %s", patching)
	for name, s := range map[string]*loadStats{"without patching": base, "while patching": patching} {
		require.Zero(t, s.failed+s.wrong, "%s: %s (first: %v)", name, s, s.firstErr)
		require.NotEmpty(t, s.latencies, "%s: no request was served", name)
	}
	recs, err := tg.Status()
	require.NoError(t, err)
	require.Empty(t, recs, "every patch reverted and its memory gone")
}
