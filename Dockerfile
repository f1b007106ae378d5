# syntax=docker/dockerfile:1
#
# The gateway as a container.
#
#   docker build -t gateway .
#   docker run -p 127.0.0.1:8080:8080 --env-file examples/demo.env \
#     -v "$PWD/examples/gateway.docker.yaml:/etc/gateway/gateway.yaml:ro" \
#     -v "$PWD/policies:/etc/gateway/policies:ro" \
#     -v gateway-data:/var/lib/gateway gateway
#
# Mount the config as /etc/gateway/gateway.yaml and the policies as /etc/gateway/policies.
# The config must say "listen: 0.0.0.0:8080" (127.0.0.1 inside a container is unreachable
# from outside it) and, since that is not loopback, configure callers
# (examples/gateway.docker.yaml). Secrets come in as environment variables or files
# (${file:/run/secrets/...}), never baked into the image.

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Install the package (its dependencies ship as wheels for linux/amd64 and arm64, so no
# compiler is needed). README.md* copies the readme when there is one.
WORKDIR /tmp/src
COPY pyproject.toml README.md* ./
COPY gateway ./gateway
RUN pip install --no-cache-dir . \
 && rm -rf /tmp/src

# An unprivileged user owning only the data directory.
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid gateway --no-create-home \
        --home-dir /var/lib/gateway --shell /usr/sbin/nologin gateway \
 && mkdir -p /etc/gateway/policies /var/lib/gateway \
 && chown gateway:gateway /var/lib/gateway

WORKDIR /etc/gateway
USER gateway

# Config and policies (read-only is fine), and data_dir for dead letters and rotated
# tokens (must be writable by uid 10001; a named volume is, on first use).
VOLUME ["/etc/gateway", "/var/lib/gateway"]

EXPOSE 8080

# slim has no curl: ask /healthz with the standard library. Change the port here if the
# config listens on another one.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status == 200 else 1)"]

# SIGTERM (docker stop) drains in-flight requests for up to the config's drain time
# (30 s by default): give docker stop at least that long (docker stop -t 35).
STOPSIGNAL SIGTERM
ENTRYPOINT ["gateway", "serve"]
CMD ["--config", "/etc/gateway/gateway.yaml"]
