# syntax=docker/dockerfile:1
# module-service-controller image.
#   docker build -t module-service-controller:0.1.0 .
#   scripts/build-image.sh   (buildah, on a local Debian stand-in base: no registry needed)
# Two stages on the same base: the builder installs the package and its pinned runtime dependencies
# (all available as wheels) into /opt/venv, then drops pip from it; the final stage copies only that venv.
#
# BASE_IMAGE: any Debian-based image with python3 (>= 3.11) and its venv module. The default is the
# pinned official slim image; scripts/build-image.sh passes a local mmdebstrap bookworm root instead.
ARG BASE_IMAGE=python:3.11.11-slim-bookworm

FROM ${BASE_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Only what `pip install .` needs: the project metadata (pyproject.toml names README.md) and the package.
COPY pyproject.toml README.md ./
COPY controller/ ./controller/
# A build behind a TLS-intercepting proxy passes its CA as a build secret (--secret id=pip-ca,src=...):
# it is mounted for this step only and never stored in a layer.
RUN --mount=type=secret,id=pip-ca,required=false \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
 && pip install --no-cache-dir . \
 && module-service-controller --help >/dev/null \
 && pip uninstall --yes --quiet pip setuptools


FROM ${BASE_IMAGE}

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="module-service-controller" \
      org.opencontainers.image.description="Kubernetes controller that gives Koupleless ModuleDeployments their module Service" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"

# The venv's python links to the base image's python3, identical in both stages.
COPY --from=builder /opt/venv /opt/venv

# pip compiled the bytecode at install time; the root filesystem is read-only at run time.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

# 8080 metrics (HTTP) / 8443 metrics (HTTPS, --metrics-secure) / 8081 /healthz and /readyz
EXPOSE 8080 8443 8081

USER 65532:65532
ENTRYPOINT ["module-service-controller"]
