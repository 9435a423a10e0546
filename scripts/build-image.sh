#!/usr/bin/env bash
# Builds the controller image with buildah (no daemon, chroot isolation, vfs storage) and prints the
# path of a docker-archive holding it as module-service-controller:<project version>.
#
# No container registry is reachable here, so the base is a local stand-in: a Debian bookworm minbase
# root filesystem with python3 made by mmdebstrap from Debian's packages, committed as an image. Pass
# BASE_IMAGE=<ref> to build on a real base instead (e.g. the Dockerfile's pinned python slim image).
#
# Both the base and the image are cached under $MSC_CACHE_DIR (default ~/.cache/module-service-controller):
#   base-image/<suite>_<packages hash>/base.tar        (~1 min cold)
#   image/<hash of Dockerfile + sources + base key>/image.tar
# The machine's pip CA (pip config's `cert`) is mounted into the build as a secret, never copied.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tag=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/pyproject.toml")
cache=${MSC_CACHE_DIR:-$HOME/.cache/module-service-controller}
suite=bookworm
packages=python3,python3-venv,ca-certificates
# Nothing a process reads at run time: translations, manuals, docs (the copyright files stay).
dpkgopts=(path-exclude=/usr/share/locale/* path-exclude=/usr/share/man/* path-exclude=/usr/share/info/*
          path-exclude=/usr/share/doc/* path-include=/usr/share/doc/*/copyright)

need() { command -v "$1" >/dev/null || missing+=("$2"); }
missing=()
need buildah buildah
need mmdebstrap mmdebstrap
if [ ${#missing[@]} -gt 0 ]; then
  [ -n "${MSC_APT_UPDATED:-}" ] || apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# buildah's own storage is throw-away: the cached archives are the artefacts.
work=$(mktemp -d /tmp/msc-buildah.XXXXXX)
trap 'buildah --root "$work/root" --runroot "$work/run" rm --all >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
bh() { STORAGE_DRIVER=vfs buildah --root "$work/root" --runroot "$work/run" --storage-driver vfs "$@"; }

# --- base image (local stand-in) ---
base_key="${suite}_$(printf '%s' "$packages ${dpkgopts[*]} $(mmdebstrap --version)" | sha256sum | cut -c1-12)"
base_dir="$cache/base-image/$base_key"
base_ref="localhost/msc-base:$base_key"
if [ -z "${BASE_IMAGE:-}" ] && [ ! -f "$base_dir/.complete" ]; then
  rm -rf "$base_dir"
  mkdir -p "$base_dir"
  mmdebstrap --quiet --variant=minbase --include="$packages" "${dpkgopts[@]/#/--dpkgopt=}" \
    "$suite" "$base_dir/rootfs.tar"
  c=$(bh from scratch)
  bh add --quiet "$c" "$base_dir/rootfs.tar" /
  bh config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd '["/bin/bash"]' "$c"
  bh commit --quiet --rm "$c" "$base_ref" >/dev/null
  bh push --quiet "$base_ref" "docker-archive:$base_dir/base.tar:$base_ref"
  rm -f "$base_dir/rootfs.tar"
  touch "$base_dir/.complete"
fi

# --- the image ---
base=${BASE_IMAGE:-$base_ref}
# Keyed by what the build reads: the Dockerfile, the copied files (names and contents) and the base.
src_hash=$(cd "$root" && {
  cat Dockerfile .dockerignore pyproject.toml README.md
  find controller -type f ! -path '*/__pycache__/*' ! -name '*.pyc' | LC_ALL=C sort | tee /dev/stderr | xargs cat
  echo "$base"
} 2>&1 | sha256sum | cut -c1-16)
img_dir="$cache/image/$src_hash"
if [ ! -f "$img_dir/.complete" ]; then
  rm -rf "$img_dir"
  mkdir -p "$img_dir"
  [ -n "${BASE_IMAGE:-}" ] || bh pull --quiet "docker-archive:$base_dir/base.tar" >/dev/null
  # pip's CA as configured on this machine (environment or pip config), mounted for the pip step only.
  ca=${PIP_CERT:-$( (pip config list || python3 -m pip config list) 2>/dev/null | sed -n "s/^[^=]*\.cert='\(.*\)'\$/\1/p" | head -1)}
  secret=()
  [ -n "$ca" ] && [ -f "$ca" ] && secret=(--secret "id=pip-ca,src=$ca")
  bh bud --quiet --isolation chroot --layers=false --pull=false "${secret[@]}" \
    --build-arg "BASE_IMAGE=$base" -t "localhost/module-service-controller:build" "$root" >/dev/null
  bh push --quiet "localhost/module-service-controller:build" \
    "docker-archive:$img_dir/image.tar:docker.io/library/module-service-controller:$tag"
  touch "$img_dir/.complete"
  # Archives of older sources (each a few hundred MB); an hour's grace for a concurrent user of one.
  find "$cache/image" -mindepth 1 -maxdepth 1 -type d ! -name "$src_hash" -mmin +60 -exec rm -rf {} +
fi
echo "$img_dir/image.tar"
