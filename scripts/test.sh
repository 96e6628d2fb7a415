#!/usr/bin/env bash
# Installs what Herald's tests need on a fresh Debian machine, then runs every test.
# Safe to re-run: each step is skipped when its tool is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing ${need_apt[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

echo "==> cargo test --workspace"
cargo test --workspace

# Fuzz every parser briefly from its committed corpus (about a minute, plus the build).
echo "==> fuzz targets (scripts/fuzz.sh)"
scripts/fuzz.sh

# WebSocket conformance: Autobahn sections 1-7 against the transport's echo example.
echo "==> Autobahn (scripts/autobahn.sh)"
scripts/autobahn.sh

# The TypeScript client, React bindings, codegen and the demo page in a real browser, all
# against the real `herald` binary.
if [ ! -x /usr/bin/chromium ]; then
  echo "==> installing chromium"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium
fi
echo "==> npm ci + build (clients/typescript: @herald/client, @herald/react, the demo page)"
(cd clients/typescript && npm ci --no-audit --no-fund && npm run build && npm run typecheck)
# After the demo build, so the binary embeds the freshly built page.
echo "==> cargo build -p herald"
cargo build -p herald
echo "==> TypeScript client, React, codegen and browser tests"
(cd clients/typescript && TEST_HERALD_BIN="$PWD/../../target/debug/herald" npm test)
