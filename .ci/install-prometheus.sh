#!/usr/bin/env bash
# Installs Debian's `prometheus` package: the server (/usr/bin/prometheus), which the end-to-end tests
# run on loopback against the controller (tests/e2e/test_prometheus_e2e.py), and promtool, for
# `promtool check rules` / `promtool test rules` on observability/alerts.yaml.
# Idempotent: does nothing when both binaries are on PATH. Never starts the packaged service: while the
# package installs, a policy-rc.d denies every service start (exit 101); it is removed again afterwards
# if we added it.
set -euo pipefail

have() { command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; }

if have; then
  prometheus --version 2>&1 | head -n 1
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-prometheus: need root for apt-get (or install the 'prometheus' package yourself)" >&2
  exit 1
fi

policy=/usr/sbin/policy-rc.d
added_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# added by .ci/install-prometheus.sh: do not start services during install\nexit 101\n' > "$policy"
  chmod 0755 "$policy"
  added_policy=1
fi
cleanup() {
  if [ "$added_policy" = 1 ]; then
    rm -f "$policy"
  fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
# Another apt client may hold the lock for a while (a shared CI machine): wait for it, do not fail.
apt_opts=(-o DPkg::Lock::Timeout=600)
apt-get "${apt_opts[@]}" update -qq
apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends prometheus >/dev/null

# Belt and braces on hosts where systemd is PID 1: keep the packaged server off; the tests start their
# own on loopback with a configuration of their own.
if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ] && command -v systemctl >/dev/null 2>&1; then
  systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi

have
prometheus --version 2>&1 | head -n 1
promtool --version 2>&1 | head -n 1
