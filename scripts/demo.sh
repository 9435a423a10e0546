#!/usr/bin/env bash
# The seed's example, end to end: a local control plane, the CRD, the controller, the sample
# ModuleDeployment, and the Service the controller creates for it. Leaves nothing running
# (KEEP=1 keeps the control plane and the controller up and prints how to reach them).
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
dir=${DEMO_DIR:-$HOME/.cache/module-service-controller/demo}
bin=$($py -m tests.controlplane build)
kubectl() { "$bin/kubectl" --kubeconfig "$dir/kubeconfig" "$@"; }

$py -m tests.controlplane up "$dir"
controller_pid=
cleanup() {
  if [ "${KEEP:-0}" = 1 ]; then
    echo; echo "KEEP=1: still running. export KUBECONFIG=$dir/kubeconfig; stop with:"
    echo "  kill $controller_pid; $py -m tests.controlplane down $dir"
    return
  fi
  [ -n "$controller_pid" ] && kill -TERM "$controller_pid" 2>/dev/null && wait "$controller_pid" || true
  $py -m tests.controlplane down "$dir" >/dev/null
}
trap cleanup EXIT

echo "== installing the ModuleDeployment CRD"
kubectl apply --server-side -f manifests/crd/moduledeployments.yaml
kubectl wait --for=condition=Established --timeout=60s crd/moduledeployments.koupleless.alipay.com >/dev/null

echo "== starting module-service-controller (log: $dir/controller.log)"
.venv/bin/module-service-controller --kubeconfig "$dir/kubeconfig" --log-format json \
  --metrics-bind-address 127.0.0.1:0 --health-probe-bind-address 127.0.0.1:0 >"$dir/controller.log" 2>&1 &
controller_pid=$!

echo "== applying the seed's sample ModuleDeployment"
kubectl create namespace yournamespace --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -f manifests/samples/moduledeployment.yaml --namespace yournamespace

echo "== waiting for the Service the controller creates"
for _ in $(seq 1 150); do
  kubectl get service dynamic-provider-service --namespace yournamespace >/dev/null 2>&1 && break
  kill -0 "$controller_pid" 2>/dev/null || { echo "controller exited:"; cat "$dir/controller.log"; exit 1; }
  sleep 0.2
done
kubectl wait --namespace yournamespace --timeout=30s \
  --for=jsonpath='{.status.moduleService.conditions[0].reason}'=ServiceReady \
  moduledeployment/moduledeployment-sample-provider >/dev/null

echo; echo "== kubectl get moduledeployments,services --namespace yournamespace"
kubectl get moduledeployments,services --namespace yournamespace
echo; echo "== kubectl get service dynamic-provider-service --namespace yournamespace -o yaml"
kubectl get service dynamic-provider-service --namespace yournamespace -o yaml | grep -v '^  managedFields' 
echo; echo "== status.moduleService of the ModuleDeployment"
kubectl get moduledeployment moduledeployment-sample-provider --namespace yournamespace \
  -o jsonpath='{.status.moduleService}'; echo
echo; echo "== the controller's reconcile log lines"
grep '"reconciled"' "$dir/controller.log" | head -5
