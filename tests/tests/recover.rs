//! Recovery: each container's volume carries a `backup.yaml` kept current; `berthd recover`
//! (berthd stopped) and `berth admin recover` (berthd running) rebuild records from the pool;
//! a damaged or newer database is refused at start with the way out, and never touched.

use berth_tests::{Env, Storage, text, wait_for};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn root_or_skip() -> bool {
    // SAFETY: getuid has no failure mode.
    let root = unsafe { libc::getuid() } == 0;
    if !root {
        eprintln!("skipped: needs root");
    }
    root
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// Stops the activated berthd (containers keep running under their monitors).
fn stop_daemon(env: &Env) {
    let pid = env.daemon_pid().expect("berthd runs");
    // SAFETY: kill of the daemon the environment started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    wait_for(Duration::from_secs(30), "berthd to exit", || !alive(pid));
}

fn remove_db(env: &Env) {
    for f in ["berth.db", "berth.db-wal", "berth.db-shm"] {
        let _ = std::fs::remove_file(env.state.join(f));
    }
}

/// berthd run by hand on the environment's state (it fails before it reaches the bus).
fn berthd_direct(env: &Env) -> std::process::Output {
    berth_tests::run(
        Command::new(berth_tests::bin("berthd"))
            .arg("--state-dir")
            .arg(&env.state)
            .arg("--run-dir")
            .arg(&env.run)
            .args(["--bus", &env.bus, "--bridge", &env.bridge])
            .args(["--cgroup-parent", &env.cgroup_parent]),
        Duration::from_secs(60),
    )
}

fn berthd_recover(env: &Env) -> std::process::Output {
    berth_tests::run(
        Command::new(berth_tests::bin("berthd"))
            .arg("recover")
            .arg("--state-dir")
            .arg(&env.state),
        Duration::from_secs(120),
    )
}

fn info(env: &Env, name: &str) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_str(&env.ok(&["info", name, "--format", "json"])).unwrap();
    // what is found again from what runs, not from the record
    for k in ["status", "init_pid"] {
        v.as_object_mut().unwrap().remove(k);
    }
    v
}

fn snapshots(env: &Env, name: &str) -> serde_json::Value {
    serde_json::from_str(&env.ok(&["snapshot", "list", name, "--format", "json"])).unwrap()
}

fn backup_yaml(env: &Env, name: &str) -> String {
    let p = env.pool().join("containers").join(name).join("backup.yaml");
    let mode = std::fs::metadata(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "{} is root's alone", p.display());
    std::fs::read_to_string(&p).unwrap()
}

/// The database lost with berthd stopped: `berthd recover` brings back every container with
/// its config, profiles and snapshots (a stateful one with its state), and the image; the
/// running container is found running with the same init and restarts; until then berthd
/// refuses to start on the missing database rather than make an empty one.
#[test]
fn berthd_recover_rebuilds_a_lost_database_from_the_pool() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    env.ok(&["launch", "busybox", "web", "-c", "user.role=front"]);
    env.ok(&["snapshot", "create", "web", "before"]);
    env.ok(&[
        "config",
        "set",
        "web",
        "user.tier=1",
        "limits.processes=500",
    ]);
    let stateful = env.berth(&["snapshot", "create", "web", "live", "--stateful"]);
    let have_stateful = stateful.status.success();
    if !have_stateful {
        eprintln!(
            "no stateful snapshot on this host: {}",
            text(&stateful.stderr)
        );
    }
    env.ok(&["init", "busybox", "db", "-c", "user.x=y z"]);
    env.ok(&["snapshot", "create", "db", "one"]);
    env.ok(&["snapshot", "create", "db", "two"]);
    env.ok(&["snapshot", "rename", "db", "one", "first"]);
    env.ok(&["snapshot", "delete", "db", "two"]);
    // the manifest follows each change
    let yaml = backup_yaml(&env, "web");
    assert!(
        yaml.contains("user.tier") && yaml.contains("before"),
        "{yaml}"
    );
    let yaml = backup_yaml(&env, "db");
    assert!(
        yaml.contains("first") && !yaml.contains("name: two") && !yaml.contains("name: one"),
        "{yaml}"
    );
    let want = [
        ("web", info(&env, "web"), snapshots(&env, "web")),
        ("db", info(&env, "db"), snapshots(&env, "db")),
    ];
    let pid = env.init_pid("web");
    stop_daemon(&env);
    remove_db(&env);

    // no silent fresh database over a pool that holds containers
    let out = berthd_direct(&env);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("berthd recover --state-dir"),
        "berthd on a lost database: {err}"
    );
    assert!(
        !env.state.join("berth.db").exists(),
        "an empty database was made"
    );

    let out = berthd_recover(&env);
    let report = text(&out.stdout);
    assert!(
        out.status.success(),
        "berthd recover: {report}{}",
        text(&out.stderr)
    );
    for line in [
        "recovered: container web",
        "recovered: container db",
        "recovered: image ",
    ] {
        assert!(report.contains(line), "{line:?} in {report}");
    }
    assert!(!report.contains("skipped:"), "{report}");
    // a second run finds nothing without a record
    let again = berthd_recover(&env);
    assert!(
        text(&again.stdout).contains("0 found without a database record"),
        "{}{}",
        text(&again.stdout),
        text(&again.stderr)
    );

    // berthd starts on the rebuilt database: everything is back as it was
    for (name, info_before, snaps_before) in &want {
        assert_eq!(&info(&env, name), info_before, "{name}'s record");
        assert_eq!(&snapshots(&env, name), snaps_before, "{name}'s snapshots");
    }
    assert!(
        env.ok(&["image", "list"]).contains("busybox"),
        "the alias is back"
    );
    assert_eq!(env.status("web"), "Running");
    assert_eq!(env.init_pid("web"), pid, "the same init");
    assert_eq!(env.status("db"), "Stopped");
    env.ok(&["restart", "web"]);
    assert_eq!(env.status("web"), "Running");
    assert_ne!(env.init_pid("web"), pid);
    env.ok(&["snapshot", "restore", "db", "first"]);
    env.ok(&["start", "db"]);
    assert_eq!(env.status("db"), "Running");
    if have_stateful {
        env.ok(&["snapshot", "restore", "web", "live"]);
        assert_eq!(env.status("web"), "Running");
    }
    // a new container next to the recovered ones
    env.ok(&["launch", "busybox", "after"]);
    assert_eq!(env.status("after"), "Running");
}

