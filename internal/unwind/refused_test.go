package unwind

import (
	"debug/elf"
	"debug/gosym"
	"errors"
	"strings"
	"testing"

	"github.com/hotpatch-dev/hotpatch/internal/fixture"
)

// TestRefusedTables: a module whose tables are refused, for its Go release
// (Module.Refused) or for its pclntab's format (go1.19 writes the Go 1.18
// one), never gives a reliable stack, nor one that "switched stacks" at a
// runtime function (which a caller may count as complete), even when a
// .eh_frame gives the module CFI. The reason names the refusal.
func TestRefusedTables(t *testing.T) {
	u, tab, _ := goBinary(t)
	goexit := fn(t, tab, "runtime.goexit")
	m := u.Modules[0]
	// Unrefused, a walk stopped at goexit's entry ends there, complete.
	if s := u.Unwind(fakeMem{}, pcAt(u.Arch, goexit.Entry)); !s.Reliable {
		t.Fatalf("at runtime.goexit: %s", s.Reason)
	}

	refused := &Module{Name: m.Name, Start: m.Start, End: m.End, Pclntab: m.Pclntab, GoTextStart: m.GoTextStart,
		Refused: errors.New("Go release go1.19.13 is not supported")}
	old, oldGoexit := oldGoModule(t)
	for _, tc := range []struct {
		name string
		m    *Module
		pc   uint64
		why  string
	}{
		{"release refused", refused, goexit.Entry, "go1.19.13 is not supported"},
		{"go1.19 pclntab", old, oldGoexit, "Go 1.18–1.19"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := &Unwinder{Arch: u.Arch, Modules: []*Module{tc.m}}
			s := u.Unwind(fakeMem{}, pcAt(u.Arch, tc.pc))
			if s.Reliable || s.SwitchedAt != "" || !strings.Contains(s.Reason, tc.why) {
				t.Fatalf("reliable=%v switched at %q: %s (want unreliable for %q)", s.Reliable, s.SwitchedAt, s.Reason, tc.why)
			}
			if err := u.Prepare(); err == nil || !strings.Contains(err.Error(), tc.why) {
				t.Fatalf("Prepare = %v, want the refusal", err)
			}
		})
	}
}

// pcAt is a register set stopped at pc.
func pcAt(a Arch, pc uint64) []uint64 {
	r := make([]uint64, a.RAReg+1)
	r[a.SPReg], r[a.RAReg] = 0x7000_0000, pc
	return r
}

// oldGoModule is gotasks built by go1.19 (a Go 1.18-format pclntab) with an
// empty .eh_frame, and the address of its runtime.goexit.
func oldGoModule(t *testing.T) (*Module, uint64) {
	f, err := elf.Open(fixture.BuildGo(t, "gotasks", "go1.19.13"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	text := f.Section(".text")
	pcln, err := f.Section(".gopclntab").Data()
	if err != nil {
		t.Fatal(err)
	}
	gt, err := gosym.NewTable(nil, gosym.NewLineTable(pcln, text.Addr))
	if err != nil {
		t.Fatal(err)
	}
	goexit := gt.LookupFunc("runtime.goexit")
	if goexit == nil {
		t.Fatal("no runtime.goexit in the go1.19 build")
	}
	return &Module{Name: "gotasks-go1.19", Start: text.Addr, End: text.Addr + text.Size, Pclntab: pcln,
		GoTextStart: text.Addr, EHFrame: make([]byte, 4), EHFrameAddr: 0x1000}, goexit.Entry
}
