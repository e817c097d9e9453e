# The two commands of the README: `make demo` and `make test`.
GO ?= go
export PATH := $(shell $(GO) env GOPATH)/bin:$(PATH)

.PHONY: demo test unit build bench vet

# A demo pull from an in-process registry under policy.example.json: no
# outside service, nothing to install but Go.
demo:
	$(GO) run ./examples/demo

# Installs what the tests need (apt-get, go install), then runs them all.
test:
	./scripts/setup
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 80m ./...

unit:
	$(GO) test -count=1 $$($(GO) list ./... | grep -v /tests)

build:
	$(GO) build -o bin/ ./cmd/...

vet:
	gofmt -l . | (! grep .)
	$(GO) vet ./...

bench:
	./scripts/bench
