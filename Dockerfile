# syntax=docker/dockerfile:1
# module-service-controller image.
#   docker build -t module-service-controller:0.1.0 .
# Two stages on the same pinned base: the builder installs the package and its pinned runtime
# dependencies (all available as wheels) into /opt/venv; the final stage copies only that venv.

FROM python:3.11.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Only what `pip install .` needs: the project metadata (pyproject.toml names README.md) and the package.
COPY pyproject.toml README.md ./
COPY controller/ ./controller/
RUN pip install --no-cache-dir . \
 && module-service-controller --help >/dev/null


FROM python:3.11.11-slim-bookworm

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="module-service-controller" \
      org.opencontainers.image.description="Kubernetes controller that gives Koupleless ModuleDeployments their module Service" \
      org.opencontainers.image.source="https://github.com/koupleless/module-service-controller" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"

# The venv's python links to /usr/local/bin/python3.11 of the (identical) base image.
COPY --from=builder /opt/venv /opt/venv

# pip compiled the bytecode at install time; the root filesystem is read-only at run time.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

# 8080 metrics (HTTP) / 8443 metrics (HTTPS, --metrics-secure) / 8081 /healthz and /readyz
EXPOSE 8080 8443 8081

USER 65532:65532
ENTRYPOINT ["module-service-controller"]
