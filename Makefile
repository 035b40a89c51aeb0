# The two commands of the README. Each sets up .venv on first use (or when pyproject.toml changes).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test test-fast benchmark benchmark-serving image chromium

LOCK := requirements/constraints.txt

# The versions come from the lock, the same file the image installs from (Dockerfile).
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -c $(LOCK) -e ".[dev]"
	touch $(STAMP)

lock:  ## $(LOCK) again from an unconstrained resolve of .[dev] in a fresh venv (then: make test)
	rm -rf build/lock-venv && $(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/python -m pip install --quiet --upgrade pip
	build/lock-venv/bin/python -m pip install --quiet ".[dev]"
	{ grep '^#' $(LOCK); build/lock-venv/bin/python -m pip freeze --exclude-editable \
		| grep -v '^imdb-sentiment-pipeline'; } > $(LOCK).new && mv $(LOCK).new $(LOCK)
	rm -rf build/lock-venv

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

test-fast: $(STAMP)  ## the edit-test loop: lint and the unit tests, no flow, server, container or long training
	$(VENV)/bin/ruff check pipeline flows tests scripts benchmarks
	$(VENV)/bin/python -m pytest -m "not integration and not slow and not containers" $(ARGS)

benchmark: $(STAMP)  ## notebook recipe vs pipeline on the full dataset (issue: beat the notebooks)
	$(VENV)/bin/python -m benchmarks.notebook_vs_pipeline $(ARGS)

benchmark-serving: $(STAMP)  ## HTTP latency and throughput of the registered champion (after `make run`)
	$(VENV)/bin/python -m benchmarks.serving $(ARGS)

.PHONY: benchmark-scale-out
benchmark-scale-out: $(STAMP)  ## trials/hour with 1, 2, 4 workers on PostgreSQL + MLflow server vs SQLite (ARGS=--quick)
	$(VENV)/bin/python -m benchmarks.scale_out $(ARGS)

# --- images (docs/containers.md) ---------------------------------------------------------------
# The bases: the official images where a registry is reachable; the debootstrapped Debian one
# (`make base-image`, deploy/base-image.sh) when it exists on this engine.
LOCAL_BASE := local/debian-python:bookworm
has_local_base = $(shell docker image inspect $(LOCAL_BASE) >/dev/null 2>&1 && echo yes)
IMAGE ?= imdb-sentiment:0.1.0
PYTHON_IMAGE ?= $(if $(has_local_base),$(LOCAL_BASE),python:3.11-slim-bookworm)
POSTGRES_IMAGE ?= imdb-sentiment-postgres:15
BASE_IMAGE ?= $(if $(has_local_base),$(LOCAL_BASE),debian:bookworm-slim)
# Extra CA certificates for pip inside the build (a TLS proxy's): the bundle Python is told to
# trust, else this machine's system bundle (where a proxy's CA is installed; harmless elsewhere).
CA_CERTS ?= $(or $(SSL_CERT_FILE),$(wildcard /etc/ssl/certs/ca-certificates.crt))

.PHONY: lock base-image postgres-image images
image:  ## the project's image: make image [IMAGE=registry/imdb-sentiment:TAG] [PYTHON_IMAGE=...] [CA_CERTS=FILE]
	@mkdir -p build && rm -f build/extra-ca.crt
	@if [ -n "$(CA_CERTS)" ]; then cp "$(CA_CERTS)" build/extra-ca.crt; fi
	docker build --network host --build-arg PYTHON_IMAGE=$(PYTHON_IMAGE) -t $(IMAGE) .
	@rm -f build/extra-ca.crt

postgres-image:  ## PostgreSQL from Debian's package for deploy/compose.yaml: make postgres-image [BASE_IMAGE=...]
	docker build --network host --build-arg BASE_IMAGE=$(BASE_IMAGE) -t $(POSTGRES_IMAGE) -f deploy/postgres.Dockerfile deploy

images: image postgres-image  ## both images deploy/compose.yaml runs

base-image:  ## a Debian 12 + Python 3.11 base without a registry (debootstrap + docker import; root)
	deploy/base-image.sh $(LOCAL_BASE)

.PHONY: benchmark-growth
benchmark-growth: $(STAMP)  ## pipeline wall time and peak RSS at 25/50/100% of the reviews; one epoch at max_len 200/300/500
	$(VENV)/bin/python -m benchmarks.cost_growth $(ARGS)
