package trampoline

import (
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func hexb(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}

func le32(v int32) string {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], uint32(v))
	return hex.EncodeToString(b[:])
}

func TestForMachine(t *testing.T) {
	a, err := ForMachine(elf.EM_X86_64)
	require.NoError(t, err)
	require.Equal(t, elf.EM_X86_64, a.Machine())
	a, err = ForMachine(elf.EM_AARCH64)
	require.NoError(t, err)
	require.Equal(t, elf.EM_AARCH64, a.Machine())
	require.IsType(t, ARM64{}, a)

	for _, m := range []elf.Machine{elf.EM_386, elf.EM_RISCV, elf.EM_ARM} {
		_, err := ForMachine(m)
		require.ErrorIs(t, err, ErrUnsupportedArch)
		var e *Error
		require.ErrorAs(t, err, &e)
		require.Contains(t, err.Error(), m.String())
	}
}

func TestJump(t *testing.T) {
	const from = 0x10_0000_0000
	near := func(rel int32) []byte { return hexb("e9" + le32(rel)) }
	far := func(to uint64) []byte {
		b := hexb("ff2500000000 0000000000000000")
		binary.LittleEndian.PutUint64(b[6:], to)
		return b
	}
	for _, tc := range []struct {
		name string
		to   uint64
		want []byte
	}{
		{"forward", from + 0x1000, near(0x1000 - 5)},
		{"backward", from - 0x1000, near(-0x1000 - 5)},
		{"self", from, near(-5)},
		{"next", from + 5, near(0)},
		{"max rel32", from + 5 + 0x7fff_ffff, near(0x7fff_ffff)},
		{"max rel32 + 1", from + 5 + 0x8000_0000, far(from + 5 + 0x8000_0000)},
		{"min rel32", from + 5 - 0x8000_0000, near(-0x8000_0000)},
		{"min rel32 - 1", from + 5 - 0x8000_0001, far(from + 5 - 0x8000_0001)},
		{"far high", 0x7fff_ffff_0000, far(0x7fff_ffff_0000)},
		{"far low", 0x1000, far(0x1000)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, AMD64{}.Jump(from, tc.to))
		})
	}
}

// relocCase is a function whose first instructions exercise one form.
type relocCase struct {
	name string
	code string // hex
	// refuseFar: the far placement must be refused with this sentinel.
	refuseFar error
	// jumpAt is the offset of Plan.Addr (4 after endbr64).
	jumpAt int
}

const (
	fnAddr = 0x40_0000
	nops16 = "90909090909090909090909090909090"
)

