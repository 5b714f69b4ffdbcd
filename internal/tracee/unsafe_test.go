package tracee

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestUnsafeOnlyInUnsafeFiles: package unsafe is imported only by files
// named *_unsafe.go (or *_unsafe_test.go), anywhere in the module, so that
// every pointer handed to the kernel or to C is where a reviewer looks for
// it. It reads the module's source, which the arm64 VM does not have.
func TestUnsafeOnlyInUnsafeFiles(t *testing.T) {
	_, self, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(self), "..", "..")
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Skipf("the module's source is not here (the arm64 VM runs test binaries only): %v", err)
	}
	fset := token.NewFileSet()
	var files int
	var bad []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path != root && (d.Name() == "testdata" || d.Name() == "vendor" || strings.HasPrefix(d.Name(), ".")) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		files++
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			name := filepath.Base(path)
			if p == "unsafe" && !strings.HasSuffix(name, "_unsafe.go") && !strings.HasSuffix(name, "_unsafe_test.go") {
				rel, _ := filepath.Rel(root, path)
				bad = append(bad, rel)
			}
		}
		return nil
	})
	require.NoError(t, err)
	require.Greater(t, files, 50, "the walk found the module's files")
	require.Empty(t, bad, "files that import unsafe but are not named *_unsafe.go")
}
