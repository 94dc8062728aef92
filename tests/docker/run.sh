#!/usr/bin/env bash
# Prove the Docker path on this machine: run the real Dockerfile, compose.yml and Makefile
# (make build, test-all, demo-gdb, demo-crash, demo-fixed, demo-strace, down) and check what a
# user would see.
#
# No image registry is needed: the official base images are replaced by local stand-ins,
# passed in the way a user would pass their own (BASE_IMAGE, REDIS_IMAGE); the files users
# run are not edited:
#   forksafety-standin/python:<suite>  Debian minbase (debootstrap) with python3, venv, pip,
#                                       the host's extra CA certificates, PIP_BREAK_SYSTEM_PACKAGES=1
#   forksafety-standin/redis:<suite>   the same plus Debian's redis-server
# The Debian mirror is read from this machine's apt sources at run time.
#
# Needs root and Debian packages docker.io, iptables, debootstrap (installed when missing),
# and Docker Compose v2 (fetched from the next Debian release when missing) or v1.
# Starts its own dockerd when no engine answers, and stops it, and everything it started,
# on every path. Exit 0 only when every check passed; 1 on any failure.
#
# Environment: FORKSAFETY_DOCKER_DATA_ROOT  dockerd data root (default
#              /var/lib/forksafety-docker-test; kept between runs as the layer cache)
#              FORKSAFETY_DOCKER_FRESH=1     drop the cached stand-in rootfs and data root first
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=$ROOT/tests/docker/.build
SUITE=bookworm
STANDIN_PACKAGES=python3,python3-venv,python3-pip,ca-certificates
PROJECT=forksafety-docker-test
DATA_ROOT=${FORKSAFETY_DOCKER_DATA_ROOT:-/var/lib/forksafety-docker-test}
T0=$(date +%s)

