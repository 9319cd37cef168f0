#!/bin/bash
# On a pure cgroup v2 host: container limits land in the container's cgroup files, device
# control holds with the BPF device program alone (there is no devices controller here), and a
# stateful snapshot (CRIU, which freezes the container through cgroup.freeze here) and its
# restore keep a counting process's state, and the device control.
# `capture VAR …` assigns VAR; the sh -c scripts in single quotes run in the container
# shellcheck disable=SC2154,SC2016
set -euo pipefail
# shellcheck source=tests/vm/guest/lib.sh
. "$(dirname "$0")/lib.sh"

machine_info
require_systemd
require_cgroup2
install_berth

section "what berthd reports"
capture cgv busctl --system get-property org.berth.Berth1 /org/berth/Berth1 org.berth.Berth1.Manager CgroupVersion
assert_eq "$cgv" "u 2" "Manager.CgroupVersion"
capture stateful busctl --system get-property org.berth.Berth1 /org/berth/Berth1 org.berth.Berth1.Manager StatefulSupported
if [ "$stateful" != "b true" ]; then
  busctl --system get-property org.berth.Berth1 /org/berth/Berth1 org.berth.Berth1.Manager StatefulUnsupportedReason || true
  fail "berthd says stateful snapshots are unsupported here"
fi
log "criu: $(criu --version | tr '\n' ' ')"

section "limits in the container's cgroup"
mem=256MiB mem_bytes=268435456 procs=100
cfg=(-c "limits.memory=$mem" -c "limits.processes=$procs")
# limits.cpu is not a berth config key yet: checked once berth accepts it
cpu_key=0
if berth init busybox cpu-probe -c limits.cpu=1 >/tmp/cpu-probe.out 2>&1; then
  cpu_key=1
  cfg+=(-c limits.cpu=1)
else
  log "SKIP limits.cpu: $(sed -n '/^Creating/!{p;q}' /tmp/cpu-probe.out)"
fi
! container_exists cpu-probe || berth delete --force cpu-probe >/dev/null
run berth launch busybox lim "${cfg[@]}"
cg=$(container_cgroup lim)
log "cgroup of lim: $cg (init pid $(container_pid lim))"
assert_eq "$(cat "$cg/memory.max")" "$mem_bytes" "$cg/memory.max"
assert_eq "$(cat "$cg/pids.max")" "$procs" "$cg/pids.max"
if [ "$cpu_key" = 1 ]; then
  cpu_max=$(cat "$cg/cpu.max" 2>/dev/null || echo '?')
  cpus=$(cat "$cg/cpuset.cpus" 2>/dev/null || echo '?')
  log "limits.cpu=1: cpu.max '$cpu_max', cpuset.cpus '$cpus'"
  case "$cpu_max" in
    "100000 100000") log "ok: limits.cpu=1 is a quota of one CPU" ;;
    *) [[ "$cpus" =~ ^[0-9]+$ ]] || fail "limits.cpu=1 shows neither in cpu.max ('$cpu_max') nor cpuset.cpus ('$cpus')"
       log "ok: limits.cpu=1 pins to CPU $cpus" ;;
  esac
fi
# the process limit holds: forks past pids.max fail, and the kernel counts them
# (busybox sh gives up at the first refused fork)
log "\$ berth exec lim -- sh -c 'cat /proc/self/cgroup; for i in \$(seq 120); do sleep 2 & done'   (may fail)"
berth exec lim -- sh -c 'cat /proc/self/cgroup; for i in $(seq 120); do sleep 2 & done' || true
capture events cat "$cg/pids.events"
max_hits=$(awk '$1 == "max" { print $2 }' "$cg/pids.events")
assert_int_gt "$max_hits" 0 "forks refused at pids.max ($cg/pids.events)"
wait_for 30 "the sleepers to end (pids.current < 10)" bash -c "[ \$(cat '$cg/pids.current') -lt 10 ]"

section "device control: the BPF device program alone"
# a node outside the allow-list (c 1:11, kmsg: opened for writing and closed, it writes nothing)
# where the container can reach it (its /dev is a tmpfs of its own); the guest has no bpftool,
# so the program shows in what the container may open
rootfs=/var/lib/berth/pool/containers/lim/rootfs
[ -d "$rootfs" ] || fail "no rootfs at $rootfs"
run mknod -m 0666 "$rootfs/dev-probe" c 1 11
run sh -c ": > '$rootfs/dev-probe'"
log "ok: the host opens it"
check_devices() { # check_devices WHEN
  local out
  # (a restore brings the files back as they were at the snapshot: the node with them)
  [ -c "$rootfs/dev-probe" ] || fail "$1: $rootfs/dev-probe is not a character device"
  capture out berth exec lim -- sh -c 'echo x > /dev/null && cat /dev/null && head -c 4 /dev/urandom | wc -c'
  assert_eq "$(tr -d ' ' <<<"$out")" 4 "$1: bytes read from /dev/urandom after /dev/null was written"
  must_fail berth exec lim -- sh -c ': > /dev-probe'
  assert_contains "$last_output" "Operation not permitted" "$1: opening /dev-probe (c 1:11) in the container"
}
check_devices "after the start"

