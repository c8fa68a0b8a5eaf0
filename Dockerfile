# The gateway image: one node per container (scale with more containers behind HAProxy).
# redis-server is included only for the embedded default (no NOTECARD_REDIS_URL /
# NOTECARD_SENTINELS set); production points the node at Redis Sentinel or a URL.
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
RUN pip install --no-cache-dir . && mkdir -p /data && chown notecard /data

USER notecard
ENV NOTECARD_HOST=0.0.0.0 \
    NOTECARD_ADMIN_HOST=0.0.0.0 \
    NOTECARD_DATA_DIR=/data \
    NOTECARD_LOG_FORMAT=json
EXPOSE 8765 8766
HEALTHCHECK --interval=10s --timeout=2s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8766/readyz', timeout=2).status != 200)"
CMD ["notecard", "serve"]
