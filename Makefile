# pumi — build and test entry points. `make test` is the one test command (CI calls it from .ci/run).
GO ?= go

.PHONY: test build run fuzz lab

# Unit tests, fuzz seed corpora, and the integration tests (network namespaces, QEMU/OVMF, dnsmasq, OpenSSH,
# aiosmtpd...). Integration tests need root; as non-root they skip (in CI, with CI=true, they fail instead).
# -p 2: two test binaries at once on the two cores; QEMU guests additionally take a machine-wide slot (internal/testvm).
# The lab in a box (e2e, the folded scenario, ~20 minutes) runs last and alone, so no other QEMU test waits for the
# VM slot it holds; -v keeps its timeline and per-PC phase table in the CI log.
test:
	$(GO) vet ./...
	$(GO) test -p 2 -timeout 60m $$($(GO) list ./... | grep -v '/e2e$$')
	$(GO) test -v -timeout 80m ./e2e

# The whole lab matrix (e2e: plain, each fault alone, folded; ~20 minutes per scenario, not yet timed as a whole). `make test` runs the folded one.
lab:
	PUMI_LAB=all $(GO) test -v -timeout 150m -run 'TestLab$$' ./e2e

build:
	$(GO) build ./...

run:
	$(GO) run ./cmd/pumi-appliance

# Longer fuzzing of every fuzz target, 30 s each (not part of `make test`; the seed corpora run in every test).
# -fuzzminimizetime bounds minimisation: the NFS server target has background goroutines that make it slow.
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list 'Fuzz.*' $$pkg | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime 30s -fuzzminimizetime 10x $$pkg || exit 1; \
	  done; \
	done
