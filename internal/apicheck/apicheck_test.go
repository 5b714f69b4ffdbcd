package apicheck

import (
	"bytes"
	"encoding/json"
	"fmt"
	"go/importer"
	"go/token"
	"go/types"
	"io"
	"os"
	"os/exec"
	"sort"
	"strings"
	"testing"
)

const module = "github.com/hotpatch-dev/hotpatch"

// listed is what go list -json says of one package.
type listed struct {
	ImportPath string
	Name       string
	Export     string
	Module     *struct{ Path string }
}

// loadPackages type-checks every package of the module, from the export data
// the go command builds (the same export data the compiler reads, so the
// API seen is the compiled one), and returns the module's own packages.
func loadPackages(t *testing.T, goos, goarch, pattern string) []*types.Package {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("the go command is not installed here: this test reads the module's source and export data")
	}
	cmd := exec.Command(goBin, "list", "-export", "-deps", "-json=ImportPath,Name,Export,Module", module+"/"+pattern)
	cmd.Env = append(os.Environ(), "GOOS="+goos, "GOARCH="+goarch, "CGO_ENABLED=0")
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("go list: %v\n%s", err, stderr)
	}
	exports := map[string]string{}
	var own []string
	for dec := json.NewDecoder(bytes.NewReader(out)); ; {
		var p listed
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		exports[p.ImportPath] = p.Export
		if p.Module != nil && p.Module.Path == module && p.Name != "main" {
			own = append(own, p.ImportPath)
		}
	}
	imp := importer.ForCompiler(token.NewFileSet(), "gc", func(path string) (io.ReadCloser, error) {
		f, ok := exports[path]
		if !ok || f == "" {
			return nil, fmt.Errorf("no export data for %s", path)
		}
		return os.Open(f)
	})
	var pkgs []*types.Package
	for _, path := range own {
		p, err := imp.Import(path)
		if err != nil {
			t.Fatalf("import %s: %v", path, err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

// isInternal reports whether an import path is under an internal/ directory.
func isInternal(path string) bool {
	for _, elem := range strings.Split(path, "/") {
		if elem == "internal" {
			return true
		}
	}
	return false
}

// exposer walks the types an exported identifier shows its users and
// records every type declared in an internal package it meets.
type exposer struct {
	seen  map[types.Type]bool
	found map[string]bool // "pkg.Ident: internal/x.T"
	where string
}

func (e *exposer) report(n *types.Named) {
	e.found[fmt.Sprintf("%s: %s.%s", e.where, n.Obj().Pkg().Path(), n.Obj().Name())] = true
}

func (e *exposer) walk(t types.Type) {
	if t == nil || e.seen[t] {
		return
	}
	e.seen[t] = true
	switch t := t.(type) {
	case *types.Alias:
		if o := t.Obj(); o.Pkg() != nil && isInternal(o.Pkg().Path()) {
			e.found[fmt.Sprintf("%s: %s.%s", e.where, o.Pkg().Path(), o.Name())] = true
		}
		e.walk(types.Unalias(t))
	case *types.Named:
		if o := t.Obj(); o.Pkg() != nil && isInternal(o.Pkg().Path()) {
			e.report(t)
			return
		}
		if args := t.TypeArgs(); args != nil {
			for i := range args.Len() {
				e.walk(args.At(i))
			}
		}
		// A type of a public package is checked where it is declared
		// when it is exported; an unexported one shows its users its
		// exported fields and methods through the identifier here.
		if o := t.Obj(); o.Pkg() != nil && !o.Exported() && o.Pkg().Path() != "" {
			e.members(t)
		}
	case *types.Pointer:
		e.walk(t.Elem())
	case *types.Slice:
		e.walk(t.Elem())
	case *types.Array:
		e.walk(t.Elem())
	case *types.Map:
		e.walk(t.Key())
		e.walk(t.Elem())
	case *types.Chan:
		e.walk(t.Elem())
	case *types.Signature:
		e.tuple(t.Params())
		e.tuple(t.Results())
		if tp := t.TypeParams(); tp != nil {
			for i := range tp.Len() {
				e.walk(tp.At(i).Constraint())
			}
		}
	case *types.Struct:
		for i := range t.NumFields() {
			if f := t.Field(i); f.Exported() || f.Embedded() {
				e.walk(f.Type())
			}
		}
	case *types.Interface:
		for i := range t.NumEmbeddeds() {
			e.walk(t.EmbeddedType(i))
		}
		for i := range t.NumExplicitMethods() {
			if m := t.ExplicitMethod(i); m.Exported() {
				e.walk(m.Type())
			}
		}
	case *types.Union:
		for i := range t.Len() {
			e.walk(t.Term(i).Type())
		}
	case *types.TypeParam:
		e.walk(t.Constraint())
	}
}

func (e *exposer) tuple(t *types.Tuple) {
	for i := range t.Len() {
		e.walk(t.At(i).Type())
	}
}

// members walks a named type's underlying type and its exported methods,
// also those promoted from embedded fields.
func (e *exposer) members(n *types.Named) {
	e.walk(n.Underlying())
	for _, recv := range []types.Type{n, types.NewPointer(n)} {
		ms := types.NewMethodSet(recv)
		for i := range ms.Len() {
			if m := ms.At(i).Obj(); m.Exported() {
				e.walk(m.Type())
			}
		}
	}
}

// exposed returns, sorted, every internal type an exported identifier of a
// non-internal package of pkgs shows.
func exposed(pkgs []*types.Package) []string {
	e := &exposer{found: map[string]bool{}}
	for _, p := range pkgs {
		if isInternal(p.Path()) {
			continue
		}
		scope := p.Scope()
		for _, name := range scope.Names() {
			obj := scope.Lookup(name)
			if !obj.Exported() {
				continue
			}
			e.where = strings.TrimPrefix(p.Path(), module+"/") + "." + name
			e.seen = map[types.Type]bool{}
			switch obj := obj.(type) {
			case *types.TypeName:
				if a, ok := obj.Type().(*types.Alias); ok {
					e.walk(a)
				} else if n, ok := obj.Type().(*types.Named); ok {
					e.members(n)
				}
			default:
				e.walk(obj.Type())
			}
		}
	}
	var out []string
	for k := range e.found {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestNoInternalTypesInPublicAPI fails when an exported identifier of a
// package users import (patch, patch/patchtest, elfsym, trampoline, ...)
// has a type from an internal package in its signature, its exported
// fields or its exported methods: users could not name, build or
// errors.As such a type. Every platform the packages build for is checked,
// since files differ by GOOS and GOARCH.
func TestNoInternalTypesInPublicAPI(t *testing.T) {
	for _, pl := range []struct{ goos, goarch, pattern string }{
		{"linux", "amd64", "..."}, {"linux", "arm64", "..."},
		// Off Linux only the self-patching API builds (ErrNotSupported).
		{"darwin", "arm64", "patch/..."}, {"windows", "amd64", "patch/..."},
	} {
		t.Run(pl.goos+"_"+pl.goarch, func(t *testing.T) {
			pkgs := loadPackages(t, pl.goos, pl.goarch, pl.pattern)
			if len(pkgs) < 2 {
				t.Fatalf("only %d packages of the module found", len(pkgs))
			}
			if bad := exposed(pkgs); len(bad) > 0 {
				t.Errorf("exported identifiers show types users cannot name (from internal packages):\n\t%s",
					strings.Join(bad, "\n\t"))
			}
		})
	}
}
