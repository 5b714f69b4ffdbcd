package patch_test

import (
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/internal/fixture"
)

func TestZZDump(t *testing.T) {
	p := fixture.Start(t, fixture.BuildGo(t, "gocgo", "", fixture.CgoLinkModes["external"]...))
	command(t, p, "busy 2", regexp.MustCompile(`^busy 2$`))
	command(t, p, "cthreads 2", regexp.MustCompile(`^cthreads 2$`))
	command(t, p, "gocall 2", regexp.MustCompile(`^callbacks`))
	tg := attach(t, p.Pid)
	snap, err := tg.Threads()
	require.NoError(t, err)
	for _, task := range snap.Tasks {
		t.Logf("%s key=%#x reliable=%v %s\n   %s", task, task.Key, task.Stack.Reliable, task.Stack.Reason, strings.Join(frameNames(tg, task), " < "))
	}
}
