module example.com/othermod

go 1.26.0

require golang.org/x/sys v0.49.0

// The service has golang.org/x/sys v0.49.0 from the module proxy; this
// plugin replaces it by a local directory, which the agent refuses.
replace golang.org/x/sys => ./sys
