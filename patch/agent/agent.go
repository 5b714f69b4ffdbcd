// Package agent brings new Go code into a running Go service: the service
// starts the agent with one call, and an operator hands it a Go plugin
// that fixes a function (hotpatch apply --pid PID --plugin fix.so).
//
//	a, err := agent.Start(agent.Options{})
//	if err != nil { ... } // the service runs on; it only cannot be fixed live
//	defer a.Close()
//
// The agent listens on a private control socket found from the PID alone
// (SocketPath): a SOCK_SEQPACKET Unix socket, mode 0600 in a directory of
// mode 0700 owned by the service's user. It accepts connections from that
// user and root only (SO_PEERCRED; others are refused and logged). The
// plugin comes as an open file descriptor (SCM_RIGHTS), so a swap of the
// file or another mount namespace cannot change what is loaded: the agent
// reads the bytes once, checks them, copies them to a private file that no
// one else can write, and loads that copy with the runtime's plugin loader.
//
// A plugin declares what it fixes in an exported variable named Hotpatch:
//
//	var Hotpatch = agent.Manifest{Fixes: []agent.Fix{
//		{Old: "main.greeting", New: greeting},                 // by name
//		{Old: pricing.Discount, New: discount},                // by value
//		{Old: "main.total", Wrap: func(orig func(int) int) func(int) int {
//			return func(n int) int { return orig(n) + 1 }   // calls the original
//		}},
//	}}
//
// Each New has its target's type (checked before anything is applied: by
// Go type for a target given by value, from the binaries' DWARF and Go
// function table for one given by name). The fixes are applied as one
// patch set through the same path as patch.Func: a helper process stops
// the service, checks that no goroutine is inside the functions (or keeps
// the busy ones on the old code, in gradual mode), and records the patch
// in the service's memory, where hotpatch status and revert find it.
//
// A plugin must be built with the service's Go toolchain, the same
// versions of every module both use, and the same build flags:
//
//	go build -trimpath -o svc .
//	go build -trimpath -buildmode=plugin -o fix.so ./fix
//
// Both need cgo (CGO_ENABLED=1, a C compiler). The agent compares the
// plugin's build information with the service's before plugin.Open, whose
// failure cannot be undone, and refuses a mismatch with a typed error:
// *ToolchainError, *ModuleError, *BuildSettingError, *PackageError (the
// fingerprint the linker records of each package, which the runtime's
// loader compares only after loading), ErrNoCgo,
// ErrLoadedTwice, ErrManifest; patch.ErrSignature and
// patch.ErrUnknownSymbol come from the patch itself. A refused plugin
// leaves the service untouched.
package agent

import (
	"errors"
	"fmt"
	"log/slog"
)

// Manifest is what a plugin exports as its variable Hotpatch.
type Manifest struct {
	Fixes []Fix
}

// Fix replaces one function of the service.
type Fix struct {
	// Old is the function to replace: its name as the Go function table
	// spells it ("main.handler", "example.com/svc/pricing.(*Cart).Total"),
	// or a func value of it where the plugin can import its package.
	Old any
	// New is the replacement, a func value of Old's type.
	New any
	// Wrap, instead of New, builds the replacement from the original: a
	// func(original F) F, where F is Old's type; original runs the old
	// code (as patch.Wrap).
	Wrap any
}

// ManifestSymbol is the name of the variable a plugin exports.
const ManifestSymbol = "Hotpatch"

// Options tune Start. The zero value is ready to use.
type Options struct {
	// Logger receives the agent's events: plugins applied, connections
	// refused. Default slog.Default().
	Logger *slog.Logger
}

var (
	// ErrNoAgent: the process runs no agent (no control socket for it).
	ErrNoAgent = errors.New("the process runs no hotpatch agent")
	// ErrNoCgo: the service was built without cgo, and Go plugins need it.
	ErrNoCgo = errors.New("the service was built without cgo (CGO_ENABLED=0): Go plugins cannot be loaded into it")
	// ErrToolchain: the plugin was built by another Go toolchain
	// (*ToolchainError).
	ErrToolchain = errors.New("the plugin was built by another Go toolchain")
	// ErrModuleVersion: the plugin was built with another version of a
	// module the service also uses (*ModuleError).
	ErrModuleVersion = errors.New("the plugin was built with other module versions than the service")
	// ErrBuildSetting: the plugin was built with other build settings
	// (*BuildSettingError).
	ErrBuildSetting = errors.New("the plugin was built with other build settings than the service")
	// ErrLoadedTwice: this very plugin (the same bytes) was loaded before.
	ErrLoadedTwice = errors.New("this plugin was loaded already")
	// ErrManifest: the plugin declares no usable Hotpatch manifest.
	ErrManifest = errors.New("the plugin has no usable hotpatch manifest")
	// ErrNotPlugin: the file is not a Go plugin.
	ErrNotPlugin = errors.New("not a Go plugin")
	// ErrPluginOpen: the Go runtime's plugin loader refused the plugin
	// after loading it (it stays mapped, unused).
	ErrPluginOpen = errors.New("the Go runtime refused the plugin")
	// ErrPeer: the agent refused the connection (another user).
	ErrPeer = errors.New("the agent refused the connection")
	// ErrProtocol: the agent or its client spoke out of turn.
	ErrProtocol = errors.New("agent protocol error")
)

// ToolchainError is a plugin built by another Go release.
type ToolchainError struct {
	Plugin, Service string // their Go versions
}

func (e *ToolchainError) Error() string {
	return fmt.Sprintf("%v: the plugin by %s, the service by %s; rebuild the plugin with %s", ErrToolchain, e.Plugin, e.Service, e.Service)
}

// Is reports target == ErrToolchain.
func (e *ToolchainError) Is(target error) bool { return target == ErrToolchain }

// ModuleError is a module both use at different versions (or sums).
type ModuleError struct {
	Path            string
	Plugin, Service string // version (and sum, when they differ by sum only)
}

func (e *ModuleError) Error() string {
	return fmt.Sprintf("%v: %s is %s in the plugin and %s in the service; build the plugin against the service's go.mod (the same require and replace lines)", ErrModuleVersion, e.Path, e.Plugin, e.Service)
}

// Is reports target == ErrModuleVersion.
func (e *ModuleError) Is(target error) bool { return target == ErrModuleVersion }

// BuildSettingError is a build setting that differs (-trimpath, -tags,
// -gcflags, GOARCH, ...).
type BuildSettingError struct {
	Key             string
	Plugin, Service string
}

func (e *BuildSettingError) Error() string {
	return fmt.Sprintf("%v: %s is %q in the plugin and %q in the service; build the plugin with the service's flags", ErrBuildSetting, e.Key, e.Plugin, e.Service)
}

// Is reports target == ErrBuildSetting.
func (e *BuildSettingError) Is(target error) bool { return target == ErrBuildSetting }
