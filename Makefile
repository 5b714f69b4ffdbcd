# make test is the project's single test entry point; .ci/run calls exactly it.
# It installs what the tests need on a fresh Debian machine, then vets and
# tests every package.

GO ?= go
GOTEST_FLAGS ?= -count=1 -timeout 20m

.PHONY: test deps vet unit demo

test: deps vet
	$(GO) test $(GOTEST_FLAGS) ./...

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }

# The Go releases the goroutine tests build targets with (patch/go_test.go,
# internal/goruntime): fetched once through the module proxy into the module
# cache, so the tests themselves do not download.
GO_TOOLCHAINS ?= go1.22.12 go1.23.12 go1.24.13 go1.25.14

# deps installs the packages the tests build fixtures with, and the older Go
# toolchains.
deps:
	@for tc in $(GO_TOOLCHAINS); do 		GOTOOLCHAIN=$$tc $(GO) version >/dev/null || { echo "cannot fetch Go toolchain $$tc through the module proxy"; exit 1; }; 	done
	@missing=""; \
	for tool in gcc gdb readelf; do command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev gdb binutils >/dev/null; \
	fi

demo:
	$(GO) run ./examples/hotpatch demo
