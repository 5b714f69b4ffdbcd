package elfsym

import (
	"debug/dwarf"
	"fmt"
	"strings"
)

// Signature is a function's parameter and result types, as the binary's
// DWARF records them.
type Signature struct {
	Name    string
	Go      bool     // Go's DWARF: Results are the results
	Params  []string // type names
	Results []string // Go: every result; C: the return type ("void" for none)
	// Variadic: a C function with unspecified parameters (...).
	Variadic bool

	keys []string // for comparing: C types without typedefs and qualifiers
}

// String renders the signature in its language: "main.f(int, string)
// (int, error)", "long compute(long int)".
func (s *Signature) String() string {
	params := strings.Join(s.Params, ", ")
	if s.Variadic {
		params = strings.Join(append(append([]string(nil), s.Params...), "..."), ", ")
	}
	if !s.Go {
		return fmt.Sprintf("%s %s(%s)", s.Results[0], s.Name, params)
	}
	out := s.Name + "(" + params + ")"
	switch len(s.Results) {
	case 0:
	case 1:
		out += " " + s.Results[0]
	default:
		out += " (" + strings.Join(s.Results, ", ") + ")"
	}
	return out
}

// SameTypes reports whether s and o take and return the same types (for C,
// the same after typedefs and const/volatile are looked through: the
// calling convention sees no difference).
func (s *Signature) SameTypes(o *Signature) bool {
	if s.Go != o.Go || s.Variadic != o.Variadic || len(s.keys) != len(o.keys) {
		return false
	}
	for i := range s.keys {
		if s.keys[i] != o.keys[i] {
			return false
		}
	}
	return true
}

// sigIndex maps the link-time entry of every subprogram of a module's
// DWARF to its entry.
type sigIndex struct {
	d     *dwarf.Data
	entry map[uint64]dwarf.Offset
}

// Signature returns the types sym's function takes and returns, from its
// module's DWARF; nil (and no error) when the module has no DWARF or the
// DWARF does not describe the function (stripped, assembly, a C function
// without a prototype).
func (t *Table) Signature(sym Symbol) (*Signature, error) {
	m := sym.Module
	if m == nil || m.image != nil {
		return nil, nil
	}
	m.sigOnce.Do(func() { m.sigs, m.sigErr = m.loadSigIndex() })
	if m.sigErr != nil {
		return nil, fmt.Errorf("elfsym: DWARF of %s: %w", m.Path, m.sigErr)
	}
	if m.sigs == nil {
		return nil, nil
	}
	off, ok := m.sigs.entry[sym.Addr-m.Bias]
	if !ok {
		return nil, nil
	}
	s, err := m.sigs.signature(off, m.IsGo)
	if err != nil {
		return nil, fmt.Errorf("elfsym: DWARF of %s for %s: %w", m.Path, sym.Name, err)
	}
	if s != nil && s.Name == "" {
		s.Name = sym.Name
	}
	return s, nil
}

func (m *Module) loadSigIndex() (*sigIndex, error) {
	ef, err := m.Open()
	if err != nil {
		return nil, err
	}
	ef.Close()
	d, err := m.DWARF()
	if err != nil {
		return nil, nil // no DWARF: nothing to say
	}
	ix := &sigIndex{d: d, entry: map[uint64]dwarf.Offset{}}
	r := d.Reader()
	for {
		e, err := r.Next()
		if err != nil {
			return nil, err
		}
		if e == nil {
			break
		}
		if e.Tag != dwarf.TagSubprogram {
			if e.Tag != dwarf.TagCompileUnit && e.Tag != dwarf.TagNamespace && e.Tag != dwarf.TagModule {
				r.SkipChildren()
			}
			continue
		}
		if lo, ok := e.Val(dwarf.AttrLowpc).(uint64); ok {
			ix.entry[lo] = e.Offset
		} else if rs, err := d.Ranges(e); err == nil && len(rs) > 0 {
			ix.entry[rs[0][0]] = e.Offset
		}
		r.SkipChildren()
	}
	return ix, nil
}

