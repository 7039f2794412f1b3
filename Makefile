# The front door. `make demo` runs the program for real against the local lab;
# `make test` runs every test tier (what .ci/run calls). Each target installs what it needs.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export UV_PROJECT_ENVIRONMENT := .venv
export PULUMI_SKIP_UPDATE_CHECK := true
PY := .venv/bin/python
PYTEST := $(PY) -m pytest

.PHONY: help setup deps toolchain test-unit test-scripts test-media test-queue test-web test-e2e test preview demo lab-down bench lint recover adopt

help: ## list the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

# uv from PATH, else a private copy in .tools/uv (a venv of the system python3; Debian's
# python3 has no pip and is externally managed, so nothing is installed system-wide).
UV := $(or $(shell command -v uv 2>/dev/null),.tools/uv/bin/uv)

.tools/uv/bin/uv:
	@echo "==> Installing uv into .tools/uv (PyPI)"
	@python3 -m venv .tools/uv || { echo "✗ python3 -m venv failed: install python3-venv (make deps) and retry" >&2; exit 1; }
	@.tools/uv/bin/python -m pip install -q uv

# Pulumi.yaml says `toolchain: uv`: the language host looks uv up on PATH. A private uv is
# linked into .tools/bin, which tools/pulumi-env.sh (and every path that runs the engine) puts on PATH.
.tools/bin/uv: | .tools/uv/bin/uv
	@mkdir -p .tools/bin
	@ln -sfn ../uv/bin/uv $@

.venv/.synced: pyproject.toml uv.lock | $(UV) $(if $(filter .tools/%,$(UV)),.tools/bin/uv)
	@echo "==> Syncing the Python environment (.venv, uv.lock)"
	@$(UV) sync --frozen --quiet
	@touch $@

setup: deps .venv/.synced toolchain ## system packages, the venv and the Pulumi toolchain

deps: ## Debian packages the tests and the lab use (root; skipped when present)
	@bash tools/deps.sh

toolchain: .venv/.synced ## Pulumi CLI + language host + provider plugins in .tools/ (built from Go modules if no pulumi is installed)
	@bash tools/toolchain.sh --best-effort

test-unit: .venv/.synced ## fast tier: rendering, config, program under mocks, ffmpeg argument building (no root, no network)
	$(PYTEST) tests/unit -q -p no:cacheprovider

test-scripts: deps .venv/.synced ## scripts on real conf files and real Debian 12 root filesystems, shellcheck
	$(PYTEST) tests/scripts -q -p no:cacheprovider

test-media: deps .venv/.synced ## media-transcode and media-pipeline with real ffmpeg on synthetic rips
	$(PYTEST) tests/media -q -p no:cacheprovider

test-queue: deps .venv/.synced ## the job queue on a PostgreSQL 15 the tests start (initdb/pg_ctl), both stores' contract, 3 real workers
	$(PYTEST) tests/queue -q -p no:cacheprovider

test-web: deps .venv/.synced ## the status page in headless Chromium, alert rules (promtool), dashboard vs a live /metrics
	$(PYTEST) tests/browser tests/monitoring -q -p no:cacheprovider

test-e2e: deps .venv/.synced toolchain ## the whole life cycle against the local lab (root): the engine where it can run, the program without it always
	$(PYTEST) tests/e2e tests/lab -q -p no:cacheprovider -rs

test: deps .venv/.synced toolchain ## everything: unit, scripts, media, preview, e2e
	$(PYTEST) tests -q -p no:cacheprovider -rs

preview: .venv/.synced toolchain ## pulumi preview of the homelab stack, offline (dummy secrets, local state)
	@bash tools/preview.sh

demo: deps .venv/.synced toolchain ## start the local lab and deploy the lab stack to it (pulumi up, or the program without the engine)
	@bash lab/demo.sh

recover: .venv/.synced ## after an interrupted `pulumi up`: remove a stale lock, settle pending creates (STACK=name)
	@source tools/pulumi-env.sh && bash tools/recover.sh $(if $(STACK),--stack $(STACK))

adopt: .venv/.synced ## bring containers made by hand (CT 201/202) under the stack; stops if up would recreate one (STACK=name)
	@source tools/pulumi-env.sh && bash tools/adopt-containers.sh $(if $(STACK),--stack $(STACK))

lab-down: ## stop the local lab and remove everything it made
	@bash lab/lab-down.sh

bench: deps .venv/.synced toolchain ## benchmarks: transcode overhead, queue throughput, rip-to-library overhead, lab up/no-op/preview/destroy
	@mkdir -p bench-results
	$(PY) bench/bench_transcode.py
	$(PY) bench/bench_rip.py
	$(PY) bench/bench_gpu_usage.py
	$(PY) bench/bench_queue.py
	@bash lab/bench.sh
