# The project's image: what every Kubeflow component runs in (`make image`, then push it where the
# cluster pulls from and compile with `sentiment kubeflow compile --image REGISTRY/imdb-sentiment:TAG`).
# Two stages: the build stage installs the project and its pinned dependencies (pyproject.toml, with
# the [kubeflow] extra the components need) into a virtual environment; the final image holds that
# environment alone, on the same slim Python, run by a non-root user, with no build tools.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY flows ./flows
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install ".[kubeflow]" \
    && /opt/venv/bin/pip check

FROM ${PYTHON_IMAGE}
# KFP's launcher writes input artifacts under /gcs, /minio, /s3 and /oci: made here so a non-root
# user can (clusters that mount empty volumes there need nothing).
RUN useradd --create-home --uid 1000 app \
    && mkdir -p /gcs /minio /s3 /oci /home/app/.cache \
    && chown app:app /gcs /minio /s3 /oci /home/app/.cache
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    SENTIMENT_DATA_CACHE_DIR=/home/app/.cache/prepared \
    MPLCONFIGDIR=/home/app/.cache/matplotlib
USER app
WORKDIR /home/app
# Kubeflow replaces the entry point with its executor; `docker run IMAGE run ...` is the CLI.
ENTRYPOINT ["sentiment"]
CMD ["--help"]
