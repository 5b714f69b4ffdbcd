// Command fix is the plugin that fixes the example service's greeting:
//
//	go build -trimpath -buildmode=plugin -o fix.so ./examples/pluginfix/fix
//	hotpatch apply --pid PID --plugin fix.so
package main

import (
	"time"

	"github.com/hotpatch-dev/hotpatch/patch/agent"
)

// Hotpatch is what the agent reads: main.greeting (the service's, by
// name: a plugin cannot import the service's package main) is replaced
// by greeting below, of the same type.
var Hotpatch = agent.Manifest{Fixes: []agent.Fix{
	{Old: "main.greeting", New: greeting},
}}

func greeting(name string, wait time.Duration) string {
	time.Sleep(wait)
	return "Hello, " + name + "!"
}

func main() {}