/// With berthd running, `berth admin recover` registers a volume whose record is gone, and
/// reports a volume it cannot (no backup.yaml) as skipped, leaving it as it is. berthd
/// refuses `berthd recover` meanwhile.
#[test]
fn admin_recover_picks_up_a_volume_without_a_record() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    env.ok(&["init", "busybox", "lost", "-c", "user.k=v"]);
    env.ok(&["snapshot", "create", "lost", "s1"]);
    env.ok(&["init", "busybox", "kept"]);
    let before = (info(&env, "lost"), snapshots(&env, "lost"));
    stop_daemon(&env);
    // the record goes, the volume stays
    {
        let db = rusqlite::Connection::open(env.state.join("berth.db")).unwrap();
        db.execute("PRAGMA foreign_keys = ON", []).unwrap();
        db.execute("DELETE FROM containers WHERE name = 'lost'", [])
            .unwrap();
    }
    // a volume with no manifest
    let stray = env.pool().join("containers/stray");
    std::fs::create_dir_all(stray.join("rootfs")).unwrap();
    let out = env.berth(&["info", "lost"]);
    assert!(!out.status.success(), "lost has no record");
    // offline recovery is refused while berthd runs
    let out = berthd_recover(&env);
    assert!(
        !out.status.success() && text(&out.stderr).contains("berth admin recover"),
        "berthd recover with berthd running: {}",
        text(&out.stderr)
    );
    let report = env.ok(&["admin", "recover"]);
    assert!(
        report.contains("recovered: container lost (1 snapshots)"),
        "{report}"
    );
    assert!(
        report.contains("skipped: container stray: no backup.yaml"),
        "{report}"
    );
    assert!(!report.contains("container kept"), "{report}");
    assert!(stray.join("rootfs").is_dir(), "a skipped volume is left");
    assert_eq!((info(&env, "lost"), snapshots(&env, "lost")), before);
    env.ok(&["start", "lost"]);
    assert_eq!(env.status("lost"), "Running");
    // the object is on the bus
    let out = env.busctl(&[
        "get-property",
        "org.berth.Berth1",
        "/org/berth/Berth1/container/lost",
        "org.berth.Berth1.Container",
        "Status",
    ]);
    assert_eq!(text(&out.stdout).trim(), "s \"Running\"");
    // unprivileged: refused by polkit
    let user = berth_tests::unprivileged_user();
    let out = env.gdbus_call_as(
        user,
        "/org/berth/Berth1",
        "org.berth.Berth1.Manager.Recover",
        &["{}"],
    );
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && err.contains("org.berth.Berth1.recover"),
        "Recover as {user}: {err}"
    );
}

/// A damaged database (not SQLite at all) and one of a newer schema are refused at start
/// with the commands that get out of it; neither file is changed.
#[test]
fn a_damaged_or_newer_database_is_refused_and_left_untouched() {
    if !root_or_skip() {
        return;
    }
    let env = Env::new(Storage::Dir);
    env.ok(&["init", "busybox", "c1"]);
    stop_daemon(&env);
    let db = env.state.join("berth.db");
    // newer schema
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.pragma_update(None, "user_version", 999).unwrap();
    }
    let snapshot_of_state = || -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<(String, Vec<u8>)> = ["berth.db", "berth.db-wal"]
            .iter()
            .filter_map(|f| Some((f.to_string(), std::fs::read(env.state.join(f)).ok()?)))
            .collect();
        v.sort();
        v
    };
    let before = snapshot_of_state();
    let out = berthd_direct(&env);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "berthd started on a newer database");
    assert!(
        err.contains("schema version 999") && err.contains("berthd recover --state-dir"),
        "{err}"
    );
    assert_eq!(
        snapshot_of_state(),
        before,
        "the newer database was changed"
    );
    let out = berthd_recover(&env);
    assert!(!out.status.success(), "recover over a newer database");
    assert_eq!(snapshot_of_state(), before);

    // not a database at all
    remove_db(&env);
    let garbage = b"this is no SQLite database, just some bytes left here".repeat(100);
    std::fs::write(&db, &garbage).unwrap();
    let out = berthd_direct(&env);
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "berthd started on a damaged database"
    );
    assert!(
        err.contains("damaged") && err.contains("mv ") && err.contains("berthd recover"),
        "{err}"
    );
    assert_eq!(std::fs::read(&db).unwrap(), garbage, "the file was changed");
    // the way out it gives works
    let old = env.state.join("db.old");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::rename(&db, old.join("berth.db")).unwrap();
    let out = berthd_recover(&env);
    assert!(
        out.status.success() && text(&out.stdout).contains("recovered: container c1"),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(env.status("c1"), "Stopped");
    env.ok(&["start", "c1"]);
}
