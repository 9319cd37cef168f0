# Shared by the VM tier's host-side scripts (prepare, build-image, make-payload, run-guest,
# run-all); sourced, not run.
# shellcheck shell=bash
# (the variables are used by the scripts that source this file)
# shellcheck disable=SC2034

vm_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$vm_dir/../.." && pwd)
# the guest images, one directory per recipe hash
cache_root=${BERTH_VM_CACHE:-/var/cache/berth-vm}
# what make-payload writes and run-guest reads; logs of each boot
work_dir=${BERTH_VM_WORK:-$repo/target/vm}
log_dir=${BERTH_VM_LOGS:-$repo/target/vm-logs}

say() { printf '%s: %s\n' "${vm_tool:-vm}" "$*"; }
die() { printf '%s: error: %s\n' "${vm_tool:-vm}" "$*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "run as root (debootstrap, mkfs -d with owners, qemu images under $cache_root)"; }

# The Debian archive URI the machine's apt sources already name (as scripts/setup finds it).
archive_uri() {
  local uri
  uri=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | tr ' ' '\n' | grep -v security | grep -E '/debian/?$' | head -n1)
  if [ -z "$uri" ]; then
    uri=$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | grep -v security \
          | awk '{print $2}' | grep -E '/debian/?$' | head -n1)
  fi
  uri=${uri:-http://deb.debian.org/debian}
  echo "${uri%/}"
}

# The guest's Debian suite: trixie (Debian 13) unless BERTH_VM_SUITE names another (bookworm).
guest_suite() {
  local s=${BERTH_VM_SUITE:-trixie}
  [[ "$s" =~ ^[a-z]+$ ]] || die "BERTH_VM_SUITE=$s is not a Debian suite name"
  echo "$s"
}

# The guest's packages: tests/vm/packages without comments and blank lines; a line
# `SUITE: PACKAGE` counts only for that suite (names that differ between suites).
guest_packages() {
  sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' "$vm_dir/packages" \
    | awk -F: -v s="$(guest_suite)" 'NF == 1 { print; next } $1 == s { print $2 }'
}

# The image's cache key: the recipe (build-image, the package list and the suite). 16 hex
# digits.
recipe_hash() {
  { cat "$vm_dir/build-image" "$vm_dir/packages"; echo "suite=$(guest_suite)"; } | sha256sum | cut -c1-16
}

image_dir() { echo "$cache_root/$(recipe_hash)"; }

# The image is complete when build-image wrote its stamp last.
image_ready() { [ -f "$1/ready" ] && [ -f "$1/rootfs.img" ] && [ -f "$1/vmlinuz" ] && [ -f "$1/initrd.img" ]; }

# qemu-system-x86_64: the installed one, or the one prepare unpacked privately.
qemu_bin() {
  if command -v qemu-system-x86_64 >/dev/null 2>&1; then command -v qemu-system-x86_64; return 0; fi
  return 1
}

# seconds since the epoch with milliseconds, and a difference of two of them as "12.3"
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
