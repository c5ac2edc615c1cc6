# edgewatch container image: `docker build -t edgewatch:0.1.0 .`
#
# - every dependency comes pinned from pyproject.toml (pip install of this checkout, not editable);
#   EDGEWATCH_EXTRAS adds optional extras, e.g. --build-arg EDGEWATCH_EXTRAS=serve
# - runs as uid/gid 10001, never root; works with a read-only root filesystem: state lives only
#   under /var/lib/edgewatch (recovery/, model/, buffer/) and scratch files under /tmp, both volumes
# - the entrypoint is `edgewatch` under dumb-init (signals reach the flow even as PID 1); CMD is `run`
# - HEALTHCHECK asks HEALTHCHECK_URL: the Bytewax dataflow API of a running flow by default
#   (/metrics on 3030); set it to http://127.0.0.1:5001/ for `edgewatch serve`
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG EDGEWATCH_EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY edgewatch ./edgewatch
RUN python -m venv /opt/edgewatch \
    && /opt/edgewatch/bin/pip install --no-cache-dir "/src${EDGEWATCH_EXTRAS:+[${EDGEWATCH_EXTRAS}]}" dumb-init==1.2.5.post1 \
    && /opt/edgewatch/bin/edgewatch --help > /dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="edgewatch" \
      org.opencontainers.image.description="Streaming anomaly detection for industrial device fleets at the edge" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 edgewatch \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/edgewatch --no-create-home \
       --shell /usr/sbin/nologin edgewatch \
    && mkdir -p /var/lib/edgewatch/recovery /var/lib/edgewatch/model /var/lib/edgewatch/buffer \
    && chown -R 10001:10001 /var/lib/edgewatch \
    && chmod 1777 /tmp
COPY --from=build /opt/edgewatch /opt/edgewatch
ENV PATH=/opt/edgewatch/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/edgewatch \
    TMPDIR=/tmp \
    EDGEWATCH_DATA_DIR=/var/lib/edgewatch/data \
    BYTEWAX_DATAFLOW_API_ENABLED=true \
    BYTEWAX_DATAFLOW_API_PORT=3030 \
    BYTEWAX_DATAFLOW_API_CACHE_PATH=/tmp \
    HEALTHCHECK_URL=http://127.0.0.1:3030/metrics
WORKDIR /var/lib/edgewatch
VOLUME ["/var/lib/edgewatch", "/tmp"]
USER 10001:10001
EXPOSE 3030
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=4)"]
ENTRYPOINT ["dumb-init", "--", "edgewatch"]
CMD ["run"]
