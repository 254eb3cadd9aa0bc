#!/usr/bin/env bash
# Callgrind instruction counts for the NACK hit path: a figure that does not
# move with the machine's load, next to the criterion timings in
# perf/REPORT.md.
#
#   scripts/callgrind.sh           print the table (markdown) to stdout
#   scripts/callgrind.sh --write   and write it to perf/callgrind.md
#
# Knobs: CALLGRIND_N (50000) operations in the shorter run; CALLGRIND_OPS
# (nack_hit,cache_hit,range_16) which operations.
#
# For each operation, bench/examples/nack_hit_count.rs (the set-up of
# the criterion bench of the same name, then exactly N operations) runs
# under `valgrind --tool=callgrind` with N and with 2N operations; the
# instructions per operation are (Ir(2N) - Ir(N)) / N, so the set-up's cost
# (filling the cache, building the service) cancels out. Each run takes a
# second or two and is killed after 60 s.
set -euo pipefail
cd "$(dirname "$0")/.."

write=""
case "${1:-}" in
  "") ;;
  --write) write=1 ;;
  *)
    echo "usage: scripts/callgrind.sh [--write]" >&2
    exit 2
    ;;
esac

if ! command -v valgrind >/dev/null 2>&1; then
  echo "callgrind: valgrind is not installed (Debian/Ubuntu: sudo apt-get install valgrind)" >&2
  exit 1
fi

n=${CALLGRIND_N:-50000}
case "$n" in
  '' | *[!0-9]* | 0)
    echo "callgrind: CALLGRIND_N must be a positive integer, not '$n'" >&2
    exit 2
    ;;
esac
IFS=, read -r -a ops <<<"${CALLGRIND_OPS:-nack_hit,cache_hit,range_16}"

# The criterion benchmark each operation repeats.
bench_of() {
  case "$1" in
    nack_hit) echo "service/nack_hit_multicast_unicast_ack" ;;
    cache_hit) echo "cache/hit" ;;
    range_16) echo "cache/range_16" ;;
    *)
      echo "callgrind: unknown operation '$1' (nack_hit, cache_hit, range_16)" >&2
      return 1
      ;;
  esac
}
for op in "${ops[@]}"; do bench_of "$op" >/dev/null; done

echo "callgrind: cargo build --release -p ricochet-bench --example nack_hit_count" >&2
# The executable's path from cargo itself, wherever CARGO_TARGET_DIR points.
exe=$(cargo build --release -p ricochet-bench --example nack_hit_count \
  --message-format=json-render-diagnostics \
  | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
if [ -z "$exe" ] || [ ! -x "$exe" ]; then
  echo "callgrind: cargo did not report the nack_hit_count executable" >&2
  exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/callgrind.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Total instructions (Ir) of one run of `op` with `count` operations.
total_ir() {
  local op=$1 count=$2 out="$work/$1.$2.out" log="$work/$1.$2.log"
  if ! timeout --kill-after=5 60 valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$exe" "$op" "$count" >"$log.stdout" 2>"$log"; then
    echo "callgrind: $op with N=$count failed or took over 60 s; valgrind said:" >&2
    tail -n 20 "$log" >&2
    return 1
  fi
  if ! grep -qx "N=$count checksum=[0-9]*" "$log.stdout"; then
    echo "callgrind: $op with N=$count printed no checksum:" >&2
    cat "$log.stdout" >&2
    return 1
  fi
  # The `summary:` line holds the totals of the events in the `events:`
  # line, Ir first (callgrind's default and only event here).
  awk '/^events:/ && $2 != "Ir" { exit 1 } /^summary:/ { print $2; found = 1 }
       END { exit !found }' "$out" || {
    echo "callgrind: no Ir summary in $out" >&2
    return 1
  }
}

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
when=$(date -u +%F)
vg=$(valgrind --version)

rows=()
for op in "${ops[@]}"; do
  echo "callgrind: $op, N=$n and N=$((2 * n))" >&2
  ir1=$(total_ir "$op" "$n")
  ir2=$(total_ir "$op" "$((2 * n))")
  per=$(awk -v a="$ir1" -v b="$ir2" -v n="$n" 'BEGIN { printf "%.1f", (b - a) / n }')
  rows+=("| \`$op\` | \`$(bench_of "$op")\` | $per | $n | $ir1 | $ir2 | $when | \`$commit\` | $vg |")
done

report() {
  echo "# Callgrind: instructions per operation on the NACK hit path"
  echo
  echo "Written by \`scripts/callgrind.sh --write\` (also run by \`scripts/bench.sh\`)."
  echo "Each operation runs the set-up of its criterion benchmark and then exactly N"
  echo "(and, separately, 2N) operations in \`bench/examples/nack_hit_count.rs\`"
  echo "under \`valgrind --tool=callgrind\`; Ir per op is (Ir(2N) − Ir(N)) / N, so the"
  echo "set-up cancels out, and unlike the timings it does not move with the machine's load."
  echo
  echo "| op | criterion bench | Ir per op | N | Ir(N) | Ir(2N) | date | commit | valgrind |"
  echo "|---|---|---:|---:|---:|---:|---|---|---|"
  printf '%s\n' "${rows[@]}"
}

report
if [ -n "$write" ]; then
  mkdir -p perf
  report >perf/callgrind.md
  echo "callgrind: wrote perf/callgrind.md" >&2
fi
