# gridseal — the two commands a newcomer needs are `make demo` and `make test`.
GO       ?= go
BIN      := bin/gridseal
PKGS     := ./...
FUZZTIME ?= 20s

.PHONY: all build demo test vet fmt-check lint bench fuzz deps clean

all: build

deps:
	$(GO) mod download

build: deps
	$(GO) build -o $(BIN) ./cmd/gridseal

demo: build
	./$(BIN) demo

fmt-check:
	@out="$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))"; \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

vet: deps
	$(GO) vet $(PKGS)

lint: fmt-check vet

test: lint
	$(GO) test -race -count=1 -timeout 12m $(PKGS)

bench: deps
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 2s ./protocols/... ./policy/... ./proxy/...

# Each fuzz target runs for FUZZTIME; the seed corpus under testdata/fuzz runs in `make test`.
fuzz: deps
	$(GO) test -run '^$$' -fuzz '^FuzzReadFrame$$' -fuzztime $(FUZZTIME) ./protocols/modbus
	$(GO) test -run '^$$' -fuzz '^FuzzParseRequest$$' -fuzztime $(FUZZTIME) ./protocols/modbus
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./policy

clean:
	rm -rf bin
