#!/usr/bin/env bash
# The one test command (README, .ci/run): format, lints, docs, the whole test
# suite, and a short fuzz smoke run. Installs what it needs and says what it
# skipped. Knobs:
#   FUZZ_SECONDS   seconds per fuzz target in the smoke run (default 15; 0 skips)
#   CI             set by .ci/run (CI=1; hosted CI sets CI=true): as root, an
#                  end-to-end test that cannot make its network namespace
#                  fails instead of reporting itself skipped
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
skipped=()
skip() { printf '\n==> SKIPPED: %s\n' "$*"; skipped+=("$*"); }
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

# DESIGN.md § Layering: the protocol cores do no I/O, and the compiler is
# what keeps it so — ricochet-proto must not be able to name an I/O crate.
# (Host target only, as cargo tree checks by default: on aarch64 Linux the
# `cpufeatures` probe under reed-solomon-simd and sha2 pulls libc in.)
io_crates="tokio io-uring redis axum hyper socket2 nix libc mio"
step "ricochet-proto: no I/O crate in its dependency tree"
proto_tree=$(cargo tree -p ricochet-proto -e normal --prefix none --locked)
io_pattern="^($(tr ' ' '|' <<<"$io_crates")) v"
offending=$(grep -E "$io_pattern" <<<"$proto_tree" | cut -d' ' -f1-2 | sort -u || true)
if [ -n "$offending" ]; then
  echo "ricochet-proto (the sans-IO protocol cores) depends on an I/O crate:" >&2
  while read -r name version; do
    printf '\n%s %s reaches ricochet-proto through:\n' "$name" "$version" >&2
    cargo tree -i "$name@${version#v}" -p ricochet-proto -e normal --locked >&2
  done <<<"$offending"
  printf '\nmove the code that needs it to the engine crate (ricochet), or drop the dependency\n' >&2
  exit 1
fi
echo "none of: $io_crates"

# DESIGN.md § Layout: modules import in one direction. The test reads the
# engine crate's sources and lists every cycle between its top-level
# modules with a file:line per edge (it runs again in cargo test below).
step "ricochet: no module cycles"
cargo test -p ricochet --test module_cycles --locked --quiet

step "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

step "cargo build --workspace --bins (the end-to-end tests run these binaries)"
cargo build --workspace --bins --locked

# tests/tests/deploy.rs checks deploy/ (unit, env file, example TOML)
# against check-config and docs/OPERATIONS.md, and runs systemd-analyze
# verify on the unit when the tool is here; it checks the generated shell
# completions with each shell and the man page with groff when installed.
if ! command -v systemd-analyze >/dev/null 2>&1; then
  skip "systemd-analyze verify of deploy/systemd/ricochet.service: systemd-analyze is not installed (apt-get install systemd)"
fi
for tool in zsh fish groff; do
  command -v "$tool" >/dev/null 2>&1 || skip "syntax check of the generated completions / man page with $tool: not installed"
done

# End-to-end tests that cannot run here (tests/src/netns.rs: no network
# namespace without root and iproute2) append "binary::test: reason" to
# this file; each line becomes a SKIPPED line and is listed in the summary.
RICOCHET_E2E_SKIPS=$(mktemp)
export RICOCHET_E2E_SKIPS
trap 'rm -f "$RICOCHET_E2E_SKIPS"' EXIT

# deploy/prometheus: promtool (Debian's prometheus package) checks the alert
# rules and runs their unit tests. The package's postinst enables and starts
# the server; a policy-rc.d refusing every start (unless one is already in
# place) keeps it stopped, and the unit is disabled after, so CI leaves no
# daemon behind. tests/tests/dashboards.rs checks the rules' and the
# dashboard's metrics against a real scrape whether or not promtool runs.
if ! command -v promtool >/dev/null 2>&1; then
  step "installing promtool (Debian package prometheus)"
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | $sudo_cmd tee "$policy" >/dev/null && $sudo_cmd chmod 755 "$policy" || policy=""
  fi
  prom_install="apt-get install -y --no-install-recommends prometheus"
  $sudo_cmd $prom_install >/dev/null 2>&1 \
    || { $sudo_cmd apt-get update >/dev/null 2>&1 && $sudo_cmd $prom_install >/dev/null 2>&1; } \
    || true
  [ -z "$policy" ] || $sudo_cmd rm -f "$policy"
  if command -v promtool >/dev/null 2>&1; then
    if [ -d /run/systemd/system ]; then
      $sudo_cmd systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    else
      $sudo_cmd deb-systemd-helper disable prometheus.service >/dev/null 2>&1 || true
      $sudo_cmd update-rc.d prometheus disable >/dev/null 2>&1 || true
    fi
  fi
fi
if command -v promtool >/dev/null 2>&1; then
  step "promtool check rules / test rules (deploy/prometheus)"
  promtool check rules deploy/prometheus/ricochet-alerts.yml
  promtool test rules deploy/prometheus/ricochet-alerts.test.yml
else
  skip "promtool check/test of deploy/prometheus/ricochet-alerts.yml: promtool could not be installed (apt-get install -y --no-install-recommends prometheus)"
fi

# ---- Helm chart and container image (deploy/helm, deploy/container) ----
# scripts/helm-check.sh installs helm (go install, pinned; cached in
# ~/.cache/ricochet/bin), lints and renders the chart; tests/tests/helm.rs
# checks the rendered manifests against the binary in cargo test below,
# with RICOCHET_HELM from the script's last line. scripts/container-check.sh
# builds the image and smoke-runs it when a container tool works here
# (installing podman as root when none is; RICOCHET_CONTAINER_INSTALL=0
# stops that, RICOCHET_CONTAINER_CHECK=0 skips the check). Each prints
# `SKIPPED: <what>: <reason>` for what it could not do, which joins the
# summary.
run_check() {
  local log
  log=$(mktemp)
  bash "$@" | tee "$log"
  while IFS= read -r line; do
    case $line in
      "SKIPPED: "*) skipped+=("${line#SKIPPED: }") ;;
      RICOCHET_HELM=*) export RICOCHET_HELM="${line#RICOCHET_HELM=}" ;;
    esac
  done <"$log"
  rm -f "$log"
}
step "helm chart: lint, template (scripts/helm-check.sh)"
run_check scripts/helm-check.sh --no-cargo-test
step "container image: build, smoke run (scripts/container-check.sh)"
run_check scripts/container-check.sh
# ---- end of Helm chart and container image ----

step "cargo test --workspace"
cargo test --workspace --locked
while IFS= read -r line; do skip "end-to-end test $line"; done <"$RICOCHET_E2E_SKIPS"

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
if [ "${#skipped[@]}" -gt 0 ]; then
  printf '==> %s skipped:\n' "${#skipped[@]}"
  printf '    %s\n' "${skipped[@]}"
fi
