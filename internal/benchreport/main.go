// Command benchreport writes docs/performance.md and docs/pause.svg from
// the output of the benchmarks make bench runs (patch's BenchmarkPause,
// trampoline's BenchmarkDispatch), with the machine they ran on.
//
//	go run ./internal/benchreport -out docs bench-output.txt...
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// result is one benchmark line: its name (without the -GOMAXPROCS suffix)
// and its metrics by unit.
type result struct {
	name    string
	metrics map[string]float64
}

var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+\d+\s+(.*)$`)

// parse reads go test -bench output; a benchmark run more than once (count)
// keeps the median of each metric.
func parse(r io.Reader) ([]result, error) {
	runs := map[string]map[string][]float64{}
	var order []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		m := benchLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		f := strings.Fields(m[2])
		if _, ok := runs[m[1]]; !ok {
			runs[m[1]] = map[string][]float64{}
			order = append(order, m[1])
		}
		for i := 0; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return nil, fmt.Errorf("benchreport: %q: %w", sc.Text(), err)
			}
			runs[m[1]][f[i+1]] = append(runs[m[1]][f[i+1]], v)
		}
	}
	var out []result
	for _, name := range order {
		res := result{name: name, metrics: map[string]float64{}}
		for unit, vs := range runs[name] {
			slices.Sort(vs)
			res.metrics[unit] = vs[len(vs)/2]
		}
		out = append(out, res)
	}
	return out, sc.Err()
}

func main() {
	out := flag.String("out", "docs", "directory to write performance.md and pause.svg to")
	flag.Parse()
	var all []result
	var raw strings.Builder
	for _, path := range flag.Args() {
		b, err := os.ReadFile(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		raw.Write(b)
		rs, err := parse(strings.NewReader(string(b)))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		all = append(all, rs...)
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	svg := plot(pauses(all))
	if err := os.WriteFile(filepath.Join(*out, "pause.svg"), []byte(svg), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	md := report(all, machine(), raw.String())
	if err := os.WriteFile(filepath.Join(*out, "performance.md"), []byte(md), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
