// Package gomonkey measures hotpatch's self-patching API side by side with
// gomonkey (github.com/agiledragon/gomonkey/v2), the monkey-patching library
// most Go test suites use, in one benchmark run: the latency of an
// in-process apply+revert and the cost of a call through a patch.
//
// It is a module of its own so that gomonkey is never a dependency of
// hotpatch. Run it with `make bench-gomonkey` (inlining off, as gomonkey
// requires: it patches a function's entry and cannot reach inlined copies;
// hotpatch refuses those instead).
package gomonkey
