package goruntime

import (
	"debug/dwarf"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Layout is the byte offsets of the runtime fields this package reads. They
// come from the target's DWARF when it has some, else from Known by release.
type Layout struct {
	// runtime.g
	GStackLo, GStackHi int // g.stack.lo, g.stack.hi
	GM                 int // g.m
	GSchedSP, GSchedPC int // g.sched.sp, g.sched.pc
	GSchedLR, GSchedBP int // g.sched.lr, g.sched.bp
	GSyscallSP         int // g.syscallsp
	GSyscallPC         int // g.syscallpc
	GStatus            int // g.atomicstatus (uint32)
	GGoid              int // g.goid (uint64)
	GWaitReason        int // g.waitreason (uint8)
	GLockedM           int // g.lockedm: the m a goroutine is locked to (a cgo callback's)
	// GSize is the number of bytes read per g: past the last field above.
	GSize int
	// runtime.m
	MProcID int // m.procid: the thread ID the m runs on
	MCurG   int // m.curg
	MG0     int // m.g0: the m's system-stack goroutine
}

// Known holds the layouts of the 64-bit Linux runtimes by release ("go1.22"),
// for targets built without DWARF (-ldflags=-w). They were read from the DWARF
// of binaries built by each toolchain (amd64 and arm64 agree) and are checked
// against it by the tests. A release not listed is refused, never guessed.
var Known = map[string]Layout{
	"go1.22": {GStackLo: 0, GStackHi: 8, GM: 48, GSchedSP: 56, GSchedPC: 64, GSchedLR: 96, GSchedBP: 104,
		GSyscallSP: 112, GSyscallPC: 120, GStatus: 144, GGoid: 152, GWaitReason: 176, GLockedM: 208, GSize: 216,
		MProcID: 72, MCurG: 192},
	"go1.23": {GStackLo: 0, GStackHi: 8, GM: 48, GSchedSP: 56, GSchedPC: 64, GSchedLR: 96, GSchedBP: 104,
		GSyscallSP: 112, GSyscallPC: 120, GStatus: 152, GGoid: 160, GWaitReason: 184, GLockedM: 216, GSize: 224,
		MProcID: 72, MCurG: 192},
	"go1.24": {GStackLo: 0, GStackHi: 8, GM: 48, GSchedSP: 56, GSchedPC: 64, GSchedLR: 96, GSchedBP: 104,
		GSyscallSP: 112, GSyscallPC: 120, GStatus: 152, GGoid: 160, GWaitReason: 184, GLockedM: 216, GSize: 224,
		MProcID: 72, MCurG: 192},
	"go1.25": {GStackLo: 0, GStackHi: 8, GM: 48, GSchedSP: 56, GSchedPC: 64, GSchedLR: 88, GSchedBP: 96,
		GSyscallSP: 104, GSyscallPC: 112, GStatus: 144, GGoid: 152, GWaitReason: 176, GLockedM: 208, GSize: 216,
		MProcID: 64, MCurG: 184},
	"go1.26": {GStackLo: 0, GStackHi: 8, GM: 48, GSchedSP: 56, GSchedPC: 64, GSchedLR: 88, GSchedBP: 96,
		GSyscallSP: 104, GSyscallPC: 112, GStatus: 144, GGoid: 152, GWaitReason: 176, GLockedM: 208, GSize: 216,
		MProcID: 64, MCurG: 184},
}

// ErrUnknownRelease is matched by the refusal of a Go release that Known
// does not describe (a *ReleaseError from Supported and Load, an error of
// KnownLayout).
var ErrUnknownRelease = errors.New("Go release without a known runtime layout")

// ReleaseError refuses a Go binary whose release is outside the supported
// range, or a development build that does not match a supported release.
type ReleaseError struct {
	// Version is what the binary records ("go1.19.13", "devel go1.27-abc",
	// "" when it records none).
	Version string
	// Reason says why a development build (or one without a version) was
	// refused; "" for a release outside the range.
	Reason string
	// Err is the cause, if any (the function table's refusal).
	Err error
}

func (e *ReleaseError) Error() string {
	v := e.Version
	if v == "" {
		v = "(no version recorded)"
	}
	s := fmt.Sprintf("goruntime: Go release %s is not supported (supported: %s)", v, SupportedRange())
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	return s + "; rebuild the target with a supported Go release"
}

// Is reports target == ErrUnknownRelease.
func (e *ReleaseError) Is(target error) bool { return target == ErrUnknownRelease }

// Unwrap returns the cause.
func (e *ReleaseError) Unwrap() error { return e.Err }

// SupportedRange names the releases Known describes ("go1.22–go1.26").
func SupportedRange() string {
	var have []string
	for k := range Known {
		have = append(have, k)
	}
	have = sortedStrings(have)
	return have[0] + "–" + have[len(have)-1]
}

// Release returns the release key of a version string: "go1.26.8" → "go1.26",
// "go1.25rc1" → "go1.25", "devel go1.27-abcdef" → "go1.27".
func Release(version string) string {
	v := version
	if i := strings.Index(v, "go1."); i >= 0 {
		v = v[i:]
	} else {
		return ""
	}
	rest := v[len("go1."):]
	n := 0
	for n < len(rest) && rest[n] >= '0' && rest[n] <= '9' {
		n++
	}
	if n == 0 {
		return ""
	}
	return "go1." + rest[:n]
}

// KnownLayout returns the layout of a release from Known.
func KnownLayout(version string) (Layout, error) {
	l, ok := Known[Release(version)]
	if !ok {
		var have []string
		for k := range Known {
			have = append(have, k)
		}
		return Layout{}, fmt.Errorf("goruntime: %w: %q (known: %s); rebuild the target with DWARF (drop -ldflags=-w) or add the release to goruntime.Known",
			ErrUnknownRelease, version, strings.Join(sortedStrings(have), ", "))
	}
	return l, nil
}

// LayoutFromDWARF reads the layout from the runtime's type information.
func LayoutFromDWARF(d *dwarf.Data) (Layout, error) {
	want := map[string]bool{"runtime.g": true, "runtime.m": true, "runtime.gobuf": true, "runtime.stack": true}
	types := map[string]*dwarf.StructType{}
	r := d.Reader()
	for len(types) < len(want) {
		e, err := r.Next()
		if err != nil {
			return Layout{}, fmt.Errorf("goruntime: read DWARF: %w", err)
		}
		if e == nil {
			break
		}
		if e.Tag != dwarf.TagStructType {
			if e.Tag != dwarf.TagCompileUnit {
				r.SkipChildren()
			}
			continue
		}
		name, _ := e.Val(dwarf.AttrName).(string)
		if !want[name] || types[name] != nil {
			r.SkipChildren()
			continue
		}
		t, err := d.Type(e.Offset)
		if err != nil {
			return Layout{}, fmt.Errorf("goruntime: DWARF type %s: %w", name, err)
		}
		st, ok := t.(*dwarf.StructType)
		if !ok {
			return Layout{}, fmt.Errorf("goruntime: DWARF type %s is a %T", name, t)
		}
		types[name] = st
		r.SkipChildren()
	}
	var missing []string
	for n := range want {
		if types[n] == nil {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		return Layout{}, fmt.Errorf("goruntime: DWARF has no type %s (not a Go binary?)", strings.Join(sortedStrings(missing), ", "))
	}
	var errs []error
	field := func(st *dwarf.StructType, name string) int {
		for _, f := range st.Field {
			if f.Name == name {
				return int(f.ByteOffset)
			}
		}
		errs = append(errs, fmt.Errorf("%s has no field %s", st.StructName, name))
		return -1
	}
	g, m, buf, stk := types["runtime.g"], types["runtime.m"], types["runtime.gobuf"], types["runtime.stack"]
	sched := field(g, "sched")
	stack := field(g, "stack")
	l := Layout{
		GStackLo:    stack + field(stk, "lo"),
		GStackHi:    stack + field(stk, "hi"),
		GM:          field(g, "m"),
		GSchedSP:    sched + field(buf, "sp"),
		GSchedPC:    sched + field(buf, "pc"),
		GSchedLR:    sched + field(buf, "lr"),
		GSchedBP:    sched + field(buf, "bp"),
		GSyscallSP:  field(g, "syscallsp"),
		GSyscallPC:  field(g, "syscallpc"),
		GStatus:     field(g, "atomicstatus"),
		GGoid:       field(g, "goid"),
		GWaitReason: field(g, "waitreason"),
		MProcID:     field(m, "procid"),
		MCurG:       field(m, "curg"),
		GLockedM:    field(g, "lockedm"),
		MG0:         field(m, "g0"),
	}
	if len(errs) > 0 {
		return Layout{}, fmt.Errorf("goruntime: DWARF layout: %w", errors.Join(errs...))
	}
	l.GSize = max(l.GStackHi, l.GM, l.GSchedSP, l.GSchedPC, l.GSchedLR, l.GSchedBP, l.GSyscallSP, l.GSyscallPC, l.GStatus, l.GGoid, l.GLockedM) + 8
	l.GSize = max(l.GSize, l.GWaitReason+1)
	l.GSize = (l.GSize + 7) &^ 7
	return l, nil
}

func sortedStrings(s []string) []string {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && less(s[j], s[j-1]); j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
	return s
}

// less orders release keys numerically ("go1.9" < "go1.10").
func less(a, b string) bool {
	na, ea := strconv.Atoi(strings.TrimPrefix(a, "go1."))
	nb, eb := strconv.Atoi(strings.TrimPrefix(b, "go1."))
	if ea == nil && eb == nil {
		return na < nb
	}
	return a < b
}
