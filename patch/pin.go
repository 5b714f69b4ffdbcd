//go:build linux

package patch

import (
	"bytes"
	"debug/elf"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
)

// PinSection is the ELF section of a patch shared object that holds its
// build-ID pins, written by HOTPATCH_PIN("<hex>") from
// patch/include/hotpatch.h: NUL-terminated lower- or upper-case hex strings.
const PinSection = ".hotpatch.pin"

// ReadPins returns the build IDs (lower-case hex) a patch shared object is
// pinned to; none when it declares no pin.
func ReadPins(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read pins of %s: %w", path, err)
	}
	return pinsOf(path, data)
}

// pinsOf is ReadPins of the bytes data of the shared object at path.
func pinsOf(path string, data []byte) ([]string, error) {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("read pins of %s: %w", path, err)
	}
	s := f.Section(PinSection)
	if s == nil {
		return nil, nil
	}
	data, err = s.Data()
	if err != nil {
		return nil, fmt.Errorf("read pins of %s: section %s: %w", path, PinSection, err)
	}
	return parsePins(data)
}

// parsePins splits the pin section's NUL-terminated strings and checks each
// is a build ID in hex.
func parsePins(data []byte) ([]string, error) {
	var out []string
	for _, b := range bytes.Split(data, []byte{0}) {
		id := strings.ToLower(strings.TrimSpace(string(b)))
		if id == "" {
			continue
		}
		if _, err := hex.DecodeString(id); err != nil || len(id) < 8 {
			return nil, fmt.Errorf("%w: pin %q in %s is not a build ID in hex (HOTPATCH_PIN(\"<hex from readelf -n>\"))", ErrBadRequest, id, PinSection)
		}
		out = append(out, id)
	}
	return out, nil
}

// BuildIDError is a patch pinned to other builds than the module it would
// change.
type BuildIDError struct {
	Lib    string   // the patch shared object
	Pins   []string // its pinned build IDs
	Module string   // the module that holds the function
	Func   string
	Actual string // the module's build ID ("" when it has none)
}

func (e *BuildIDError) Error() string {
	actual := e.Actual
	if actual == "" {
		actual = "(none)"
	}
	return fmt.Sprintf("%v: %s is pinned to build ID %s but %s lives in %s with build ID %s; rebuild the patch against this build (HOTPATCH_PIN(\"%s\"))",
		ErrBuildIDMismatch, e.Lib, strings.Join(e.Pins, ", "), e.Func, e.Module, actual, e.Actual)
}

// Is reports target == ErrBuildIDMismatch.
func (e *BuildIDError) Is(target error) bool { return target == ErrBuildIDMismatch }
