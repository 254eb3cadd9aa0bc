#!/usr/bin/env bash
# Side-by-side benchmarks (issue 14): the fair reflector (frame + ACK, and
# its GSO variant), the one-datagram echo (a kernel figure only), and
# ricochet --backend epoll / uring on the same CPU pinning (servers on CPU
# 0, load on CPU 1); every measured figure 3 times, interleaved (A B A B A B),
# reported as median and min–max with the machine's load before and after.
#
#   scripts/bench.sh             full run: criterion, every workload (a, b,
#                                c, d, memory, then f: the 1- vs 2-worker
#                                scaling storm, about 2 min), then
#                                perf/REPORT.md + perf/charts/*.svg. Stops by
#                                itself: the suite starts no phase after 25 min
#                                and is killed at 32 min.
#   scripts/bench.sh --quick     (or BENCH_QUICK=1) a before/after check in
#   BENCH_QUICK=1 scripts/bench.sh   about 2-3 minutes once built: workloads
#                                a, b, d and memory against io_uring, 1.5 s
#                                phases, 3 interleaved runs, one fixed rate
#                                (30k NACK/s); no criterion. Writes to
#                                target/bench-quick/ (never perf/) and prints
#                                the targets table.
#
# Knobs: SERVER_CPU (0), LOAD_CPU (1), BENCH_RUNS (3), BENCH_STORM_RUNS
# (closed-loop storms in a and b; BENCH_RUNS + 2), BENCH_RATES (e.g.
# 10k,30k,100k), BENCH_BACKENDS (e.g. epoll,uring), BENCH_WORKLOADS (e.g.
# a,b,c,d,memory,f; f = scaling, 1 vs 2 engine workers, not in --quick),
# BENCH_OUT (where results go).
#
# SOAK=300s (any duration up to 10m, full mode only) adds the issue-18
# overload soak after the report: `lab --soak-interval 60s` at 5000
# frames/s, 2 % drop, a 64 MiB cache and the per-IP tier raised, so the
# per-flow chain tier is the bottleneck. Writes
# perf/soak/overload-<date>.{json,csv,txt}; see "Soak: overload" in
# perf/REPORT.md.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=""
if [ "${1:-}" = "--quick" ] || { [ -n "${BENCH_QUICK:-}" ] && [ "$BENCH_QUICK" != "0" ]; }; then
  quick="--quick"
fi
if [ -n "${1:-}" ] && [ "$1" != "--quick" ]; then
  echo "usage: scripts/bench.sh [--quick]   (or BENCH_QUICK=1 scripts/bench.sh)" >&2
  exit 2
fi
if [ -n "$quick" ]; then
  out=${BENCH_OUT:-target/bench-quick}
  budget=150s
  limit=240
else
  out=${BENCH_OUT:-perf}
  budget=25m
  limit=1920
fi
server_cpu=${SERVER_CPU:-0}
load_cpu=${LOAD_CPU:-1}
extra=(--runs "${BENCH_RUNS:-3}")
[ -n "${BENCH_STORM_RUNS:-}" ] && extra+=(--storm-runs "$BENCH_STORM_RUNS")
[ -n "${BENCH_RATES:-}" ] && extra+=(--rates "$BENCH_RATES")
[ -n "${BENCH_BACKENDS:-}" ] && extra+=(--backends "$BENCH_BACKENDS")
[ -n "${BENCH_WORKLOADS:-}" ] && extra+=(--workloads "$BENCH_WORKLOADS")
started=$(date +%s)
date_tag=$(date -u +%F)
step() { printf '\n==> %s\n' "$*"; }
load() { printf 'load average %s (nproc %s)\n' "$(cut -d' ' -f1-3 /proc/loadavg)" "$(nproc)"; }

step "release build: cargo build --release -p ricochet -p ricochet-bench --bins"
cargo build --release -p ricochet -p ricochet-bench --bins
loadgen=target/release/ricochet-loadgen
build_done=$(date +%s)
load

crit=()
if [ -z "$quick" ]; then
  step "criterion micro-benchmarks (measurement 3s each)"
  rm -rf target/criterion
  # Pinned to the load CPU so they do not share a core with anything we start.
  taskset -c "$load_cpu" cargo bench --profile release -p ricochet-bench --bench wire --bench engine -- \
    --warm-up-time 1 --measurement-time 3 --noplot 2>&1 \
    | grep -E '^[a-z_]+/|time:' || true
  crit=(--criterion-dir target/criterion)
  # Instruction counts of the same hot paths (load-independent): perf/callgrind.md.
  if command -v valgrind >/dev/null 2>&1; then
    step "callgrind instruction counts: scripts/callgrind.sh --write → perf/callgrind.md"
    scripts/callgrind.sh --write || echo "callgrind: failed (status $?); perf/callgrind.md not updated"
  else
    step "callgrind instruction counts: skipped, valgrind is not installed (apt-get install valgrind)"
  fi
fi

step "side-by-side suite: $loadgen bench $quick ${extra[*]} (budget $budget, killed at ${limit}s)"
mkdir -p "$out/results"
# The suite starts no new phase after --budget; `timeout` is the backstop
# if something hangs (every phase also bounds itself).
timeout --signal=TERM --kill-after=30 "$limit" \
  "$loadgen" bench $quick --out "$out/results" --date "$date_tag" \
  --server-cpu "$server_cpu" --load-cpu "$load_cpu" --budget "$budget" "${extra[@]}" \
  || echo "bench: the suite stopped early (status $?); reporting what it wrote"
load

finished=$(date +%s)
step "report: $loadgen report → $out/REPORT.md"
"$loadgen" report --results "$out/results" --out "$out" --date "$date_tag" \
  "${crit[@]}" \
  --invocation "scripts/bench.sh${quick:+ $quick}" \
  --note "load average $(cut -d' ' -f1-3 /proc/loadavg) at the end, nproc $(nproc)" \
  --wall-s "$((finished - build_done))"

if [ -n "$quick" ]; then
  # The targets table, for a before/after comparison at a glance.
  sed -n '/^## Targets/,/targets met/p' "$out/REPORT.md"
fi

if [ -z "$quick" ] && [ -n "${SOAK:-}" ]; then
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
