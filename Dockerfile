# FlexLB gateway image: `make image` (docker build -t flexlb:VERSION .).
# Stage 1 builds the wheel and its C extension with a compiler; the final stage has the virtualenv only
# (no compiler, no build tools) and runs as an unprivileged user.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md LICENSE ./
COPY flexlb ./flexlb
RUN python -m venv /opt/flexlb \
    && /opt/flexlb/bin/pip install --no-cache-dir . \
    && /opt/flexlb/bin/python -c "import flexlb.balancer._blockhash"

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 flexlb \
    && useradd --system --uid 10001 --gid flexlb --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin flexlb
COPY --from=build /opt/flexlb /opt/flexlb
# the default configuration; mount yours over it (the Kubernetes manifests do, from a ConfigMap)
COPY deploy/flexlb.example.toml /etc/flexlb/flexlb.toml
ENV PATH=/opt/flexlb/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GRPC_VERBOSITY=ERROR
USER 10001:10001
# HTTP API (--server.port), management (/actuator/*), gRPC (HTTP API port + 2)
EXPOSE 7001 7002 7003
# SIGTERM drains: health NOT_SERVING, new calls UNAVAILABLE, in-flight streams finish (drain_timeout_s)
STOPSIGNAL SIGTERM
# liveness only: a worker outage must not make the container unhealthy (readiness says that)
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:7002/actuator/health/liveness', timeout=2); sys.exit(0 if r.status == 200 else 1)"]
ENTRYPOINT ["flexlb"]
CMD ["serve", "--config", "/etc/flexlb/flexlb.toml"]
