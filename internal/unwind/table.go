package unwind

import (
	"github.com/hotpatch-dev/hotpatch/elfsym"
	"github.com/hotpatch-dev/hotpatch/internal/arch"
)

// ForTable returns the unwinder of every module of a target's symbol
// table, for the architecture of its first module (the executable).
func ForTable(t *elfsym.Table) *Unwinder {
	u := &Unwinder{}
	if len(t.Modules) > 0 {
		if a, err := arch.ForMachine(t.Modules[0].Machine); err == nil {
			u.Arch = ForTarget(a)
		}
	}
	for _, m := range t.Modules {
		tabs := m.UnwindTables()
		mod := &Module{
			Name:           m.Path,
			Start:          m.TextStart,
			End:            m.TextEnd,
			Bias:           m.Bias,
			Refused:        m.GoUnsupported,
			Pclntab:        tabs.Pclntab,
			GoTextStart:    tabs.GoTextStart,
			EHFrame:        tabs.EHFrame,
			EHFrameAddr:    tabs.EHFrameAddr,
			EHFrameHdr:     tabs.EHFrameHdr,
			EHFrameHdrAddr: tabs.EHFrameHdrAddr,
		}
		for _, c := range tabs.Frameless {
			mod.Code = append(mod.Code, CodeRange{Addr: c.Addr, Bytes: c.Bytes})
		}
		u.Modules = append(u.Modules, mod)
	}
	return u
}
