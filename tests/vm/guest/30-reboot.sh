#!/bin/bash
# berth-vm: boots=2
# A reboot of the host: containers with boot.autostart come back at boot, highest
# boot.autostart.priority first, with their boot.autostart.delay; an enabled berth@NAME unit
# comes back with berth-containers.target; a container without autostart stays stopped; and
# at the shutdown before, berth-shutdown.service stopped the running containers lowest
# priority first, each gracefully within its boot.host_shutdown_timeout. berthd is not
# running when the reboot begins (as after its idle exit, a host's usual state).
# Boot 1 sets up and reboots (with a persistent journal, to read its shutdown afterwards);
# boot 2 checks.
# shellcheck disable=SC2154
set -euo pipefail
# shellcheck source=tests/vm/guest/lib.sh
. "$(dirname "$0")/lib.sh"

# name, boot.autostart.priority, boot.autostart.delay of the autostart containers, in the
# order they must start
autostart=("a1 10 0" "a2 5 4" "a3 1 0")
delay=4                 # a2's boot.autostart.delay
shutdown_timeout=20     # every container's boot.host_shutdown_timeout
hz=$(getconf CLK_TCK)

all_running() { local n; for n in "$@"; do status_is "$n" Running || return 1; done; }
# snapshot: `berth list` once (each berth call costs a second or two under TCG); field NAME KEY
listing=
snapshot() { listing=$(berth list --format json); }
field() { jq -r --arg n "$1" --arg k "$2" '.[] | select(.name == $n) | .[$k]' <<<"$listing"; }
# started_at PID: when the process started, in seconds since the kernel booted
started_at() { awk -v hz="$hz" '{ sub(/^.*\) /, ""); printf "%.2f", $20 / hz }' "/proc/$1/stat"; }

boot1() {
  machine_info
  require_systemd
  install_berth

  section "a persistent journal, to read this boot's shutdown after the reboot"
  # the image's journald.conf.d/berth-vm.conf says Storage=volatile: a later drop-in wins
  mkdir -p /var/log/journal
  printf '[Journal]\nStorage=persistent\n' >/etc/systemd/journald.conf.d/zz-30-reboot.conf
  run systemd-tmpfiles --create --prefix /var/log/journal
  run systemctl restart systemd-journald.service
  run journalctl --flush
  [ -n "$(find /var/log/journal -name 'system*.journal' -print -quit)" ] || fail "no journal file in /var/log/journal"

  section "containers: three with boot.autostart, one without, one enabled as berth@u"
  local c name prio dly args
  for c in "${autostart[@]}"; do
    read -r name prio dly <<<"$c"
    args=(-c boot.autostart=true -c "boot.autostart.priority=$prio" -c "boot.host_shutdown_timeout=$shutdown_timeout")
    [ "$dly" != 0 ] && args+=(-c "boot.autostart.delay=$dly")
    run berth launch busybox "$name" "${args[@]}"
  done
  # running at the reboot, but not to be started after it (priority 0: stopped first)
  run berth launch busybox m -c "boot.host_shutdown_timeout=$shutdown_timeout"
  run berth init busybox u -c "boot.host_shutdown_timeout=$shutdown_timeout"
  # no daemon-reload (seconds under TCG): the next boot reads the new link anyway
  run systemctl enable --no-reload berth@u.service
  [ -L /etc/systemd/system/berth-containers.target.wants/berth@u.service ] || fail "berth@u is not wanted by berth-containers.target"
  run systemctl start berth@u.service
  capture st systemctl is-active berth@u.service
  assert_eq "$st" active "berth@u"

  section "what boot 2 compares with"
  : >"$vm_state/pids"
  snapshot
  for name in a1 a2 a3 m u; do
    assert_eq "$(field "$name" status)" Running "$name before the reboot"
    echo "$name $(field "$name" init_pid)" >>"$vm_state/pids"
  done
  cat /proc/sys/kernel/random/boot_id >"$vm_state/boot_id"
  sed 's/^/    /' "$vm_state/pids"

  section "berthd not running at the reboot (as after an idle exit); the containers run on"
  run systemctl stop berthd.service
  while read -r name pid; do
    kill -0 "$pid" || fail "$name's init ($pid) died with berthd"
  done <"$vm_state/pids"
  log "ok: berthd.service is $(systemctl is-active berthd.service || true); every init lives"
  reboot_guest
}

