//go:build linux

package agent

import (
	"context"
	"errors"
	"time"

	"github.com/hotpatch-dev/hotpatch/patch"
)

// The protocol: one JSON object per SOCK_SEQPACKET message. The client
// sends a request (for "apply", with the plugin's descriptor attached);
// the agent sends progress reports when asked, then one response, which
// ends the exchange.

// Request is what the client asks.
type Request struct {
	Op string `json:"op"` // "hello" or "apply"
	// The apply's options, as patch.ApplyOptions has them.
	Mode      patch.Mode      `json:"mode,omitempty"`
	Timeout   time.Duration   `json:"timeout,omitempty"`
	OnTimeout patch.OnTimeout `json:"on_timeout,omitempty"`
	Force     bool            `json:"force,omitempty"`
	Interval  time.Duration   `json:"interval,omitempty"`
	// Supersede is the ID of an applied patch of the service that this
	// plugin's fixes replace in one pause (patch.ApplyOptions.Supersede).
	Supersede string `json:"supersede,omitempty"`
	// Progress, when set, receives the progress reports of a transition
	// (patch.ApplyOptions.Progress) as the agent sends them.
	Progress func(patch.Progress) `json:"-"`
	// WantProgress asks the agent for them (set by Apply).
	WantProgress bool `json:"progress,omitempty"`
}

// response is the agent's answer.
type response struct {
	Pid    int           `json:"pid"`
	Result *patch.Result `json:"result,omitempty"`
	Err    *wireError    `json:"error,omitempty"`
	// Progress is a progress report, not the answer.
	Progress *patch.Progress `json:"progress,omitempty"`
}

// wireError carries an error: its text, the errors it matched (by name in
// wireCodes) and the typed errors a client may look for with errors.As.
type wireError struct {
	Msg       string                `json:"msg"`
	Func      string                `json:"func,omitempty"`
	Hint      string                `json:"hint,omitempty"`
	Codes     []string              `json:"codes,omitempty"`
	Signature *patch.SignatureError `json:"signature,omitempty"`
	Toolchain *ToolchainError       `json:"toolchain,omitempty"`
	Module    *ModuleError          `json:"module,omitempty"`
	Setting   *BuildSettingError    `json:"setting,omitempty"`
	Package   *PackageError         `json:"package,omitempty"`
}

// wireCodes are the errors errors.Is finds across the socket.
var wireCodes = map[string]error{
	"no_cgo": ErrNoCgo, "toolchain": ErrToolchain, "module_version": ErrModuleVersion,
	"build_setting": ErrBuildSetting, "package": ErrPackage, "loaded_twice": ErrLoadedTwice, "manifest": ErrManifest,
	"not_plugin": ErrNotPlugin, "plugin_open": ErrPluginOpen, "peer": ErrPeer, "protocol": ErrProtocol,
	"unknown_symbol": patch.ErrUnknownSymbol, "ambiguous": patch.ErrAmbiguous, "signature": patch.ErrSignature,
	"abi": patch.ErrABI, "inlined": patch.ErrInlined, "blocked": patch.ErrBlocked, "bad_request": patch.ErrBadRequest,
	"already_applied": patch.ErrAlreadyApplied, "in_transition": patch.ErrInTransition, "not_patchable": patch.ErrNotPatchable,
	"self_helper": patch.ErrSelfHelper, "too_short": patch.ErrTooShort, "code_changed": patch.ErrCodeChanged,
	"permission": patch.ErrPermission, "busy": patch.ErrBusy, "cannot_relocate": patch.ErrCannotRelocate,
	"branch_into_patch": patch.ErrBranchIntoPatch, "deadline": context.DeadlineExceeded, "canceled": context.Canceled,
	"not_supported": patch.ErrNotSupported,
}

func toWire(err error) *wireError {
	if err == nil {
		return nil
	}
	w := &wireError{Msg: err.Error()}
	var pe *patch.Error
	if errors.As(err, &pe) {
		w.Msg, w.Func, w.Hint = pe.Err.Error(), pe.Func, pe.Hint
	}
	for name, e := range wireCodes {
		if errors.Is(err, e) {
			w.Codes = append(w.Codes, name)
		}
	}
	errors.As(err, &w.Signature)
	errors.As(err, &w.Toolchain)
	errors.As(err, &w.Module)
	errors.As(err, &w.Setting)
	errors.As(err, &w.Package)
	return w
}

// err rebuilds the error as a *patch.Error of an apply in process pid.
func (w *wireError) err(pid int) error {
	if w == nil {
		return nil
	}
	r := &RemoteError{Msg: w.Msg}
	for _, c := range w.Codes {
		if e, ok := wireCodes[c]; ok {
			r.causes = append(r.causes, e)
		}
	}
	if w.Signature != nil {
		r.causes = append(r.causes, w.Signature)
	}
	if w.Toolchain != nil {
		r.causes = append(r.causes, w.Toolchain)
	}
	if w.Module != nil {
		r.causes = append(r.causes, w.Module)
	}
	if w.Setting != nil {
		r.causes = append(r.causes, w.Setting)
	}
	if w.Package != nil {
		r.causes = append(r.causes, w.Package)
	}
	return &patch.Error{Op: "apply", Pid: pid, Func: w.Func, Hint: w.Hint, Err: r}
}

// RemoteError is an error the agent returned: its text, and (through
// errors.Is and errors.As) the errors it matched in the service.
type RemoteError struct {
	Msg    string
	causes []error
}

func (e *RemoteError) Error() string   { return e.Msg }
func (e *RemoteError) Unwrap() []error { return e.causes }
