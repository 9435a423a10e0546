#!/usr/bin/env bash
# Installs promtool (Debian's `prometheus` package ships /usr/bin/promtool) for
# `promtool check rules` / `promtool test rules` on observability/alerts.yaml. Idempotent: does nothing
# when promtool is already on PATH. Never starts the Prometheus server: while the package installs, a
# policy-rc.d denies every service start (exit 101), and it is removed again afterwards if we added it.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
  promtool --version 2>&1 | head -n 1
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-promtool: need root for apt-get (or install the 'prometheus' package yourself)" >&2
  exit 1
fi

policy=/usr/sbin/policy-rc.d
added_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# added by .ci/install-promtool.sh: do not start services during install\nexit 101\n' > "$policy"
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
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus >/dev/null

# Belt and braces on hosts where systemd is PID 1: keep the server off (it is not needed for promtool).
if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ] && command -v systemctl >/dev/null 2>&1; then
  systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi

command -v promtool >/dev/null
promtool --version 2>&1 | head -n 1
