module github.com/hotpatch-dev/hotpatch

go 1.26.0

require golang.org/x/sys v0.49.0

require (
	github.com/stretchr/testify v1.12.1 // indirect
	golang.org/x/arch v0.32.0 // indirect
)
