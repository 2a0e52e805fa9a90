# Two commands set everything up on a fresh Debian machine (as root): `make run` and `make test`.
# Both install from the committed lock files only (requirements/*.lock with hashes, package-lock.json),
# so a new release on a registry cannot change what runs; `make lock` re-resolves on purpose.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
UV_VERSION := 0.13.9
LOCK_FLAGS := --generate-hashes --universal --python-version 3.11 --quiet
EXTRAS_RUN := --extra redis --extra providers --extra claude --extra mcp

.PHONY: run test test-latest check lint typecheck bench system-deps node-deps install lock vendor clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# The run stamp is also satisfied by the test install (a superset of the same pins).
$(VENV)/.run: requirements/run.lock pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --require-hashes --no-deps -r requirements/run.lock
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.test: requirements/test.lock pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --require-hashes --no-deps -r requirements/test.lock
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@ $(VENV)/.run

install: $(VENV)/.run

run: $(VENV)/.run
	$(BIN)/agentwire serve

# The npm programs the tests drive for real: the agent CLIs, the AG-UI and AI SDK clients.
node_modules/.installed: package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

node-deps: node_modules/.installed

# The dashboard's one third-party module: markdown-it's single-file browser build (its dependencies
# bundled in; argparse, for its command line, is not), copied from node_modules as package-lock.json
# pins it, with each bundled package's licence and version. The copies are committed, so the page
# runs with no build step. After changing markdown-it's version in package.json (then
# `npm install --package-lock-only`), run `make vendor`.
VENDOR := src/agentwire/web/vendor
vendor: node-deps
	rm -rf $(VENDOR) && mkdir -p $(VENDOR)
	sed '/^\/\/# sourceMappingURL=/d' node_modules/markdown-it/dist/browser/markdown-it.esm.min.mjs > $(VENDOR)/markdown-it.js
	deps=$$(node -p 'Object.keys(require("./node_modules/markdown-it/package.json").dependencies).filter(n => n !== "argparse").sort().join(" ")'); \
	for name in markdown-it $$deps; do \
	  node -p "const p = require('./node_modules/$$name/package.json'); [p.name, p.version, p.license].join(' ')" >> $(VENDOR)/VERSIONS; \
	  cp "$$(ls node_modules/$$name/LICENSE* | head -n 1)" $(VENDOR)/$$name.LICENSE; \
	done

# Debian packages the tests drive for real: a redis-server of their own, and Chromium.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v node >/dev/null || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

lint: $(VENV)/.test
	$(BIN)/ruff check src tests bench

typecheck: $(VENV)/.test
	$(BIN)/mypy

check: lint typecheck

test: $(VENV)/.test system-deps node-deps check
	$(BIN)/pytest $(PYTEST_ARGS)

# The suite against the newest releases of every dependency, in a venv of its own: run it before
# `make lock`, to find what a new release breaks before the lock lets it in.
test-latest: system-deps node-deps
	rm -rf .venv-latest
	$(PY) -m venv .venv-latest
	.venv-latest/bin/pip install -q -e '.[redis,providers,claude,mcp,test]'
	.venv-latest/bin/pytest $(PYTEST_ARGS)

# Re-resolve the locks from pyproject.toml's ranges (keeping current pins where they still fit;
# UPGRADE=1 takes the newest). The npm lock: edit package.json, then `npm install --package-lock-only`.
lock:
	$(PY) -m venv .venv-lock
	.venv-lock/bin/pip install -q uv==$(UV_VERSION)
	.venv-lock/bin/uv pip compile pyproject.toml requirements/build.in $(EXTRAS_RUN) --extra test $(LOCK_FLAGS) \
	  $(if $(UPGRADE),--upgrade,) -o requirements/test.lock
	.venv-lock/bin/uv pip compile pyproject.toml requirements/build.in $(EXTRAS_RUN) $(LOCK_FLAGS) \
	  -c requirements/test.lock -o requirements/run.lock

bench: $(VENV)/.test system-deps node-deps
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .venv-latest .venv-lock node_modules .mypy_cache .ruff_cache .pytest_cache .hypothesis
