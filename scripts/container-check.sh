#!/usr/bin/env bash
# Builds the container image (deploy/container/Containerfile) and smoke-runs
# it: the endpoint starts from env vars only, in the loopback lab addressing
# on the host network, with every capability dropped; /healthz and /readyz
# answer; the process runs as uid 65532, not root; the man page and the
# completions are in the image; SIGTERM stops it with exit 0.
#
# The tool is the first that really works here: podman (`podman info`), then
# docker with a reachable daemon (`docker info`), then buildah (build only).
# As root with apt and no tool at all, podman (and runc) are installed from
# Debian (about 45 s; RICOCHET_CONTAINER_INSTALL=0 turns that off).
#
# When the base images cannot be pulled (no registry access), the full
# build cannot run; the Containerfile's runtime stage is then built alone,
# on a base made from the host's glibc, copying from an image of the tree
# deploy/container/install-tree.sh lays out from the host's cargo build
# (target/debug, or $CARGO_TARGET_DIR/debug, unless RICOCHET_CONTAINER_BIN_DIR says otherwise), and
# smoke-run the same way.
#
# RICOCHET_CONTAINER_CHECK=0 skips it all.
#
# Whatever cannot run prints one line `SKIPPED: container: <reason>` and
# the script exits 0 (scripts/test.sh lists the line in its summary); a
# build or smoke-run failure exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."

containerfile=deploy/container/Containerfile
rust_image=$(sed -n 's/^ARG RUST_IMAGE=//p' "$containerfile")
runtime_image=$(sed -n 's/^ARG RUNTIME_IMAGE=//p' "$containerfile")
tag=localhost/ricochet:check
skipped=""

say() { printf -- '--- container: %s\n' "$*"; }
skip_out() { echo "SKIPPED: container: $*"; exit 0; }
# The first line of a tool's error output, for a SKIPPED line.
first_err() { grep -v '^\s*$' | head -n 1 | cut -c1-200; }

[ "${RICOCHET_CONTAINER_CHECK:-1}" != 0 ] || skip_out "RICOCHET_CONTAINER_CHECK=0"

# ---- a tool that works
install_podman() {
  [ "${RICOCHET_CONTAINER_INSTALL:-1}" != 0 ] || return 1
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || return 1
  say "installing podman (Debian package)"
  # The package enables podman.socket; a policy-rc.d refusing every start
  # (unless one is in place) keeps the install from starting anything.
  local policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" || policy=""
  fi
  # runc too: crun (podman's default) cannot run on hybrid cgroup hosts.
  local cmd="apt-get install -y --no-install-recommends podman runc"
  $cmd >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 && $cmd >/dev/null 2>&1; } || true
  [ -z "$policy" ] || rm -f "$policy"
  command -v podman >/dev/null 2>&1
}

reasons=()
engine=""
probe() {
  local name=$1 out
  if ! command -v "$name" >/dev/null 2>&1; then
    reasons+=("$name: not installed")
    return 1
  fi
  case $name in
    podman | docker) out=$(timeout 60 "$name" info 2>&1 >/dev/null) ;;
    buildah) out=$(timeout 60 buildah info 2>&1 >/dev/null) ;;
  esac && return 0
  reasons+=("$name: \`$name info\` fails: $(first_err <<<"$out")")
  return 1
}
command -v podman >/dev/null 2>&1 || command -v docker >/dev/null 2>&1 \
  || command -v buildah >/dev/null 2>&1 || install_podman || true
for candidate in podman docker buildah; do
  if probe "$candidate"; then engine=$candidate; break; fi
done
if [ -z "$engine" ]; then
  joined=$(IFS=';'; echo "${reasons[*]}")
  skip_out "no working container tool (${joined//;/; })"
fi
say "tool: $engine ($("$engine" --version 2>/dev/null | head -n 1))"

