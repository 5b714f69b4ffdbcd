//go:build !linux

package agent

import "github.com/hotpatch-dev/hotpatch/patch"

// Agent is a running agent. None runs on this system.
type Agent struct{}

// Start returns patch.ErrNotSupported: the agent needs Linux.
func Start(o Options) (*Agent, error) { return nil, patch.ErrNotSupported }

// Close does nothing.
func (a *Agent) Close() error { return nil }
