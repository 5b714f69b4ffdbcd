//go:build !cgo

package trampoline_test

import "testing"

// TestExecuteARM64 needs internal/execmem, which is cgo: a test binary
// cross-compiled without it must fail, not silently skip the execution.
func TestExecuteARM64(t *testing.T) {
	t.Fatal("built without cgo, so relocated arm64 code cannot be executed: build the test with CGO_ENABLED=1 CC=aarch64-linux-gnu-gcc GOARCH=arm64 go test -c ./trampoline")
}