work=$(mktemp -d)
container=""
helper_images=()
# Images there before this run; every other one (the image, helper images,
# intermediate stages) is removed at the end. The build's cache mounts stay.
list_images() {
  case $engine in
    buildah) buildah images -q 2>/dev/null | sort -u ;;
    *) "$engine" images -aq 2>/dev/null | sort -u ;;
  esac
}
images_before=$(list_images)
cleanup() {
  [ -z "$container" ] || "$engine" rm -f "$container" >/dev/null 2>&1 || true
  for image in "${helper_images[@]}" "$tag"; do "$engine" rmi -f "$image" >/dev/null 2>&1 || true; done
  for image in $(comm -13 <(echo "$images_before") <(list_images)); do
    "$engine" rmi -f "$image" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# How containers can start here: sets run_opts and probe_out (the output of
# IMAGE ARGS... run with them), or returns 1 with run_errors. The engine's
# default rlimits may be above what this sandbox lets it set (crun/runc:
# "setrlimit RLIMIT_NOFILE/NPROC: Operation not permitted" without
# CAP_SYS_RESOURCE): then this shell's open-files limit and a modest process
# limit. crun refuses hybrid cgroup v1/v2 hosts ("cgroups in hybrid mode not
# supported"): then runc.
run_opts=()
run_errors=()
probe_out=""
find_run_opts() {
  local runtime limits l out opts
  for runtime in "" runc; do
    if [ -n "$runtime" ] && { [ "$engine" != podman ] || ! command -v "$runtime" >/dev/null 2>&1; }; then
      continue
    fi
    for limits in "" "nofile=$(ulimit -Sn):$(ulimit -Hn) nproc=4096:4096"; do
      opts=(${runtime:+--runtime "$runtime"})
      for l in $limits; do opts+=(--ulimit "$l"); done
      if out=$("$engine" run --rm "${opts[@]}" "$@" 2>&1); then
        run_opts=("${opts[@]}")
        probe_out=$out
        [ "${#run_opts[@]}" = 0 ] || say "running containers with: ${run_opts[*]}"
        return 0
      fi
      run_errors+=("${opts[*]:-defaults}: $(first_err <<<"$out")")
    done
  done
  return 1
}
cannot_run() {
  local joined
  joined=$(IFS='|'; echo "${run_errors[*]}")
  skip_out "${skipped:+$skipped; }$1: $engine cannot start a container here (${joined//|/; })"
}

# ---- build
image_exists() {
  case $engine in
    buildah) buildah inspect --type image "$1" >/dev/null 2>&1 ;;
    *) "$engine" image inspect "$1" >/dev/null 2>&1 ;;
  esac
}
pullable() {
  image_exists "$1" && return 0
  local out
  out=$(timeout 300 "$engine" pull "$1" 2>&1 >/dev/null) && return 0
  # The end of the error says why (": no such host", ": unauthorized").
  local why
  why=$(grep -i 'error' <<<"$out" | head -n 1 | sed 's/.*dial tcp: //')
  [ "${#why}" -le 140 ] || why="...${why: -140}"
  pull_error="cannot pull $1${why:+ ($why)}"
  return 1
}
pull_error=""
if pullable "$rust_image" && pullable "$runtime_image"; then
  say "building $containerfile (full build: cargo build --release in $rust_image)"
  build_opts=()
  if [ "$engine" = podman ]; then
    # The build's RUN step is a container too.
    find_run_opts "$rust_image" true || cannot_run "full image build"
    build_opts=("${run_opts[@]}")
  fi
  started=$(date +%s)
  "$engine" build "${build_opts[@]}" -f "$containerfile" -t "$tag" .
  say "built $tag in $(( $(date +%s) - started ))s"
