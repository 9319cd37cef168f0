#!/bin/bash
# On a systemd host with a pure cgroup v2 tree: a Debian container boots its own systemd
# (nested systemd on cgroup v2, unprivileged) to "running", its units get cgroups of their own
# inside the container's delegated subtree, a limit holds, a stateful snapshot restores the
# same processes, and `berth stop` powers it off gracefully (SIGRTMIN+4). The image is the
# debian/bookworm recipe's, built on the host by make-payload (the guest has no network).
# `capture VAR …` assigns VAR; the sh -c scripts in single quotes run in the container
# shellcheck disable=SC2154,SC2016
set -euo pipefail
# shellcheck source=tests/vm/guest/lib.sh
. "$(dirname "$0")/lib.sh"

machine_info
require_systemd
require_cgroup2
install_berth

image=$payload/images/debian-bookworm.tar.zst
[ -s "$image" ] || fail "$image is missing from the payload"

section "import the debian/bookworm image"
run berth image import "$image" --alias debian/bookworm
capture info berth image info debian/bookworm
assert_contains "$info" "release: bookworm" "image info"

section "a Debian container boots systemd"
t0=$(date +%s.%N)
run berth launch debian/bookworm deb -c limits.memory=512MiB
# poll until systemd in deb has booted, saying every 20 s what it reports and still waits for
deadline=$(($(date +%s) + 300)) last_report=0
while :; do
  rc=0; state=$(berth exec deb -- systemctl is-system-running 2>&1) || rc=$?
  [[ "$state" =~ ^(running|degraded)$ ]] && break
  if [ $(($(date +%s) - last_report)) -ge 20 ]; then
    last_report=$(date +%s)
    log "deb: is-system-running: $state (exit $rc)"
    berth exec deb -- systemctl list-jobs --no-pager 2>&1 | head -n 12 | sed 's/^/    /' || true
  fi
  [ "$(date +%s)" -lt "$deadline" ] || fail "timed out after 300s waiting for systemd in deb to boot"
  sleep 1
done
log "deb booted in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s (launch included)"
state=$(berth exec deb -- systemctl is-system-running || true)
if [ "$state" != running ]; then
  berth exec deb -- systemctl --failed --no-pager || true
  fail "systemd in deb is $state, not running"
fi
log "ok: systemd in deb is running, no failed units"
capture comm berth exec deb -- cat /proc/1/comm
assert_eq "$comm" systemd "init of deb"
capture fs berth exec deb -- stat -fc %T /sys/fs/cgroup
assert_eq "$fs" cgroup2fs "the cgroup file system inside deb"
capture own berth exec deb -- cat /proc/self/cgroup
# systemd in deb handed its controllers to its children, so deb's own group may hold no
# process (cgroup v2): an exec joins the leaf berth makes below it
assert_eq "$own" "0::/.berth-exec" "an exec's cgroup as deb sees it"
capture hn berth exec deb -- cat /etc/hostname
assert_eq "$hn" deb "hostname from the image's template"

section "the container's systemd manages cgroups of its own"
cg=$(container_cgroup deb)
log "deb's cgroup: $cg"
capture inner berth exec deb -- systemd-cgls --no-pager
assert_contains "$inner" "init.scope" "systemd-cgls inside deb"
assert_contains "$inner" "systemd-journald.service" "systemd-cgls inside deb"
# the same units, seen from the host, below the container's own cgroup
journald_cg=$(find "$cg" -type d -name systemd-journald.service | head -n1)
[ -n "$journald_cg" ] || fail "no systemd-journald.service cgroup below $cg: $(find "$cg" -maxdepth 3 -type d | sed "s|$cg||" | xargs)"
log "ok: the container's units are below its cgroup: ${journald_cg#"$cg"}"
run berth exec deb -- systemd-run --unit=berth-probe --service-type=exec sleep 600
wait_for 30 "the transient unit inside deb to be active" berth exec deb -- systemctl -q is-active berth-probe.service
probe_cg=$(find "$cg" -type d -name berth-probe.service | head -n1)
[ -n "$probe_cg" ] || fail "no berth-probe.service cgroup below $cg"
[ -n "$(cat "$probe_cg/cgroup.procs")" ] || fail "$probe_cg has no processes"
log "ok: a unit started inside deb has its own cgroup, ${probe_cg#"$cg"}"
capture mem_max cat "$cg/memory.max"
assert_eq "$mem_max" 536870912 "memory.max of deb"
capture inner_max berth exec deb -- cat /sys/fs/cgroup/memory.max
log "memory.max as deb sees its root: $inner_max"
# systemd gave up nothing on its way up: no unit failed for lack of a controller
capture ctrl berth exec deb -- cat /sys/fs/cgroup/cgroup.controllers
for c in memory pids; do assert_contains " $ctrl " " $c " "controllers delegated to deb"; done

section "a stateful snapshot of a systemd container, restored"
journald=$(berth exec deb -- pidof systemd-journald)
run berth exec deb -- sh -c 'echo before > /root/mark'
run berth snapshot create --stateful deb live
run berth exec deb -- sh -c 'echo after > /root/mark'
run berth snapshot restore deb live
capture state berth exec deb -- systemctl is-system-running
assert_eq "$state" running "systemd after the restore"
capture j2 berth exec deb -- pidof systemd-journald
assert_eq "$j2" "$journald" "journald's pid after the restore"
capture mark berth exec deb -- cat /root/mark
assert_eq "$mark" before "files as at the snapshot"
run berth exec deb -- systemctl -q is-active berth-probe.service

section "berth stop powers the container off through its systemd"
t0=$(date +%s.%N)
run berth stop --timeout 120 deb
took=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
assert_eq "$(container_status deb)" Stopped "status of deb after stop"
log "deb stopped in $took s"
exit_file=/run/berth/containers/deb/exit.json
[ -f "$exit_file" ] || fail "$exit_file is missing: $(ls -A /run/berth/containers/deb 2>&1 | tr "\n" " ")"
capture exit_json cat "$exit_file"
assert_contains "$exit_json" '"reason":"poweroff"' "how deb ended"
[ ! -d "$cg" ] || fail "deb's cgroup $cg is still there after the stop"
log "ok: deb's cgroup is gone"

section "delete"
run berth delete deb
! container_exists deb || fail "deb still exists"
run berth image delete debian/bookworm
log "ok"
