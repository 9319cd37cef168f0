//! End-to-end: a root disk limit (`limits.disk`) stops one container's writes at its size,
//! leaves the other containers writing, changes live, and leaves no qgroup behind.

use berth_tests::{Env, Storage, text, unprivileged_user};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn root_or_skip() -> bool {
    // SAFETY: geteuid has no failure mode.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root || std::env::var_os("BERTH_E2E_ALLOW_SKIP").is_some(),
        "end-to-end tests need root"
    );
    root
}

fn btrfs(args: &[&str]) -> String {
    let out = Command::new("btrfs").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "btrfs {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Writes `mib` MiB of zeros to `file` in `name`; returns dd's exit status and what it said.
fn dd(env: &Env, name: &str, file: &str, mib: u32) -> (bool, String) {
    let out = env.berth(&[
        "exec",
        name,
        "--",
        "sh",
        "-c",
        &format!("dd if=/dev/zero of={file} bs=1M count={mib} conv=fsync 2>&1"),
    ]);
    (out.status.success(), text(&out.stdout) + &text(&out.stderr))
}

fn size_mib(env: &Env, name: &str, file: &str) -> u64 {
    env.ok(&["exec", name, "--", "stat", "-c", "%s", file])
        .trim()
        .parse::<u64>()
        .unwrap()
        >> 20
}

/// Level-0 qgroup ids of the pool, and the ids of its subvolumes (with the top level, 5).
fn qgroups_and_subvolumes(pool: &Path) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let p = pool.to_str().unwrap();
    let qgroups = btrfs(&["qgroup", "show", "--raw", p])
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .next()?
                .strip_prefix("0/")?
                .parse()
                .ok()
        })
        .collect();
    let mut subvolumes: BTreeSet<u64> = btrfs(&["subvolume", "list", p])
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    subvolumes.insert(5);
    (qgroups, subvolumes)
}

#[test]
fn a_root_disk_limit_stops_one_container_and_no_other() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Btrfs);
    env.ok(&["launch", "busybox", "a", "-c", "limits.disk=64MiB"]);
    env.ok(&["launch", "busybox", "b"]);

    // a's writes stop at its size, with a quota error, well before the 1 GiB pool is full
    let (ok, said) = dd(&env, "a", "/fill", 200);
    assert!(!ok, "a wrote 200MiB past a 64MiB limit: {said}");
    assert!(
        said.contains("Disk quota exceeded") || said.contains("No space left on device"),
        "{said}"
    );
    let written = size_mib(&env, "a", "/fill");
    assert!((16..=64).contains(&written), "a wrote {written}MiB");

    // b (no limit) writes more than a's whole size, and snapshots of a still work
    let (ok, said) = dd(&env, "b", "/fill", 128);
    assert!(ok, "b could not write: {said}");
    env.ok(&["snapshot", "create", "a", "s1"]);

    // raising the limit of the running container lets it write more at once
    env.ok(&["config", "set", "a", "limits.disk=256MiB"]);
    let (ok, said) = dd(&env, "a", "/more", 64);
    assert!(ok, "a could not write after its limit was raised: {said}");
    // and removing it lifts it (a has now written more than 256MiB)
    env.ok(&["config", "unset", "a", "limits.disk"]);
    let (ok, said) = dd(&env, "a", "/most", 160);
    assert!(ok, "a could not write with no limit: {said}");

    // a restored snapshot is a new volume: the limit holds there too
    env.ok(&["config", "set", "a", "limits.disk=64MiB"]);
    env.ok(&["snapshot", "restore", "a", "s1"]);
    assert_eq!(env.status("a"), "Running");
    let (ok, said) = dd(&env, "a", "/again", 200);
    assert!(!ok, "a restored volume lost its limit: {said}");

    // a bad size changes nothing
    let out = env.berth(&["config", "set", "a", "limits.disk=1MiB"]);
    assert!(
        text(&out.stderr).contains("InvalidConfig"),
        "{}",
        text(&out.stderr)
    );

    // deleting a (and its snapshot, and the volume the restore replaced) leaves no qgroup
    // without its subvolume once btrfs's cleaner has dropped them (the next delete sweeps
    // what the kernel kept)
    env.ok(&["delete", "--force", "a"]);
    btrfs(&["subvolume", "sync", env.pool().to_str().unwrap()]);
    env.ok(&["delete", "--force", "b"]);
    btrfs(&["subvolume", "sync", env.pool().to_str().unwrap()]);
    let (qgroups, subvolumes) = qgroups_and_subvolumes(&env.pool());
    let stale: Vec<_> = qgroups.difference(&subvolumes).collect();
    assert!(stale.is_empty(), "stale qgroups {stale:?}");
}

#[test]
fn a_root_disk_limit_on_a_dir_pool_is_refused() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    let out = env.berth(&["init", "busybox", "c", "-c", "limits.disk=64MiB"]);
    assert!(
        text(&out.stderr).contains("NotSupported"),
        "{}",
        text(&out.stderr)
    );
    assert!(!env.pool().join("containers/c").exists(), "nothing is left");
    env.ok(&["init", "busybox", "c"]);
    let out = env.berth(&["config", "set", "c", "limits.disk", "64MiB"]);
    assert!(
        text(&out.stderr).contains("NotSupported"),
        "{}",
        text(&out.stderr)
    );
    // removing a limit it does not have is fine
    env.ok(&["config", "unset", "c", "limits.disk"]);
    // a caller polkit does not allow set-config changes nothing
    let out = env.busctl_as(
        unprivileged_user(),
        &[
            "call",
            "org.berth.Berth1",
            "/org/berth/Berth1/container/c",
            "org.berth.Berth1.Container",
            "SetConfig",
            "a{ss}as",
            "1",
            "user.note",
            "theirs",
            "0",
        ],
    );
    assert!(
        text(&out.stderr).contains("not authorized for org.berth.Berth1.set-config"),
        "{}",
        text(&out.stderr)
    );
    let info = env.ok(&["info", "c", "--format", "json"]);
    assert!(!info.contains("theirs"), "{info}");
    env.ok(&["delete", "c"]);
}
