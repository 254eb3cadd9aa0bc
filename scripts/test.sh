#!/usr/bin/env bash
# The one test command (README, .ci/run): format, lints, docs, the whole test
# suite, and a short fuzz smoke run. Installs what it needs and says what it
# skipped. Knobs:
#   FUZZ_SECONDS   seconds per fuzz target in the smoke run (default 15; 0 skips)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
skip() { printf '\n==> SKIPPED: %s\n' "$*"; }
started=$(date +%s)

step "toolchain: $(cargo --version)"
for comp in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$comp"; then
    rustup component add "$comp"
  fi
done

# The Redis tests (tests/tests/redis_siblings.rs) start their own
# redis-server processes on free loopback ports, one per test, so a test can
# kill Redis mid-run and start it again; this only makes sure the server is
# installed.
if ! command -v redis-server >/dev/null 2>&1; then
  step "installing redis-server (Debian package)"
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get install -y redis-server >/dev/null 2>&1 \
    || { $sudo_cmd apt-get update >/dev/null && $sudo_cmd apt-get install -y redis-server >/dev/null; } \
    || { echo "cannot install redis-server: run apt-get install -y redis-server as root" >&2; exit 1; }
fi
step "redis: $(redis-server --version | cut -d' ' -f1-3)"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

step "cargo build --workspace --bins (the end-to-end tests run these binaries)"
cargo build --workspace --bins --locked

step "cargo test --workspace"
cargo test --workspace --locked

fuzz_seconds=${FUZZ_SECONDS:-15}
if [ "$fuzz_seconds" = 0 ]; then
  skip "fuzz smoke (FUZZ_SECONDS=0)"
elif ! rustup toolchain list | grep -q '^nightly'; then
  skip "fuzz smoke: no nightly toolchain (rustup toolchain install nightly)"
else
  if ! command -v cargo-fuzz >/dev/null 2>&1; then
    step "installing cargo-fuzz (crates.io)"
    cargo install cargo-fuzz --locked --quiet || true
  fi
  if command -v cargo-fuzz >/dev/null 2>&1; then
    for target in $(cd fuzz && cargo +nightly fuzz list); do
      step "fuzz smoke: $target for ${fuzz_seconds}s"
      corpus="fuzz/corpus/$target"
      mkdir -p "$corpus"
      [ -d "fuzz/seeds/$target" ] || { echo "fuzz/seeds/$target is missing: every target needs a seed corpus" >&2; exit 1; }
      log=$(mktemp)
      if (cd fuzz && cargo +nightly fuzz run "$target" "corpus/$target" ../fuzz/seeds/"$target" -- \
        -max_total_time="$fuzz_seconds" -print_final_stats=0) >"$log" 2>&1; then
        tail -n 3 "$log"
      else
        grep -v -E '^ +([0-9]+: | +at )' "$log" | tail -n 40
        rm -f "$log"
        exit 1
      fi
      rm -f "$log"
    done
  else
    skip "fuzz smoke: cargo-fuzz could not be installed"
  fi
fi

printf '\n==> all checks passed in %ss\n' "$(( $(date +%s) - started ))"
