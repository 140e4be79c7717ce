# syntax=docker/dockerfile:1
#
# GPU image for the jst-pipeline DVC pipeline
# (prepare -> search -> finetune -> export -> evaluate; onnxruntime-gpu for evaluation).
#
# Build:
#   docker build -t jst-pipeline .
#
# Run (recommended): mount your git clone at /app, so that DVC sees the real git
# history, its cache (.dvc/cache) and writes dvc.lock / metrics / models back to it:
#   docker run --rm --gpus all -v "$PWD":/app \
#     -e MLFLOW_TRACKING_URI=http://mlflow.example:5000 jst-pipeline
# The container user has uid 1000 (build with --build-arg APP_UID=$(id -u) to match
# another host user), so that it can write to the mounted clone.
#
# Run standalone (no mount): the build context excludes .git (see .dockerignore), so
# the image runs `git init` in /app at build time. DVC needs a git repository for
# `dvc repro`; history is not needed for that, only for `dvc metrics diff`. Results
# then stay in the container: copy them out with `docker cp`.
#
# MLFLOW_TRACKING_URI is deliberately not set here: pass it with -e, or leave it unset
# to use the project's default (resolved by pipeline/tracking/store.py).
#
# CUDA: torch 2.15 (cu13 wheels, cuda-toolkit 13.2) and onnxruntime-gpu 1.31 (CUDA 13,
# cuDNN 9) in uv.lock. torch brings its own CUDA libraries as nvidia-* wheels; the
# cuDNN runtime base image provides the system CUDA 13.2 + cuDNN 9 libraries that
# onnxruntime's CUDA execution provider loads (including ones torch does not ship,
# e.g. cuRAND). The host needs an NVIDIA driver for CUDA 13 (R580 or newer) and the
# NVIDIA Container Toolkit (`--gpus all`).

FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM nvidia/cuda:13.2.1-cudnn-runtime-ubuntu24.04

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ARG APP_UID=1000
ARG APP_GID=1000
ARG DEBIAN_FRONTEND=noninteractive

# git: DVC requires a git repository. ca-certificates: HTTPS downloads (data sets,
# a remote MLflow server). Versions are not pinned because Ubuntu's archive keeps
# only the latest build of each package per pocket: a pinned version stops
# installing as soon as a security update supersedes it. The base image tag pins
# the release (24.04) instead.
# The ubuntu:24.04 base ships a user "ubuntu" with uid 1000; it is replaced by "app".
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates git \
    && rm -rf /var/lib/apt/lists/* \
    && git config --system --add safe.directory /app \
    && git config --system init.defaultBranch main \
    && if id -u ubuntu >/dev/null 2>&1; then userdel --remove ubuntu 2>/dev/null || true; fi \
    && groupadd --gid "${APP_GID}" app \
    && useradd --uid "${APP_UID}" --gid app --create-home --shell /bin/bash app \
    && install -d -o app -g app /app /opt/venv /opt/python

COPY --from=uv /uv /uvx /bin/

# The virtual environment lives outside /app so that mounting a clone over /app
# does not hide it. uv installs its own CPython (3.11, as in CI) into /opt/python.
ENV UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON=3.11 \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_CACHE_DIR=/opt/uv-cache \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_FROZEN=1 \
    UV_NO_DEV=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH

USER ${APP_UID}:${APP_GID}
WORKDIR /app

# Dependencies first (this layer is rebuilt only when pyproject.toml or uv.lock change).
# /opt/uv-cache is a BuildKit cache mount (mode 0777, so it works for any APP_UID); it
# speeds up rebuilds and is not part of the image.
COPY --chown=${APP_UID}:${APP_GID} pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/opt/uv-cache,mode=0777 \
    uv sync --frozen --no-dev --no-install-project

# Then the project itself (editable install pointing at /app).
COPY --chown=${APP_UID}:${APP_GID} . .
RUN --mount=type=cache,target=/opt/uv-cache,mode=0777 \
    uv sync --frozen --no-dev \
    && if ! git rev-parse --git-dir >/dev/null 2>&1; then git init --quiet; fi

# `uv run` uses the environment built above as it is (no re-sync at start-up, so no
# network is needed and a mounted clone cannot trigger a reinstall); rebuild the image
# after changing pyproject.toml or uv.lock.
# The build cache mount is gone at run time: any uv cache goes to /tmp (writable by
# whatever uid runs the container).
ENV UV_NO_SYNC=1 \
    UV_CACHE_DIR=/tmp/uv-cache

CMD ["uv", "run", "dvc", "repro"]
