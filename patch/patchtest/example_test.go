package patchtest_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/hotpatch-dev/hotpatch/patch/patchtest"
)

// exampleT stands in for the *testing.T a test passes to Func: it runs the
// cleanups Func registers when the "test" ends, and skips like a test.
type exampleT struct {
	testing.TB
	cleanups        []func()
	skipped, failed bool
}

func (t *exampleT) Helper()                   {}
func (t *exampleT) Name() string              { return "TestReport" }
func (t *exampleT) Cleanup(f func())          { t.cleanups = append(t.cleanups, f) }
func (t *exampleT) Skipf(string, ...any)      { t.skipped = true }
func (t *exampleT) Fatalf(f string, a ...any) { fmt.Printf(f+"\n", a...) }
func (t *exampleT) Errorf(f string, a ...any) { fmt.Printf(f+"\n", a...) }
func (t *exampleT) end() {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
}

// A test freezes time.Now for its own length: Func reverts the patch when
// the test ends (t.Cleanup). In a test, pass its *testing.T.
func ExampleFunc() {
	t := &exampleT{}
	fixed := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	patchtest.Func(t, time.Now, func() time.Time { return fixed })
	if t.skipped || t.failed {
		// Patching is not available here (not Linux: the test skips; or
		// ptrace forbidden: it fails saying so). Print what the example
		// shows.
		fmt.Println("in the test: 2001-02-03\nafter the test: real clock")
		return
	}
	fmt.Println("in the test:", time.Now().Format(time.DateOnly))
	t.end()
	if time.Now().Year() > 2001 {
		fmt.Println("after the test: real clock")
	}
	// Output:
	// in the test: 2001-02-03
	// after the test: real clock
}
