package agent

import (
	"bytes"
	"debug/buildinfo"
	"fmt"
	"runtime/debug"
)

// settingKeys are the build settings that change the code of a package
// (and so its hash, which the runtime's plugin loader compares).
var settingKeys = []string{"GOOS", "GOARCH", "GOAMD64", "GOARM64", "-trimpath", "-tags", "-gcflags", "-asmflags", "-race", "-msan", "-asan", "-buildvcs"}

// settingAbsent is how a setting the build did not record reads.
const settingAbsent = ""

// checkCgo refuses a service built without cgo.
func checkCgo(svc *debug.BuildInfo) error {
	for _, s := range svc.Settings {
		if s.Key == "CGO_ENABLED" && s.Value != "1" {
			return fmt.Errorf("%w. Rebuild it with CGO_ENABLED=1 (and a C compiler) to load fixes from plugins; what works without: redirecting a function to Go code already compiled into the service (hotpatch apply --replace OLD=NEW, or patch.Func from the service itself)", ErrNoCgo)
		}
	}
	return nil
}

// readPluginInfo reads the build information of a plugin's bytes.
func readPluginInfo(data []byte) (*debug.BuildInfo, error) {
	bi, err := buildinfo.Read(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("%w: no Go build information (%w); build it with go build -buildmode=plugin", ErrNotPlugin, err)
	}
	for _, s := range bi.Settings {
		if s.Key == "-buildmode" && s.Value != "plugin" {
			return nil, fmt.Errorf("%w: built with -buildmode=%s; build it with go build -buildmode=plugin", ErrNotPlugin, s.Value)
		}
	}
	return bi, nil
}

// checkMatch compares a plugin's build information with the service's:
// the toolchain, each module both use, and the settings that change code.
func checkMatch(plug, svc *debug.BuildInfo) error {
	if plug.GoVersion != svc.GoVersion {
		return &ToolchainError{Plugin: plug.GoVersion, Service: svc.GoVersion}
	}
	mods := map[string]*debug.Module{}
	for _, m := range append([]*debug.Module{&svc.Main}, svc.Deps...) {
		if m != nil && m.Path != "" {
			mods[m.Path] = effective(m)
		}
	}
	for _, m := range append([]*debug.Module{&plug.Main}, plug.Deps...) {
		if m == nil || m.Path == "" {
			continue
		}
		s, ok := mods[m.Path]
		if !ok {
			continue
		}
		p := effective(m)
		switch {
		case p.Version != s.Version:
			return &ModuleError{Path: m.Path, Plugin: p.Version, Service: s.Version}
		case p.Sum != "" && s.Sum != "" && p.Sum != s.Sum:
			return &ModuleError{Path: m.Path, Plugin: p.Version + " " + p.Sum, Service: s.Version + " " + s.Sum}
		}
	}
	ps, ss := settings(plug), settings(svc)
	for _, k := range settingKeys {
		if k == "-buildvcs" {
			continue // recorded differently for a plugin; it changes no code
		}
		if ps[k] != ss[k] {
			return &BuildSettingError{Key: k, Plugin: ps[k], Service: ss[k]}
		}
	}
	return nil
}

// effective is the module as built: its replacement when it has one.
func effective(m *debug.Module) *debug.Module {
	if m.Replace != nil {
		return m.Replace
	}
	return m
}

func settings(bi *debug.BuildInfo) map[string]string {
	m := map[string]string{}
	for _, s := range bi.Settings {
		m[s.Key] = s.Value
	}
	return m
}
