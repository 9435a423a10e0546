#!/usr/bin/env bash
# Builds the helm CLI from the pinned helm.sh/helm/v3 Go module into $CACHE/<key>/bin and leaves a
# stamp, so later runs reuse it. Idempotent; safe to rerun after a kill (no stamp: built again).
# helm's go.mod has no replace directives, so `go install module/cmd@version` builds it with exactly
# the dependency versions of its own go.sum.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"

cache=${1:?usage: build.sh CACHE_DIR}
key="helm-${HELM_VERSION}_$(go env GOVERSION)"
out="$cache/$key"
mkdir -p "$cache"
# One build at a time: a second caller waits for the first and then finds the stamp (without the lock it
# would delete the first one's half-built tree).
exec 9>"$cache/.build.lock"
flock 9
if [ -f "$out/.complete" ]; then
  echo "$out/bin"
  exit 0
fi

rm -rf "$out"
mkdir -p "$out/bin"
export CGO_ENABLED=0 GOTOOLCHAIN=local GOBIN="$out/bin"
# The same version stamps as helm's release Makefile (`helm version`, and the default .Capabilities
# KubeVersion that `helm template` and `helm lint` assume).
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} \
 -X helm.sh/helm/v3/internal/version.gitTreeState=clean \
 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 \
 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=${HELM_K8S_MINOR} \
 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 \
 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=${HELM_K8S_MINOR}"
go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"

"$out/bin/helm" version --short
touch "$out/.complete"
echo "$out/bin"
