# The gateway image: one node per container (scale with more containers behind HAProxy).
# redis-server is included only for the embedded default (no NOTECARD_REDIS_URL /
# NOTECARD_SENTINELS set); production points the node at Redis Sentinel or a URL.
#
# Listeners: the WebSocket on 0.0.0.0:8765; the probes and metrics (/healthz, /readyz,
# /metrics, nothing else) on 0.0.0.0:9766 for the load balancer and the scraper; the admin
# API (plain HTTP, bearer token) on 127.0.0.1:8766 only, reached from inside the container:
#   docker compose exec gateway-1 notecard admin user alice
# Exposing the admin API beyond the host is a deliberate choice (NOTECARD_ADMIN_HOST), and
# then only behind a TLS-terminating proxy on a private network.
FROM python:3.11-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 notecard

WORKDIR /app
COPY pyproject.toml README.md ./
COPY protocol ./protocol
COPY clearing ./clearing
COPY gateway ./gateway
COPY notecard ./notecard
COPY notecard_sdk ./notecard_sdk
COPY loadtest ./loadtest
# /data holds generated secrets and the embedded Redis's files: its owner only.
RUN pip install --no-cache-dir . && mkdir -p /data && chown notecard /data && chmod 700 /data

USER notecard
ENV NOTECARD_HOST=0.0.0.0 \
    NOTECARD_ADMIN_HOST=127.0.0.1 \
    NOTECARD_PROBE_HOST=0.0.0.0 \
    NOTECARD_PROBE_PORT=9766 \
    NOTECARD_DATA_DIR=/data \
    NOTECARD_LOG_FORMAT=json
EXPOSE 8765 9766
HEALTHCHECK --interval=10s --timeout=2s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:9766/readyz', timeout=2).status != 200)"
CMD ["notecard", "serve"]
