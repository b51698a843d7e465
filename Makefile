# gridseal — the two commands a newcomer needs are `make demo` and `make test`.
GO       ?= go
BIN      := bin/gridseal
# The version `gridseal version` prints: the nearest tag and commit (dev outside a git checkout).
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)
PKGS     := ./...
FUZZTIME ?= 20s

.PHONY: all build demo test vet fmt-check lint golangci bench fuzz deps tools clean

all: build

deps:
	$(GO) mod download

build: deps
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/gridseal

demo: build
	./$(BIN) demo

fmt-check:
	@out="$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))"; \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

vet: deps
	$(GO) vet $(PKGS)

lint: fmt-check vet golangci

# golangci-lint (.golangci.yml), pinned in the tools module tools/go.mod and
# built by the go command on first use: nothing to install.
GOLANGCI := $(GO) tool -modfile=tools/go.mod golangci-lint
golangci:
	$(GOLANGCI) run $(PKGS)

# Debian packages the tests drive: mbpoll (an independent Modbus client) and
# chromium (the console's browser test). Installed only when missing.
TOOLS := mbpoll chromium
tools:
	@missing=""; for t in $(TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing:$$missing (apt-get install$$missing) for the interop and browser tests"; fi; \
	fi

test: lint tools
	$(GO) test -race -count=1 -timeout 12m $(PKGS)

# Micro-benchmarks, then the side-by-side table: direct, bare relay, gridseal.
bench: build
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 2s ./protocols/... ./policy/... ./approvals/... ./proxy/... ./chain/...
	$(GO) test -run '^$$' -bench WhatIf -benchmem -benchtime 3x ./cmd/gridseal
	./$(BIN) bench --clients 1,16,256 --duration 9s

# Each fuzz target runs for FUZZTIME; the seed corpus under testdata/fuzz runs in `make test`.
fuzz: deps
	$(GO) test -run '^$$' -fuzz '^FuzzReadFrame$$' -fuzztime $(FUZZTIME) ./protocols/modbus
	$(GO) test -run '^$$' -fuzz '^FuzzParseRequest$$' -fuzztime $(FUZZTIME) ./protocols/modbus
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./policy
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeProposal$$' -fuzztime $(FUZZTIME) ./approvals
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeEvent$$' -fuzztime $(FUZZTIME) ./chain
	$(GO) test -run '^$$' -fuzz '^FuzzParseBlock$$' -fuzztime $(FUZZTIME) ./chain

clean:
	rm -rf bin
