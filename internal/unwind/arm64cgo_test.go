package unwind

import (
	"debug/elf"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hotpatch-dev/hotpatch/internal/fixture"
	"github.com/hotpatch-dev/hotpatch/internal/gopcln"
)

// cgoARM64 is the gocgo fixture built for arm64 and linked externally (so
// its C code has .eh_frame): an unwinder for it, its pclntab, its ELF
// symbols and a way to copy code into a captured stack.
type cgoARM64 struct {
	u    *Unwinder
	tab  *gopcln.Table
	syms map[string]elf.Symbol
	text *elf.Section
}

func openCgoARM64(t *testing.T) cgoARM64 {
	t.Helper()
	f, err := elf.Open(fixture.BuildGoArch(t, "gocgo", "", "arm64", "-ldflags=-linkmode=external"))
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	text := f.Section(".text")
	data := func(name string) ([]byte, uint64) {
		s := f.Section(name)
		require.NotNil(t, s, name)
		b, err := s.Data()
		require.NoError(t, err)
		return b, s.Addr
	}
	symbols, err := f.Symbols()
	require.NoError(t, err)
	syms := map[string]elf.Symbol{}
	for _, s := range symbols {
		syms[s.Name] = s
	}
	// Linked externally, C code precedes the Go text.
	goText := syms["runtime.text"].Value
	pcln, _ := data(".gopclntab")
	tab, err := gopcln.Parse(pcln, goText)
	require.NoError(t, err)
	eh, ehAddr := data(".eh_frame")
	hdr, hdrAddr := data(".eh_frame_hdr")
	u := &Unwinder{Arch: ARM64, Modules: []*Module{{Name: "gocgo", Start: text.Addr, End: text.Addr + text.Size,
		Pclntab: pcln, GoTextStart: goText, EHFrame: eh, EHFrameAddr: ehAddr, EHFrameHdr: hdr, EHFrameHdrAddr: hdrAddr}}}
	return cgoARM64{u: u, tab: tab, syms: syms, text: text}
}

// code copies n instructions at addr into mem, as the target's memory
// holds them.
func (c cgoARM64) code(t *testing.T, mem fakeMem, addr uint64, n int) {
	t.Helper()
	b := make([]byte, 4*n+8)
	_, err := c.text.ReadAt(b, int64(addr&^7-c.text.Addr))
	require.NoError(t, err)
	for i := 0; i+8 <= len(b); i += 8 {
		mem[addr&^7+uint64(i)] = binary.LittleEndian.Uint64(b[i:])
	}
}

// after returns the address after the first instruction of the n at addr
// for which is holds.
func (c cgoARM64) after(t *testing.T, addr uint64, n int, is func(w uint32) bool) uint64 {
	t.Helper()
	b := make([]byte, 4*n)
	_, err := c.text.ReadAt(b, int64(addr-c.text.Addr))
	require.NoError(t, err)
	for i := 0; i < n; i++ {
		if is(binary.LittleEndian.Uint32(b[4*i:])) {
			return addr + 4*uint64(i) + 4
		}
	}
	t.Fatalf("no such instruction in %d at %#x", n, addr)
	return 0
}

func isBL(w uint32) bool { return w&0xfc000000 == 0x94000000 }

// blTo is a BL at its address to target.
func blTo(at, target uint64) func(uint64, uint32) bool {
	return func(a uint64, w uint32) bool {
		return isBL(w) && a+uint64(int64(int32(w<<6)>>6)*4) == target
	}
}

func (c cgoARM64) callSite(t *testing.T, caller string, is func(uint64, uint32) bool) uint64 {
	t.Helper()
	s, ok := c.syms[caller]
	require.True(t, ok, caller)
	b := make([]byte, s.Size)
	_, err := c.text.ReadAt(b, int64(s.Value-c.text.Addr))
	require.NoError(t, err)
	for i := 0; i+4 <= len(b); i += 4 {
		if is(s.Value+uint64(i), binary.LittleEndian.Uint32(b[i:])) {
			return s.Value + uint64(i) + 4
		}
	}
	t.Fatalf("no call site in %s", caller)
	return 0
}

