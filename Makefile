# The two commands of the README: `make demo` and `make test`.
GO ?= go
export PATH := $(shell $(GO) env GOPATH)/bin:$(PATH)

.PHONY: demo test unit build bench vet compat fuzz

# tests/compat, a module of its own, compares guest-puller's verdicts with
# go.podman.io/image/v5's; built with these tags it needs no gpgme (cgo).
COMPAT_TAGS := containers_image_openpgp,exclude_graphdriver_btrfs

# A demo pull from an in-process registry under policy.example.json: no
# outside service, nothing to install but Go.
demo:
	$(GO) run ./examples/demo

# Installs what the tests need (apt-get, go install), then runs them all.
test:
	./scripts/setup
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 80m ./...
	$(MAKE) compat

compat:
	cd tests/compat && $(GO) vet -tags $(COMPAT_TAGS) ./... && $(GO) test -tags $(COMPAT_TAGS) -count=1 -timeout 10m ./...

# A few seconds of every fuzz target (FUZZ_TIME=30s make fuzz for more).
fuzz:
	./scripts/fuzz

unit:
	$(GO) test -count=1 $$($(GO) list ./... | grep -v /tests)

build:
	$(GO) build -o bin/ ./cmd/...

vet:
	gofmt -l . | (! grep .)
	$(GO) vet ./...
	cd tests/compat && $(GO) vet -tags $(COMPAT_TAGS) ./...

bench:
	./scripts/bench