boot2() {
  require_systemd
  command -v berth >/dev/null || fail "berth is gone after the reboot"
  local boot_id name prio dly pid old line
  boot_id=$(cat /proc/sys/kernel/random/boot_id)
  [ "$boot_id" != "$(cat "$vm_state/boot_id")" ] || fail "the boot id did not change: no reboot"
  log "ok: a new boot ($boot_id), $(cut -d' ' -f1 /proc/uptime) s of uptime"

  section "the autostart containers and berth@u came back; m did not"
  wait_for 120 "a1, a2, a3 and u running" all_running a1 a2 a3 u
  snapshot
  assert_eq "$(field m status)" Stopped "m (no boot.autostart) after the reboot"
  capture st systemctl is-active berth@u.service
  assert_eq "$st" active "berth@u after the reboot"
  capture st systemctl is-enabled berth@u.service
  assert_eq "$st" enabled "berth@u after the reboot"
  while read -r name old; do
    [ "$name" = m ] && continue
    pid=$(field "$name" init_pid)
    if [ "$pid" = 0 ] || [ "$pid" = "$old" ]; then fail "$name's init is $pid, before the reboot $old"; fi
    log "ok: $name's init is $pid (before the reboot: $old)"
  done <"$vm_state/pids"

  section "started at boot in priority order, with the delay"
  local -A at
  for name in a1 a2 a3 u; do
    at[$name]=$(started_at "$(field "$name" init_pid)")
    log "$name: init started ${at[$name]} s after the kernel booted"
  done
  awk -v a="${at[a1]}" -v b="${at[a2]}" -v c="${at[a3]}" 'BEGIN { exit !(a <= b && b <= c) }' \
    || fail "start order by init start times: a1 ${at[a1]}, a2 ${at[a2]}, a3 ${at[a3]} (want a1 <= a2 <= a3)"
  log "ok: a1 (priority 10) <= a2 (priority 5) <= a3 (priority 1)"
  local gap
  gap=$(awk -v b="${at[a2]}" -v c="${at[a3]}" 'BEGIN { printf "%.2f", c - b }')
  log "measured: a3 started $gap s after a2, whose boot.autostart.delay is $delay s"
  awk -v g="$gap" -v d="$delay" 'BEGIN { exit !(g >= d - 0.02) }' || fail "a2's delay of $delay s was not honoured: a3 came $gap s after it"
  awk -v g="$gap" -v d="$delay" 'BEGIN { exit !(g < d + 15) }' || fail "a3 came $gap s after a2: far more than its $delay s delay"
  log "ok: the delay was honoured"

  line=$(journalctl -b -u berthd.service -o short-monotonic --no-pager | grep -m1 'serving org.berth.Berth1' || true)
  log "measured: berthd served at $(sed -n 's/^\[ *\([0-9.]*\)\].*/\1/p' <<<"$line") s of this boot; u's unit: $(systemctl show -p ActiveEnterTimestampMonotonic --value berth@u.service | awk '{ printf "%.2f", $1 / 1e6 }') s"

  section "the shutdown before: berth-shutdown.service stopped them, lowest priority first"
  local shutdown stops begin end took entries
  capture shutdown journalctl -b -1 -u berth-shutdown.service -o short-monotonic --no-pager
  # u may have stopped through its unit first; m and u have priority 0 and go together
  stops=$(sed -n 's/.*: stopped \([a-z0-9]*\) (priority \(-*[0-9]*\))$/\1 \2/p' <<<"$shutdown" | grep -v '^u ' | paste -sd, -)
  assert_eq "$stops" "m 0,a3 1,a2 5,a1 10" "the stops by berthd shutdown (but u's)"
  begin=$(sed -n 's/^\[ *\([0-9.]*\)\].*Stopping berth-shutdown\.service.*/\1/p' <<<"$shutdown" | head -n1)
  end=$(sed -n 's/^\[ *\([0-9.]*\)\].*Stopped berth-shutdown\.service.*/\1/p' <<<"$shutdown" | tail -n1)
  if [ -z "$begin" ] || [ -z "$end" ]; then fail "no begin or end of berth-shutdown.service's stop in the journal"; fi
  took=$(awk -v a="$begin" -v b="$end" 'BEGIN { printf "%.2f", b - a }')
  log "measured: berth-shutdown.service's stop took $took s (4 priorities, each with ${shutdown_timeout} s)"
  awk -v t="$took" -v l="$shutdown_timeout" 'BEGIN { exit !(t < 4 * l) }' \
    || fail "the stops at shutdown took $took s, more than the 4 priorities' timeouts"
  case "$shutdown" in *"Failed with result"*) fail "berth-shutdown.service failed at the shutdown" ;; esac
  # within the timeout: a container that outlives it is killed. (Whichever berthd stopped
  # them: berthd.service's, or the one berth-shutdown.service runs when none serves.)
  capture entries journalctl -b -1 -o json --no-pager SYSLOG_IDENTIFIER=berthd MESSAGE=stopped
  for name in a1 a2 a3 m u; do
    assert_eq "$(jq -r --arg n "$name" 'select(.CONTAINER == $n) | .REASON' <<<"$entries" | tail -n1)" poweroff "how $name stopped at the shutdown"
  done
  capture st journalctl -b -1 -u berth@u.service -o cat --no-pager
  assert_contains "$st" "Stopped berth@u.service" "berth@u's journal of the shutdown"
  case "$st" in *"Failed with result"*) fail "berth@u failed at the shutdown" ;; esac
  log "ok: berth@u did not fail at the shutdown"

  section "berthd's journal entries of the starts at boot"
  local order
  capture entries journalctl -b -u berthd.service -o json --no-pager MESSAGE="started at boot (boot.autostart)"
  order=$(jq -r '.CONTAINER' <<<"$entries" | paste -sd' ' -)
  assert_eq "$order" "a1 a2 a3" "the containers berthd started at boot, in its journal's order"
  # the journal's PRIORITY is the entry's level (info: 5), not the container's priority
  assert_eq "$(jq -r '.PRIORITY | tostring' <<<"$entries" | sort -u | paste -sd' ' -)" 5 "PRIORITY of those entries"
  assert_eq "$(jq -r '.AUTOSTART_PRIORITY' <<<"$entries" | paste -sd' ' -)" "10 5 1" "AUTOSTART_PRIORITY of those entries"
}

case "$vm_boot" in
  1) boot1 ;;
  2) boot2 ;;
  *) fail "no boot $vm_boot in this test" ;;
esac
