#!/usr/bin/env bash
# Install what the browser tests (tests/browser) need, idempotently: Debian's chromium, which
# Playwright launches (it never downloads a browser of its own), and axe-core from npm for the
# accessibility checks, into tests/browser/node_modules (git-ignored).
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x /usr/bin/chromium ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi

if [ ! -f node_modules/axe-core/axe.min.js ]; then
  npm install --no-audit --no-fund --no-package-lock --loglevel=error >/dev/null
fi
echo "browser tests: $(/usr/bin/chromium --version), axe-core $(node -p 'require("./node_modules/axe-core/package.json").version')"