// TestARM64CgoThreadStart: a thread the runtime created through cgo is
// walked from runtime.mstart into the C frames above it: crosscall1, whose
// CFI defines the CFA by x29, gets the x29 mstart's prologue saved below
// its frame; a prologue that is not the known code leaves x29 unknown.
func TestARM64CgoThreadStart(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change bool
	}{{"known prologue", false}, {"prologue not known", true}} {
		t.Run(tc.name, func(t *testing.T) {
			c := openCgoARM64(t)
			mstart := fn(t, c.tab, "runtime.mstart")
			crosscall1 := c.syms["crosscall1"].Value
			retMstart := c.after(t, mstart.Entry, 8, isBL)
			retCrosscall1 := c.after(t, crosscall1, 16, func(w uint32) bool { return w == 0xd63f0260 }) // blr x19
			retThreadentry := c.callSite(t, "threadentry", blTo(0, crosscall1))
			const s = 0x7000_0000 // mstart's frame
			const f = s + 16      // crosscall1's: x29 = its SP
			const te = f + 96     // threadentry's
			mem := fakeMem{s: retCrosscall1, s - 8: f, f: te, f + 8: retThreadentry, te: 0, te + 8: 0x4000_1234, te + 16: 0, te + 24: 0}
			for i := uint64(16); i < 96; i += 8 {
				mem[f+i] = 0
			}
			c.code(t, mem, mstart.Entry, 8)
			if tc.change {
				mem[mstart.Entry] ^= 1 << 32 // stur x29, [sp, #-8] is now another instruction
			}
			r := make([]uint64, ARM64.RAReg+1)
			r[ARM64.SPReg], r[ARM64.RAReg] = s, retMstart
			st := c.u.UnwindReturn(mem, r)
			if tc.change {
				require.False(t, st.Reliable)
				require.Contains(t, st.Reason, "CFA register 29 unknown")
				return
			}
			require.Len(t, st.Frames, 4, "%s: %+v", st.Reason, st.Frames)
			require.Equal(t, []uint64{retMstart, retCrosscall1, retThreadentry, 0x4000_1234},
				[]uint64{st.Frames[0].PC, st.Frames[1].PC, st.Frames[2].PC, st.Frames[3].PC})
			require.True(t, strings.HasPrefix(st.Reason, "no module maps pc 0x40001234"), st.Reason)
		})
	}
}

// TestARM64Crosscall2: from runtime.cgocallback's frame on the system
// stack, a cgo callback is walked through crosscall2 (its saved LR and x29
// are not where a Go frame keeps them) into the C function that called
// back, whose registers crosscall2 saved; crosscall2's code changed is not
// stepped over. A C caller without unwind tables (an internally linked
// binary) is not a thread root as crosscall1's caller is: unreliable.
func TestARM64Crosscall2(t *testing.T) {
	for _, tc := range []struct {
		name          string
		change, noCFI bool
	}{{"known code", false, false}, {"code not known", true, false}, {"C caller without unwind tables", false, true}} {
		t.Run(tc.name, func(t *testing.T) {
			c := openCgoARM64(t)
			if tc.noCFI {
				c.u.Modules[0].EHFrame, c.u.Modules[0].EHFrameHdr = nil, nil
			}
			cgocallback, crosscall2 := fn(t, c.tab, "runtime.cgocallback"), fn(t, c.tab, "crosscall2")
			retCgocallback := c.after(t, cgocallback.Entry, 80, func(w uint32) bool { return w == 0xd63f0000 }) // blr x0
			retCrosscall2 := crosscall2.Entry + 4*15
			retGoCallback := c.callSite(t, "goCallback", blTo(0, crosscall2.Entry))
			const g = 0x7100_0000 // cgocallback's frame on g0
			const x = g + 48      // crosscall2's
			const cb = x + 192    // goCallback's: x29 = its SP
			mem := fakeMem{g: retCrosscall2, g - 8: cb, cb: 0, cb + 8: 0x4000_5678, cb + 16: 0, cb + 24: 0}
			for i := uint64(0); i < 192; i += 8 {
				mem[x+i] = 0x100 + i
			}
			mem[x], mem[x+176], mem[x+184] = 0, cb, retGoCallback
			c.code(t, mem, cgocallback.Entry, 8)
			c.code(t, mem, crosscall2.Entry, 16)
			if tc.change {
				mem[crosscall2.Entry+8] ^= 1 // str x3, [sp, #24] is now another instruction
			}
			r := make([]uint64, ARM64.RAReg+1)
			r[ARM64.SPReg], r[ARM64.RAReg] = g, retCgocallback
			st := c.u.UnwindReturn(mem, r)
			require.False(t, st.Reliable)
			if tc.change {
				require.Contains(t, st.Reason, "crosscall2 has a zero return address")
				return
			}
			if tc.noCFI {
				require.Contains(t, st.Reason, "no unwind info for pc")
				require.Len(t, st.Frames, 3)
				return
			}
			require.Len(t, st.Frames, 4, "%s: %+v", st.Reason, st.Frames)
			require.Equal(t, []uint64{retCgocallback, retCrosscall2, retGoCallback, 0x4000_5678},
				[]uint64{st.Frames[0].PC, st.Frames[1].PC, st.Frames[2].PC, st.Frames[3].PC})
			require.Equal(t, "handwritten", st.Frames[1].Method)
			require.Equal(t, uint64(cb), st.Frames[1].CFA)
			require.True(t, strings.HasPrefix(st.Reason, "no module maps pc 0x40005678"), st.Reason)
		})
	}
}
