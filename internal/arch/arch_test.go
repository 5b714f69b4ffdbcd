package arch

import (
	"debug/elf"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestForMachine(t *testing.T) {
	tests := []struct {
		m    elf.Machine
		want *Arch
	}{
		{elf.EM_X86_64, AMD64},
		{elf.EM_AARCH64, ARM64},
		{elf.EM_386, nil},
		{elf.EM_RISCV, nil},
	}
	for _, tc := range tests {
		t.Run(tc.m.String(), func(t *testing.T) {
			a, err := ForMachine(tc.m)
			if tc.want == nil {
				require.Error(t, err)
				assert.True(t, errors.Is(err, ErrUnsupported))
				assert.Contains(t, err.Error(), tc.m.String())
				return
			}
			require.NoError(t, err)
			assert.Same(t, tc.want, a)
		})
	}
}

func TestArchData(t *testing.T) {
	tests := []struct {
		a         *Arch
		trap      []byte
		reach     uint64
		g, sp, lr string
		fillFails int
		aboveTP   bool
	}{
		{AMD64, []byte{0xcc}, 2 << 30, "r14", "rsp", "", 0, false},
		{ARM64, []byte{0x00, 0x00, 0x20, 0xd4}, 128 << 20, "x28", "sp", "lr", 6, true},
	}
	for _, tc := range tests {
		t.Run(tc.a.Name, func(t *testing.T) {
			assert.Equal(t, tc.trap, tc.a.Trap)
			assert.Equal(t, tc.reach, tc.a.JumpReach)
			assert.Equal(t, tc.g, tc.a.RegName(tc.a.G))
			assert.Equal(t, tc.sp, tc.a.RegName(tc.a.SP))
			if tc.lr != "" {
				assert.Equal(t, tc.lr, tc.a.RegName(tc.a.LR))
			}
			assert.Equal(t, tc.aboveTP, tc.a.TLSAboveTP)
			fill, err := tc.a.Fill(4 * len(tc.trap))
			require.NoError(t, err)
			assert.Equal(t, 4*len(tc.trap), len(fill))
			for i := 0; i < len(fill); i += len(tc.trap) {
				assert.Equal(t, tc.trap, fill[i:i+len(tc.trap)])
			}
			if tc.fillFails > 0 {
				_, err := tc.a.Fill(tc.fillFails)
				assert.Error(t, err, "a partial trap instruction")
			}
			// The reach is exclusive at +reach, inclusive at -reach.
			const base = 1 << 40
			assert.True(t, tc.a.Reaches(base, base+tc.reach-4))
			assert.False(t, tc.a.Reaches(base, base+tc.reach))
			assert.True(t, tc.a.Reaches(base, base-tc.reach))
			assert.False(t, tc.a.Reaches(base, base-tc.reach-4))
		})
	}
}

// TestNoMachineSwitches keeps the architecture one value: outside this
// package, no code (tests aside) names an ELF machine constant; it asks
// ForMachine for the Arch and reads its data.
func TestNoMachineSwitches(t *testing.T) {
	root, err := filepath.Abs("../..")
	require.NoError(t, err)
	fset := token.NewFileSet()
	var found []string
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") ||
			filepath.Dir(path) == filepath.Join(root, "internal", "arch") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if sel, ok := n.(*ast.SelectorExpr); ok {
				if x, ok := sel.X.(*ast.Ident); ok && x.Name == "elf" && strings.HasPrefix(sel.Sel.Name, "EM_") {
					found = append(found, fset.Position(sel.Pos()).String()+": elf."+sel.Sel.Name)
				}
			}
			return true
		})
		return nil
	})
	require.NoError(t, err)
	assert.Empty(t, found, "switch on the target's Arch (internal/arch), not on its ELF machine")
}