// signature reads the subprogram at off: its parameters (and, for Go, the
// results, which are parameters with DW_AT_variable_parameter set).
func (ix *sigIndex) signature(off dwarf.Offset, isGo bool) (*Signature, error) {
	concrete, kids, err := ix.die(off)
	if err != nil {
		return nil, err
	}
	// A concrete copy of a function also inlined elsewhere: the name, the
	// types and the declared parameters are on its abstract origin. Go
	// puts unnamed results on the concrete copy only.
	e := concrete
	var extra []*dwarf.Entry
	for i := 0; i < 4; i++ {
		o, ok := e.Val(dwarf.AttrAbstractOrigin).(dwarf.Offset)
		if !ok {
			o, ok = e.Val(dwarf.AttrSpecification).(dwarf.Offset)
		}
		if !ok {
			break
		}
		for _, k := range kids {
			if _, ok := k.Val(dwarf.AttrAbstractOrigin).(dwarf.Offset); !ok && isGo {
				extra = append(extra, k)
			}
		}
		if e, kids, err = ix.die(o); err != nil {
			return nil, err
		}
	}
	s := &Signature{Go: isGo}
	s.Name, _ = e.Val(dwarf.AttrName).(string)
	if !isGo {
		if proto, _ := e.Val(dwarf.AttrPrototyped).(bool); !proto {
			return nil, nil // K&R: the parameters are not known
		}
		name, key := "void", "void"
		if t, ok := e.Val(dwarf.AttrType).(dwarf.Offset); ok {
			if name, key, err = ix.typeName(t, false); err != nil {
				return nil, err
			}
		}
		s.Results, s.keys = []string{name}, []string{"return " + key}
	}
	var results []string
	for _, c := range append(kids, extra...) {
		switch c.Tag {
		case dwarf.TagFormalParameter:
			t, ok := c.Val(dwarf.AttrType).(dwarf.Offset)
			if !ok {
				return nil, nil // a parameter of unknown type
			}
			name, key, err := ix.typeName(t, isGo)
			if err != nil {
				return nil, err
			}
			if res, _ := c.Val(dwarf.AttrVarParam).(bool); res && isGo {
				results = append(results, name)
				continue
			}
			s.Params = append(s.Params, name)
			s.keys = append(s.keys, key)
		case dwarf.TagUnspecifiedParameters:
			s.Variadic = true
		}
	}
	if isGo {
		s.Results = results
		for _, n := range results {
			s.keys = append(s.keys, "result "+n)
		}
	}
	return s, nil
}

// die reads the DIE at off and its direct children.
func (ix *sigIndex) die(off dwarf.Offset) (*dwarf.Entry, []*dwarf.Entry, error) {
	r := ix.d.Reader()
	r.Seek(off)
	e, err := r.Next()
	if err != nil || e == nil {
		return nil, nil, fmt.Errorf("no DWARF entry at %#x: %v", off, err)
	}
	var kids []*dwarf.Entry
	for e.Children {
		c, err := r.Next()
		if err != nil {
			return nil, nil, err
		}
		if c == nil || c.Tag == 0 {
			break
		}
		kids = append(kids, c)
		if c.Children {
			r.SkipChildren()
		}
	}
	return e, kids, nil
}

// typeName returns a type's name as its language writes it, and the key
// it compares by: Go types by name; C types by name once typedefs and
// qualifiers are looked through.
func (ix *sigIndex) typeName(off dwarf.Offset, isGo bool) (name, key string, err error) {
	t, err := ix.d.Type(off)
	if err != nil {
		return "", "", fmt.Errorf("type at %#x: %w", off, err)
	}
	if isGo {
		n := t.Common().Name
		if st, ok := t.(*dwarf.StructType); ok && st.StructName != "" {
			n = st.StructName // Go's slices, strings and structs
		}
		if n == "" {
			n = t.String()
		}
		return n, n, nil
	}
	return cType(t), cKey(t), nil
}

// cType writes a C type as C does: "const char *", "struct conn *".
func cType(t dwarf.Type) string {
	switch t := t.(type) {
	case *dwarf.PtrType:
		in := cType(t.Type)
		if strings.HasSuffix(in, "*") {
			return in + "*"
		}
		return in + " *"
	case *dwarf.QualType:
		return t.Qual + " " + cType(t.Type)
	case *dwarf.TypedefType:
		return t.Name
	case *dwarf.VoidType:
		return "void"
	}
	return t.String()
}

// cKey is the type as the calling convention sees it: typedefs and
// qualifiers are looked through at every level, base types compare by kind
// and size.
func cKey(t dwarf.Type) string {
	for i := 0; i < 64; i++ {
		switch u := t.(type) {
		case *dwarf.TypedefType:
			t = u.Type
			continue
		case *dwarf.QualType:
			t = u.Type
			continue
		case *dwarf.PtrType:
			return "*" + cKey(u.Type)
		case *dwarf.StructType:
			return u.Kind + " " + u.StructName
		case *dwarf.EnumType:
			return "enum " + u.EnumName
		case *dwarf.IntType, *dwarf.UintType, *dwarf.CharType, *dwarf.UcharType, *dwarf.BoolType, *dwarf.FloatType, *dwarf.ComplexType:
			// By kind and size, not by name: "long int" (gcc) and "long"
			// (clang) are one type.
			return fmt.Sprintf("%T/%d", u, u.Size())
		case nil:
			return "void"
		}
		break
	}
	return t.String()
}