func relocCases() []relocCase {
	return []relocCase{
		{name: "mov rip", code: "488b05" + le32(0x1000) + nops16 + "c3", refuseFar: ErrCannotRelocate},
		{name: "lea rip", code: "488d05" + le32(-0x2000) + nops16 + "c3", refuseFar: ErrCannotRelocate},
		{name: "cmp rip imm8", code: "48833d" + le32(0x100) + "05" + nops16 + "c3", refuseFar: ErrCannotRelocate},
		{name: "cmp reg rip", code: "483b3d" + le32(0x100) + nops16 + "c3", refuseFar: ErrCannotRelocate},
		{name: "jmp [rip]", code: "ff25" + le32(0x3000) + nops16 + "c3", refuseFar: ErrCannotRelocate},
		{name: "vmovdqu vex2 rip", code: "c5fa6f05" + le32(0x1000) + nops16 + "c3", refuseFar: ErrCannotRelocate},
		{name: "vbroadcastss vex3 rip", code: "c4e2791805" + le32(-0x1000) + nops16 + "c3", refuseFar: ErrCannotRelocate},
		{name: "vpalignr vex3 rip imm8", code: "c4e3790f05" + le32(0x1000) + "07" + nops16 + "c3", refuseFar: ErrCannotRelocate},
		{name: "vmovdqu64 evex rip", code: "62f1fe486f05" + le32(0x1000) + nops16 + "c3", refuseFar: ErrCannotRelocate},
		{name: "vmovdqu vex reg", code: "c5fa6fc1" + nops16 + "c3"},
		{name: "vzeroupper", code: "c5f877" + nops16 + "c3"},
		{name: "jcc rel8", code: "4885ff" + "7840" + nops16 + "c3"},
		{name: "jcc rel8 backward", code: "4885ff" + "7580" + nops16 + "c3"},
		{name: "jcc rel32", code: "4885ff" + "0f84" + le32(0x100) + nops16 + "c3"},
		{name: "jmp rel8", code: "4889f8" + "eb40" + nops16 + "c3"},
		{name: "jmp rel32", code: "e9" + le32(-0x500) + nops16 + "c3"},
		{name: "call rel32", code: "53" + "e8" + le32(0x1234) + nops16 + "c3"},
		{name: "loop", code: "4889f9" + "e240" + nops16 + "c3"},
		{name: "loope", code: "4889f9" + "e140" + nops16 + "c3"},
		{name: "loopne", code: "4889f9" + "e040" + nops16 + "c3"},
		{name: "jrcxz", code: "4889f9" + "e340" + nops16 + "c3"},
		{name: "jecxz", code: "4889f9" + "67e340" + nops16 + "c3"},
		{name: "jcc hint prefix", code: "4885ff" + "3e7440" + nops16 + "c3"},
		{name: "bnd jmp", code: "4885ff" + "f2e9" + le32(0x100) + nops16 + "c3"},
		{name: "endbr64", code: "f30f1efa" + "4889f8" + "480fafc7" + nops16 + "c3", jumpAt: 4},
		{name: "endbr64 jcc", code: "f30f1efa" + "4885ff" + "7440" + nops16 + "c3", jumpAt: 4},
		{
			// cmp rsp,[r14+16]; jbe morestack; ...; morestack: call; jmp entry
			name: "go prologue",
			code: "493b6610" + "7611" + nops16 + "c3" + "e8" + le32(0x1000) + "ebde",
		},
		{name: "gcc hp_c_mix", code: "4889f04829f84831d04839f77f02c3904829f7488d05d6fa0500480faffa83e207" + "48033cd04889f8c3"},
		{name: "whole function in padding", code: "4889f8c3"},
	}
}

// TestRelocate plans each case near (rel32 forms) and far (absolute forms)
// and checks, by decoding the thunk, that every relocated instruction refers
// to the same absolute address as the original.
func TestRelocate(t *testing.T) {
	a := AMD64{}
	for _, tc := range relocCases() {
		for _, mode := range []string{"near", "far"} {
			t.Run(tc.name+"/"+mode, func(t *testing.T) {
				fn := Func{Name: "f", Addr: fnAddr, Code: hexb(tc.code), Padding: hexb("cccccccccccccccccccccccccccccccc")}
				newAddr, thunkAddr := uint64(fnAddr+0x10_0000), uint64(fnAddr-0x20_0000)
				if mode == "far" {
					newAddr, thunkAddr = 0x7f00_0000_0000, 0x7f10_0000_0000
				}
				p, err := a.Plan(fn, newAddr, thunkAddr)
				if mode == "far" && tc.refuseFar != nil {
					require.ErrorIs(t, err, tc.refuseFar)
					require.Contains(t, err.Error(), "±2 GiB")
					return
				}
				require.NoError(t, err)
				require.Equal(t, uint64(fnAddr+tc.jumpAt), p.Addr)
				require.Equal(t, "f", p.Func)
				require.Equal(t, thunkAddr, p.ThunkAddr)
				wantJump := 5
				if mode == "far" {
					wantJump = 14
				}
				require.GreaterOrEqual(t, len(p.Jump), wantJump)
				require.NoError(t, checkPlan(a, fn, newAddr, p))
			})
		}
	}
}

