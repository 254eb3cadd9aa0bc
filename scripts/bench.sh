#!/usr/bin/env bash
# Side-by-side benchmarks (issue 4): reflect vs ricochet --backend epoll vs
# --backend uring on the same CPU pinning (servers on CPU 0, load on CPU 1),
# criterion micro-benchmarks, the memory benchmark, then perf/REPORT.md.
#
#   scripts/bench.sh            full run (bounded: about 10 minutes, stops by itself)
#   scripts/bench.sh --quick    short phases (under 5 minutes once built)
#
# Criterion benches run with the release profile so they reuse the release
# build instead of compiling everything again for the bench profile.
# Writes perf/results/<date>-<workload>.json and regenerates perf/REPORT.md
# and perf/charts/*.svg. Knobs: SERVER_CPU (0), LOAD_CPU (1).
#
# SOAK=300s (any duration up to 10m) adds the issue-18 overload soak after
# the report: `lab --soak-interval 60s` at 5000 frames/s, 2 % drop, a 64 MiB
# cache and the per-IP tier raised, so the per-flow chain tier is the
# bottleneck. Writes perf/soak/overload-<date>.{json,csv,txt}; see
# "Soak: overload" in perf/REPORT.md.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=""
crit_time=3
crit_warm=1
limit=1200
if [ "${1:-}" = "--quick" ]; then
  quick="--quick"
  crit_time=1
  crit_warm=0.3
  limit=600
elif [ -n "${1:-}" ]; then
  echo "usage: scripts/bench.sh [--quick]" >&2
  exit 2
fi
server_cpu=${SERVER_CPU:-0}
load_cpu=${LOAD_CPU:-1}
started=$(date +%s)
date_tag=$(date -u +%F)
step() { printf '\n==> %s\n' "$*"; }

step "release build: cargo build --release -p ricochet -p ricochet-bench --bins"
cargo build --release -p ricochet -p ricochet-bench --bins
loadgen=target/release/ricochet-loadgen
build_done=$(date +%s)

step "criterion micro-benchmarks (measurement ${crit_time}s each)"
rm -rf target/criterion
# Pinned to the load CPU so they do not share a core with anything we start.
taskset -c "$load_cpu" cargo bench --profile release -p ricochet-bench --bench wire --bench engine -- \
  --warm-up-time "$crit_warm" --measurement-time "$crit_time" --noplot 2>&1 \
  | grep -E '^[a-z_]+/|time:' || true

step "side-by-side suite: $loadgen bench $quick"
# `timeout` bounds the whole suite even if something hangs; the suite
# also bounds every phase itself.
timeout --signal=TERM --kill-after=30 "$limit" \
  "$loadgen" bench $quick --out perf/results --date "$date_tag" \
  --server-cpu "$server_cpu" --load-cpu "$load_cpu"

finished=$(date +%s)
step "report: $loadgen report"
"$loadgen" report --results perf/results --out perf --date "$date_tag" \
  --criterion-dir target/criterion \
  --invocation "scripts/bench.sh${quick:+ $quick}" \
  --wall-s "$((finished - build_done))"

if [ -n "${SOAK:-}" ]; then
  soak_out="perf/soak/overload-$date_tag"
  step "overload soak ($SOAK): $loadgen lab --soak-interval 60s → $soak_out.*"
  mkdir -p perf/soak
  # The lab stops by itself at --duration plus --grace; timeout is a backstop.
  timeout --signal=TERM --kill-after=30 900 \
    "$loadgen" lab --duration "$SOAK" --soak-interval 60s --interval 10s \
    --rate 5000 --drop 2% --engine-arg=--cache-max-bytes=64MiB \
    --engine-arg=--rl-ip-rate=100000 --engine-arg=--rl-ip-burst=10000 \
    --json "$soak_out.json" --csv "$soak_out.csv" | tee "$soak_out.txt" \
    || echo "soak: some interval filled less than 90 % of what the limits admit"
fi

printf '\n==> done in %ss (build %ss, benchmarks %ss)\n' \
  "$((finished - started))" "$((build_done - started))" "$((finished - build_done))"
