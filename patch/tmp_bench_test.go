package patch_test

import (
	"regexp"
	"testing"
	"time"

	"github.com/hotpatch-dev/hotpatch/internal/fixture"
	"github.com/hotpatch-dev/hotpatch/patch"
)

func BenchmarkTmpTakeC(b *testing.B) {
	p := fixture.Start(b, fixture.BuildC(b, "cservice", "-O2"), "7", "sleep")
	p.Expect(b, regexp.MustCompile(`^result`), 10*time.Second)
	tg := attach(b, p.Pid)
	src, _ := patch.SourceOf(tg)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		src.Proc.Stop()
		src.Take()
		src.Proc.Resume()
	}
}
