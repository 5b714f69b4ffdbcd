module github.com/hotpatch-dev/hotpatch/benchmarks/gomonkey

go 1.26.0

require (
	github.com/agiledragon/gomonkey/v2 v2.13.0
	github.com/hotpatch-dev/hotpatch v0.0.0
	github.com/stretchr/testify v1.12.1
)

require (
	go.yaml.in/yaml/v3 v3.0.5 // indirect
	golang.org/x/arch v0.32.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
)

replace github.com/hotpatch-dev/hotpatch => ../..
