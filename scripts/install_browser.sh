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

source "$(dirname "$0")/apt_install.sh"
apt_install chromium "the report's browser test will be skipped" chromium || exit 0
echo "chromium: installed ($("$BROWSER" --version 2>/dev/null || echo "$BROWSER"))"
