package agent

import (
	"debug/elf"
	"errors"
	"fmt"
	"strings"
)

// pkgHashPrefix names the symbols holding the fingerprint of each Go
// package a binary that can use plugins (or a plugin) was linked with: the
// runtime's plugin loader refuses a plugin whose fingerprint of a package
// differs from the program's ("plugin was built with a different version
// of package"), after loading it. Comparing them first refuses it before.
const pkgHashPrefix = "go:link.pkghashbytes."

// pkgHashes reads the package fingerprints of an ELF file.
func pkgHashes(ef *elf.File) (map[string]string, error) {
	syms, err := ef.DynamicSymbols()
	if err != nil || len(syms) == 0 {
		syms, err = ef.Symbols()
	}
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, s := range syms {
		pkg, ok := strings.CutPrefix(s.Name, pkgHashPrefix)
		if !ok || s.Size == 0 || s.Size > 64 || int(s.Section) >= len(ef.Sections) {
			continue
		}
		sec := ef.Sections[s.Section]
		if s.Value < sec.Addr || s.Value+s.Size > sec.Addr+sec.Size || sec.Type == elf.SHT_NOBITS {
			continue
		}
		b := make([]byte, s.Size)
		if _, err := sec.ReadAt(b, int64(s.Value-sec.Addr)); err != nil {
			return nil, err
		}
		out[pkg] = fmt.Sprintf("%x", b)
	}
	return out, nil
}

// PackageError is a package the plugin and the service both have, built
// from other source (or with other flags) in each.
type PackageError struct {
	Package         string
	Plugin, Service string // their fingerprints
}

// ErrPackage: the plugin holds another build of a package the service has
// (*PackageError).
var ErrPackage = errors.New("the plugin was built with another version of a package the service has")

func (e *PackageError) Error() string {
	return fmt.Sprintf("%v: %s (fingerprint %s in the plugin, %s in the service); build the plugin from the very source, module versions and flags the service was built from", ErrPackage, e.Package, e.Plugin, e.Service)
}

// Is reports target == ErrPackage.
func (e *PackageError) Is(target error) bool { return target == ErrPackage }

// checkPackages refuses a plugin with a package fingerprint that differs
// from the service's. A service without fingerprints (built without the
// plugin package: it never imported package agent) cannot be checked.
func checkPackages(plug, svc map[string]string) error {
	for pkg, h := range plug {
		if s, ok := svc[pkg]; ok && s != h {
			return &PackageError{Package: pkg, Plugin: h, Service: s}
		}
	}
	return nil
}
