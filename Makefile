# make test is the project's single test entry point; .ci/run calls exactly it.
# It installs what the tests need on a fresh Debian machine, then vets and
# tests every package.

GO ?= go
GOTEST_FLAGS ?= -count=1 -timeout 20m

.PHONY: test deps vet unit demo fuzz test-arm64 test-arm64-user bench bench-gomonkey

test: deps vet
	$(GO) test $(GOTEST_FLAGS) ./...
	@# The arm64 VM lane's image (its cross-built tests and fixtures: about
	@# two minutes of building) builds in the background while the stages
	@# after the host's go test run (race, self-patching, gomonkey, fuzzing,
	@# qemu-user), which time nothing against the clock; the VM boots it
	@# after them.
	@rm -rf $(ARMVM_IMAGE) && mkdir -p $(ARMVM_IMAGE) && \
		{ $(GO) run ./internal/armvm -prepare $(ARMVM_IMAGE) > $(ARMVM_IMAGE)/build.log 2>&1; echo $$? > $(ARMVM_IMAGE)/build.st && mv $(ARMVM_IMAGE)/build.st $(ARMVM_IMAGE)/build.status; } &
	$(GO) test $(GOTEST_FLAGS) -race -run 'TestFuncUnderLoad' ./patch
	@# A test suite built without inlining, as an inlined function's refusal
	@# advises (go test strips it too: allgs is found from the runtime's code).
	$(GO) test $(GOTEST_FLAGS) -gcflags=all=-l ./patch/patchtest
	@# The comparison with gomonkey (a module of its own): each feature tried
	@# with both libraries on the same function.
	cd benchmarks/gomonkey && $(GO) test $(GOTEST_FLAGS) -gcflags=all=-l ./...
	$(MAKE) --no-print-directory fuzz
	$(MAKE) --no-print-directory test-arm64-user
	@for i in $$(seq 1800); do [ -f $(ARMVM_IMAGE)/build.status ] && break; sleep 1; done; \
		cat $(ARMVM_IMAGE)/build.log; [ "$$(cat $(ARMVM_IMAGE)/build.status 2>/dev/null)" = 0 ] || \
		{ echo "the arm64 VM image did not build (its log is above)"; exit 1; }
	$(GO) run ./internal/armvm -initrd $(ARMVM_IMAGE)
	@rm -rf $(ARMVM_IMAGE)

# ARMVM_IMAGE is where make test builds the arm64 VM lane's image.
ARMVM_IMAGE = $(CURDIR)/.armvm-image

# fuzz runs every fuzz target briefly (go test -fuzz takes one package and
# one target per run). Their seed corpora and the regression inputs under
# testdata/fuzz/ already run in the plain go test; this looks for new
# inputs. A failure is a real bug: go test writes the input to
# testdata/fuzz/<target>/, where it stays as the regression test of the fix.
FUZZTIME ?= 1s
FUZZ_TARGETS = \
	./trampoline:FuzzParseTable ./trampoline:FuzzBuildTable ./trampoline:FuzzPlan ./trampoline:FuzzPlanARM64 \
	./patch:FuzzReadRecord ./patch:FuzzParseLibRecord ./patch:FuzzParsePins ./elfsym:FuzzParseMappings ./internal/arch:FuzzFillerRun \
	./internal/gopcln:FuzzParse ./internal/gopcln:FuzzParseMutated \
	./internal/cfi:FuzzParse ./internal/cfi:FuzzParseMutated ./internal/cfi:FuzzParseWithHdr ./internal/cfi:FuzzEval \
	./internal/goruntime:FuzzGoroutines ./internal/goruntime:FuzzReadStrings ./internal/goruntime:FuzzCodeDecoders \
	./internal/unwind:FuzzUnwindGo ./internal/unwind:FuzzUnwindLibc
# go's fuzzing engine can end a timed run with "context deadline exceeded"
# when a worker is still busy at the deadline (no input failed, nothing is
# written under testdata/fuzz/): such a run is tried once more; a failing
# input always fails.
fuzz:
	@set -e; out=$$(mktemp); trap 'rm -f $$out' EXIT; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t#*:}; \
		for try in 1 2; do \
			echo "fuzz $$pkg $$name ($(FUZZTIME))"; \
			if $(GO) test $$pkg -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) >$$out 2>&1; then cat $$out; break; fi; \
			cat $$out; \
			if [ $$try = 1 ] && grep -q 'context deadline exceeded' $$out && ! grep -q 'Failing input written' $$out; then \
				echo "fuzz: the engine's deadline, not an input: once more"; continue; \
			fi; \
			exit 1; \
		done; \
	done

# test-arm64 is the arm64 VM lane (internal/armvm): it installs qemu, the
# aarch64 cross compiler and a Debian arm64 kernel when missing, runs the
# arm64-meaningful test binaries in qemu-system-aarch64 and fails unless
# every one passes.
test-arm64:
	$(GO) run ./internal/armvm

