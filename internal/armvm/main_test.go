package main

import (
	"reflect"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		console string
		want    Output
	}{
		{
			name: "two binaries, one failing, kernel noise and CRs",
			console: "[    1.0] Run /init as init process\r\n" +
				"@@hotpatch-vm boot 2.19s\r\n" +
				"@@hotpatch-vm begin a.test\n" +
				"=== RUN   TestX\n--- PASS: TestX (0.00s)\n--- SKIP: TestY (0.00s)\n" +
				"--- PASS: TestZ (0.10s)\n    --- PASS: TestZ/1 (0.00s)\n    --- SKIP: TestZ/2 (0.00s)\nPASS\n" +
				"@@hotpatch-vm end a.test status=0 elapsed=0.3s cpu=0.5s\n" +
				"@@hotpatch-vm begin b.test\n" +
				"=== RUN   TestV\n    v_test.go:3: a log of a passing test\n--- PASS: TestV (0.00s)\n" +
				"=== RUN   TestW\n    w_test.go:12: \n        \tError Trace:\t/x/w_test.go:12\n        \tError:      \tNot equal\n" +
				"        \tsome diff line\n" +
				"--- FAIL: TestW (0.00s)\n        --- FAIL: TestW/x (0.00s)\nFAIL\n" +
				"@@hotpatch-vm note b.test: exit status 1\n" +
				"@@hotpatch-vm end b.test status=1 elapsed=1.5s\n" +
				"@@hotpatch-vm done 2.0s\n[    5.0] reboot: Power down\n",
			want: Output{Boot: "2.19s", Done: true, Results: []*Result{
				{Name: "a.test", Ended: true, Elapsed: "0.3s", CPU: "0.5s", Pass: 2, Skip: 1, SubPass: 1, SubSkip: 1},
				{Name: "b.test", Status: 1, Ended: true, Elapsed: "1.5s", Pass: 1, Fail: 1, SubFail: 1, Failures: []string{
					"    w_test.go:12: ", "        \tError Trace:\t/x/w_test.go:12", "        \tError:      \tNot equal",
					"--- FAIL: TestW (0.00s)", "        --- FAIL: TestW/x (0.00s)"}},
			}},
		},
		{
			name:    "binary killed mid-run, VM never done",
			console: "@@hotpatch-vm boot 3s\n@@hotpatch-vm begin a.test\n--- PASS: TestX (0.00s)\n",
			want:    Output{Boot: "3s", Results: []*Result{{Name: "a.test", Pass: 1}}},
		},
		{
			name:    "end marker of another binary does not close the current one",
			console: "@@hotpatch-vm begin a.test\n@@hotpatch-vm end b.test status=0 elapsed=1s\n",
			want:    Output{Results: []*Result{{Name: "a.test"}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Parse(tt.console)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Parse:\n got %+v\nwant %+v", fmtOut(got), fmtOut(tt.want))
			}
		})
	}
}

// The plan lists each binary with its timeout (3m unless the package says)
// and flags.
func TestPlan(t *testing.T) {
	pkgs := []Package{{Path: "a"}, {Path: "b/c", Timeout: 10 * time.Minute, Skip: "^X$"}, {Path: "d", Run: "Y"}, {Path: "e", Timeout: 15 * time.Minute}}
	want := "a.test 3m0s\nb_c.test 10m0s -test.skip=^X$\nd.test 3m0s -test.run=Y\ne.test 15m0s\n"
	if got := string(plan(pkgs)); got != want {
		t.Errorf("plan:\n%s\nwant\n%s", got, want)
	}
}

func fmtOut(o Output) []Result {
	var out []Result
	for _, r := range o.Results {
		out = append(out, *r)
	}
	return out
}

// A run is reported as failed unless every binary ended with status 0 and
// no failures, and init finished.
func TestReport(t *testing.T) {
	pkgs := []Package{{Path: "a"}, {Path: "b"}}
	ok := &Result{Name: "a.test", Ended: true, Pass: 1}
	tests := []struct {
		name string
		o    Output
		fail bool
	}{
		{"all passed", Output{Done: true, Results: []*Result{ok, {Name: "b.test", Ended: true, Pass: 2}}}, false},
		{"one missing", Output{Done: true, Results: []*Result{ok}}, true},
		{"not done", Output{Results: []*Result{ok, {Name: "b.test", Ended: true}}}, true},
		{"status", Output{Done: true, Results: []*Result{ok, {Name: "b.test", Ended: true, Status: 2}}}, true},
		{"subtest failed", Output{Done: true, Results: []*Result{ok, {Name: "b.test", Ended: true, SubFail: 1}}}, true},
		{"not ended", Output{Done: true, Results: []*Result{ok, {Name: "b.test"}}}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := report(pkgs, tt.o, nil); (err != nil) != tt.fail {
				t.Fatalf("report = %v, want failure %v", err, tt.fail)
			}
		})
	}
}
