# The gateway image: one node per container (scale with more containers behind a load
# balancer). It runs only with the deployment's Redis (NOTECARD_REDIS_URL or
# NOTECARD_SENTINELS) and secrets (NOTECARD_TOKEN_SECRET, NOTECARD_ADMIN_TOKEN): without
# them `notecard serve` refuses to start rather than run a private ledger per container,
# and the image has no redis-server to run one with.
#
# Listeners: the WebSocket on 0.0.0.0:8765; the probes and metrics (/healthz, /readyz,
# /metrics, nothing else) on 0.0.0.0:9766 for the load balancer, the orchestrator and the
# scraper; the admin API (plain HTTP, bearer token) on 127.0.0.1:8766 only, reached from
# inside the container:
#   docker compose exec gateway-1 notecard admin user alice
# Exposing the admin API beyond the host is a deliberate choice (NOTECARD_ADMIN_HOST), and
# then only behind a TLS-terminating proxy on a private network.
#
# Two stages: the first installs the pinned dependencies (requirements.lock, every file
# checked against its hash; scripts/lock regenerates it) and then the package into a
# virtualenv; the second is the slim runtime with that virtualenv and nothing to build with.
# Dependencies come before the source, so a change of code rebuilds only the last layers.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/notecard
COPY requirements.lock /tmp/requirements.lock
RUN /opt/notecard/bin/pip install --require-hashes --no-deps -r /tmp/requirements.lock
COPY pyproject.toml README.md /src/
COPY protocol /src/protocol
COPY clearing /src/clearing
COPY gateway /src/gateway
COPY notecard /src/notecard
COPY notecard_sdk /src/notecard_sdk
COPY loadtest /src/loadtest
COPY risk /src/risk
COPY ledger /src/ledger
COPY dashboards /src/dashboards
# --no-deps: every dependency is in the lock; --no-build-isolation: its setuptools builds.
RUN /opt/notecard/bin/pip install --no-deps --no-build-isolation /src \
 && /opt/notecard/bin/pip check

FROM ${PYTHON_IMAGE}
# A numeric user: Kubernetes' runAsNonRoot can only verify a numeric USER.
RUN groupadd --gid 10001 notecard \
 && useradd --uid 10001 --gid 10001 --home-dir /data --no-create-home --shell /usr/sbin/nologin notecard \
 && install -d -o 10001 -g 10001 -m 700 /data
COPY --from=build /opt/notecard /opt/notecard
USER 10001:10001
WORKDIR /data
ENV PATH=/opt/notecard/bin:$PATH \
    NOTECARD_HOST=0.0.0.0 \
    NOTECARD_ADMIN_HOST=127.0.0.1 \
    NOTECARD_PROBE_HOST=0.0.0.0 \
    NOTECARD_PROBE_PORT=9766 \
    NOTECARD_DATA_DIR=/data \
    NOTECARD_LOG_FORMAT=json
EXPOSE 8765 9766
# SIGTERM starts the graceful shutdown (NOTECARD_SHUTDOWN_GRACE_S); allow it to finish.
STOPSIGNAL SIGTERM
# Alive (/healthz on the probe listener); readiness (/readyz) is the load balancer's.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 CMD ["notecard", "probe"]
CMD ["notecard", "serve"]
