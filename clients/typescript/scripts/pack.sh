#!/usr/bin/env bash
# Builds @herald/client, @herald/react and @herald/server and packs each into an npm tarball, the
# way they would be published: `scripts/pack.sh [dir]` (default: ./packs). Install them into any
# app with `npm install <dir>/herald-client-0.1.0.tgz <dir>/herald-react-0.1.0.tgz …`
# (docs/clients.md, "Installing the packages").
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(mkdir -p "${1:-packs}" && cd "${1:-packs}" && pwd)"
npx tsc -b packages/client packages/react packages/server
npm pack --silent --pack-destination "$out" \
  --workspace packages/client --workspace packages/react --workspace packages/server >/dev/null
ls "$out"/herald-client-*.tgz "$out"/herald-react-*.tgz "$out"/herald-server-*.tgz
