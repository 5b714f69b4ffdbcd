//go:build linux

package patch_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/internal/fixture"
	"github.com/hotpatch-dev/hotpatch/patch"
)

// TestThreadsNamesFrames: Threads lists every task of a live target with
// its stack in public types: each frame's function, offset, module and, for
// Go code, its source line (of the call, for return addresses).
func TestThreadsNamesFrames(t *testing.T) {
	t.Run("go", func(t *testing.T) {
		bin := fixture.BuildGo(t, "goservice", "")
		p := fixture.Start(t, bin)
		tasks, err := attach(t, p.Pid).Threads()
		require.NoError(t, err)
		var reader *patch.Task
		for i, task := range tasks {
			require.NotEmpty(t, task.String())
			require.Contains(t, []patch.TaskKind{patch.TaskThread, patch.TaskGoroutine}, task.Kind)
			for _, f := range task.Stack.Frames {
				if f.Func == "main.slowRead" {
					reader = &tasks[i]
				}
			}
		}
		require.NotNil(t, reader, "the goroutine blocked in main.slowRead is listed")
		require.Equal(t, patch.TaskGoroutine, reader.Kind)
		var caller *patch.Frame
		for i, f := range reader.Stack.Frames {
			if strings.HasPrefix(f.Func, "main.main.func") {
				caller = &reader.Stack.Frames[i]
			}
		}
		require.NotNil(t, caller, "slowRead's caller is on the stack:\n%s", reader.Stack)
		require.Equal(t, "main.go", filepath.Base(caller.File))
		require.Equal(t, 65, caller.Line, "the line of the call of slowRead")
		require.Equal(t, filepath.Base(bin), filepath.Base(caller.Module))
		require.NotZero(t, caller.Offset)
		require.Contains(t, reader.Stack.String(), "main.slowRead+0x")
	})
	t.Run("c", func(t *testing.T) {
		bin := fixture.BuildC(t, "cservice", "-O2")
		p := fixture.Start(t, bin)
		tasks, err := attach(t, p.Pid).Threads()
		require.NoError(t, err)
		found := false
		for _, task := range tasks {
			require.Equal(t, patch.TaskThread, task.Kind)
			for _, f := range task.Stack.Frames {
				if f.Func == "slow_read" {
					found = true
					require.Equal(t, filepath.Base(bin), filepath.Base(f.Module))
					require.Empty(t, f.File, "no Go line table for C code")
				}
			}
		}
		require.True(t, found, "the reader thread is in slow_read")
	})
}
