#!/usr/bin/env bash
# Installs what the test suite needs beyond Rust and the three services: headless
# Chromium (Debian package `chromium`), which renders the HTML report and the
# console in tests, and, to drive it, Node.js with `playwright-core` (pinned by
# tests/browser/package-lock.json, installed into tests/browser/node_modules).
# Idempotent: does nothing that is already done.
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# apt_install NAME PACKAGE...: installs the Debian packages unless NAME is on PATH.
apt_install() {
  local name="$1"
  shift
  if command -v "$name" >/dev/null 2>&1; then
    echo "$name  up       $("$name" --version 2>/dev/null | head -n1)"
    return
  fi
  echo "$name  installing (apt-get install $*)"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null || {
    $SUDO apt-get update -q >/dev/null
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
  }
  command -v "$name" >/dev/null 2>&1 || { echo "$name  FAILED: install the Debian package(s) $*" >&2; exit 1; }
  echo "$name  installed $("$name" --version 2>/dev/null | head -n1)"
}

apt_install chromium chromium
apt_install node nodejs npm
command -v npm >/dev/null 2>&1 || apt_install npm npm

if [ -f tests/browser/node_modules/playwright-core/package.json ]; then
  echo "playwright-core  up"
else
  echo "playwright-core  installing (npm ci in tests/browser)"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error >/dev/null) || {
    echo "playwright-core  FAILED: run npm ci in tests/browser (the npm registry must be reachable)" >&2
    exit 1
  }
  echo "playwright-core  installed $(node -p 'require("./tests/browser/node_modules/playwright-core/package.json").version')"
fi
