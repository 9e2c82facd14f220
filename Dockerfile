# syntax=docker/dockerfile:1
# streamscore worker image: `docker build -t streamscore .`, run by docker-compose.yml and
# deploy/k8s/deployment.yaml.

# Build stage: install the package and its dependencies into a venv that is copied whole into
# the runtime stage, so the runtime image carries no build cache or sources.
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY streamscore/ streamscore/
RUN pip install .


FROM python:3.11-slim

LABEL org.opencontainers.image.title="streamscore" \
      org.opencontainers.image.description="Real-time lead scoring: Kafka events in, per-lead scores in Redis, handoffs out." \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STREAMSCORE_SCHEMAS_DIR=/app/schemas \
    STREAMSCORE_RULES_FILE=/app/examples/rules.yaml \
    STREAMSCORE_WEB_PORT=6066
# The web server binds 127.0.0.1 by default, as outside a container: the HEALTHCHECK below
# reaches it from inside. docker-compose.yml and the Kubernetes ConfigMap set
# STREAMSCORE_WEB_HOST=0.0.0.0 where Prometheus or the kubelet must reach it from outside,
# together with a STREAMSCORE_WEB_TOKEN for the views that show lead data.

# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it and volume ownership is
# predictable. /var/lib/streamscore is the working directory: the only place the worker may
# write (its stream-processor data dir); Kubernetes mounts an emptyDir there because the root
# filesystem is read-only.
RUN groupadd --system --gid 10001 streamscore \
 && useradd --system --uid 10001 --gid streamscore --no-create-home \
        --home-dir /var/lib/streamscore --shell /usr/sbin/nologin streamscore \
 && install -d -o streamscore -g streamscore -m 0750 /var/lib/streamscore

COPY --from=build /opt/venv /opt/venv
COPY examples/ /app/examples/
COPY schemas/ /app/schemas/

WORKDIR /var/lib/streamscore
USER 10001:10001
EXPOSE 6066

# Liveness only (the process serves HTTP). Readiness, /readyz, depends on Kafka and Redis and
# is what docker-compose.yml and the Kubernetes readinessProbe check. The slim image has no
# curl, so use the interpreter; urlopen raises on a non-2xx answer, which exits non-zero.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('STREAMSCORE_WEB_PORT', '6066') + '/healthz', timeout=3)"]

ENTRYPOINT ["streamscore"]
CMD ["worker"]
