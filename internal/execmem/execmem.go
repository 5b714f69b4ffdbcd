// Package execmem runs machine code in the calling process, for tests that
// must execute generated code rather than only decode it: it allocates
// executable memory, copies code into it, and calls it with the C calling
// convention.
package execmem
