# make test is the project's single test entry point; .ci/run calls exactly it.
# It installs what the tests need on a fresh Debian machine, then vets and
# tests every package.

GO ?= go
GOTEST_FLAGS ?= -count=1 -timeout 20m

.PHONY: test deps vet unit demo test-arm64

test: deps vet
	$(GO) test $(GOTEST_FLAGS) ./...
	$(MAKE) test-arm64

# test-arm64 is the arm64 VM lane (internal/armvm): it installs qemu, the
# aarch64 cross compiler and a Debian arm64 kernel when missing, runs the
# arm64-meaningful test binaries in qemu-system-aarch64 and fails unless
# every one passes.
test-arm64:
	$(GO) run ./internal/armvm

vet:
	$(GO) vet ./...
	GOARCH=arm64 CGO_ENABLED=0 $(GO) vet ./...
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }

# deps installs the packages the tests build fixtures with.
deps:
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
