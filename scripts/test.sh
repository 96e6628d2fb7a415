#!/usr/bin/env bash
# Installs what Herald's tests need on a fresh Debian machine, checks formatting and lints,
# then runs every test. This is what CI runs. Safe to re-run: each step is skipped when its
# tool is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

# Where cargo puts binaries: `target/` here unless CARGO_TARGET_DIR or .cargo/config.toml say
# otherwise (a shared build cache). Asked once, so no step guesses `target/debug/herald`.
target_dir="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
if [ -z "$target_dir" ]; then
  echo "error: cannot read target_directory from cargo metadata" >&2
  exit 1
fi
# The binary the TypeScript tests run (they read TEST_HERALD_BIN; the Rust harness reads
# HERALD_BIN). An explicit HERALD_BIN from the caller wins.
herald_bin="${HERALD_BIN:-$target_dir/debug/herald}"

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
# The NATS broker's tests start their own `nats-server -js` (Debian installs it in /usr/sbin).
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || need_apt+=(nats-server)
# Cluster creation and the Cluster/Sentinel tests' probes; Sentinel itself is
# `redis-server --sentinel`, so the redis-sentinel package is not needed.
command -v redis-cli >/dev/null || need_apt+=(redis-tools)
# The Redis TLS test generates its CA and certificates with openssl.
command -v openssl >/dev/null || need_apt+=(openssl)
# The herald binary links jemalloc, which tikv-jemalloc-sys builds from source with make.
command -v make >/dev/null || need_apt+=(make)
command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
# The event-bus sources' tests start their own brokers (crates/herald-testkit/src/bus.rs).
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || need_apt+=(nats-server)
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need_apt+=(rabbitmq-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> installing ${need_apt[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# Cheap checks first: a formatting slip or a lint fails in seconds, not after the tests.
echo "==> cargo fmt --check"
cargo fmt --all --check
echo "==> cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
# Every public item is documented; a broken intra-doc link or a stray `<tag>` fails here.
echo "==> cargo doc --workspace --no-deps (warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

echo "==> cargo test --workspace"
HERALD_BIN="$herald_bin" cargo test --workspace

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
echo "==> npm ci + build (clients/typescript: @herald/client, @herald/react, @herald/server, the demo page, the admin dashboard)"
(cd clients/typescript && npm ci --no-audit --no-fund && npm run build && npm run typecheck)
# After the demo and admin builds, so the binary embeds the freshly built pages.
echo "==> cargo build -p herald"
cargo build -p herald
# Also: @herald/server against the binary, the AsyncAPI document through @asyncapi/parser, and
# the packed packages installed into a scratch app (npm install from the cache `npm ci` filled).
echo "==> TypeScript client, React, server publisher, codegen, AsyncAPI, install and browser tests"
echo "    (herald: $herald_bin)"
(cd clients/typescript && TEST_HERALD_BIN="$herald_bin" HERALD_BIN="$herald_bin" npm test)
