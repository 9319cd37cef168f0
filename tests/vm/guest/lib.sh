# Helpers of the VM tier's guest tests (sourced; bash, set -euo pipefail). The payload disk,
# laid out like the repository, is mounted read-only at /payload.
# shellcheck shell=bash
set -euo pipefail -o errtrace
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LANG=C.UTF-8 SYSTEMD_PAGER='' SYSTEMD_COLORS=0

payload=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
test_name=$(basename "$0" .sh)
t_start=$(date +%s.%N)

# ---------------------------------------------------------------------------------------------
# output and failure
# ---------------------------------------------------------------------------------------------
_elapsed() { awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%6.1f", b - a }'; }
log() { printf '[%ss] %s\n' "$(_elapsed)" "$*"; }
section() { printf '\n[%ss] == %s\n' "$(_elapsed)" "$*"; }
# (each failure is kept in $_failures too, $$ being the test's own pid in every subshell, to
# be repeated after the diagnostics, where a summary that keeps the end of the output sees it)
_failures=/run/berth-vm-failures.$$
rm -f "$_failures"
fail() { printf '[%ss] FAIL: %s\n' "$(_elapsed)" "$*" | tee -a "$_failures" >&2; exit 1; }

# On a failing command (set -e) name it and its line (once: not again in each command
# substitution it fails through); at a failing exit, print what helps.
_on_err() {
  [ "$BASHPID" = "$$" ] || return 0
  printf '[%ss] FAIL: %s line %s: %s (exit %s)\n' "$(_elapsed)" "${BASH_SOURCE[1]##*/}" "${BASH_LINENO[0]}" "$BASH_COMMAND" "$1" \
    | tee -a "$_failures" >&2
}
trap '_on_err $?' ERR
_on_exit() {
  local rc=$?
  trap - ERR
  if [ "$rc" = 0 ] && [ -n "${_rebooting:-}" ]; then
    printf '[%ss] %s: boot %s done\n' "$(_elapsed)" "$test_name" "${vm_boot:-1}"
  elif [ "$rc" != 0 ]; then
    printf '\n[%ss] %s failed (exit %s); diagnostics:\n' "$(_elapsed)" "$test_name" "$rc"
    diagnostics 2>&1 | sed 's/^/  | /' || true
    printf '[%ss] %s failed (exit %s), at:\n' "$(_elapsed)" "$test_name" "$rc"
    sed 's/^/    /' "$_failures" 2>/dev/null || echo "    (no FAIL line: see above)"
  else
    printf '\n[%ss] %s passed\n' "$(_elapsed)" "$test_name"
  fi
  return "$rc"
}
trap _on_exit EXIT

diagnostics() {
  echo "-- systemctl status berthd.service"
  systemctl status --no-pager -l berthd.service 2>&1 | sed -n 1,20p || true
  echo "-- journalctl -u berthd.service (last 60)"
  journalctl -b --no-pager -o short-monotonic -u berthd.service -n 60 2>&1 || true
  local d
  for d in /run/berth/containers/*/; do
    [ -d "$d" ] || continue
    echo "-- ${d}monitor.log (last 20)"
    tail -n 20 "${d}monitor.log" 2>/dev/null || true
    echo "-- ${d}console.log (last 10)"
    tail -n 10 "${d}console.log" 2>/dev/null || true
    local f
    for f in "$d"criu-*.log; do
      [ -f "$f" ] || continue
      echo "-- $f (errors and last 30)"
      grep -E 'Error|Warn|fsnotify|cg:|cgroup' "$f" | tail -n 40 || true
      tail -n 30 "$f"
    done
  done
  echo "-- findmnt / (propagation)"
  findmnt -o TARGET,PROPAGATION / 2>&1 || true
}

# run CMD...: print the command, then run it with its output shown
run() {
  local rc=0
  printf '[%ss] $ %s\n' "$(_elapsed)" "$*"
  "$@" || rc=$?
  [ "$rc" = 0 ] || fail "'$*' exited with $rc"
}

# capture VAR CMD...: run CMD, show its output, keep stdout in VAR; fail with it when CMD fails
capture() {
  local __var=$1 __out __rc=0; shift
  printf '[%ss] $ %s\n' "$(_elapsed)" "$*"
  __out=$("$@" 2>&1) || __rc=$?
  [ -n "$__out" ] && printf '%s\n' "$__out" | sed 's/^/    /'
  [ "$__rc" = 0 ] || fail "'$*' exited with $__rc"
  printf -v "$__var" '%s' "$__out"
}

# must_fail CMD...: CMD must exit non-zero; its output goes to $last_output
last_output=
must_fail() {
  local rc=0
  printf '[%ss] $ %s   (must fail)\n' "$(_elapsed)" "$*"
  last_output=$("$@" 2>&1) || rc=$?
  [ -n "$last_output" ] && printf '%s\n' "$last_output" | sed 's/^/    /'
  [ "$rc" != 0 ] || fail "'$*' succeeded but should have failed"
}

assert_eq() { # assert_eq ACTUAL EXPECTED WHAT
  [ "$1" = "$2" ] || fail "${3:-value}: expected '$2', got '$1'"
  log "ok: ${3:-value} = '$2'"
}
assert_contains() { # assert_contains HAYSTACK NEEDLE WHAT
  case "$1" in *"$2"*) log "ok: ${3:-output} contains '$2'" ;; *) fail "${3:-output} lacks '$2': $1" ;; esac
}
assert_int_gt() { # assert_int_gt A B WHAT: A > B
  [ "$1" -gt "$2" ] 2>/dev/null || fail "${3:-value}: expected $1 > $2"
  log "ok: ${3:-value}: $1 > $2"
}

# wait_for SECONDS WHAT CMD...: poll CMD (quietly) every 0.2 s until it succeeds
wait_for() {
  local limit=$1 what=$2 deadline; shift 2
  deadline=$(( $(date +%s) + limit ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "timed out after ${limit}s waiting for $what"
    sleep 0.2
  done
  log "ok: $what"
}

# ---------------------------------------------------------------------------------------------
# multi-boot tests (a header line `# berth-vm: boots=N`; see runner)
# ---------------------------------------------------------------------------------------------
# which boot of this test this is: 1, then 2... after each reboot_guest
vm_boot=${BERTH_VM_BOOT:-1}
# a directory of this test's own that outlives the guest's reboots (the root disk)
vm_state=/var/lib/berth-vm/state/$test_name
mkdir -p "$vm_state"

# reboot_guest: end this boot of the test; the runner saves its output, reboots the guest
# (`systemctl reboot`, an orderly shutdown) and runs the test again with vm_boot one higher
reboot_guest() {
  [ -n "${BERTH_VM_REBOOT_REQUEST:-}" ] || fail "reboot_guest: not run by the VM tier's runner"
  : >"$BERTH_VM_REBOOT_REQUEST"
  _rebooting=1
  log "boot $vm_boot ends: the runner reboots the guest"
  exit 0
}

# ---------------------------------------------------------------------------------------------
# the machine
# ---------------------------------------------------------------------------------------------
require_systemd() {
  [ "$(cat /proc/1/comm)" = systemd ] || fail "PID 1 is $(cat /proc/1/comm), not systemd"
  log "PID 1 is systemd ($(systemctl --version | sed -n 1p))"
}
require_cgroup2() {
  local fs; fs=$(stat -fc %T /sys/fs/cgroup)
  [ "$fs" = cgroup2fs ] || fail "/sys/fs/cgroup is $fs, not cgroup2"
  ! awk '$3 == "cgroup" { found = 1 } END { exit !found }' /proc/mounts \
    || fail "cgroup v1 hierarchies are mounted: $(awk '$3 == "cgroup" { print $2 }' /proc/mounts | xargs)"
  log "pure cgroup v2 (controllers: $(cat /sys/fs/cgroup/cgroup.controllers))"
}
machine_info() {
  log "kernel $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/ { print int($2 / 1024) " MiB" }' /proc/meminfo)"
  log "payload: $(head -n1 "$payload/SOURCE" 2>/dev/null || echo '?')"
}

# install_berth: berth from the payload through the real installer (units, bus policy, polkit
# policy, daemon-reload, `berthd init`, the busybox image), without network: CRIU comes from the
# payload, the binaries are the host's release build.
install_berth() {
  section "install berth: scripts/setup --no-deps --prebuilt $payload/prebuilt"
  install -D -m 0755 "$payload/prebuilt/criu" /usr/local/sbin/criu
  run "$payload/scripts/setup" --no-deps --prebuilt "$payload/prebuilt"
  command -v berth >/dev/null || fail "setup did not install berth"
}

# ---------------------------------------------------------------------------------------------
# containers
# ---------------------------------------------------------------------------------------------
# field NAME KEY: a field of the container's entry in `berth list --format json`
container_field() { berth list --format json | jq -r --arg n "$1" --arg k "$2" '.[] | select(.name == $n) | .[$k]'; }
container_status() { container_field "$1" status; }
container_pid() { container_field "$1" init_pid; }
status_is() { [ "$(container_status "$1")" = "$2" ]; }
container_exists() { berth list --format json | jq -e --arg n "$1" 'any(.[]; .name == $n)' >/dev/null; }

# container_cgroup NAME: the container's cgroup v2 directory: the ancestor of its init's group
# (or that group itself) named after the container, or the payload/ group of its systemd unit
container_cgroup() {
  local pid rel
  pid=$(container_pid "$1")
  if [ -z "$pid" ] || [ "$pid" = 0 ]; then fail "container $1 has no init pid"; fi
  rel=$(sed -n 's/^0:://p' "/proc/$pid/cgroup")
  [ -n "$rel" ] || fail "/proc/$pid/cgroup has no v2 entry: $(cat "/proc/$pid/cgroup")"
  _is_container_group() { [ "$(basename "$1")" = "$2" ] || [[ "$1" =~ \.(scope|service)/payload$ ]]; }
  while [ -n "$rel" ] && [ "$rel" != / ] && ! _is_container_group "$rel" "$1"; do rel=$(dirname "$rel"); done
  _is_container_group "$rel" "$1" || fail "init ($pid) of $1 is in $(sed -n 's/^0:://p' "/proc/$pid/cgroup"), under no group named $1 or payload"
  echo "/sys/fs/cgroup$rel"
}