else
  # No registry: package the host's build on a base made of the host's
  # glibc, with the runtime stage of the same Containerfile.
  skipped="full image build: $pull_error; built the runtime stage on the host's binary and a host-glibc base instead"
  bin_dir=${RICOCHET_CONTAINER_BIN_DIR:-${CARGO_TARGET_DIR:-target}/debug}
  if [ ! -x "$bin_dir/ricochet" ]; then
    say "cargo build -p ricochet (for $bin_dir/ricochet)"
    cargo build --locked -p ricochet --bin ricochet
  fi
  say "packaging $bin_dir/ricochet (no base image: $pull_error)"
  sh deploy/container/install-tree.sh "$bin_dir" "$work/prebuilt/out" >/dev/null
  # The distroless/cc equivalent: the loader and the libraries the binary
  # links (glibc, libgcc_s), and passwd/group naming the nonroot user.
  base=$work/base
  mkdir -p "$base/etc" "$base/tmp"
  chmod 1777 "$base/tmp"
  for lib in $(ldd "$bin_dir/ricochet" | grep -o '/[^ ]*'); do
    mkdir -p "$base$(dirname "$lib")"
    cp -L "$lib" "$base$lib"
  done
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$base/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$base/etc/group"
  base_image=localhost/ricochet-check-base:$$
  prebuilt_image=localhost/ricochet-check-prebuilt:$$
  helper_images+=("$base_image" "$prebuilt_image")
  case $engine in
    buildah)
      for pair in "$base:$base_image" "$work/prebuilt:$prebuilt_image"; do
        c=$(buildah from scratch)
        buildah copy "$c" "${pair%%:*}" / >/dev/null
        buildah commit --rm "$c" "${pair#*:}" >/dev/null
      done
      ;;
    *)
      tar -C "$base" -c . | "$engine" import - "$base_image" >/dev/null
      tar -C "$work/prebuilt" -c . | "$engine" import - "$prebuilt_image" >/dev/null
      ;;
  esac
  # The runtime stage as written, its `--from=build` pointed at that
  # image; an empty context, as the runtime stage copies nothing from it.
  mkdir "$work/context"
  sed "s#--from=build #--from=$prebuilt_image #" "$containerfile" >"$work/Containerfile"
  if ! grep -q -- "--from=$prebuilt_image " "$work/Containerfile" || grep -q -- '--from=build ' "$work/Containerfile"; then
    echo "$containerfile: the runtime stage no longer copies --from=build" >&2
    exit 1
  fi
  say "building the runtime stage of $containerfile from $prebuilt_image on $base_image"
  "$engine" build -f "$work/Containerfile" --target runtime \
    --build-arg RUNTIME_IMAGE="$base_image" -t "$tag" "$work/context"
fi

if [ "$engine" = buildah ]; then
  skip_out "${skipped:+$skipped; }smoke run: buildah builds but cannot run the daemon (install podman)"
fi

