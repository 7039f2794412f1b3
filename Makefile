# The front door. `make demo` runs the program for real against the local lab;
# `make test` runs every test tier (what .ci/run calls). Each target installs what it needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export UV_PROJECT_ENVIRONMENT := .venv
export PULUMI_SKIP_UPDATE_CHECK := true
PY := .venv/bin/python
PYTEST := $(PY) -m pytest

.PHONY: help setup deps toolchain test-unit test-scripts test-media test-e2e test preview demo lab-down bench lint

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

.venv/.synced: pyproject.toml uv.lock
	@command -v uv >/dev/null || { echo "==> Installing uv (pip)"; python3 -m pip install -q uv; }
	@echo "==> Syncing the Python environment (.venv, uv.lock)"
	@uv sync --frozen --quiet
	@touch $@

setup: .venv/.synced deps toolchain ## venv, system packages and the Pulumi toolchain

deps: ## Debian packages the tests and the lab use (root; skipped when present)
	@bash scripts/deps.sh

toolchain: .venv/.synced ## Pulumi CLI + language host + provider plugins in .tools/ (built from Go modules if no pulumi is installed)
	@bash scripts/toolchain.sh --best-effort

test-unit: .venv/.synced ## fast tier: rendering, config, program under mocks, ffmpeg argument building (no root, no network)
	$(PYTEST) tests/unit -q -p no:cacheprovider

test-scripts: .venv/.synced deps ## scripts on real conf files and real Debian 12 root filesystems, shellcheck
	$(PYTEST) tests/scripts -q -p no:cacheprovider

test-media: .venv/.synced deps ## media-transcode and media-pipeline with real ffmpeg on synthetic rips
	$(PYTEST) tests/media -q -p no:cacheprovider

test-e2e: .venv/.synced deps toolchain ## the whole life cycle against the local lab (root)
	$(PYTEST) tests/e2e -q -p no:cacheprovider

test: .venv/.synced deps toolchain ## everything: unit, scripts, media, preview, e2e
	$(PYTEST) tests -q -p no:cacheprovider -rs

preview: .venv/.synced toolchain ## pulumi preview of the homelab stack, offline (dummy secrets, local state)
	@bash scripts/preview.sh

demo: .venv/.synced deps toolchain ## start the local lab and `pulumi up` the lab stack against it
	@bash scripts/lab/demo.sh

lab-down: ## stop the local lab and remove everything it made
	@bash scripts/lab/lab-down.sh

bench: .venv/.synced deps toolchain ## benchmarks: transcode overhead, queue throughput, lab up/no-op/preview/destroy
	@mkdir -p bench-results
	$(PY) bench/bench_transcode.py
	@bash scripts/lab/bench.sh
