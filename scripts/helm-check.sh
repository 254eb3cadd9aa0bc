#!/usr/bin/env bash
# Lints and renders the Helm chart (deploy/helm/ricochet), then runs the
# checks of the rendered manifests against the real binary
# (tests/tests/helm.rs: env names through `ricochet check-config`, ports,
# probes, capabilities, ServiceMonitor on and off).
#
# Helm comes from the Go toolchain, pinned:
#   go install helm.sh/helm/v4/cmd/helm@v4.3.2
# into $RICOCHET_TOOLS_BIN (default ~/.cache/ricochet/bin), and is reused
# when the binary there was built from that module version. The path is
# printed as the last line `RICOCHET_HELM=<path>` so scripts/test.sh can
# export it for cargo test.
#
#   scripts/helm-check.sh                  install, lint, template, cargo test --test helm
#   scripts/helm-check.sh --no-cargo-test  the same without the cargo test
#                                           (scripts/test.sh runs it in cargo test)
#
# Without Go (and no helm of that version installed) it prints one line
# `SKIPPED: helm: <reason>` and exits 0; under CI (CI set) that fails.
set -euo pipefail
cd "$(dirname "$0")/.."

helm_version=v4.3.2
helm_module=helm.sh/helm/v4
chart=deploy/helm/ricochet
cargo_test=1
[ "${1:-}" != --no-cargo-test ] || cargo_test=""

in_ci() { case "${CI:-}" in "" | 0 | false) return 1 ;; *) return 0 ;; esac; }
say() { printf -- '--- helm: %s\n' "$*"; }
skip_out() {
  if in_ci; then
    echo "helm: $* (CI is set: failing instead of skipping)" >&2
    exit 1
  fi
  echo "SKIPPED: helm: $*"
  exit 0
}

bin_dir=${RICOCHET_TOOLS_BIN:-${HOME}/.cache/ricochet/bin}
helm=$bin_dir/helm
go=$(command -v go || true)
[ -n "$go" ] || [ ! -x /usr/local/go/bin/go ] || go=/usr/local/go/bin/go

# Built from the pinned module version? (`go version -m` reads the module
# information Go embeds in the binary; helm's own `version` prints only
# "v4.3" for a go-installed build.)
have_pinned() {
  [ -x "$helm" ] && [ -n "$go" ] || return 1
  local info
  info=$("$go" version -m "$helm" 2>/dev/null) || return 1
  grep -Eq "^[[:space:]]+mod[[:space:]]+${helm_module}[[:space:]]+${helm_version}([[:space:]]|\$)" <<<"$info"
}

if ! have_pinned; then
  [ -n "$go" ] || skip_out "no Go toolchain to install helm $helm_version (go install $helm_module/cmd/helm@$helm_version; Go from https://go.dev/dl, or /usr/local/go/bin)"
  say "installing helm $helm_version: go install $helm_module/cmd/helm@$helm_version (a few minutes cold)"
  mkdir -p "$bin_dir"
  started=$(date +%s)
  # CGO off: helm needs no C, and a pure-Go build skips the cgo runtime.
  GOBIN=$bin_dir CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -trimpath" \
    "$go" install "$helm_module/cmd/helm@$helm_version" \
    || skip_out "go install $helm_module/cmd/helm@$helm_version failed (see above)"
  say "installed $helm in $(( $(date +%s) - started ))s"
  have_pinned || { echo "helm: $helm is not $helm_module $helm_version after go install" >&2; exit 1; }
fi
say "$helm_module $helm_version ($helm)"

# Lint: the defaults and each example values file; --strict turns warnings
# (an unknown value key, a deprecated API) into failures.
"$helm" lint --strict "$chart"
for values in "$chart"/examples/*.yaml; do
  "$helm" lint --strict "$chart" -f "$values"
done

# Render: the defaults (no ServiceMonitor), and the full example (a
# ServiceMonitor, cluster, DHT, secrets, Multus) as a Deployment too.
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$helm" template ricochet "$chart" >"$out/default.yaml"
"$helm" template ricochet "$chart" -f "$chart/examples/full.yaml" >"$out/full.yaml"
"$helm" template ricochet "$chart" -f "$chart/examples/full.yaml" --set kind=Deployment >"$out/full-deployment.yaml"
grep -q '^kind: DaemonSet$' "$out/default.yaml" || { echo "helm: no DaemonSet by default" >&2; exit 1; }
! grep -q '^kind: ServiceMonitor$' "$out/default.yaml" || { echo "helm: a ServiceMonitor by default" >&2; exit 1; }
grep -q '^kind: ServiceMonitor$' "$out/full.yaml" || { echo "helm: no ServiceMonitor with metrics.serviceMonitor.enabled" >&2; exit 1; }
grep -q '^kind: Deployment$' "$out/full-deployment.yaml" || { echo "helm: kind=Deployment renders no Deployment" >&2; exit 1; }
say "lint --strict and template: $(grep -c '^kind:' "$out/default.yaml") manifests by default, $(grep -c '^kind:' "$out/full.yaml") with examples/full.yaml"

if [ -n "$cargo_test" ]; then
  say "cargo test --test helm (the rendered manifests against the ricochet binary)"
  cargo build --locked -p ricochet --bin ricochet
  RICOCHET_HELM=$helm cargo test --locked -p ricochet-e2e --test helm
fi
echo "RICOCHET_HELM=$helm"
