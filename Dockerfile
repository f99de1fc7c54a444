# The one jouletune image: `jouletune operator`, `exporter`, `bench`, `sim-server`, `tune`.
#
#   docker build -t REGISTRY/jouletune:0.1.0 .
#   docker run --rm REGISTRY/jouletune:0.1.0 sim-server --port 8000
#
# vLLM itself is not in this image: trial pods run the engine from EnergyBenchmark
# spec.engine.image; this image provides the exporter sidecar and the load generator.

ARG PYTHON_VERSION=3.11

# Build a wheel of the project (and its dependencies) in a throw-away stage.
FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:${PYTHON_VERSION}-slim
LABEL org.opencontainers.image.title="jouletune" \
      org.opencontainers.image.description="Fewest joules per LLM output token within a latency SLO" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric uid/gid so Kubernetes' runAsNonRoot can verify it (the chart uses 10001).
RUN groupadd --system --gid 10001 jouletune \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
       --shell /usr/sbin/nologin jouletune

RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index /wheels/*.whl

# No .pyc writes (the root filesystem is read-only in the chart); matplotlib's cache in /tmp.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    JOULETUNE_HEALTH_URL=http://127.0.0.1:9400/healthz

USER 10001:10001
WORKDIR /tmp

# 9400: exporter, 8000: sim-server (vLLM's port), 8080: operator liveness, 9090: operator metrics.
EXPOSE 9400 8000 8080 9090

# The exporter's /healthz by default; set JOULETUNE_HEALTH_URL for the other commands
# (sim-server: http://127.0.0.1:8000/health, operator: http://127.0.0.1:8080/healthz).
# Kubernetes ignores HEALTHCHECK and uses the chart's probes instead.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['JOULETUNE_HEALTH_URL'], timeout=4)"]

ENTRYPOINT ["jouletune"]
CMD ["--help"]
