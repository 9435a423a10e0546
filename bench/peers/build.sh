#!/usr/bin/env bash
# Builds the benchmark peers into $CACHE/<key>/ and leaves a .complete stamp, so later runs reuse them:
#   controller-runtime: a static binary from controller-runtime/ (pinned by its go.mod and go.sum);
#   kopf: a venv of its own (pinned by kopf/requirements.txt), apart from the controller's dependencies.
# Prints "<name>=<path>" for each. Idempotent; safe to rerun after a kill.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${1:?usage: build.sh CACHE_DIR [controller-runtime|kopf]...}
shift
wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=(controller-runtime kopf)

source_hash() { (cd "$here/$1" && cat "${@:2}" | sha256sum | cut -c1-12); }

build_controller_runtime() {
  local version key out
  version=$(sed -n 's#^\s*sigs.k8s.io/controller-runtime \(v[^ ]*\).*#\1#p' "$here/controller-runtime/go.mod" | head -1)
  key="controller-runtime-${version}_$(source_hash controller-runtime go.mod go.sum main.go types.go)_$(go env GOVERSION)"
  out="$cache/$key"
  if [ ! -f "$out/.complete" ]; then
    rm -rf "$out"
    mkdir -p "$out/src"
    cp "$here/controller-runtime/"{go.mod,go.sum,main.go,types.go} "$out/src/"
    (cd "$out/src" && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=readonly \
      go build -trimpath -ldflags "-s -w" -o "$out/controller-runtime-peer" .)
    touch "$out/.complete"
  fi
  echo "controller-runtime=$out/controller-runtime-peer"
}

build_kopf() {
  local python key out
  python=${PYTHON:-python3}
  key="kopf-$(sed -n 's/^kopf==//p' "$here/kopf/requirements.txt")_$(source_hash kopf requirements.txt)_$("$python" -c 'import sys; print("py%d.%d" % sys.version_info[:2])')"
  out="$cache/$key"
  if [ ! -f "$out/.complete" ]; then
    rm -rf "$out"
    "$python" -m venv "$out/venv"
    "$out/venv/bin/pip" install -q --disable-pip-version-check -r "$here/kopf/requirements.txt"
    touch "$out/.complete"
  fi
  echo "kopf=$out/venv/bin/kopf"
}

for name in "${wanted[@]}"; do
  case "$name" in
    controller-runtime) build_controller_runtime ;;
    kopf) build_kopf ;;
    *) echo "build.sh: unknown peer $name" >&2; exit 2 ;;
  esac
done
