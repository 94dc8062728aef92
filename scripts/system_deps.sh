#!/usr/bin/env bash
# Install the system programs the test suite needs when they are missing, so that README's
# test command (`make install && make check`) works on a fresh Debian/Ubuntu machine.
#
#   redis-server  the tests' private Redis servers      gdb, lldb  the debugger captures
#   strace        the demo's --strace mode              lsof, ps   the capture's fd and process lists
#
# Nothing is printed when all are there. Otherwise they are installed with apt-get, as root or
# through passwordless sudo; where neither is possible, one line says what to run, exit 2.
set -euo pipefail

# command:Debian package
NEEDED=(redis-server:redis-server gdb:gdb lldb:lldb strace:strace lsof:lsof ps:procps)
missing=()
for pair in "${NEEDED[@]}"; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "system_deps: the tests need ${missing[*]} and this machine has no apt-get: install them with your package manager, then rerun make check" >&2
  exit 2
fi
if [ "$(id -u)" = 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "system_deps: the tests need ${missing[*]}: run 'sudo apt-get install -y ${missing[*]}', then rerun make check" >&2
  exit 2
fi

echo "system_deps: installing ${missing[*]} with apt-get (the tests need them)" >&2
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { timeout 600 "${sudo[@]}" apt-get update -q && \
       timeout 900 "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
         apt-get install -y -q --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
  echo "system_deps: apt-get could not install ${missing[*]}: $(grep -E '^(E|W):' "$log" | tail -n 1)" >&2
  exit 2
fi
