#!/bin/bash
# On a systemd host: containers as units (berth@NAME.service), berth-containers.target, the
# journal's structured fields, and berthd's idle exit with containers running.
# shellcheck disable=SC2154
set -euo pipefail
# shellcheck source=tests/vm/guest/lib.sh
. "$(dirname "$0")/lib.sh"

machine_info
require_systemd
install_berth

section "berth-containers.target and berthd.service are enabled by setup"
capture en systemctl is-enabled berth-containers.target
assert_eq "$en" enabled "berth-containers.target"
capture en systemctl is-enabled berthd.service
assert_eq "$en" enabled "berthd.service"
capture st systemctl is-active berth-shutdown.service
assert_eq "$st" active "berth-shutdown.service (its ExecStop stops containers at shutdown)"

section "systemctl start berth@u1: active while the container runs"
run berth init busybox u1
run systemctl start berth@u1.service
capture st systemctl is-active berth@u1.service
assert_eq "$st" active "berth@u1 after systemctl start"
assert_eq "$(container_status u1)" Running "u1 after systemctl start"
capture status systemctl status --no-pager berth@u1.service
assert_contains "$status" "Container u1 running, init pid $(container_pid u1)" "the unit's STATUS line"

section "a restart of the container keeps the unit active"
pid1=$(container_pid u1)
run berth restart u1
wait_for 20 "u1 running with a new init" bash -c "[ \"\$(berth list --format json | jq -r '.[] | select(.name==\"u1\") | .init_pid')\" != $pid1 ]"
sleep 1
capture st systemctl is-active berth@u1.service
assert_eq "$st" active "berth@u1 after berth restart"

section "systemctl stop berth@u1 stops the container gracefully; the unit is inactive, not failed"
run systemctl stop berth@u1.service
assert_eq "$(container_status u1)" Stopped "u1 after systemctl stop"
st=$(systemctl is-active berth@u1.service || true)
assert_eq "$st" inactive "berth@u1 after systemctl stop"

section "systemctl stop during the start (berthd held with SIGSTOP): the start finishes, then the container stops; the unit never was active"
cursor=$(journalctl -n0 --show-cursor | sed -n 's/^-- cursor: //p')
berth list >/dev/null # (berthd runs: it may have exited idle)
daemon=$(systemctl show -p MainPID --value berthd.service)
assert_int_gt "$daemon" 0 "berthd's pid"
kill -STOP "$daemon"
run systemctl start --no-block berth@u1.service
wait_for 30 "berth supervise u1 running" bash -c '[ "$(systemctl show -p MainPID --value berth@u1.service)" -gt 0 ]'
# its Start call is sent, or about to be: either way in its start, which cannot end while
# berthd is held
sleep 1
run systemctl stop --no-block berth@u1.service
wait_for 30 "supervise to say it stops once the start is done" bash -c 'systemctl show -p StatusText --value berth@u1.service | grep -q "once its start is done"'
kill -CONT "$daemon"
wait_for 60 "berth@u1 inactive" bash -c '[ "$(systemctl is-active berth@u1.service)" = inactive ]'
assert_eq "$(container_status u1)" Stopped "u1 after systemctl stop during its start"
# (journald has what systemd logged before --sync; an inactive unit's timestamps are gone
# with it)
journalctl --sync
capture j journalctl -u berth@u1.service --after-cursor="$cursor" -o cat --no-pager
assert_contains "$j" "Starting berth@u1" "berth@u1's journal of this start"
case "$j" in *"Started berth@u1"*) fail "berth@u1 became active although stopped during its start" ;; esac
log "ok: berth@u1 was never active"

section "a container that dies on its own fails its unit"
run systemctl start berth@u1.service
pid=$(container_pid u1)
kill -9 "$pid"
wait_for 30 "berth@u1 failed" bash -c '[ "$(systemctl is-active berth@u1.service)" = failed ]'
systemctl reset-failed berth@u1.service

section "systemctl enable berth@u2 makes it part of berth-containers.target"
run berth init busybox u2
run systemctl enable berth@u2.service
[ -L /etc/systemd/system/berth-containers.target.wants/berth@u2.service ] || fail "berth@u2 is not wanted by berth-containers.target"
run systemctl start berth-containers.target
wait_for 60 "berth@u2 active through the target" systemctl -q is-active berth@u2.service
assert_eq "$(container_status u2)" Running "u2 started through berth-containers.target"
run systemctl stop berth-containers.target
wait_for 60 "berth@u2 stopped with the target" bash -c '[ "$(systemctl is-active berth@u2.service)" = inactive ]'
assert_eq "$(container_status u2)" Stopped "u2 after the target stopped"

section "berth-shutdown.service stops what runs, lowest priority first"
run berth launch busybox p1 -c boot.autostart.priority=1
run berth launch busybox p5 -c boot.autostart.priority=5
run systemctl stop berth-shutdown.service
assert_eq "$(container_status p1)" Stopped "p1 after berth-shutdown.service stopped"
assert_eq "$(container_status p5)" Stopped "p5 after berth-shutdown.service stopped"
capture order journalctl -u berth-shutdown.service -o cat --no-pager
assert_contains "$order" "stopped p1 (priority 1)
stopped p5 (priority 5)" "the stop order in berth-shutdown's journal"
run systemctl start berth-shutdown.service

section "the journal: structured fields on authorizations"
run berth launch busybox j1
capture entries journalctl -o json --no-pager _SYSTEMD_UNIT=berthd.service CONTAINER=j1 OPERATION=start
assert_contains "$entries" '"CALLER_UID":"0"' "a journal entry for starting j1 with CALLER_UID"
log "ok: journalctl CONTAINER=j1 OPERATION=start finds $(printf '%s\n' "$entries" | grep -c . ) entries"

section "idle exit: berthd exits with containers running; the next call finds them"
mkdir -p /run/systemd/system/berthd.service.d
printf '[Service]\nExecStart=\nExecStart=/usr/local/sbin/berthd --idle-timeout 3\n' >/run/systemd/system/berthd.service.d/idle.conf
run systemctl daemon-reload
run systemctl restart berthd.service
jpid=$(container_pid j1)
wait_for 30 "berthd.service to exit when idle" bash -c '! systemctl -q is-active berthd.service'
capture result systemctl show -p Result --value berthd.service
assert_eq "$result" success "berthd.service's result after an idle exit"
kill -0 "$jpid" || fail "j1's init died with berthd"
# calls across the exit window: each one answered
for i in 1 2 3 4 5 6; do
  sleep "$(awk -v i="$i" 'BEGIN { printf "%.1f", 2.8 + (i % 3) * 0.3 }')"
  capture out berth exec j1 -- echo "call $i"
  assert_eq "$out" "call $i" "call $i across an idle exit"
done
assert_eq "$(container_pid j1)" "$jpid" "j1's init pid after idle exits"
log "ok: every call answered; j1 kept init $jpid"
