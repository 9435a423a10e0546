#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kubectl and etcd from pinned Go modules into
# $CACHE/bin and leaves a stamp, so later runs reuse them. Idempotent; safe to rerun after a kill.
#
# Why a consumer module: k8s.io/kubernetes requires its ~33 staging modules at v0.0.0 and replaces
# them with paths inside its own repo, which a consumer cannot see; we add our own replace for each
# at the matching v0.X.Y. etcd's server module has local replace directives too, so
# `go install pkg@version` refuses it.
#
# usage: build.sh CACHE_DIR [newest|oldest]: which pinned pair of versions.env to build (default newest).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"

cache=${1:?usage: build.sh CACHE_DIR [newest|oldest]}
case "${2:-newest}" in
  newest) ;;
  oldest) KUBERNETES_VERSION=$KUBERNETES_VERSION_OLDEST ETCD_VERSION=$ETCD_VERSION_OLDEST ;;
  *) echo "build.sh: unknown Kubernetes selection '$2' (newest or oldest)" >&2; exit 2 ;;
esac
key="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_$(go env GOVERSION)"
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
mkdir -p "$out/src/k8s" "$out/src/etcd" "$out/bin"
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local
staging_version="v0${KUBERNETES_VERSION#v1}"

# --- Kubernetes ---
cd "$out/src/k8s"
go mod download -json "k8s.io/kubernetes@${KUBERNETES_VERSION}" > dl.json
k8s_gomod=$(sed -n 's/.*"GoMod": "\(.*\)",/\1/p' dl.json)
{
  echo "module localcp/k8s"
  echo
  echo "go 1.26.0"
  echo
  echo "require k8s.io/kubernetes ${KUBERNETES_VERSION}"
  echo
  echo "replace ("
  # every "k8s.io/x => ./staging/src/k8s.io/x" line of upstream becomes "k8s.io/x => k8s.io/x vX"
  sed -n 's#^\s*\(k8s\.io/[a-z0-9-]*\) => ./staging/.*#\t\1 => \1 '"${staging_version}"'#p' "$k8s_gomod"
  echo ")"
} > go.mod
cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
go mod tidy
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=${KUBERNETES_VERSION} \
 -X k8s.io/component-base/version.gitMajor=1 \
 -X k8s.io/component-base/version.gitMinor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2) \
 -X k8s.io/client-go/pkg/version.gitVersion=${KUBERNETES_VERSION}"
go build -trimpath -ldflags "$ldflags" -o "$out/bin/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kubectl

# --- etcd ---
cd "$out/src/etcd"
cat > go.mod <<GOMOD
module localcp/etcd

go 1.26.0

require go.etcd.io/etcd/server/v3 ${ETCD_VERSION}
GOMOD
cat > tools.go <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
GO
go mod tidy
go build -trimpath -ldflags "-s -w" -o "$out/bin/etcd" go.etcd.io/etcd/server/v3

"$out/bin/kube-apiserver" --version
"$out/bin/etcd" --version | head -1
touch "$out/.complete"
echo "$out/bin"
