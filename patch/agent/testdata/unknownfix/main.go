// Command unknownfix names a function the service does not have.
package main

import "github.com/hotpatch-dev/hotpatch/patch/agent"

var Hotpatch = agent.Manifest{Fixes: []agent.Fix{
	{Old: "main.greetingg", New: greeting},
}}

func greeting(name string) string { return "Hello, " + name + "!" }

func main() {}
