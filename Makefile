# qimg build, demo and tests. Needs only Go; the interop tests use the real
# qemu-img/qemu-io when installed (.ci/run installs them).
GO      ?= go
PREFIX  ?= /usr/local
BINDIR  ?= $(PREFIX)/bin
BIN     := bin/qimg
LINKS   := qemu-img kvm-img qemu-nbd qemu-io

.PHONY: all build demo test test-short fuzz install uninstall vet clean bench

all: build

build:
	$(GO) build -trimpath -o $(BIN) ./cmd/qimg

# demo builds qimg and runs the main job on a small built-in example.
demo: build
	@sh scripts/demo.sh $(BIN)

# test runs the whole suite (interop tests skip without qemu-img unless CI=true).
test:
	$(GO) vet ./...
	$(GO) test -race ./...

test-short:
	$(GO) test -short ./...

# fuzz runs every fuzz target briefly.
fuzz:
	sh scripts/fuzz.sh $(FUZZTIME)

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

install: build
	install -d $(DESTDIR)$(BINDIR)
	install -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/qimg
	for l in $(LINKS); do ln -sf qimg $(DESTDIR)$(BINDIR)/$$l; done

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/qimg
	for l in $(LINKS); do rm -f $(DESTDIR)$(BINDIR)/$$l; done

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l .)" || { gofmt -l .; exit 1; }

clean:
	rm -rf bin demo
