#!/usr/bin/env bash
# Headless Chromium for the browser test of report.html (tests/test_report.py), from Debian's `chromium`
# package. Idempotent: does nothing when /usr/bin/chromium is already there. Needs root (or sudo) for apt-get;
# without either it says so and exits 0, and the browser test then skips with its reason.
set -euo pipefail

BROWSER=/usr/bin/chromium
if [ -x "$BROWSER" ]; then
  echo "chromium: already installed ($("$BROWSER" --version 2>/dev/null || echo "$BROWSER"))"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
else
  echo "chromium: not installed and no root/sudo to install it; the report's browser test will be skipped" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium: no apt-get on this machine; install Chromium by hand for the report's browser test" >&2
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium >/dev/null
echo "chromium: installed ($("$BROWSER" --version 2>/dev/null || echo "$BROWSER"))"