# ---- what the image declares
find_run_opts "$tag" --version || cannot_run "smoke run"
version=$probe_out
user=$("$engine" image inspect --format '{{.Config.User}}' "$tag")
[ "$user" = 65532:65532 ] || { echo "image user is '$user', want 65532:65532" >&2; exit 1; }
entry=$("$engine" image inspect --format '{{json .Config.Entrypoint}}' "$tag")
[ "$entry" = '["/usr/local/bin/ricochet"]' ] || { echo "entrypoint is $entry" >&2; exit 1; }
env_count=$("$engine" image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$tag" | grep -cv '^PATH=\|^$' || true)
[ "$env_count" = 0 ] || { echo "the image sets ENV defaults; configuration is env-only, set on the container" >&2; exit 1; }
say "image: user $user, entrypoint $entry, no ENV defaults; $version"

# ---- files installed
container=$("$engine" create "$tag")
for f in /usr/local/share/man/man1/ricochet.1 /usr/share/bash-completion/completions/ricochet \
  /usr/local/share/zsh/site-functions/_ricochet /usr/share/fish/vendor_completions.d/ricochet.fish \
  /var/lib/ricochet; do
  "$engine" cp "$container:$f" - | tar -t >/dev/null \
    || { echo "$f is missing from the image" >&2; exit 1; }
done
man=$("$engine" cp "$container:/usr/local/share/man/man1/ricochet.1" - | tar -xO)
grep -q '^\.TH ricochet' <<<"$man" \
  || { echo "/usr/local/share/man/man1/ricochet.1 is not the ricochet man page" >&2; exit 1; }
"$engine" rm -f "$container" >/dev/null
container=""
say "man page and bash/zsh/fish completions installed"

# ---- smoke run: env-only configuration, host network, no capabilities
free_port() {
  local p
  for _ in $(seq 1 50); do
    p=$(( 20000 + RANDOM % 20000 ))
    ss -Htuln "sport = :$p" 2>/dev/null | grep -q . || { echo "$p"; return; }
  done
  echo "no free port found" >&2
  exit 1
}
admin_port=$(free_port)
listen_port=$(free_port)
nack_port=$(free_port)
container=ricochet-check-$$
"$engine" run -d --name "$container" "${run_opts[@]}" --network host --cap-drop ALL \
  --security-opt no-new-privileges \
  -e RICOCHET_IPV4_LAB=true -e METRICS_ADDR="127.0.0.1:$admin_port" \
  -e LISTEN_PORT="$listen_port" -e EGRESS_PORT="$listen_port" \
  -e NACK_PORT="$nack_port" -e RICOCHET_BEACON_PORT="$nack_port" \
  -e NACK_WORKERS=1 -e DRAIN_TIMEOUT=0s "$tag" >/dev/null
healthy=""
for _ in $(seq 1 60); do
  if curl -fsS -o /dev/null "http://127.0.0.1:$admin_port/healthz" 2>/dev/null; then healthy=1; break; fi
  [ "$("$engine" inspect --format '{{.State.Running}}' "$container")" = true ] || break
  sleep 0.5
done
if [ -z "$healthy" ]; then
  echo "the container did not answer /healthz on 127.0.0.1:$admin_port; its log:" >&2
  "$engine" logs "$container" >&2 || true
  exit 1
fi
ready=""
for _ in $(seq 1 40); do
  if curl -fsS -o /dev/null "http://127.0.0.1:$admin_port/readyz" 2>/dev/null; then ready=1; break; fi
  sleep 0.5
done
[ -n "$ready" ] || { echo "/readyz never answered 200" >&2; "$engine" logs "$container" >&2; exit 1; }
pid=$("$engine" inspect --format '{{.State.Pid}}' "$container")
uids=$(awk '/^Uid:/ {print $2, $3, $4, $5}' "/proc/$pid/status")
gids=$(awk '/^Gid:/ {print $2, $3, $4, $5}' "/proc/$pid/status")
caps=$(awk '/^CapEff:/ {print $2}' "/proc/$pid/status")
if [ "$uids" != "65532 65532 65532 65532" ] || [ "$gids" != "65532 65532 65532 65532" ]; then
  echo "the endpoint runs as uid $uids gid $gids, want 65532" >&2
  exit 1
fi
[ "$caps" = 0000000000000000 ] || { echo "the endpoint has capabilities $caps, want none" >&2; exit 1; }
metrics=$(curl -fsS "http://127.0.0.1:$admin_port/metrics")
grep -q '^ricochet_build_info' <<<"$metrics" \
  || { echo "/metrics has no ricochet_build_info" >&2; exit 1; }
# io_uring or epoll, and why: engines' default seccomp profiles may refuse
# io_uring_setup, and `--backend auto` then falls back to epoll.
backend=$("$engine" logs "$container" 2>&1 | grep -o -m1 'backend auto: .*' | cut -c1-160 || true)
say "smoke run: /healthz and /readyz 200 on 127.0.0.1:$admin_port, uid/gid 65532, no capabilities${backend:+, $backend}"
"$engine" stop -t 20 "$container" >/dev/null
code=$("$engine" inspect --format '{{.State.ExitCode}}' "$container")
[ "$code" = 0 ] || { echo "exit code $code after SIGTERM, want 0; log:" >&2; "$engine" logs "$container" >&2; exit 1; }
say "SIGTERM: exit 0"

if [ -n "$skipped" ]; then
  echo "SKIPPED: container: $skipped (that smoke run passed)"
fi
