# syntax=docker/dockerfile:1.7
#
# bnfold images (docs/deploy.md). Two targets:
#
#   service    (default: the last stage) the model server. ONNX Runtime GPU on
#              CUDA 13 + cuDNN 9, no torch. Falls back to CPU by itself when no
#              GPU is visible (BNFOLD_DEVICE=auto).
#                docker build -t bnfold:0.1.0 .
#   converter  offline training and conversion (`bnfold convert ...`) with the
#              torch CPU wheel; writes model versions into /models.
#                docker build --target converter -t bnfold-converter:0.1.0 .
#
# Models live in /models (BNFOLD_REPO): mount a volume there, or bake a
# repository in with --build-arg MODELS_DIR=models (any folder of the build
# context laid out as in docs/repository.md).

# onnxruntime-gpu 1.31 on PyPI is built against CUDA 13.0 (libcudart.so.13,
# libcublas.so.13) and cuDNN 9: the base must be a CUDA 13.x "cudnn-runtime"
# image. tests/deploy/test_consistency.py checks the major version against the
# installed onnxruntime build. CUDA 13 needs an NVIDIA driver >= 580 on the host.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
ARG CONVERTER_IMAGE=python:3.12-slim-bookworm
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# The unprivileged user both images run as (same id, so a volume written by
# the converter is readable by the service).
ARG APP_UID=10001

# ------------------------------------------------------------------- sources
# What both images install, named once: the package's own folder and the three
# folders pyproject.toml maps into it (bnfold.folding, bnfold.converter,
# bnfold.service; no links).
FROM scratch AS source
COPY pyproject.toml README.md constraints.txt /src/
COPY bnfold/ /src/bnfold/
COPY folding/ /src/folding/
COPY converter/ /src/converter/
COPY service/ /src/service/

# ---------------------------------------------------------------- service base
FROM ${CUDA_IMAGE} AS service-base
ARG APP_UID
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid ${APP_UID} bnfold \
    && useradd --system --uid ${APP_UID} --gid bnfold --create-home --home-dir /home/bnfold \
       --shell /usr/sbin/nologin bnfold

# ------------------------------------------------------- service build (venv)
FROM service-base AS service-build
RUN python3 -m venv /opt/bnfold
WORKDIR /src
COPY --from=source /src/ ./
# Core dependencies only (no `train` extra): no torch in the serving image.
RUN /opt/bnfold/bin/pip install -c constraints.txt . \
    && /opt/bnfold/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)" \
    && /opt/bnfold/bin/bnfold serve --help > /dev/null

# ------------------------------------------------------------------ converter
FROM ${CONVERTER_IMAGE} AS converter
ARG APP_UID
ARG TORCH_INDEX_URL
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid ${APP_UID} bnfold \
    && useradd --system --uid ${APP_UID} --gid bnfold --create-home --home-dir /home/bnfold \
       --shell /usr/sbin/nologin bnfold \
    && python -m venv /opt/bnfold
WORKDIR /src
COPY --from=source /src/ ./
# constraints.txt pins torch; the extra index serves its CPU build (x.y.z+cpu),
# which pip prefers to PyPI's CUDA build of the same version.
RUN /opt/bnfold/bin/pip install -c constraints.txt --extra-index-url ${TORCH_INDEX_URL} '.[train]' \
    && install -d -o bnfold -g bnfold /models
ENV PATH=/opt/bnfold/bin:${PATH} \
    BNFOLD_REPO=/models \
    MPLBACKEND=Agg
USER ${APP_UID}:${APP_UID}
WORKDIR /home/bnfold
ENTRYPOINT ["bnfold"]
CMD ["convert", "--arch", "mlp", "--data", "digits", "--repo", "/models", "--name", "digits-mlp"]

# -------------------------------------------------------------------- service
FROM service-base AS service
ARG APP_UID
# A folder of the build context copied to /models; the default holds only a
# README, so the image serves whatever is mounted over /models.
ARG MODELS_DIR=deploy/baked-models
COPY --from=service-build /opt/bnfold /opt/bnfold
COPY --chown=${APP_UID}:${APP_UID} ${MODELS_DIR}/ /models/
ENV PATH=/opt/bnfold/bin:${PATH} \
    BNFOLD_REPO=/models \
    BNFOLD_HOST=0.0.0.0 \
    BNFOLD_PORT=8000 \
    BNFOLD_GRPC_PORT=8001 \
    BNFOLD_METRICS_PORT=8002 \
    BNFOLD_DEVICE=auto
USER ${APP_UID}:${APP_UID}
WORKDIR /home/bnfold
# HTTP (REST, the page, /metrics), gRPC (inference.GRPCInferenceService) and
# Triton's metrics port (GET /metrics, Triton's nv_* families alone)
EXPOSE 8000 8001 8002
# 200 once every model is loaded and warmed; 503 while starting or draining.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request as r; sys.exit(r.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ.get('BNFOLD_PORT', '8000'), timeout=4).status != 200)"]
ENTRYPOINT ["bnfold"]
CMD ["serve", "--host", "0.0.0.0"]
