# Two commands for a newcomer (see README):  make demo   ·   make test
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup controlplane controlplane-oldest core-oldest helm peers node image demo test lint unit integration e2e bench bench-smoke clean

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

# The same for the oldest Kubernetes minor the chart supports (KUBERNETES_VERSION_OLDEST in
# tests/controlplane/versions.env; a cold build took ~6 minutes here).
controlplane-oldest: setup
	$(PY) -m tests.controlplane build --kubernetes oldest

# The end-to-end core (the tests marked `core`) against that oldest Kubernetes; `make test` runs it too.
core-oldest: controlplane-oldest helm
	MSC_KUBERNETES=oldest $(VENV)/bin/pytest -m core -q

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

# The test command: lint, type-check, the end-to-end core on the oldest supported Kubernetes, then every
# tier on the newest. The Prometheus tests skip where the server is missing, except here: make test
# installs it, so a skip would hide a failure. The full run goes last so that its summary closes the output.
test: controlplane controlplane-oldest helm peers node
	bash .ci/install-prometheus.sh
	$(MAKE) --no-print-directory lint
	@echo "== the end-to-end core on Kubernetes $$(sed -n 's/^KUBERNETES_VERSION_OLDEST=//p' tests/controlplane/versions.env)"
	MSC_KUBERNETES=oldest $(VENV)/bin/pytest -m core -q
	MSC_KUBERNETES=newest MSC_REQUIRE_PROMETHEUS=1 $(VENV)/bin/pytest tests -q

bench: controlplane peers
	$(PY) -m bench

bench-smoke: controlplane peers
	$(PY) -m bench --smoke

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