// TestRelocateEncodings pins the exact bytes of the rewritten forms.
func TestRelocateEncodings(t *testing.T) {
	a := AMD64{}
	const thunk = fnAddr + 0x1000
	for _, tc := range []struct {
		name      string
		code      string
		thunkAddr uint64
		want      string // thunk
	}{
		{
			name: "jcc rel8 near", code: "7440" + "909090" + nops16, thunkAddr: thunk,
			// je fnAddr+0x42 from thunk+6; nop*3; jmp fnAddr+5
			want: "0f84" + le32(0x42-0x1006) + "909090" + "e9" + le32(5-0x100e),
		},
		{
			name: "jcc rel8 far", code: "7440" + "909090" + nops16, thunkAddr: 0x7f00_0000_0000,
			want: "750e ff2500000000 4200400000000000 909090 ff2500000000 0500400000000000",
		},
		{
			name: "loop near", code: "e240" + "909090" + nops16, thunkAddr: thunk,
			want: "e202 eb05 e9" + le32(0x42-0x1009) + "909090" + "e9" + le32(5-0x1011),
		},
		{
			name: "jecxz far", code: "67e340" + "9090" + nops16, thunkAddr: 0x7f00_0000_0000,
			want: "67e302 eb0e ff2500000000 4300400000000000 9090 ff2500000000 0500400000000000",
		},
		{
			name: "call far", code: "e8" + le32(0x100) + nops16, thunkAddr: 0x7f00_0000_0000,
			want: "ff1502000000 eb08 0501400000000000 ff2500000000 0500400000000000",
		},
		{
			name: "whole short function", code: "4889f8c3", thunkAddr: thunk,
			want: "4889f8c3 cc",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fn := Func{Name: "f", Addr: fnAddr, Code: hexb(tc.code), Padding: hexb("cccccccc")}
			p, err := a.Plan(fn, fnAddr+0x100, tc.thunkAddr)
			require.NoError(t, err)
			require.Equal(t, hex.EncodeToString(hexb(tc.want)), hex.EncodeToString(p.Thunk))
			require.NoError(t, checkPlan(a, fn, fnAddr+0x100, p))
		})
	}
}

func TestPlanPadding(t *testing.T) {
	a := AMD64{}
	// 4 bytes of code: the 5-byte jump takes one byte of int3 padding.
	fn := Func{Name: "short", Addr: fnAddr, Code: hexb("4889f8c3"), Padding: hexb("cc")}
	p, err := a.Plan(fn, fnAddr+0x1000, fnAddr+0x2000)
	require.NoError(t, err)
	require.Equal(t, hexb("4889f8c3cc"), p.Original)
	require.Equal(t, 5, len(p.Jump))
	require.Equal(t, byte(0xcc), p.Thunk[len(p.Thunk)-1])

	// Multi-byte nop padding counts.
	fn.Padding = hexb("0f1f4000")
	p, err = a.Plan(fn, fnAddr+0x1000, fnAddr+0x2000)
	require.NoError(t, err)
	require.Equal(t, hexb("4889f8c30f"), p.Original)
}