vet:
	$(GO) vet ./...
	GOARCH=arm64 CGO_ENABLED=0 $(GO) vet ./...
	@# The self-patching API and patchtest build (and return ErrNotSupported)
	@# on developer machines that are not Linux.
	GOOS=darwin GOARCH=arm64 CGO_ENABLED=0 $(GO) vet ./patch/...
	GOOS=windows GOARCH=amd64 CGO_ENABLED=0 $(GO) vet ./patch/...
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }

# The Go releases the goroutine tests build targets with (patch/go_test.go,
# internal/goruntime; fixture.GoToolchains), and the releases older than the
# supported range whose targets must be refused (fixture.OldGoToolchains):
# fetched once through the module proxy into the module cache, so the tests
# themselves do not download.
GO_TOOLCHAINS ?= go1.22.12 go1.23.12 go1.24.13 go1.25.14 go1.19.13 go1.21.13

# deps installs the packages the tests build fixtures with (gcc; the arm64
# cross compiler and qemu-user for the arm64 trampoline tests), and the older
# Go toolchains (fetched side by side: one at a time took ~6 s each).
APT_PACKAGES = gcc libc6-dev gdb binutils gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
deps:
	@pids=""; for tc in $(GO_TOOLCHAINS); do \
		{ GOTOOLCHAIN=$$tc $(GO) version >/dev/null || { echo "cannot fetch Go toolchain $$tc through the module proxy"; exit 1; }; } & pids="$$pids $$!"; \
	done; for p in $$pids; do wait $$p || exit 1; done
	@missing=""; \
	for tool in gcc gdb readelf aarch64-linux-gnu-gcc qemu-aarch64; do command -v $$tool >/dev/null 2>&1 || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	fi

# test-arm64-user runs the pure arm64 tests (the trampoline's relocated code
# executed for real, execmem) on an arm64 CPU emulated by qemu-user.
ARM64_USER_PKGS = ./trampoline ./internal/execmem
test-arm64-user: deps
	@set -e; dir=$$(mktemp -d); trap 'rm -rf $$dir' EXIT; \
	for p in $(ARM64_USER_PKGS); do \
		bin=$$dir/$$(basename $$p).test; \
		GOARCH=arm64 CGO_ENABLED=1 CC=aarch64-linux-gnu-gcc $(GO) test -c -o $$bin $$p; \
		echo "qemu-aarch64: $$p"; \
		(cd $$p && qemu-aarch64 -L /usr/aarch64-linux-gnu $$bin -test.count=1); \
	done

demo:
	$(GO) run ./examples/hotpatch demo

# bench measures the pause against its floor (C and Go targets), the cost of
# a call through a patch, a hot patch against a restart of the demo service
# under load, and writes docs/performance.md and docs/pause.svg
# (rewritten each run, with the machine the figures came from). BENCH_N is
# the iterations per target (the medians are of these).
BENCH_N ?= 20
bench: deps
	@set -e; dir=$$(mktemp -d); trap 'rm -rf $$dir' EXIT; \
	$(GO) test ./patch -run '^$$' -bench '^BenchmarkPause$$' -benchtime $(BENCH_N)x -count 1 -timeout 60m | tee $$dir/pause.txt; \
	$(GO) test ./trampoline -run '^$$' -bench '^BenchmarkDispatch$$' -count 5 | tee $$dir/dispatch.txt; \
	$(GO) test ./examples/hotpatch -run '^$$' -bench '^BenchmarkHotpatchVsRestart$$' -benchtime 1x -count 5 | tee $$dir/restart.txt; \
	$(GO) run ./internal/benchreport -out docs $$dir/pause.txt $$dir/dispatch.txt $$dir/restart.txt
	@echo "wrote docs/performance.md and docs/pause.svg"
	$(MAKE) --no-print-directory bench-gomonkey
	@# The apply pause of a Go plugin through the agent next to the CLI's
	@# stop mode, on the same service.
	$(GO) test ./examples/hotpatch -run '^$$' -bench '^BenchmarkPluginPause$$' -benchtime 5x -count 1

# bench-gomonkey measures, side by side in one run, an in-process
# apply+revert and a call through a patch with hotpatch and with gomonkey
# (benchmarks/gomonkey, a module of its own so that gomonkey is never our
# dependency), and prints the feature table of docs/gomonkey.md as observed.
bench-gomonkey:
	cd benchmarks/gomonkey && $(GO) test -gcflags=all=-l -run '^TestFeatures$$' -v -count 1 . | grep '^ *features_test.go:[0-9]*: |' | sed 's/^ *features_test.go:[0-9]*: //'
	cd benchmarks/gomonkey && $(GO) test -gcflags=all=-l -run '^$$' -bench . -count 5 .
