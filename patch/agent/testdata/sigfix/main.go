// Command sigfix declares a replacement of another signature.
package main

import "github.com/hotpatch-dev/hotpatch/patch/agent"

var Hotpatch = agent.Manifest{Fixes: []agent.Fix{
	{Old: "main.greeting", New: greeting},
}}

func greeting(name string) string { return "Hello, " + name + "!" }

func main() {}
