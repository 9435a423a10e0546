#!/usr/bin/env bash
# Builds kubelet, kube-scheduler and kube-proxy from the same pinned k8s.io/kubernetes module as the
# control plane (tests/controlplane/versions.env) into $CACHE/<key>/bin and leaves a stamp. A sibling of
# tests/controlplane/build.sh with its own cache key, so the two caches never clobber each other; the
# Go build cache makes this about a minute once the control plane is built. Idempotent.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../controlplane/versions.env
. "$here/../controlplane/versions.env"

cache=${1:?usage: build.sh CACHE_DIR}
key="k8s-${KUBERNETES_VERSION}_$(go env GOVERSION)"
out="$cache/$key"
mkdir -p "$cache"
# One build at a time: a second caller (another test run, make target or worktree) waits for the first
# and then finds the stamp; without the lock its rm -rf would delete the first one's half-built tree.
exec 9>"$cache/.build.lock"
flock 9
if [ -f "$out/.complete" ]; then
  echo "$out/bin"
  exit 0
fi

rm -rf "$out"
mkdir -p "$out/src" "$out/bin"
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local
staging_version="v0${KUBERNETES_VERSION#v1}"

# A consumer module: see tests/controlplane/build.sh for why the staging replaces are needed.
cd "$out/src"
go mod download -json "k8s.io/kubernetes@${KUBERNETES_VERSION}" > dl.json
k8s_gomod=$(sed -n 's/.*"GoMod": "\(.*\)",/\1/p' dl.json)
{
  echo "module localnode/k8s"
  echo
  echo "go 1.26.0"
  echo
  echo "require k8s.io/kubernetes ${KUBERNETES_VERSION}"
  echo
  echo "replace ("
  sed -n 's#^\s*\(k8s\.io/[a-z0-9-]*\) => ./staging/.*#\t\1 => \1 '"${staging_version}"'#p' "$k8s_gomod"
  echo ")"
} > go.mod
cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
go mod tidy
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=${KUBERNETES_VERSION} \
 -X k8s.io/component-base/version.gitMajor=1 \
 -X k8s.io/component-base/version.gitMinor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2) \
 -X k8s.io/client-go/pkg/version.gitVersion=${KUBERNETES_VERSION}"
go build -trimpath -ldflags "$ldflags" -o "$out/bin/" \
  k8s.io/kubernetes/cmd/kubelet \
  k8s.io/kubernetes/cmd/kube-scheduler \
  k8s.io/kubernetes/cmd/kube-proxy

"$out/bin/kubelet" --version
touch "$out/.complete"
echo "$out/bin"
