# The two commands of the README. Each sets up .venv on first use (or when pyproject.toml changes).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test test-fast benchmark benchmark-serving image chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

chromium:  ## Debian's headless Chromium and its driver, for the MLflow UI test (tests/test_ui.py)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null \
		|| echo "could not install chromium: the UI test skips (and fails under CI=true)"; }

run: $(STAMP)  ## the whole pipeline on the sample shipped in the package
	$(VENV)/bin/sentiment run --config configs/sample.yaml $(ARGS)

test: $(STAMP) chromium  ## lint, then the whole test suite (what CI runs)
	$(VENV)/bin/ruff check pipeline flows tests scripts benchmarks
	$(VENV)/bin/python -m pytest $(ARGS)

test-fast: $(STAMP)  ## the edit-test loop: lint and the unit tests, no flow, server or long training (< 60 s)
	$(VENV)/bin/ruff check pipeline flows tests scripts benchmarks
	$(VENV)/bin/python -m pytest -m "not integration and not slow" $(ARGS)

benchmark: $(STAMP)  ## notebook recipe vs pipeline on the full dataset (issue: beat the notebooks)
	$(VENV)/bin/python -m benchmarks.notebook_vs_pipeline $(ARGS)

benchmark-serving: $(STAMP)  ## HTTP latency and throughput of the registered champion (after `make run`)
	$(VENV)/bin/python -m benchmarks.serving $(ARGS)

.PHONY: benchmark-scale-out
benchmark-scale-out: $(STAMP)  ## trials/hour with 1, 2, 4 workers on PostgreSQL + MLflow server vs SQLite (ARGS=--quick)
	$(VENV)/bin/python -m benchmarks.scale_out $(ARGS)

IMAGE ?= imdb-sentiment:0.1.0
image:  ## the project's image for Kubeflow (where a Docker engine runs): make image IMAGE=registry/imdb-sentiment:TAG
	docker build -t $(IMAGE) .

.PHONY: benchmark-growth
benchmark-growth: $(STAMP)  ## pipeline wall time and peak RSS at 25/50/100% of the reviews; one epoch at max_len 200/300/500
	$(VENV)/bin/python -m benchmarks.cost_growth $(ARGS)
