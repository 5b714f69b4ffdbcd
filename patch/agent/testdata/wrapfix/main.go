// Command wrapfix fixes main.greeting by wrapping the original.
package main

import (
	"strings"
	"time"

	"github.com/hotpatch-dev/hotpatch/patch/agent"
)

type greetFunc = func(string, time.Duration) string

var Hotpatch = agent.Manifest{Fixes: []agent.Fix{
	{Old: "main.greeting", Wrap: func(orig greetFunc) greetFunc {
		return func(name string, wait time.Duration) string {
			return strings.Replace(orig(name, wait), "Helo", "Hello", 1) + " (wrapped)"
		}
	}},
}}

func main() {}
