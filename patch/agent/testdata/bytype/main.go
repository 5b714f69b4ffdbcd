// Command bytype fixes greet.Shout, named by value.
package main

import (
	"strings"

	"github.com/hotpatch-dev/hotpatch/patch/agent"
	"github.com/hotpatch-dev/hotpatch/patch/agent/testdata/svc/greet"
)

var Hotpatch = agent.Manifest{Fixes: []agent.Fix{
	{Old: greet.Shout, New: strings.ToUpper},
}}

func main() {}
