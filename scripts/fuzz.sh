#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time (FUZZ_SECONDS each, default 10:
# about a minute for all of them) starting from its committed corpus, fuzz/corpus/<target>.
# New inputs go to a scratch directory, so the run leaves the tree clean; a crash fails the
# script and leaves its input in fuzz/artifacts/<target>/ (fix it, then commit the input to
# the corpus). Installs cargo-fuzz and the nightly toolchain when missing.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "==> installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null; then
  echo "==> installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi

seconds="${FUZZ_SECONDS:-10}"
# Release with debug assertions (overflow checks on); no sanitizer: the fuzzed crates forbid
# `unsafe`, so AddressSanitizer would only slow the build. Same flags for build and run, so
# `run` reuses the build.
flags=(-O -a -s none --codegen-units 16)
cargo +nightly fuzz build "${flags[@]}"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo +nightly fuzz list); do
  echo "==> fuzz $target (${seconds}s, corpus $(ls "corpus/$target" | wc -l))"
  mkdir -p "$scratch/$target"
  log="$scratch/$target.log"
  if ! cargo +nightly fuzz run "${flags[@]}" "$target" "$scratch/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz target $target failed: its input is in fuzz/artifacts/$target/"
    exit 1
  fi
  grep -E '^stat::(number_of_executed_units|new_units_added)' "$log" | tr '\n' ' '
  echo
done
