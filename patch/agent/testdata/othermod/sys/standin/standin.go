// Package standin stands in for golang.org/x/sys in othermod's build.
package standin

import "os"

// Getpid is os.Getpid.
func Getpid() int { return os.Getpid() }
