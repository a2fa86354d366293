#!/usr/bin/env bash
# Installs what the test suite needs beyond Rust and the three services: headless
# Chromium (Debian package `chromium`), which renders the HTML report and the
# console in tests, and, to drive it, Node.js with `playwright-core` (pinned by
# tests/browser/package-lock.json, installed into tests/browser/node_modules);
# and a real dbt, `dbt-postgres` from PyPI (pinned by tests/dbt/requirements.txt,
# installed into the virtualenv tests/dbt/.venv).
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

if cmp -s tests/dbt/requirements.txt tests/dbt/.venv/requirements.txt 2>/dev/null; then
  echo "dbt  up       $(tests/dbt/.venv/bin/dbt --version 2>/dev/null | grep -m1 installed | tr -s ' ')"
else
  echo "dbt  installing (pip install -r tests/dbt/requirements.txt into tests/dbt/.venv)"
  if ! python3 -m venv tests/dbt/.venv >/dev/null 2>&1; then
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null || true
    python3 -m venv tests/dbt/.venv || { echo "dbt  FAILED: python3 -m venv needs the Debian package python3-venv" >&2; exit 1; }
  fi
  tests/dbt/.venv/bin/pip install -q --disable-pip-version-check -r tests/dbt/requirements.txt >/dev/null || {
    echo "dbt  FAILED: pip install -r tests/dbt/requirements.txt (PyPI must be reachable)" >&2
    exit 1
  }
  cp tests/dbt/requirements.txt tests/dbt/.venv/requirements.txt
  echo "dbt  installed $(tests/dbt/.venv/bin/dbt --version 2>/dev/null | grep -m1 installed | tr -s ' ')"
fi
