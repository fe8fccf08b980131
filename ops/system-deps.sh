#!/usr/bin/env bash
# Install the Debian packages the test suite needs, only where missing.
# logrotate: real rotation tests. chromium + chromium-driver: the real-browser UI test.
# systemd, util-linux (unshare/nsenter): the system tests (present on Debian images).
# dbus: the system bus `systemd-run --wait` (the install preflight) talks to PID 1 through.
# fonts-wqy-microhei: Chinese glyphs in the browser screenshots.
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
if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "system-deps: missing ${need[*]}; install them with your package manager (needs root)" >&2
    exit 1
  fi
  echo "system-deps: installing ${need[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
