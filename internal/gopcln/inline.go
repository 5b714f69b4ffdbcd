package gopcln

import (
	"encoding/binary"
	"fmt"
)

// Indices of the runtime's per-function tables (internal/abi/symtab.go).
const (
	pcdataInlTreeIndex  = 2
	funcdataInlTree     = 3
	inlinedCallSize     = 16 // runtime.inlinedCall: funcID u8, pad, nameOff i32, parentPc i32, startLine i32
	funcRecordFixedSize = 44
)

// Inlined returns the names of the functions whose bodies the compiler
// inlined into f (directly or through other inlined calls), from f's inline
// tree. gofunc reads n bytes at an offset into the binary's go:func.* area,
// which holds the trees (runtime.moduledata.gofunc points at it). A function
// without inlined calls gives nil.
func (t *Table) Inlined(f *Func, gofunc func(off uint32, n int) ([]byte, error)) ([]string, error) {
	rec := t.pcln[min(int(f.rec), len(t.pcln)):]
	if len(rec) < funcRecordFixedSize {
		return nil, &FormatError{int(f.rec), "function record of " + f.Name + " truncated"}
	}
	npcdata := int(t.order.Uint32(rec[28:]))
	nfuncdata := int(rec[43])
	if npcdata <= pcdataInlTreeIndex || nfuncdata <= funcdataInlTree {
		return nil, nil
	}
	tail := rec[funcRecordFixedSize:]
	if len(tail) < 4*(npcdata+nfuncdata) {
		return nil, &FormatError{int(f.rec), "function record of " + f.Name + " truncated"}
	}
	pcdata := t.order.Uint32(tail[4*pcdataInlTreeIndex:])
	tree := t.order.Uint32(tail[4*npcdata+4*funcdataInlTree:])
	if pcdata == 0 || tree == ^uint32(0) {
		return nil, nil
	}
	// The tree has as many entries as the pc→index table's largest value+1.
	n, err := t.maxValue(f, pcdata)
	if err != nil {
		return nil, err
	}
	if n < 0 {
		return nil, nil
	}
	if n > 1<<16 {
		return nil, fmt.Errorf("gopcln: inline tree of %s has %d entries: not a tree", f.Name, n+1)
	}
	b, err := gofunc(tree, int(n+1)*inlinedCallSize)
	if err != nil {
		return nil, fmt.Errorf("gopcln: inline tree of %s: %w", f.Name, err)
	}
	var out []string
	seen := map[string]bool{}
	for i := 0; i <= int(n); i++ {
		nameOff := t.order.Uint32(b[i*inlinedCallSize+4:])
		name, err := cstring(t.funcnames, uint64(nameOff))
		if err != nil {
			return nil, fmt.Errorf("gopcln: inline tree of %s, entry %d: %w", f.Name, i, err)
		}
		if !seen[name] {
			seen[name] = true
			out = append(out, name)
		}
	}
	return out, nil
}

// maxValue returns the largest value of the pc-value table at off over f.
func (t *Table) maxValue(f *Func, off uint32) (int64, error) {
	p := int(off)
	val, best := int64(-1), int64(-1)
	for first := true; ; first = false {
		uv, n := binary.Uvarint(t.pctab[min(p, len(t.pctab)):])
		if n <= 0 {
			return 0, &FormatError{p, "pc-value table of " + f.Name + " truncated"}
		}
		if uv == 0 && !first {
			return best, nil
		}
		p += n
		val += int64(-(uv & 1) ^ (uv >> 1))
		best = max(best, val)
		_, n = binary.Uvarint(t.pctab[min(p, len(t.pctab)):])
		if n <= 0 {
			return 0, &FormatError{p, "pc-value table of " + f.Name + " truncated"}
		}
		p += n
	}
}
