#!/usr/bin/env bash
# Install the Debian packages the test suite needs, only where missing.
# logrotate: real rotation tests. chromium + chromium-driver: the real-browser UI test.
# systemd, util-linux (unshare/nsenter): the system tests (present on Debian images).
# dbus: the system bus `systemd-run --wait` (the install preflight) talks to PID 1 through.
# fonts-wqy-microhei: Chinese glyphs in the browser screenshots.
# The fleet tests (issue: beyond one server) run the real engines users put around us:
# prometheus (+promtool), prometheus-alertmanager (+amtool), nginx, haproxy, and a
# private dockerd (docker.io) whose base image is made with debootstrap.
set -euo pipefail
need=()
command -v logrotate >/dev/null || [[ -x /usr/sbin/logrotate ]] || need+=(logrotate)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
[[ -x /lib/systemd/systemd ]] || need+=(systemd)
command -v unshare >/dev/null || need+=(util-linux)
[[ -x /usr/bin/dbus-daemon ]] || need+=(dbus)
command -v ip >/dev/null || need+=(iproute2)
# A CJK font, so the UI screenshot shows Mandarin text instead of empty boxes.
[[ -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ]] || need+=(fonts-wqy-microhei)
command -v promtool >/dev/null || need+=(prometheus)
command -v amtool >/dev/null || need+=(prometheus-alertmanager)
[[ -x /usr/sbin/nginx ]] || need+=(nginx)
[[ -x /usr/sbin/haproxy ]] || need+=(haproxy)
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || [[ -x /usr/sbin/debootstrap ]] || need+=(debootstrap)
if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "system-deps: missing ${need[*]}; install them with your package manager (needs root)" >&2
    exit 1
  fi
  echo "system-deps: installing ${need[*]}"
  # nginx, prometheus and docker.io start machine-wide services from their postinst;
  # the tests start private ones themselves. policy-rc.d exit 101 = "do not start".
  policy=/usr/sbin/policy-rc.d made_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
  fi
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
  if ((made_policy)); then rm -f "$policy"; fi
fi
