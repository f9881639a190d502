#!/usr/bin/env bash
# Installs every Debian 12 package that building, running and testing openai-api-route needs.
# Idempotent: runs apt-get (update + install) only when a package is missing.
set -euo pipefail
packages=(
  build-essential cmake pkg-config clang
  libuv1-dev node-llhttp libmbedtls-dev libsqlite3-dev liblua5.4-dev lua-cjson-dev libjansson-dev
  ca-certificates openssl curl sqlite3
  python3 python3-pytest
  nodejs npm
  # tests/bench/bench.sh (its --quick run is a ctest): the load generator and the two proxies
  # it compares against. linux-perf is optional (bench.sh --perf installs it when asked).
  wrk nginx haproxy
  # tests/integration/test_browser.py: a real browser (headless), driven by puppeteer-core.
  chromium
  # tests/integration/test_reload.py: which thread reads the scripts on a reload.
  strace
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# The machine's own Node.js (not Debian's) may already provide node and npm.
if command -v node >/dev/null && command -v npm >/dev/null; then
  tmp=(); for p in "${missing[@]}"; do [[ $p == nodejs || $p == npm ]] || tmp+=("$p"); done
  missing=("${tmp[@]+"${tmp[@]}"}")
fi
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "bootstrap: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
