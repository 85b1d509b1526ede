#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh machine, then runs every test.
#   bash scripts/test.sh
# Needs: the Rust toolchain, Node.js 20 + npm, and apt (as root or with sudo) for Debian packages.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages the tests drive for real: headless Chromium for the browser test, and
# nats-server (with JetStream) for the cluster tests.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
if [ ${#missing[@]} -gt 0 ]; then
  step "apt-get install ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  step "cargo install cargo-nextest"
  cargo install cargo-nextest --locked
fi

# JavaScript dependencies of the browser and interop tests (from package-lock.json only).
for dir in tests/browser tests/interop; do
  if [ -f "$dir/package-lock.json" ]; then
    step "npm ci in $dir"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
done

step "cargo build"
cargo build --workspace --all-targets --locked

# Latency comparisons run alone, after the parallel suite, so other tests do not skew them.
timing='test(a_stalled_reader_does_not_raise_the_others_latency)'

step "cargo nextest run --workspace"
cargo nextest run --workspace --locked --no-fail-fast -E "not $timing"

step "latency tests, one at a time"
cargo nextest run --workspace --locked -E "$timing" --test-threads 1

step "cargo test --doc"
cargo test --doc --workspace --locked

# The binary the JavaScript tests drive (honours CARGO_TARGET_DIR).
bin="$(realpath -m "${CARGO_TARGET_DIR:-$PWD/target}")/debug/peermesh"

if [ -d tests/browser ] && ls tests/browser/*.test.mjs >/dev/null 2>&1; then
  step "browser test (headless Chromium)"
  PEERMESH_BIN="$bin" node --test tests/browser/
fi

if ls tests/interop/*.test.mjs >/dev/null 2>&1; then
  step "interop tests (real npm packages)"
  PEERMESH_BIN="$bin" node --test --test-concurrency=1 tests/interop/
fi
