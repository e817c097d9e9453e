# The two commands of the README: `make demo` and `make test`.
GO ?= go
export PATH := $(shell $(GO) env GOPATH)/bin:$(PATH)

.PHONY: demo test unit build bench vet fmt compat fuzz

# tests/compat, a module of its own, compares guest-puller's verdicts with
# go.podman.io/image/v5's; built with these tags it needs no gpgme (cgo).
COMPAT_TAGS := containers_image_openpgp,exclude_graphdriver_btrfs

# A demo pull from an in-process registry under policy.example.json: no
# outside service, nothing to install but Go.
demo:
	$(GO) run ./examples/demo

# Installs what the tests need (apt-get, go install), then checks that
# every Go file is gofmt'ed (seconds, so an unformatted file fails at once
# rather than after the suite), runs go vet, then every test:
# every package under the race detector, tests/compat, and a few seconds of
# each fuzz target (scripts/fuzz, which finds them all). In tests/ and
# tests/vm, -race covers the harness and what runs in the test process; the
# guest-puller and dev-kbs binaries they run are built without it, because
# tests there hold them to peak-memory budgets (64 and 128 MiB) that a
# race-instrumented binary cannot keep (docs/development.md). The fuzz
# targets' instrumented test binaries build in the background from the start
# (minutes the first time on a machine), so the fuzz step takes a minute.
test:
	./scripts/setup
	$(MAKE) fmt
	./scripts/fuzz build >/dev/null 2>&1 &
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 80m ./...
	$(MAKE) compat
	./scripts/fuzz

compat:
	cd tests/compat && $(GO) vet -tags $(COMPAT_TAGS) ./... && $(GO) test -race -tags $(COMPAT_TAGS) -count=1 -timeout 10m ./...

# A few seconds of every fuzz target (FUZZ_TIME=30s make fuzz for more).
fuzz:
	./scripts/fuzz

unit:
	$(GO) test -count=1 $$($(GO) list ./... | grep -v /tests)

build:
	$(GO) build -o bin/ ./cmd/...

# Fails listing every Go file gofmt would change, and on a file gofmt
# cannot parse (gofmt's own exit status: a pipe into grep would lose it).
fmt:
	@out=$$(gofmt -l . 2>&1) || { echo "gofmt failed: $$out" >&2; exit 1; }; \
	[ -z "$$out" ] || { printf 'gofmt: not formatted (gofmt -w FILE):\n%s\n' "$$out" >&2; exit 1; }

vet: fmt
	$(GO) vet ./...
	cd tests/compat && $(GO) vet -tags $(COMPAT_TAGS) ./...

bench:
	./scripts/bench
