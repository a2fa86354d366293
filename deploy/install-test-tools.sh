#!/usr/bin/env bash
# Installs what the test suite needs beyond Rust and the three services: headless
# Chromium (Debian package `chromium`), which renders the HTML report in a test.
# Idempotent: does nothing when it is already there.
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

if command -v chromium >/dev/null 2>&1; then
  echo "chromium  up       $(chromium --version 2>/dev/null | head -n1)"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "chromium  installing (apt-get install chromium)"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null || {
  $SUDO apt-get update -q >/dev/null
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
}
command -v chromium >/dev/null 2>&1 || { echo "chromium  FAILED: install the Debian package chromium" >&2; exit 1; }
echo "chromium  installed $(chromium --version 2>/dev/null | head -n1)"
