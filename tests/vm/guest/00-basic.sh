#!/bin/bash
# On a systemd host: the installer, the units as systemd reads them, D-Bus activation of
# berthd.service from cold, and a container's life cycle.
# `capture VAR …` assigns VAR; the sh -c scripts in single quotes run in the container
# shellcheck disable=SC2154,SC2016
set -euo pipefail
# shellcheck source=tests/vm/guest/lib.sh
. "$(dirname "$0")/lib.sh"

machine_info
require_systemd
install_berth

unitdir=/usr/local/lib/systemd/system

section "the host-built binaries find their libraries in the guest"
log "guest: $(. /etc/os-release && echo "$PRETTY_NAME"), $(ldd --version | sed -n 1p)"
for b in /usr/local/sbin/berthd /usr/local/libexec/berth/berth-monitor \
         /usr/local/libexec/berth/berth-helper /usr/local/bin/berth /usr/local/sbin/criu; do
  capture libs ldd "$b"
  ! grep -q 'not found' <<<"$libs" || fail "$b lacks libraries in the guest: $(grep 'not found' <<<"$libs" | xargs)"
done
log "ok: no library missing"
capture out criu --version

section "systemd-analyze verify on berth's installed units"
units=()
for f in "$unitdir"/berth* "$unitdir"/dbus-org.berth*; do
  [ -e "$f" ] || continue
  u=$(basename "$f")
  # a template is verified as an instance, as `systemctl enable berth@web` would make it
  case "$u" in *@.*) u=${u/@./@vmtest.} ;; esac
  units+=("$u")
done
log "units: ${units[*]}"
for want in berthd.service berth@vmtest.service berth-containers.target; do
  grep -qxF "$want" <<<"$(printf '%s\n' "${units[@]}")" || fail "$want is not installed in $unitdir"
done
rc=0
out=$(systemd-analyze verify "${units[@]}" 2>&1) || rc=$?
[ -n "$out" ] && printf '%s\n' "$out" | sed 's/^/    /'
ours=$(printf '%s\n' "$out" | grep -i berth || true)
[ -z "$ours" ] || fail "systemd-analyze verify warns about berth's units:
$ours"
[ "$rc" = 0 ] || fail "systemd-analyze verify exited with $rc"
log "ok: systemd-analyze verify: no warnings about berth's units"

section "systemd-analyze security berthd.service"
sec=$(systemd-analyze security --no-pager berthd.service 2>&1) || true
score=$(printf '%s\n' "$sec" | grep -i 'overall exposure level' || true)
[ -n "$score" ] || { printf '%s\n' "$sec" | tail -n 20; fail "no exposure score from systemd-analyze security"; }
log "$score"

section "cold D-Bus activation of berthd.service"
run systemctl stop berthd.service
wait_for 30 "berthd.service inactive" bash -c '! systemctl -q is-active berthd.service'
owner() { busctl --system status org.berth.Berth1 >/dev/null 2>&1; }
! owner || fail "org.berth.Berth1 still has an owner after systemctl stop"
capture reply busctl --system call org.berth.Berth1 /org/berth/Berth1 org.berth.Berth1.Manager ListContainers
assert_contains "$reply" "a(ssso)" "ListContainers reply"
capture active systemctl is-active berthd.service
assert_eq "$active" active "berthd.service after a bus call"
main_pid=$(systemctl show -p MainPID --value berthd.service)
name_pid=$(busctl --system status org.berth.Berth1 | sed -n 's/^PID=//p')
assert_eq "$name_pid" "$main_pid" "the bus name's owner is berthd.service's main pid"
capture cgv busctl --system get-property org.berth.Berth1 /org/berth/Berth1 org.berth.Berth1.Manager CgroupVersion
log "Manager.CgroupVersion: $cgv"

section "a container's life cycle"
run berth launch busybox c1
assert_eq "$(container_status c1)" Running "status of c1 after launch"
run berth exec c1 -- true
capture out berth exec c1 -- sh -c 'echo "hello from $(hostname)"; cat /proc/1/comm'
assert_eq "${out%%$'\n'*}" "hello from c1" "exec output"
rc=0; berth exec c1 -- sh -c 'exit 7' || rc=$?
assert_eq "$rc" 7 "exit status passed through exec"

section "restarting berthd.service leaves the container running"
pid_before=$(container_pid c1)
run systemctl restart berthd.service
wait_for 30 "berthd.service active again" systemctl -q is-active berthd.service
assert_eq "$(container_status c1)" Running "status of c1 after a berthd restart"
assert_eq "$(container_pid c1)" "$pid_before" "init pid of c1 after a berthd restart"

section "stop, start, delete"
run berth stop c1
assert_eq "$(container_status c1)" Stopped "status of c1 after stop"
run berth start c1
assert_eq "$(container_status c1)" Running "status of c1 after start"
capture out berth exec c1 -- cat /proc/1/comm
run berth delete --force c1
container_exists c1 && fail "c1 still listed after delete"
log "ok: c1 is gone"
