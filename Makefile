# The two commands of the README. Each sets up .venv on first use (or when pyproject.toml changes).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test benchmark benchmark-serving

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)  ## the whole pipeline on the sample shipped in the package
	$(VENV)/bin/sentiment run $(ARGS)

test: $(STAMP)  ## lint, then the whole test suite
	$(VENV)/bin/ruff check pipeline flows tests scripts benchmarks
	$(VENV)/bin/python -m pytest $(ARGS)

benchmark: $(STAMP)  ## notebook recipe vs pipeline on the full dataset (issue: beat the notebooks)
	$(VENV)/bin/python -m benchmarks.notebook_vs_pipeline $(ARGS)

benchmark-serving: $(STAMP)  ## HTTP latency and throughput of the registered champion (after `make run`)
	$(VENV)/bin/python -m benchmarks.serving $(ARGS)