log() { printf '[docker-test %4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
die() { printf '[docker-test] FAIL: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: debootstrap and dockerd need it"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fs-docker-stage.XXXXXX")
DOCKERD_PID=
CHILD=
PROJECT_ENV=()

# run LIMIT CMD...: CMD under timeout(1), in the background while we `wait` for it: bash runs
# the INT/TERM traps at once during `wait` (after a foreground command only when it ends),
# and cleanup stops the child (timeout passes the signal on to its whole process group).
run() {
  local limit=$1 rc=0
  shift
  timeout "$limit" "$@" &
  CHILD=$!
  wait "$CHILD" || rc=$?
  CHILD=
  return "$rc"
}

# ---------------------------------------------------------------- cleanup (every path)
cleanup() {
  local rc=$?
  trap - EXIT INT TERM ERR
  trap '' PIPE
  set +e
  if [ -n "$CHILD" ]; then
    kill -TERM "$CHILD" 2>/dev/null
    for _ in $(seq 20); do kill -0 "$CHILD" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$CHILD" 2>/dev/null
  fi
  if [ ${#PROJECT_ENV[@]} -gt 0 ] && [ -n "${COMPOSE:-}" ]; then
    (cd "$ROOT" && env "${PROJECT_ENV[@]}" timeout 120 $COMPOSE down --remove-orphans >/dev/null 2>&1)
    ids=$(timeout 30 docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null)
    [ -n "$ids" ] && timeout 60 docker rm -f $ids >/dev/null 2>&1
  fi
  if [ -n "$DOCKERD_PID" ] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
    # the data root is the cache of the next run: drop dangling images, cap the build cache
    timeout 60 docker image prune -f >/dev/null 2>&1
    timeout 60 docker builder prune -f --keep-storage 4GB >/dev/null 2>&1
    kill -TERM "$DOCKERD_PID"
    for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$DOCKERD_PID" 2>/dev/null; then
      echo "[docker-test] dockerd did not stop in 30 s: killing it" >&2
      kill -KILL "$DOCKERD_PID"
    fi
    # containerd (started by dockerd) and its shims, if any outlived it
    for pid in $(pgrep -f -- "$WORK/exec" 2>/dev/null); do kill -TERM "$pid" 2>/dev/null; done
    sleep 0.5
    for pid in $(pgrep -f -- "$WORK/exec" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
    # dockerd's own mounts of its data root, when it could not remove them itself
    findmnt -rn -o TARGET 2>/dev/null | grep -E "^$DATA_ROOT(/|$)" | sort -r | xargs -r -n1 umount -l 2>/dev/null
    log "dockerd stopped"
  fi
  # debootstrap may leave /proc etc. mounted in the rootfs: unmount before deleting
  findmnt -rn -o TARGET 2>/dev/null | grep "^$WORK/" | sort -r | xargs -r -n1 umount -l 2>/dev/null
  rm -rf --one-file-system "$WORK"
  if [ "$rc" = 0 ]; then log "PASS (wall time $(( $(date +%s) - T0 )) s)"
  else echo "[docker-test] FAILED (exit $rc) after $(( $(date +%s) - T0 )) s" >&2; fi
  exit "$rc"
}
trap cleanup EXIT
on_error() { echo "[docker-test] FAIL: line ${BASH_LINENO[0]}: '$BASH_COMMAND' exited $1" >&2; }
trap 'on_error $?' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- tools
debian_mirror() {
  # First archive URI of this machine's apt sources (deb822 or one-line format), not -security.
  { cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {for (i = 2; i <= NF; i++) print $i}'
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; break}}'
  } | grep -v -- '-security' | head -n1 || true
}

ensure_packages() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  [ ${#missing[@]} -eq 0 ] && return
  log "installing ${missing[*]}"
  apt_install "${missing[@]}" || die "apt-get install ${missing[*]} failed"
}

apt_install() {
  # apt-get install, after an apt-get update when the package lists are stale or missing.
  export DEBIAN_FRONTEND=noninteractive
  run 600 apt-get install -y --no-install-recommends "$@" >"$WORK/apt.log" 2>&1 && return
  run 600 apt-get update >>"$WORK/apt.log" 2>&1 &&
    run 600 apt-get install -y --no-install-recommends "$@" >>"$WORK/apt.log" 2>&1 && return
  tail -20 "$WORK/apt.log" >&2
  return 1
}

install_compose_v2() {
  # Debian 12 has no Compose v2; Debian 13's docker-compose package is a static binary that
  # installs on 12. Fetched through apt (signature-checked) with a private, temporary source list.
  local mirror=$1 d="$WORK/apt-trixie"
  mkdir -p "$d/lists/partial" "$d/cache/archives/partial"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" >"$d/sources.list"
  local opts=(-o Dir::Etc::sourcelist="$d/sources.list" -o Dir::Etc::sourceparts=/nonexistent
              -o Dir::State::lists="$d/lists" -o Dir::Cache="$d/cache" -o APT::Sandbox::User=root)
  run 300 apt-get "${opts[@]}" update >"$d/log" 2>&1 &&
    run 300 env -C "$d" apt-get "${opts[@]}" download docker-compose >>"$d/log" 2>&1 &&
    run 120 dpkg -i "$d"/docker-compose_*.deb >>"$d/log" 2>&1 ||
    { tail -5 "$d/log" >&2; return 1; }
}

ensure_compose() {
  if docker compose version >/dev/null 2>&1; then COMPOSE="docker compose"; return; fi
  log "Docker Compose v2 missing: installing Debian 13's docker-compose package"
  if install_compose_v2 "$MIRROR" && docker compose version >/dev/null 2>&1; then
    COMPOSE="docker compose"; return
  fi
  command -v docker-compose >/dev/null ||
    { log "falling back to Debian 12's docker-compose (v1)";
      apt_install docker-compose || true; }
  command -v docker-compose >/dev/null || die "no Docker Compose (v2 plugin or v1 docker-compose)"
  COMPOSE=docker-compose
}

# ---------------------------------------------------------------- engine
start_engine() {
  if timeout 20 docker info >/dev/null 2>&1; then
    log "using the running Docker engine ($(docker info -f '{{.ServerVersion}}'))"
    return
  fi
  mkdir -p "$DATA_ROOT"
  local sock="$WORK/docker.sock" extra=()
  for attempt in default vfs; do
    [ "$attempt" = vfs ] && extra=(--storage-driver vfs)
    log "starting dockerd (data root $DATA_ROOT${extra:+, ${extra[*]}})"
    dockerd --data-root "$DATA_ROOT" --exec-root "$WORK/exec" --pidfile "$WORK/dockerd.pid" \
      -H "unix://$sock" "${extra[@]}" >"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    export DOCKER_HOST="unix://$sock"
    for _ in $(seq 60); do
      kill -0 "$DOCKERD_PID" 2>/dev/null || break
      timeout 5 docker info >/dev/null 2>&1 && { log "dockerd $(docker info -f '{{.ServerVersion}} ({{.Driver}})') is up"; return; }
      sleep 0.5
    done
    echo "[docker-test] dockerd ($attempt) did not come up; its log ends with:" >&2
    tail -15 "$WORK/dockerd.log" >&2
    kill -TERM "$DOCKERD_PID" 2>/dev/null || true; wait "$DOCKERD_PID" 2>/dev/null || true; DOCKERD_PID=
  done
  die "the Docker engine could not start (see the dockerd log above)"
}

# ---------------------------------------------------------------- stand-in images
build_standins() {
  local key tarball image=forksafety-standin/python:$SUITE
  key=$( { echo "$SUITE $STANDIN_PACKAGES v1"; cat /usr/local/share/ca-certificates/*.crt 2>/dev/null; } \
         | sha256sum | cut -c1-12)
  tarball="$CACHE/standin-python-$SUITE-$key.tar"
  mkdir -p "$CACHE"
  if [ ! -s "$tarball" ]; then
    log "debootstrap $SUITE minbase ($STANDIN_PACKAGES) from the machine's mirror"
    local rootfs="$WORK/rootfs"
    run 900 debootstrap --variant=minbase --include="$STANDIN_PACKAGES" "$SUITE" "$rootfs" "$MIRROR" \
      >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
    # The host's extra CA certificates (a TLS-inspecting proxy, a private mirror) must be
    # trusted in the build, or pip and apt cannot reach the registry and the mirror.
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/" 2>/dev/null || true
    chroot "$rootfs" update-ca-certificates >>"$WORK/debootstrap.log" 2>&1
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/*
    rm -f "$CACHE"/standin-python-"$SUITE"-*.tar
    tar -C "$rootfs" --numeric-owner -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
    rm -rf --one-file-system "$rootfs"
  else
    log "stand-in rootfs cached: ${tarball#"$ROOT"/}"
  fi
  if [ "$(docker image inspect -f '{{index .Config.Labels "org.forksafety.standin"}}' "$image" 2>/dev/null)" != "$key" ]; then
    log "docker import $image"
    run 300 docker import \
      --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
      --change "ENV PIP_BREAK_SYSTEM_PACKAGES=1" \
      --change "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt" \
      --change "ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt" \
      --change "ENV LANG=C.UTF-8" \
      --change "LABEL org.forksafety.standin=$key" \
      --change 'CMD ["python3"]' \
      "$tarball" "$image" >/dev/null
  fi
  BASE_IMAGE=$image
  REDIS_IMAGE=forksafety-standin/redis:$SUITE
  mkdir -p "$WORK/redis"
  cat >"$WORK/redis/Dockerfile" <<EOF
FROM $BASE_IMAGE
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \\
 && rm -rf /var/lib/apt/lists/*
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]
EOF
  log "docker build $REDIS_IMAGE"
  run 600 env DOCKER_BUILDKIT=0 docker build -q -t "$REDIS_IMAGE" "$WORK/redis" >"$WORK/redis.log" 2>&1 ||
    { tail -20 "$WORK/redis.log" >&2; die "building the stand-in Redis image failed"; }
}

# ---------------------------------------------------------------- user-facing scenarios
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# run_make LIMIT TARGET: run `make TARGET` as a user would, output shown and kept; sets MAKE_RC.
run_make() {
  local limit=$1 target=$2 out tee_pid
  log "make $target"
  exec {out}> >(tee "$WORK/make-$target.log")
  tee_pid=$!
  MAKE_RC=0
  run "$limit" env "${PROJECT_ENV[@]}" make -C "$ROOT" --no-print-directory "$target" >&"$out" 2>&1 ||
    MAKE_RC=$?
  exec {out}>&-
  wait "$tee_pid" || true
  [ "$MAKE_RC" != 124 ] || die "make $target did not finish in $limit s"

}

main() {
  if [ "${FORKSAFETY_DOCKER_FRESH:-}" = 1 ]; then
    findmnt -rn -o TARGET | grep -E "^$DATA_ROOT(/|$)" | sort -r | xargs -r -n1 umount -l || true
    rm -rf --one-file-system "$CACHE" "$DATA_ROOT"
  fi
  MIRROR=$(debian_mirror)
  [ -n "$MIRROR" ] || die "no Debian mirror in /etc/apt/sources.list{,.d}"
  ensure_packages
  start_engine
  ensure_compose
  log "compose: $($COMPOSE version | head -n1)"
  build_standins

  PROJECT_ENV=(COMPOSE="$COMPOSE" COMPOSE_PROJECT_NAME="$PROJECT" APP_IMAGE="$PROJECT:local"
               BASE_IMAGE="$BASE_IMAGE" REDIS_IMAGE="$REDIS_IMAGE" REDIS_PORT="$(free_port)")
  [ -n "${DOCKER_HOST:-}" ] && PROJECT_ENV+=(DOCKER_HOST="$DOCKER_HOST")
  touch "$WORK/started"

  run_make 1200 build
  [ "$MAKE_RC" = 0 ] || die "make build exited $MAKE_RC"

  run_make 600 test-all
  [ "$MAKE_RC" = 0 ] || die "make test-all exited $MAKE_RC (expected 0: every outcome as expected)"
  local results="$ROOT/crash_dumps/results.json"
  [ "$results" -nt "$WORK/started" ] || die "make test-all wrote no crash_dumps/results.json on the host"
  python3 - "$results" <<'EOF' || die "the pool matrix is not what a user should see"
import json, sys
record = json.load(open(sys.argv[1]))
got = {(r["pool"], r["variant"]): r["outcome"] for r in record["results"]}
want = {("prefork", "module-level"): "HANG", ("threads", "module-level"): "PASS",
        ("solo", "module-level"): "PASS", ("gevent", "module-level"): "PASS",
        ("eventlet", "module-level"): "PASS"}
bad = {k: got.get(k) for k in want if got.get(k) != want[k]}
assert not bad, f"unexpected outcomes: {bad}"
assert record["all_matched"], "all_matched is false"
assert "redis:6379" in json.dumps(record["broker"]), f"not on the compose Redis: {record['broker']}"
print(f"[docker-test] matrix checked: prefork HANG, threads/solo/gevent/eventlet PASS, "
      f"{len(got)} scenarios all matched, broker {record['broker']}")
EOF

  run_make 600 demo-gdb
  [ "$MAKE_RC" = 0 ] || die "make demo-gdb exited $MAKE_RC"
  local gdb_log
  gdb_log=$(find "$ROOT/crash_dumps" -maxdepth 1 -name 'gdb_*.log' -newer "$WORK/started" -print | sort | tail -n1)
  [ -n "$gdb_log" ] || die "make demo-gdb left no crash_dumps/gdb_*.log on the host"
  # gdb's backtrace of the child, and its innermost frame decoded from the registers as
  # the futex wait it is stuck in (the frame is libc's syscall(): Rust calls futex directly)
  grep -Eq '^#0 ' "$gdb_log" || die "${gdb_log#"$ROOT"/} has no gdb backtrace"
  grep -Eq '^innermost frame .*#0 ' "$gdb_log" || die "${gdb_log#"$ROOT"/} names no innermost frame"
  grep -Eq '= futex: futex\(0x[0-9a-f]+, FUTEX_WAIT' "$gdb_log" ||
    die "${gdb_log#"$ROOT"/} shows no futex wait in the child's innermost frame"
  echo "[docker-test] gdb log checked: ${gdb_log#"$ROOT"/}"
  grep -E '^innermost frame |that frame is|= futex: futex\(' "$gdb_log" | head -n3 | sed 's/^/    /'

  # The other debugging services: each exits 0 when its demo showed what it should.
  for target in demo-crash demo-fixed demo-strace; do
    run_make 300 "$target"
    [ "$MAKE_RC" = 0 ] || die "make $target exited $MAKE_RC"
  done
  find "$ROOT/crash_dumps" -maxdepth 1 -name 'strace_*.trace' -newer "$WORK/started" | grep -q . ||
    die "make demo-strace left no crash_dumps/strace_*.trace on the host"

  run_make 120 down
  [ "$MAKE_RC" = 0 ] || die "make down exited $MAKE_RC"
  local left
  left=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")
  [ -z "$left" ] || die "containers left after make down: $left"
  log "make down left no containers"

  echo "[docker-test] summary: the pool matrix as make test-all printed it in the container:"
  sed -n '/Celery pool matrix/,/matched the expected outcome/p' "$WORK/make-test-all.log"
}

main "$@"
