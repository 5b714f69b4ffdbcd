package consistency

import (
	"strings"
	"testing"

	"github.com/hotpatch-dev/hotpatch/internal/unwind"
)

func stack(reliable bool, pcs ...uint64) unwind.Stack {
	s := unwind.Stack{Reliable: reliable}
	if !reliable {
		s.Reason = "no unwind info"
	}
	for _, pc := range pcs {
		s.Frames = append(s.Frames, unwind.Frame{PC: pc})
	}
	return s
}

func TestCheck(t *testing.T) {
	regions := []Region{{Name: "work", Start: 0x1000, End: 0x1040}, {Name: "other", Start: 0x2000, End: 0x2010}}
	tests := []struct {
		name   string
		stack  unwind.Stack
		want   []string // Func of each blocker
		frames []int
	}{
		{"clean", stack(true, 0x5000, 0x6000), nil, nil},
		{"executing", stack(true, 0x1000, 0x6000), []string{"work"}, []int{0}},
		{"last byte", stack(true, 0x103f), []string{"work"}, []int{0}},
		{"just past end", stack(true, 0x1040, 0x5000), nil, nil},
		{"return address at the end", stack(true, 0x5000, 0x1040), []string{"work"}, []int{1}},
		{"return address at the start", stack(true, 0x5000, 0x2000), []string{"other"}, []int{1}},
		{"return address", stack(true, 0x5000, 0x1020, 0x6000), []string{"work"}, []int{1}},
		{"two regions", stack(true, 0x2004, 0x1020), []string{"other", "work"}, []int{0, 1}},
		{"unreliable clean", stack(false, 0x5000), []string{""}, []int{-1}},
		{"unreliable but inside", stack(false, 0x1001), []string{"work"}, []int{0}},
		{"empty unreliable", stack(false), []string{""}, []int{-1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Check(Snapshot{Tasks: []Task{{Kind: "thread", ID: 7, Stack: tt.stack}}}, regions)
			if len(got) != len(tt.want) {
				t.Fatalf("got %d blockers %+v, want %v", len(got), got, tt.want)
			}
			for i, b := range got {
				if b.Func != tt.want[i] || b.Frame != tt.frames[i] || b.Task.ID != 7 || b.Reason == "" {
					t.Errorf("blocker %d = %+v, want func %q frame %d", i, b, tt.want[i], tt.frames[i])
				}
			}
		})
	}
}

func TestBlockedErrorNamesTaskAndStack(t *testing.T) {
	err := &BlockedError{
		Attempts: 3,
		Blockers: []Blocker{{Task: Task{Kind: "thread", ID: 42, Stack: stack(true, 0x1010, 0x6000)}, Func: "work", Reason: "executing in work"}},
		Symbolize: func(pc uint64) string {
			if pc >= 0x1000 && pc < 0x1040 {
				return "work+0x10"
			}
			return "main"
		},
	}
	msg := err.Error()
	for _, want := range []string{"thread 42", "executing in work", "work+0x10", "main", "3 attempts"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message lacks %q:\n%s", want, msg)
		}
	}
}
