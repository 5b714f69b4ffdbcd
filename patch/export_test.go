package patch

// UseDlopen makes Apply load libraries through the named loader functions
// only (to test the __libc_dlopen_mode fallback); the returned func undoes it.
func UseDlopen(names ...string) func() {
	old := dlopenFuncs
	dlopenFuncs = names
	return func() { dlopenFuncs = old }
}
