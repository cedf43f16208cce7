# Serving image: server/ and irec/ (the commands and their gRPC client) only: no training
# code, no torch, no transformers; deploy/ (Kubernetes) stays outside. Two targets:
#   docker build --target cpu  -t irec-server:cpu  .
#   docker build --target cuda -t irec-server:cuda .
# Run with a bundle mounted read-only:
#   docker run -p 50051:50051 -v $PWD/bundles/demo:/bundle:ro irec-server:cpu

# ---- build stage: a virtualenv with the serving dependencies -------------------
FROM python:3.11-slim AS build-cpu
# hnswlib is an sdist: it compiles.
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY irec ./irec
RUN pip install --no-cache-dir ".[cpu,tracing]"

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS cuda-base
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* && useradd --create-home --uid 10001 irec

FROM cuda-base AS build-cuda
RUN apt-get update && apt-get install -y --no-install-recommends build-essential python3-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY irec ./irec
RUN pip install --no-cache-dir ".[gpu,tracing]"

# ---- cpu: slim, non-root ------------------------------------------------------
FROM python:3.11-slim AS cpu
RUN useradd --create-home --uid 10001 irec
COPY --from=build-cpu /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    IREC_SERVE_BUNDLE=/bundle IREC_SERVE_HOST=0.0.0.0 IREC_SERVE_PORT=50051
USER 10001
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-m", "server.healthcheck", "--target", "127.0.0.1:50051"]
ENTRYPOINT ["irec", "serve"]

# ---- cuda: CUDA 12 + cuDNN 9 runtime for onnxruntime-gpu, non-root -------------
FROM cuda-base AS cuda
COPY --from=build-cuda /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    IREC_SERVE_BUNDLE=/bundle IREC_SERVE_HOST=0.0.0.0 IREC_SERVE_PORT=50051 \
    IREC_SERVE_DEVICE=cuda
USER 10001
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-m", "server.healthcheck", "--target", "127.0.0.1:50051"]
ENTRYPOINT ["irec", "serve"]
