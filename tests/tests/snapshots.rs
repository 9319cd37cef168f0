//! End-to-end: snapshots and copies with the real parts — a private system bus, polkitd,
//! berthd, real containers on btrfs and dir pools.

use berth_tests::{Env, Storage, text};

fn root_or_skip() -> bool {
    // SAFETY: geteuid has no failure mode.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(root || std::env::var_os("BERTH_E2E_ALLOW_SKIP").is_some(), "end-to-end tests need root");
    root
}

fn snapshot_names(env: &Env, c: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["snapshot", "list", c, "--format", "json"])).unwrap();
    v.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_string()).collect()
}

fn snapshot_dirs(env: &Env, c: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(env.pool().join("snapshots").join(c))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn stateless(storage: Storage) {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(storage);
    env.ok(&["launch", "busybox", "c1"]);
    env.ok(&["exec", "c1", "--", "sh", "-c", "echo one > /root/f"]);
    // auto names, taken while it runs
    env.ok(&["snapshot", "create", "c1"]);
    env.ok(&["exec", "c1", "--", "sh", "-c", "echo two > /root/f && touch /root/only-later"]);
    env.ok(&["snapshot", "create", "c1"]);
    env.ok(&["snapshot", "create", "c1", "named"]);
    assert_eq!(snapshot_names(&env, "c1"), ["snap0", "snap1", "named"]);
    // a snapshot is a D-Bus object under its container
    let out = env.busctl(&["introspect", "org.berth.Berth1", "/org/berth/Berth1/container/c1/snapshot/snap0", "org.berth.Berth1.Snapshot"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // the same name again is refused and changes nothing
    let dup = env.berth(&["snapshot", "create", "c1", "named"]);
    assert!(!dup.status.success() && text(&dup.stderr).contains("AlreadyExists"), "{}", text(&dup.stderr));
    let bad = env.berth(&["snapshot", "create", "c1", "../x"]);
    assert!(!bad.status.success() && text(&bad.stderr).contains("InvalidName"), "{}", text(&bad.stderr));
    assert_eq!(snapshot_dirs(&env, "c1").len(), 3);

    // restore: the files come back, and a running container runs again
    env.ok(&["exec", "c1", "--", "sh", "-c", "echo three > /root/f"]);
    env.ok(&["snapshot", "restore", "c1", "snap0"]);
    assert_eq!(env.status("c1"), "Running");
    assert_eq!(env.ok(&["exec", "c1", "--", "cat", "/root/f"]).trim(), "one");
    assert!(!env.berth(&["exec", "c1", "--", "test", "-e", "/root/only-later"]).status.success());
    // the snapshot itself did not change: restoring it again gives the same
    env.ok(&["exec", "c1", "--", "sh", "-c", "echo four > /root/f"]);
    env.ok(&["stop", "--force", "c1"]);
    env.ok(&["snapshot", "restore", "c1", "snap0"]);
    assert_eq!(env.status("c1"), "Stopped", "a stopped container stays stopped");
    assert_eq!(std::fs::read_to_string(env.pool().join("containers/c1/rootfs/root/f")).unwrap().trim(), "one");
    env.ok(&["start", "c1"]);

    // rename (files keep their place), delete
    env.ok(&["snapshot", "rename", "c1", "snap1", "second"]);
    assert_eq!(snapshot_names(&env, "c1"), ["snap0", "second", "named"]);
    let dirs_before = snapshot_dirs(&env, "c1");
    env.ok(&["snapshot", "delete", "c1", "named"]);
    assert_eq!(snapshot_names(&env, "c1"), ["snap0", "second"]);
    assert_eq!(snapshot_dirs(&env, "c1").len(), dirs_before.len() - 1);
    let missing = env.berth(&["snapshot", "restore", "c1", "nope"]);
    assert!(!missing.status.success() && text(&missing.stderr).contains("NoSuchSnapshot"), "{}", text(&missing.stderr));
    // the next auto name continues after the highest
    env.ok(&["snapshot", "create", "c1"]);
    assert_eq!(snapshot_names(&env, "c1"), ["snap0", "second", "snap1"]);

    // copies: from a snapshot and from the running container, each with its own address
    env.ok(&["copy", "c1/second", "c2"]);
    env.ok(&["start", "c2"]);
    assert_eq!(env.ok(&["exec", "c2", "--", "cat", "/root/f"]).trim(), "two");
    assert_eq!(env.ok(&["exec", "c2", "--", "hostname"]).trim(), "c2");
    env.ok(&["copy", "c1", "c3"]);
    let cfg = |n: &str| -> serde_json::Value { serde_json::from_str(&env.ok(&["info", n, "--format", "json"])).unwrap() };
    let (a1, a2, a3) = (cfg("c1"), cfg("c2"), cfg("c3"));
    for (a, b) in [(&a1, &a2), (&a1, &a3), (&a2, &a3)] {
        assert_ne!(a["config"]["volatile.eth0.ipv4"], b["config"]["volatile.eth0.ipv4"]);
        assert_ne!(a["config"]["volatile.eth0.hwaddr"], b["config"]["volatile.eth0.hwaddr"]);
    }
    assert!(snapshot_names(&env, "c3").is_empty(), "a copy has no snapshots");
    let taken = env.berth(&["copy", "c1", "c2"]);
    assert!(!taken.status.success() && text(&taken.stderr).contains("AlreadyExists"));
    let nosnap = env.berth(&["copy", "c1/nope", "c4"]);
    assert!(!nosnap.status.success() && text(&nosnap.stderr).contains("NoSuchSnapshot"), "{}", text(&nosnap.stderr));
    assert!(env.berth(&["info", "c4"]).status.code() != Some(0), "a failed copy leaves no container");

    // publish a snapshot of a running container
    env.ok(&["publish", "c1/snap0", "--alias", "from-snap"]);
    env.ok(&["launch", "from-snap", "c5"]);
    assert_eq!(env.ok(&["exec", "c5", "--", "cat", "/root/f"]).trim(), "one");

    // deleting the container deletes its snapshots, files and objects
    env.ok(&["delete", "--force", "c1"]);
    assert!(!env.pool().join("snapshots/c1").exists());
    let out = env.busctl(&["introspect", "org.berth.Berth1", "/org/berth/Berth1/container/c1/snapshot/snap0"]);
    assert!(!text(&out.stdout).contains("org.berth.Berth1.Snapshot"));
}

#[test]
fn stateless_snapshots_on_btrfs() {
    stateless(Storage::Btrfs);
}

#[test]
fn stateless_snapshots_on_dir() {
    stateless(Storage::Dir);
}

#[test]
fn snapshots_survive_a_daemon_restart_and_debris_is_swept() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Btrfs);
    env.ok(&["init", "busybox", "k1"]);
    env.ok(&["snapshot", "create", "k1", "keep"]);
    // debris of an interrupted snapshot: staged files no row names
    let debris = env.pool().join("snapshots/k1/.staging-123-abcd");
    std::fs::create_dir_all(debris.join("state")).unwrap();
    let pid = env.daemon_pid().unwrap();
    // SAFETY: signalling our own test daemon.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    berth_tests::wait_for(std::time::Duration::from_secs(10), "berthd to exit", || env.daemon_pid() != Some(pid));
    assert_eq!(snapshot_names(&env, "k1"), ["keep"], "a new berthd (activated by this call) loads the snapshot");
    berth_tests::wait_for(std::time::Duration::from_secs(10), "the debris to go", || !debris.exists());
    env.ok(&["snapshot", "restore", "k1", "keep"]);
}