func TestRefusals(t *testing.T) {
	a := AMD64{}
	for _, tc := range []struct {
		name     string
		code     string
		padding  string
		newAddr  uint64
		want     error
		errAddr  uint64
		contains []string
	}{
		{name: "too short no padding", code: "4889f8c3", want: ErrTooShort, errAddr: fnAddr,
			contains: []string{"needs 5 bytes", "4 bytes of code", "0 bytes of int3/nop padding"}},
		{name: "too short padding not filler", code: "4889f8c3", padding: "0000", want: ErrTooShort, errAddr: fnAddr,
			contains: []string{"needs 5 bytes", "4 bytes of code", "0 bytes of int3/nop"}},
		{name: "too short for far jump", code: "4889f8c3", padding: "cccccccccc", newAddr: 0x7f00_0000_0000, want: ErrTooShort,
			errAddr: fnAddr, contains: []string{"needs 14 bytes", "4 bytes of code", "5 bytes of int3/nop", "±2 GiB"}},
		{name: "empty", code: "", want: ErrTooShort, errAddr: fnAddr},
		{name: "branch into patch", code: "4889f8" + "4801c0" + "48ffce" + "75f8" + "c3", want: ErrBranchIntoPatch,
			errAddr: fnAddr + 9, contains: []string{"jne", "0x400003", "callers"}},
		{name: "displaced jcc into patch", code: "7402" + "909090" + "c3", want: ErrBranchIntoPatch, errAddr: fnAddr},
		{name: "call into patch (get pc)", code: "e800000000" + "58" + "c3", want: ErrCannotRelocate, errAddr: fnAddr,
			contains: []string{"own address"}},
		{name: "undecodable displaced", code: "90" + "06" + "909090c3", want: ErrCannotRelocate, errAddr: fnAddr + 1,
			contains: []string{"cannot decode", "06"}},
		{name: "not understood displaced", code: "90" + "f3480f1ec8" + "c3", want: ErrCannotRelocate, errAddr: fnAddr + 1,
			contains: []string{"does not understand"}},
		{name: "endbr64 not first", code: "90" + "f30f1efa" + "c3", want: ErrCannotRelocate, errAddr: fnAddr + 1,
			contains: []string{"endbr64"}},
		{name: "undecodable later", code: nops16 + "06" + "c3", want: ErrCannotRelocate, errAddr: fnAddr + 16,
			contains: []string{"cannot be ruled out"}},
		{name: "eip-relative", code: "67488b05" + le32(0x10) + "c3", want: ErrCannotRelocate, errAddr: fnAddr,
			contains: []string{"instruction pointer"}},
		{name: "operand-size jmp", code: "66e9" + le32(0x10) + "c3", want: ErrCannotRelocate, errAddr: fnAddr,
			contains: []string{"prefix 0x66"}},
		{name: "xbegin", code: "c7f8" + le32(0x100) + "c3", want: ErrCannotRelocate, errAddr: fnAddr,
			contains: []string{"xbegin"}},
		{name: "truncated", code: "488b05", want: ErrCannotRelocate, errAddr: fnAddr},
	} {
		t.Run(tc.name, func(t *testing.T) {
			newAddr := tc.newAddr
			if newAddr == 0 {
				newAddr = fnAddr + 0x1000
			}
			fn := Func{Name: "victim", Addr: fnAddr, Code: hexb(tc.code), Padding: hexb(tc.padding)}
			_, err := a.Plan(fn, newAddr, fnAddr+0x2000)
			require.ErrorIs(t, err, tc.want)
			var e *Error
			require.ErrorAs(t, err, &e)
			require.Equal(t, "victim", e.Func)
			require.Equal(t, tc.errAddr, e.Addr, "%v", err)
			require.NotEmpty(t, e.Detail)
			require.True(t, strings.HasPrefix(err.Error(), "trampoline: victim at "), err.Error())
			for _, s := range tc.contains {
				require.Contains(t, err.Error(), s)
			}
			t.Log(err)
		})
	}
}

// A real gcc -O2 function (hp_c_sum): every prefix of it must plan or be
// refused with a proper *Error, never panic.
var gccSum = hexb("4885ff7e3331c031c90f1f80000000004889c24889ce480fafd048c1fe034883c0014831f24801d14839c775e34889c8c30f1f800000000031c94889c8c3")

