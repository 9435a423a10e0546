# Two commands for a newcomer (see README):  make demo   ·   make test
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup controlplane helm peers node image demo test lint unit integration e2e bench bench-smoke clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,dev]'
	touch $(STAMP)

setup: $(STAMP)

# Builds kube-apiserver, kube-controller-manager, kubectl and etcd from pinned Go modules (cached in
# ~/.cache/module-service-controller; a cold build takes ~7 minutes here, later runs reuse it).
controlplane: setup
	$(PY) -m tests.controlplane build

# Builds helm from the pinned helm.sh/helm/v3 Go module (tests/helm/build.sh; cached in
# ~/.cache/module-service-controller/helm; a cold build took ~5 minutes here).
helm: setup
	$(PY) -m tests.helm build

# The benchmark's peers (bench/peers/): a controller-runtime binary from pinned Go modules and kopf in a venv
# of its own, cached in ~/.cache/module-service-controller/peers (a cold build takes a few minutes).
peers:
	bash bench/peers/build.sh $(HOME)/.cache/module-service-controller/peers

# The node tier (tests/node): Debian's containerd, runc, CNI plugins, buildah, mmdebstrap; kubelet,
# kube-scheduler and kube-proxy from the control plane's pinned module; the controller image built with
# buildah on a local Debian base. All cached in ~/.cache/module-service-controller.
node: controlplane
	$(PY) -m tests.node build

# The controller image as a docker-archive (module-service-controller:<version>); prints its path.
image:
	bash scripts/build-image.sh

# Everything from a fresh clone: venv, control plane, CRD, the controller, the seed's sample -> its Service.
demo: controlplane
	bash scripts/demo.sh

lint: setup
	$(VENV)/bin/ruff check controller tests bench observability scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

unit: setup
	$(VENV)/bin/pytest tests/unit -q

# The test command: lint, type-check, then every tier against a real local control plane. The Prometheus
# tests skip where the server is missing, except here: make test installs it, so a skip would hide a failure.
test: controlplane helm peers node
	bash .ci/install-prometheus.sh
	$(MAKE) --no-print-directory lint
	MSC_REQUIRE_PROMETHEUS=1 $(VENV)/bin/pytest tests -q

bench: controlplane peers
	$(PY) -m bench

bench-smoke: controlplane peers
	$(PY) -m bench --smoke

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
