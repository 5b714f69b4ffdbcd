// Command nomanifest is a plugin that declares nothing.
package main

var Fixes = []string{"main.greeting"}

func main() {}
