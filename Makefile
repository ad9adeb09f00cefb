# executioner — developer entry points. `make run` and `make test` work on a fresh machine.
CARGO ?= cargo
BIN := target/release/executioner
STATE ?= .executioner
# Where `make run`'s controller serves its JSON API and /metrics.
LISTEN ?= 127.0.0.1:8080

.PHONY: build run test test-long lint fmt schemas bench fuzz clean-state

build:
	$(CARGO) build --release

# The demo: build, then reconcile manifests/ with the controller (embedded SQLite in $(STATE)/).
run: build
	@echo "== validating manifests/"
	@$(BIN) validate manifests/
	@if $(BIN) controller --help >/dev/null 2>&1; then \
		echo "== controller on manifests/ (status files: manifests/.status/NAME.yaml; Ctrl-C to stop)"; \
		echo "== web UI on http://$(LISTEN)/ (also /api/v1/pipelines, /metrics; read-only)"; \
		$(BIN) --state-dir $(STATE) controller --manifests manifests --listen $(LISTEN); \
	else \
		for f in manifests/*.yaml; do echo "== graph of $$f"; $(BIN) graph $$f; done; \
		if $(BIN) run --help >/dev/null 2>&1; then \
			for f in manifests/*.yaml; do echo "== run $$f"; $(BIN) --state-dir $(STATE) run $$f || true; done; \
		fi; \
	fi

# The whole suite (unit, property and integration tests that run the real binary).
test:
	@# Tests that drive a tool skip when it is missing (fail under EXECUTIONER_CI=1): say so up front.
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v pg_config >/dev/null 2>&1 || echo "note: PostgreSQL is not installed: its tests skip (apt-get install postgresql)"
	@[ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || echo "note: chromium or chromium-driver is not installed: the browser test skips (apt-get install chromium chromium-driver)"
	@command -v schemathesis >/dev/null 2>&1 || echo "note: schemathesis is not installed: the API fuzz pass skips (python3 -m pip install schemathesis==4.32.5)"
	$(CARGO) test --all-targets --features failpoints

# Longer soak variants (documented in docs/testing.md).
test-long:
	EXECUTIONER_LONG_TESTS=1 $(CARGO) test --all-targets --features failpoints -- --include-ignored

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Regenerate the committed JSON Schemas from the Rust types.
schemas:
	$(CARGO) run --quiet -- schema --out-dir schemas

# Side-by-side timing with ninja and make on the same DAGs (see bench/README.md).
bench: build
	@command -v ninja >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq ninja-build) || echo "ninja not installed; its column will be empty"
	python3 bench/bench.py --executioner $(BIN) $(BENCH_ARGS)
	@# The web UI's page load of a 1,000-job run in headless Chromium (median of 5; bench/README.md).
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then \
		$(CARGO) test --release --quiet --test browser page_load -- --ignored --nocapture; \
	else echo "page load: skipped: chromium and chromium-driver are not installed"; fi

# Bounded fuzzing of the manifest loader (needs nightly Rust and cargo-fuzz; see docs/fuzzing.md).
fuzz:
	@if cargo +nightly --version >/dev/null 2>&1 && cargo fuzz --version >/dev/null 2>&1; then \
		cd fuzz && for t in load_manifest env_interpolate cron_schedule; do \
			mkdir -p corpus/$$t && cargo +nightly fuzz run $$t corpus/$$t seeds/$$t -- -max_total_time=$${FUZZ_SECONDS:-60} || exit 1; \
		done; \
	else \
		echo "fuzz: nightly Rust or cargo-fuzz is not available here; replaying seeds and mutations instead"; \
		$(CARGO) test --test fuzz_smoke; \
	fi

clean-state:
	rm -rf $(STATE) manifests/.status
