// Command oldgo is a plugin built by an older Go toolchain.
package main

var Hotpatch = "not a manifest"

func main() {}
