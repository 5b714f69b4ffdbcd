// Command othermod is a plugin of its own module that requires
// golang.org/x/sys at the service's version but replaces it by a local
// directory (./sys): the same version, other code, as far as the agent
// can tell.
package main

import "golang.org/x/sys/standin"

var Hotpatch = standin.Getpid

func main() {}