section "stateful snapshot and restore (freezing on cgroup v2)"
counter() {
  local v; v=$(berth exec lim -- cat /tmp/counter)
  [[ "$v" =~ ^[0-9]+$ ]] || fail "/tmp/counter holds '$v', not a count"
  echo "$v"
}
# (the count goes out by a rename, so the file always holds one: written in place, a dump
# between the truncate and the write brought an empty file back with the snapshot)
capture inner_pid berth exec lim -- sh -c \
  'echo 0 > /tmp/counter; (i=0; while :; do i=$((i+1)); echo $i > /tmp/counter.new && mv /tmp/counter.new /tmp/counter; sleep 0.1; done) >/dev/null 2>&1 </dev/null & echo $!'
wait_for 30 "the counter to start" bash -c "[ \"\$(berth exec lim -- cat /tmp/counter 2>/dev/null)\" -gt 3 ]"
# the dump freezes the counter somewhere between these two readings (under TCG the snapshot
# takes seconds, and the counter runs on from the thaw to the command's return)
before_snapshot=$(counter)
run berth snapshot create lim live --stateful
at_snapshot=$(counter)
log "counter right before the snapshot: $before_snapshot, right after it: $at_snapshot"
assert_eq "$(container_status lim)" Running "status of lim after a stateful snapshot"
assert_eq "$(cat "$cg/cgroup.freeze")" 0 "cgroup.freeze after the snapshot"
grep -qx 'frozen 0' "$cg/cgroup.events" || fail "the container is still frozen: $(cat "$cg/cgroup.events")"
log "ok: thawed (cgroup.events: frozen 0)"
# CRIU froze the tree through the v2 group's cgroup.freeze (its dump log, at debug level, says so)
crlog=$(berth info lim --show-log 2>&1) || fail "berth info lim --show-log: $crlog"
grep -iE 'freez' <<<"$crlog" | sed -n '1,6s/^/    /p' || true
if grep -q 'Detected cgroup V' <<<"$crlog"; then
  grep -q 'Detected cgroup V2 freezer' <<<"$crlog" || fail "CRIU did not use the cgroup v2 freezer"
  log "ok: CRIU used the cgroup v2 freezer"
fi
# let it count well past the snapshot, so that a restored counter is told apart
wait_for 60 "the counter to run 100 past the snapshot" \
  bash -c "[ \"\$(berth exec lim -- cat /tmp/counter 2>/dev/null)\" -gt $((at_snapshot + 100)) ]"
later=$(counter)
log "counter before the restore: $later"
capture snaps berth snapshot list lim --format json
for round in 1 2; do
  run berth snapshot restore lim live
  assert_eq "$(container_status lim)" Running "round $round: status after the restore"
  v1=$(counter)
  if [ "$v1" -lt "$before_snapshot" ] || [ "$v1" -ge "$later" ]; then
    fail "round $round: counter $v1 after the restore is not the snapshot's ($before_snapshot ≤ v < $later)"
  fi
  log "ok: round $round: counter $v1 came back with the snapshot ($before_snapshot ≤ $v1 < $later)"
  wait_for 30 "round $round: the counter to go on counting past $v1" \
    bash -c "[ \"\$(berth exec lim -- cat /tmp/counter 2>/dev/null)\" -gt $v1 ]"
  ps_out=$(berth exec lim -- ps)
  awk -v p="$inner_pid" '$1 == p { found = 1 } END { exit !found }' <<<"$ps_out" \
    || fail "round $round: the counting process ($inner_pid inside) is not there after the restore"
  log "ok: round $round: the same counting process ($inner_pid inside) runs on"
  check_devices "round $round: after the restore"
  cg=$(container_cgroup lim)
  assert_eq "$(cat "$cg/memory.max")" "$mem_bytes" "round $round: memory.max after the restore"
  assert_eq "$(cat "$cg/pids.max")" "$procs" "round $round: pids.max after the restore"
done

section "a stopped process is checkpointed and restored stopped (the v1 pre-flight refusal is v1's alone)"
# on a cgroup v1 freezer CRIU waits forever to seize a stopped process, so the pre-flight
# refuses one there; the v2 freezer stops tasks another way, and CRIU handles them
# (the shell's own stdio redirected first: a child stopped before it applied its redirections
# would hold the exec's, files of the host the pre-flight refuses)
run berth exec lim -- sh -c 'exec </dev/null >/dev/null 2>&1; sleep 1000 & p=$!; kill -STOP $p; echo $p >/tmp/stopped'
stopped=$(berth exec lim -- cat /tmp/stopped)
wait_for 10 "process $stopped to be stopped" \
  bash -c "berth exec lim -- ps -o pid,stat | awk -v p=$stopped '\$1 == p && \$2 ~ /^T/ { f = 1 } END { exit !f }'"
run berth snapshot create lim halted --stateful
run berth snapshot restore lim halted
stat_after=$(berth exec lim -- ps -o pid,stat | awk -v p="$stopped" '$1 == p { print $2 }')
case "$stat_after" in
  T*) log "ok: process $stopped is back, stopped ($stat_after)" ;;
  *) fail "process $stopped after the restore: state '$stat_after', not stopped" ;;
esac

run berth delete --force lim
