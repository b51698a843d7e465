# gridseal — the two commands a newcomer needs are `make demo` and `make test`.
GO       ?= go
BIN      := bin/gridseal
# What `gridseal version` prints: the nearest tag and commit (dev outside a git
# checkout), the commit, and the commit's time as the build date (the same
# commit builds the same bytes).
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT   ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
DATE     ?= $(shell TZ=UTC git log -1 --format=%cd --date=format-local:%Y-%m-%dT%H:%M:%SZ 2>/dev/null || echo unknown)
LDFLAGS  := -X main.version=$(VERSION) -X main.commit=$(COMMIT) -X main.date=$(DATE)
PKGS     := ./...
FUZZTIME ?= 20s

.PHONY: all build release image demo test test-deploy vet fmt-check lint golangci bench fuzz deps tools clean

all: build

deps:
	$(GO) mod download

build: deps
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/gridseal

# Static binaries for Linux amd64 and arm64 under bin/release, built with
# -trimpath (no local paths in them), and their SHA-256 sums.
RELEASE_DIR := bin/release
RELEASE_ARCH := amd64 arm64
release: deps
	rm -rf $(RELEASE_DIR) && mkdir -p $(RELEASE_DIR)
	for arch in $(RELEASE_ARCH); do \
	  CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $(GO) build -trimpath -ldflags "-s -w $(LDFLAGS)" \
	    -o $(RELEASE_DIR)/gridseal-linux-$$arch ./cmd/gridseal || exit 1; \
	done
	cd $(RELEASE_DIR) && sha256sum gridseal-linux-* > SHA256SUMS && cat SHA256SUMS

# The container image (Dockerfile; needs a Docker daemon).
image:
	docker build --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) --build-arg DATE=$(DATE) -t gridseal:$(VERSION) .

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

# Debian packages the tests drive: mbpoll (an independent Modbus client),
# chromium (the console's browser test) and openssh-client (the ssh-agent
# that holds litewitness's key in the witness tests), as command:package.
# Installed only when missing.
TOOLS := mbpoll chromium ssh-agent:openssh-client
tools:
	@missing=""; for t in $(TOOLS); do command -v $${t%%:*} >/dev/null 2>&1 || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing:$$missing (apt-get install$$missing) for the interop and browser tests"; fi; \
	fi

test: lint tools test-deploy
	$(GO) test -race -count=1 -timeout 12m $(PKGS)

# deploy/ is a module of its own (Prometheus's rule parser, the Compose
# loader, the Kubernetes API types, the Dockerfile parser): it checks the
# alerting rules against a running gridseal, the compose file, the
# Kubernetes manifests and the Dockerfile.
test-deploy:
	cd deploy && $(GO) vet ./... && $(GO) test -count=1 -timeout 5m ./...

# Micro-benchmarks, then the side-by-side table: direct, bare relay, gridseal.
bench: build
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 2s ./protocols/... ./policy/... ./approvals/... ./proxy/... ./chain/...
	$(GO) test -run '^$$' -bench WhatIf -benchmem -benchtime 3x ./cmd/gridseal
	./$(BIN) bench --clients 1,16,256 --duration 9s
	./$(BIN) bench --scenarios devices --devices 200 --duration 10s

# Each fuzz target runs for FUZZTIME; the seed corpus under testdata/fuzz runs in `make test`.
fuzz: deps
	$(GO) test -run '^$$' -fuzz '^FuzzReadFrame$$' -fuzztime $(FUZZTIME) ./protocols/modbus
	$(GO) test -run '^$$' -fuzz '^FuzzParseRequest$$' -fuzztime $(FUZZTIME) ./protocols/modbus
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./policy
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeProposal$$' -fuzztime $(FUZZTIME) ./approvals
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeEvent$$' -fuzztime $(FUZZTIME) ./chain
	$(GO) test -run '^$$' -fuzz '^FuzzParseBlock$$' -fuzztime $(FUZZTIME) ./chain
	$(GO) test -run '^$$' -fuzz '^FuzzParseTlogProof$$' -fuzztime $(FUZZTIME) ./chain
	$(GO) test -run '^$$' -fuzz '^FuzzParseTilePath$$' -fuzztime $(FUZZTIME) ./chain

clean:
	rm -rf bin
