# hashsync — run `make help` for the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# The first Python >= 3.11 on PATH (a stock Mac's python3 is Apple's 3.9); PYTHON=... overrides.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	$$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
VENV ?= .venv
PY := $(VENV)/bin/python
# Parallel pytest is not worth it on 2 cores; the suite is sized to run in a few minutes.
PYTEST_ARGS ?=

.PHONY: help venv build test test-rust test-python demo hash-demo bench bench-micro bench-sync bench-cache bench-fsspec bench-hub bench-treecache bench-segments lint lint-macos fmt clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.installed: requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
		echo "make: hashsync needs Python 3.11 or newer; found none (tried python3.13," \
			"python3.12, python3.11, python3 on PATH, or PYTHON='$(PYTHON)'): install one or" \
			"run make PYTHON=/path/to/python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed ## Create .venv with every Python tool the project uses

build: venv ## Build the Rust extension (release) into .venv
	$(VENV)/bin/maturin develop --release --quiet

test-rust: ## Run the Rust core's cargo tests
	cargo test --quiet

test-python: build ## Run the pytest suite (starts its own SeaweedFS S3 server)
	$(PY) -m pytest $(PYTEST_ARGS)

test: test-rust test-python ## Run every test: cargo tests, then pytest

demo: build ## Sync a dataset to a local S3 server; show the edit aws s3 sync misses
	$(PY) examples/demo.py

hash-demo: build ## Hash a generated tree with hashsync and with hashlib, and compare
	$(PY) examples/hash_demo.py

bench: bench-micro bench-sync bench-cache bench-fsspec bench-hub bench-treecache bench-segments ## Run every benchmark and refresh the README's tables
	$(PY) benches/update_readme.py

bench-micro: build ## Hashing and scanning micro-benchmarks (pytest-benchmark, ~6 min)
	$(PY) -m pytest benches --benchmark-enable --benchmark-only \
		--benchmark-json=benches/results/bench.json -q
	$(PY) benches/report.py benches/results/bench.json | tee benches/results/latest.md

bench-cache: build ## Cache get_many vs hashsync.sync, a boto3 loop and a process pool (~4 min)
	$(PY) benches/cache_bench.py --files 2000 --rounds 5

bench-fsspec: build ## pandas reading parquet from S3: hashsync.fsspec cold/warm vs pyarrow's S3 (~3 min)
	$(PY) benches/fsspec_bench.py

bench-hub: build ## Hub client vs a sequential client and curl, from a local hub (~3 min)
	$(PY) benches/hub_bench.py --rounds 3

bench-treecache: build ## TreeCache build/download/no-op against plain sync and s5cmd (~2 min)
	$(PY) benches/treecache_bench.py --files 2000 --rounds 3

bench-segments: build ## Dask overhead (local:2 vs one process) and peak memory per million entries (~6 min)
	$(PY) benches/segments_bench.py --files 20000 --rounds 2

bench-sync: build ## hashsync vs aws s3 sync vs s5cmd vs rclone on a local SeaweedFS: loopback, 20 ms RTT (delay proxy), 2 x 1 GiB (~20 min)
	cargo build --release --quiet --manifest-path benches/delay-proxy/Cargo.toml --target-dir benches/delay-proxy/target
	$(VENV)/bin/hashsync bench

lint: build ## ruff, mypy on the package, the stubs checked against the extension (stubtest), clippy
	$(VENV)/bin/ruff check python tests benches examples
	$(VENV)/bin/ruff format --check python tests benches examples
	$(PY) -m mypy
	$(PY) -m mypy.stubtest hashsync._native
	cargo clippy --all-targets --features python -- -D warnings
	$(MAKE) lint-macos

lint-macos: venv ## clippy for Apple Silicon (aarch64-apple-darwin) on Linux; C parts via zig cc
	rustup target add aarch64-apple-darwin
	ZIG_PYTHON=$(CURDIR)/$(PY) CC_aarch64_apple_darwin=$(CURDIR)/tools/zig-cc-macos \
		cargo clippy --all-targets --features python --target aarch64-apple-darwin -- -D warnings

fmt: venv ## Format Python and Rust
	$(VENV)/bin/ruff format python tests benches examples
	cargo fmt

clean: ## Remove build products and the virtualenv
	rm -rf target benches/delay-proxy/target $(VENV) .pytest_cache .hypothesis benches/results/*.json
