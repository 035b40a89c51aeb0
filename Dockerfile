# The project's image: the CLI (`docker run IMAGE run --config configs/sample.yaml`), the Compose
# services (deploy/compose.yaml) and every Kubeflow component run in it. `make image` builds it;
# docs/containers.md has the options and the measured size and build times.
#
# Build arguments (`make image` passes them):
#   PYTHON_IMAGE  the base of both stages: the official slim Python by default; any Debian-like
#                 image with python3 and python3-venv works (these machines: a debootstrapped
#                 local/debian-python:bookworm, deploy/base-image.sh, as no registry is reachable).
# Extra CA certificates (a TLS proxy's, for pip only): put them in build/extra-ca.crt in the build
# context (`make image CA_CERTS=FILE` does). They are used by the install steps of the build stage
# and never copied into the final image.
#
# The dependencies are pyproject.toml's (the runtime ones and the [kubeflow] extra the components
# need), pinned by requirements/constraints.txt: the same lock CI's venv installs.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Stage 1, the dependencies: a layer that depends on pyproject.toml, the lock and the CA only, so a
# code change reuses it (and the final image's copy of it) and rebuilds in seconds.
FROM ${PYTHON_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CERT=/tmp/build/ca.pem \
    PIP_CONSTRAINT=/tmp/build/constraints.txt
# `build/extra-ca.cr[t]` matches nothing when no CA is given.
COPY pyproject.toml requirements/constraints.txt build/extra-ca.cr[t] /tmp/build/
RUN cat /etc/ssl/certs/ca-certificates.crt $(ls /tmp/build/extra-ca.crt 2>/dev/null) > /tmp/build/ca.pem \
    && python3 -c "import tomllib; p = tomllib.load(open('/tmp/build/pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['kubeflow']))" > /tmp/build/requirements.txt \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --quiet -r /tmp/build/requirements.txt \
    && cd /opt/venv/lib/python3.11/site-packages \
    # Not needed at run time (~0.5 GB): TensorFlow's C++ headers (for compiling custom ops),
    # libclang (TensorFlow's build-time dependency; its metadata stays, so `pip check` passes),
    # the packages' own test suites. Bytecode stays: the app user cannot write site-packages, so
    # without it every process would compile TensorFlow's modules again at start-up.
    && rm -rf tensorflow/include clang \
    && find . -type d -name tests -prune -exec rm -rf {} + \
    # The project itself goes to /opt/project (stage 2), on the venv's path through this file.
    && echo /opt/project > imdb-sentiment-project.pth

# Stage 2, the project: its packages, metadata and `sentiment` script in /opt/project.
FROM deps AS build
WORKDIR /src
COPY README.md pyproject.toml ./
COPY pipeline ./pipeline
COPY flows ./flows
RUN /opt/venv/bin/pip install --quiet --no-deps --target /opt/project . \
    && /opt/venv/bin/pip check \
    && rm -rf /tmp/build

FROM ${PYTHON_IMAGE}
# KFP's launcher writes input artifacts under /gcs, /minio, /s3 and /oci: made here so a non-root
# user can (clusters that mount empty volumes there need nothing). The home's folders exist before
# any volume is mounted on them, so Docker makes those volumes owned by app.
RUN useradd --create-home --uid 1000 app \
    && mkdir -p /gcs /minio /s3 /oci /home/app/.cache /home/app/.imdb-sentiment /home/app/mlflow-artifacts \
    && chown app:app /gcs /minio /s3 /oci /home/app/.cache /home/app/.imdb-sentiment /home/app/mlflow-artifacts
COPY --from=deps /opt/venv /opt/venv
COPY --from=build /opt/project /opt/project
# The configs beside the working directory, so `docker run IMAGE run --config configs/sample.yaml`
# works as written; the default stores (mlruns/, caches, logs) go to SENTIMENT_HOME.
COPY configs /opt/imdb-sentiment/configs
ENV PATH=/opt/project/bin:/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    GIT_PYTHON_REFRESH=quiet \
    SENTIMENT_HOME=/home/app/.imdb-sentiment \
    MPLCONFIGDIR=/home/app/.cache/matplotlib
USER app
WORKDIR /opt/imdb-sentiment
# Kubeflow replaces the entry point with its executor; `docker run IMAGE run ...` is the CLI.
ENTRYPOINT ["sentiment"]
CMD ["--help"]
