package elfsym

import (
	"debug/elf"
	"fmt"
)

// ReadBuildID reads the GNU build ID (lower-case hex) of the ELF file at
// path from its notes alone, as Load and LoadFile record it in
// Module.BuildID; "" when the file has none. It does not parse symbols, so
// that a tool can compare the build IDs of many processes' executables
// (/proc/PID/exe) cheaply.
func ReadBuildID(path string) (string, error) {
	ef, err := elf.Open(path)
	if err != nil {
		return "", fmt.Errorf("elfsym: %s: %w", path, err)
	}
	defer ef.Close()
	var m Module
	m.readNotes(ef)
	return m.BuildID, nil
}