func TestTruncated(t *testing.T) {
	a := AMD64{}
	for _, padding := range []string{"", "cccccccc", "cccccccccccccccccccccccccccc"} {
		for n := 0; n <= len(gccSum); n++ {
			for _, newAddr := range []uint64{fnAddr + 0x1000, 0x7f00_0000_0000} {
				fn := Func{Name: "sum", Addr: fnAddr, Code: gccSum[:n], Padding: hexb(padding)}
				p, err := a.Plan(fn, newAddr, fnAddr+0x2000)
				if err != nil {
					var e *Error
					require.True(t, errors.As(err, &e), "n=%d: %v", n, err)
					require.True(t, errors.Is(err, ErrTooShort) || errors.Is(err, ErrCannotRelocate) || errors.Is(err, ErrBranchIntoPatch), "n=%d: %v", n, err)
					continue
				}
				require.NoError(t, checkPlan(a, fn, newAddr, p), "n=%d", n)
			}
		}
	}
	// The full function plans near; far, its jle lands at 0x38, outside.
	_, err := a.Plan(Func{Name: "sum", Addr: fnAddr, Code: gccSum}, fnAddr+0x1000, fnAddr+0x2000)
	require.NoError(t, err)
}

// worstCase grows the most: endbr64, then seven 2-byte loops before offset
// 14, each of which becomes 18 bytes when the targets are far.
const worstCase = "f30f1efa" + "e240e240e240e240e240e240e240" + nops16 + "c3"

func TestMaxThunkSize(t *testing.T) {
	a := AMD64{}
	fn := Func{Name: "worst", Addr: fnAddr, Code: hexb(worstCase)}
	p, err := a.Plan(fn, 0x7f00_0000_0000, 0x7f10_0000_0000)
	require.NoError(t, err)
	require.Equal(t, 4+7*18+14, len(p.Thunk))
	require.LessOrEqual(t, len(p.Thunk), a.MaxThunkSize())
	require.NoError(t, checkPlan(a, fn, 0x7f00_0000_0000, p))
}

func TestOverwrites(t *testing.T) {
	p := &Plan{Addr: 0x1000, Jump: make([]byte, 5)}
	require.False(t, p.Overwrites(0x1000))
	require.True(t, p.Overwrites(0x1001))
	require.True(t, p.Overwrites(0x1004))
	require.False(t, p.Overwrites(0x1005))
}

func FuzzPlan(f *testing.F) {
	for _, tc := range relocCases() {
		f.Add(hexb(tc.code), []byte{0xcc, 0xcc, 0xcc, 0xcc}, uint64(fnAddr), int64(0x10_0000), int64(-0x20_0000))
		f.Add(hexb(tc.code), []byte{}, uint64(fnAddr), int64(1<<40), int64(1<<41))
	}
	f.Add(gccSum, []byte{0x66, 0x90}, uint64(0x7fff_ffff_fff0), int64(-0x10), int64(0x100))
	f.Add([]byte{0xf3, 0x0f, 0x1e, 0xfa, 0x74, 0x00}, []byte{0x0f, 0x1f, 0x40, 0x00, 0xcc}, uint64(0), int64(-1), int64(-1<<62))
	f.Add(hexb(worstCase), []byte{}, uint64(fnAddr), int64(1<<40), int64(1<<41))
	a := AMD64{}
	f.Fuzz(func(t *testing.T, code, padding []byte, addr uint64, newDelta, thunkDelta int64) {
		fn := Func{Name: "fuzz", Addr: addr, Code: code, Padding: padding}
		newAddr, thunkAddr := addr+uint64(newDelta), addr+uint64(thunkDelta)
		p, err := a.Plan(fn, newAddr, thunkAddr)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Func != "fuzz" || e.Detail == "" {
				t.Fatalf("not a proper *Error: %v", err)
			}
			if !errors.Is(err, ErrTooShort) && !errors.Is(err, ErrCannotRelocate) && !errors.Is(err, ErrBranchIntoPatch) {
				t.Fatalf("unexpected sentinel: %v", err)
			}
			return
		}
		if err := checkPlan(a, fn, newAddr, p); err != nil {
			t.Fatalf("code % x addr %#x new %#x thunk %#x: %v", code, addr, newAddr, thunkAddr, err)
		}
	})
}
