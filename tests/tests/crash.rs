//! End-to-end: the crash contract of docs/architecture.md. berthd, a monitor or a helper is
//! killed (SIGKILL, as `kill -9`) at every crash point of berth_runtime::crash — each step of
//! create, copy, start, stop, delete, snapshot (stateless and stateful), stateful stop,
//! restore, publish, image import and build — and at random moments of a few operations.
//! After a restart of berthd without the hook: every container that existed still exists,
//! running ones still run with the same init (or are reported stopped, with nothing left
//! running in their groups), nothing is frozen, nothing half-made is visible (checked against
//! the files under the state dir and the pool), no staging leftovers remain, and the
//! operation, retried, succeeds.
//!
//! One environment (bus, polkitd, pool) serves every point: berthd is stopped, armed through
//! the bus's activation environment, activated by the operation, and after the crash
//! activated again unarmed.

use berth_runtime::crash::{ENV, MARK_ENV, POINTS};
use berth_tests::archive::{self, E};
use berth_tests::{Env, Storage, root_or_skip, text, wait_for};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `assert!` that returns the failure instead of panicking.
macro_rules! ensure {
    ($c:expr, $($m:tt)+) => {
        if !$c {
            return Err(format!($($m)+));
        }
    };
}

/// `assert_eq!` that returns the failure instead of panicking.
macro_rules! ensure_eq {
    ($a:expr, $b:expr, $($m:tt)+) => {{
        let (a, b) = (&$a, &$b);
        if a != b {
            return Err(format!("{}: {a:?} != {b:?}", format!($($m)+)));
        }
    }};
}

/// The operation a point belongs to, as the test drives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Create,
    Copy,
    Start,
    Stop,
    Delete,
    Snapshot,
    StatefulSnapshot,
    StatefulStop,
    Restore,
    Publish,
    Import,
    Build,
}

fn op_of(point: &str) -> Op {
    let mut parts = point.split('.');
    let (_, op, step) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
    match (op, step) {
        ("create", _) => Op::Create,
        ("copy", _) => Op::Copy,
        ("start", _) => Op::Start,
        ("stop", _) => Op::Stop,
        ("delete", _) => Op::Delete,
        ("snapshot", "frozen" | "dumped") => Op::StatefulSnapshot,
        ("snapshot", _) => Op::Snapshot,
        ("stop-stateful", _) => Op::StatefulStop,
        ("restore", _) => Op::Restore,
        ("publish", _) => Op::Publish,
        ("build", _) => Op::Build,
        ("unpack" | "import" | "image", _) => Op::Import,
        other => panic!("crash point {point}: no operation drives {other:?}"),
    }
}

const T: &str = "t";
/// Bystanders: made before any point is armed, never touched by an operation.
const KEEP_RUN: &str = "keep-run";
const KEEP_STOP: &str = "keep-stop";

struct Crash {
    env: Env,
    n: u32,
}

impl Crash {
    /// What the bus passes to the berthd it activates next (empty: nothing armed).
    fn activation_env(&self, point: &str, mark: &Path) {
        let mark = mark.display().to_string();
        self.env
            .activation_env(&[(ENV, point), (MARK_ENV, mark.as_str())]);
    }

    /// Stops berthd (SIGTERM) if one runs, and waits until it is gone.
    fn stop_daemon(&self) {
        let Some(pid) = self.env.daemon_pid() else {
            return;
        };
        // SAFETY: kill(2) on the pid the bus names as berthd's.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        self.wait_gone(pid);
    }

    fn wait_gone(&self, pid: u32) {
        // (a call that reached the bus after the death may have activated a successor)
        wait_for(Duration::from_secs(60), "berthd to exit", || {
            !alive(pid) && self.env.daemon_pid() != Some(pid)
        });
    }

    fn berth(&self, args: &[&str]) -> std::process::Output {
        self.env.berth(args)
    }

    fn ok(&self, args: &[&str]) -> String {
        self.env.ok(args)
    }

    fn containers(&self) -> BTreeMap<String, (String, u32)> {
        let v: serde_json::Value =
            serde_json::from_str(&self.ok(&["list", "--format", "json"])).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_string(),
                    (
                        c["status"].as_str().unwrap().to_string(),
                        c["init_pid"].as_u64().unwrap_or(0) as u32,
                    ),
                )
            })
            .collect()
    }

    fn snapshots(&self, c: &str) -> Vec<(String, bool)> {
        let v: serde_json::Value =
            serde_json::from_str(&self.ok(&["snapshot", "list", c, "--format", "json"])).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap().to_string(),
                    s["stateful"].as_bool().unwrap_or(false),
                )
            })
            .collect()
    }

    /// Images: fingerprint → aliases.
    fn images(&self) -> BTreeMap<String, Vec<String>> {
        let v: serde_json::Value =
            serde_json::from_str(&self.ok(&["image", "list", "--format", "json"])).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["fingerprint"].as_str().unwrap().to_string(),
                    i["aliases"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|x| {
                                    x.as_str()
                                        .or_else(|| x["name"].as_str())
                                        .unwrap_or_default()
                                        .to_string()
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                )
            })
            .collect()
    }

    fn has_alias(&self, alias: &str) -> bool {
        self.images().values().any(|a| a.iter().any(|x| x == alias))
    }

    fn status(&self, c: &str) -> Option<String> {
        self.containers().get(c).map(|(s, _)| s.clone())
    }

    /// The preconditions of `op`, made by an unarmed berthd.
    fn setup(&mut self, op: Op) -> Option<PathBuf> {
        match op {
            Op::Create | Op::Copy | Op::Build => None,
            Op::Start | Op::Delete | Op::Publish => {
                self.ok(&["init", "busybox", T]);
                None
            }
            Op::Stop | Op::Snapshot | Op::StatefulSnapshot | Op::StatefulStop => {
                self.ok(&["launch", "busybox", T]);
                None
            }
            Op::Restore => {
                self.ok(&["launch", "busybox", T]);
                self.ok(&["snapshot", "create", T, "s0"]);
                None
            }
            Op::Import => {
                // an image of its own each time: a known one is not unpacked again
                self.n += 1;
                let tar = archive::tar(&[
                    archive::metadata(),
                    E::Dir("rootfs"),
                    E::Dir("rootfs/etc"),
                    E::File(
                        "rootfs/etc/crash-test",
                        format!("{}-{}", std::process::id(), self.n).into_bytes(),
                        0o644,
                    ),
                ]);
                let p = self.env.dir.join(format!("import-{}.tar", self.n));
                std::fs::write(&p, tar).unwrap();
                Some(p)
            }
        }
    }

    fn args(op: Op, file: Option<&Path>) -> Vec<String> {
        let v: &[&str] = match op {
            Op::Create => &["init", "busybox", T],
            Op::Copy => &["copy", KEEP_STOP, T],
            Op::Start => &["start", T],
            Op::Stop => &["stop", T],
            Op::Delete => &["delete", T],
            Op::Snapshot => &["snapshot", "create", T, "s1"],
            Op::StatefulSnapshot => &["snapshot", "create", "--stateful", T, "s1"],
            Op::StatefulStop => &["stop", "--stateful", T],
            Op::Restore => &["snapshot", "restore", T, "s0"],
            Op::Publish => &["publish", T, "--alias", "pub"],
            Op::Build => &["image", "build", "busybox", "--alias", "rebuilt"],
            Op::Import => {
                return vec![
                    "image".into(),
                    "import".into(),
                    file.unwrap().display().to_string(),
                    "--alias".into(),
                    "imp".into(),
                ];
            }
        };
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Whether the effect of `op` is there (a retry would then be refused as done).
    fn done(&self, op: Op) -> bool {
        match op {
            Op::Create | Op::Copy => self.status(T).is_some(),
            Op::Start => self.status(T).as_deref() == Some("Running"),
            Op::Stop | Op::StatefulStop => self.status(T).as_deref() == Some("Stopped"),
            Op::Delete => self.status(T).is_none(),
            Op::Snapshot | Op::StatefulSnapshot => self.snapshots(T).iter().any(|s| s.0 == "s1"),
            Op::Restore => false,
            Op::Publish => self.has_alias("pub"),
            Op::Import => self.has_alias("imp"),
            Op::Build => self.has_alias("rebuilt"),
        }
    }

    /// Back to the bystanders and the busybox image alone.
    fn cleanup(&self) {
        if self.status(T).is_some() {
            self.ok(&["delete", "--force", T]);
        }
        for a in ["pub", "imp", "rebuilt"] {
            if self.has_alias(a) {
                // rebuilt names busybox's own image when the build found it known
                if self
                    .images()
                    .iter()
                    .any(|(_, al)| al.iter().any(|x| x == a) && al.iter().any(|x| x == "busybox"))
                {
                    self.ok(&["image", "alias", "delete", a]);
                } else {
                    self.ok(&["image", "delete", a]);
                }
            }
        }
    }

    /// The crash contract, checked against berthd's answers and the files on disk.
    fn check(&self, ctx: &str, running_before: &BTreeMap<String, u32>) {
        // the containers' actors spawn in batches after berthd answers, each reconciling its
        // record with its monitor: until then a record may still say what the dead berthd
        // wrote (Starting, Stopping, Running); it must settle within a bound
        let mut list = self.containers();
        let deadline = Instant::now() + Duration::from_secs(10);
        let settled = |list: &BTreeMap<String, (String, u32)>| {
            list.iter().all(|(name, (s, init))| match s.as_str() {
                "Running" => self
                    .env
                    .monitor_status(name)
                    .is_some_and(|m| m.init_pid as u32 == *init),
                "Stopped" => true,
                _ => false,
            })
        };
        while !settled(&list) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            list = self.containers();
        }
        for c in [KEEP_RUN, KEEP_STOP] {
            assert!(list.contains_key(c), "{ctx}: container {c} is gone");
        }
        let keep = &list[KEEP_RUN];
        assert_eq!(
            (keep.0.as_str(), keep.1),
            ("Running", running_before[KEEP_RUN]),
            "{ctx}: the bystander {KEEP_RUN} changed"
        );
        for (name, (status, init)) in &list {
            match status.as_str() {
                "Running" => {
                    let m = self
                        .env
                        .monitor_status(name)
                        .unwrap_or_else(|| panic!("{ctx}: {name} is Running without a monitor"));
                    assert_eq!(
                        m.init_pid as u32, *init,
                        "{ctx}: {name}'s recorded init is not its monitor's"
                    );
                    assert!(alive(*init), "{ctx}: {name}'s init {init} is dead");
                    if let Some(was) = running_before.get(name) {
                        assert_eq!(init, was, "{ctx}: {name} runs with another init");
                    }
                    assert!(
                        !self.frozen(name),
                        "{ctx}: {name} is left frozen\n{}",
                        self.env.daemon_log_tail()
                    );
                    // and it answers
                    self.ok(&["exec", name, "--", "true"]);
                }
                "Stopped" => {
                    let left = self.processes_of(name);
                    assert!(
                        left.is_empty(),
                        "{ctx}: {name} is reported Stopped, yet {left:?} run in its groups"
                    );
                }
                other => panic!("{ctx}: {name} is left {other}"),
            }
        }
        self.check_disk(ctx, &list);
    }

    fn frozen(&self, name: &str) -> bool {
        self.env.cgroup_dirs(name).iter().any(|d| {
            std::fs::read_to_string(d.join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1")
                || std::fs::read_to_string(d.join("freezer.state"))
                    .is_ok_and(|s| s.trim() != "THAWED")
        })
    }

    fn processes_of(&self, name: &str) -> Vec<u32> {
        fn walk(d: &Path, out: &mut Vec<u32>) {
            if let Ok(s) = std::fs::read_to_string(d.join("cgroup.procs")) {
                out.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
            for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
        }
        let mut out = Vec::new();
        for d in self.env.cgroup_dirs(name) {
            walk(&d, &mut out);
        }
        out.sort();
        out.dedup();
        out
    }

    /// Rows and files agree: no volume without its row, no row without its volume, no
    /// snapshot without its state, no image without its files, no staging leftovers.
    fn disk_agrees(&self, ctx: &str, list: &BTreeMap<String, (String, u32)>) -> Result<(), String> {
        let pool = self.env.pool();
        let names: BTreeSet<String> = list.keys().cloned().collect();
        ensure_eq!(
            entries(&pool.join("containers")),
            names,
            "{ctx}: container volumes (incl. leftovers) are not the containers"
        );
        for c in &names {
            ensure!(
                pool.join("containers").join(c).join("rootfs").is_dir(),
                "{ctx}: {c} has no rootfs"
            );
        }
        for c in entries(&pool.join("snapshots")) {
            ensure!(
                names.contains(&c),
                "{ctx}: snapshots of a container that does not exist: {c}"
            );
        }
        for c in &names {
            let snaps = self.snapshots(c);
            let dir = pool.join("snapshots").join(c);
            let on_disk: BTreeSet<String> =
                entries(&dir).into_iter().filter(|e| e != ".stop").collect();
            ensure!(
                on_disk.iter().all(|e| !e.starts_with('.')),
                "{ctx}: snapshot leftovers of {c}: {on_disk:?}"
            );
            ensure_eq!(
                on_disk.len(),
                snaps.len(),
                "{ctx}: snapshot files of {c} {on_disk:?} are not its snapshots {snaps:?}"
            );
            let with_state = on_disk
                .iter()
                .filter(|id| dir.join(id).join("state/inventory.img").is_file())
                .count();
            for id in &on_disk {
                ensure!(
                    dir.join(id).join("volume").is_dir(),
                    "{ctx}: snapshot {c}/{id} has no volume"
                );
            }
            ensure_eq!(
                with_state,
                snaps.iter().filter(|s| s.1).count(),
                "{ctx}: stateful snapshots of {c} without their state (or state without one)"
            );
            if dir.join(".stop").exists() {
                ensure!(
                    dir.join(".stop/state/inventory.img").is_file(),
                    "{ctx}: {c}'s saved stop state is half made"
                );
                ensure_eq!(
                    list[c].0,
                    "Stopped",
                    "{ctx}: {c} runs with a stop state kept"
                );
            }
        }
        let fps: BTreeSet<String> = self.images().into_keys().collect();
        ensure_eq!(
            entries(&pool.join("images")),
            fps,
            "{ctx}: image volumes (incl. staging) are not the images"
        );
        ensure_eq!(
            entries(&self.env.state.join("images")),
            fps,
            "{ctx}: image files (incl. leftovers) are not the images"
        );
        for fp in &fps {
            ensure!(
                pool.join("images").join(fp).join("rootfs").is_dir(),
                "{ctx}: image {fp} has no rootfs"
            );
            ensure!(
                {
                    let files = entries(&self.env.state.join("images").join(fp));
                    files.contains("image") || (files.contains("meta") && files.contains("rootfs"))
                },
                "{ctx}: image {fp} has no archive"
            );
        }
        Ok(())
    }

    /// [`Crash::disk_agrees`], given the sweeps that run as the containers' actors spawn
    /// (in batches, after berthd answers) a bounded time to finish.
    fn check_disk(&self, ctx: &str, list: &BTreeMap<String, (String, u32)>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.disk_agrees(ctx, list) {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => {
                    panic!("{e}\n{}", self.env.daemon_log_tail())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn running(&self) -> BTreeMap<String, u32> {
        self.containers()
            .into_iter()
            .filter(|(_, (s, _))| s == "Running")
            .map(|(n, (_, p))| (n, p))
            .collect()
    }

    /// Kill at `point`, restart, check, retry, check.
    fn at_point(&mut self, point: &'static str) {
        let t0 = Instant::now();
        let op = op_of(point);
        // a monitor is armed by the berthd that starts it: the one that stops must be
        let start_armed = point.starts_with("monitor.stop");
        let file = self.setup(if start_armed { Op::Start } else { op });
        let mark = self.env.dir.join(format!("mark-{point}"));
        self.stop_daemon();
        self.activation_env(point, &mark);
        self.ok(&["list"]);
        if start_armed {
            self.ok(&["start", T]);
        }
        let before = self.running_untouched(op);
        let armed = self.env.daemon_pid().expect("berthd runs");
        let args = Self::args(op, file.as_deref());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.berth(&args);
        wait_for(
            Duration::from_secs(30),
            &format!(
                "crash point {point} to be reached by {args:?} (which answered {}: {}{})",
                out.status,
                text(&out.stdout),
                text(&out.stderr)
            ),
            || mark.exists(),
        );
        if point.starts_with("berthd.") {
            self.wait_gone(armed);
            assert!(
                !out.status.success(),
                "{point}: {args:?} succeeded although berthd died before answering"
            );
        }
        self.stop_daemon();
        self.activation_env("", Path::new(""));
        let ctx = format!("after a crash at {point} ({args:?})");
        self.check(&ctx, &before);
        if !self.done(op) {
            let out = self.berth(&args);
            assert!(
                out.status.success(),
                "{ctx}: the retry failed: {}\n{}",
                text(&out.stderr),
                self.env.daemon_log_tail()
            );
            assert!(
                self.done(op) || op == Op::Restore,
                "{ctx}: the retry did nothing"
            );
        }
        if op == Op::StatefulStop {
            // what the stop saved (if it did) restores
            self.ok(&["start", T]);
        }
        let after = self.running();
        self.check(&format!("{ctx}, retried"), &after);
        self.cleanup();
        eprintln!("crash point {point}: ok in {} ms", t0.elapsed().as_millis());
    }

    /// The running containers whose init `op` must keep: all but the one a start, stop or
    /// restore replaces (a snapshot, stateful or not, keeps it).
    fn running_untouched(&self, op: Op) -> BTreeMap<String, u32> {
        let mut r = self.running();
        if matches!(op, Op::Start | Op::Stop | Op::StatefulStop | Op::Restore) {
            r.remove(T);
        }
        r
    }

    /// Kill -9 berthd `delay` after `op` began.
    fn at_random(&mut self, op: Op, delay: Duration) {
        let file = self.setup(op);
        let before = self.running_untouched(op);
        let args = Self::args(op, file.as_deref());
        let pid = self.env.daemon_pid().expect("berthd runs");
        let mut cmd = std::process::Command::new(berth_tests::bin("berth"));
        cmd.args(&args)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.env.bus)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().unwrap();
        std::thread::sleep(delay);
        // SAFETY: kill(2) on the pid the bus names as berthd's.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let _ = child.wait();
        self.wait_gone(pid);
        let ctx = format!("after kill -9 {} ms into {args:?}", delay.as_millis());
        self.check(&ctx, &before);
        if !self.done(op) {
            let out = self.berth(&args.iter().map(String::as_str).collect::<Vec<_>>());
            assert!(
                out.status.success(),
                "{ctx}: the retry failed: {}\n{}",
                text(&out.stderr),
                self.env.daemon_log_tail()
            );
        }
        if op == Op::StatefulStop {
            self.ok(&["start", T]);
        }
        let after = self.running();
        self.check(&format!("{ctx}, retried"), &after);
        self.cleanup();
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

/// Names in a directory (none when it is missing).
fn entries(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Every point, then kill -9 at random moments of a few operations (a bounded count; the
/// seed is printed). One environment for all: each berthd start is what is measured.
#[test]
fn kill_9_at_every_crash_point_and_at_random_keeps_the_contract() {
    if !root_or_skip() {
        return;
    }
    let t0 = Instant::now();
    let mut c = Crash {
        env: Env::new(Storage::Btrfs),
        n: 0,
    };
    c.ok(&["launch", "busybox", KEEP_RUN]);
    c.ok(&["init", "busybox", KEEP_STOP]);
    let only = std::env::var("BERTH_CRASH_ONLY").ok();
    for p in POINTS {
        if only.as_deref().is_some_and(|o| !p.contains(o)) {
            continue;
        }
        c.at_point(p);
    }
    eprintln!(
        "{} crash points in {} s",
        POINTS.len(),
        t0.elapsed().as_secs()
    );
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    eprintln!("random crash seed {seed}");
    let mut x = seed | 1;
    let mut next = move || {
        // xorshift
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let ops = [
        Op::StatefulSnapshot,
        Op::StatefulStop,
        Op::Snapshot,
        Op::Create,
        Op::Start,
        Op::Delete,
        Op::Restore,
        Op::Import,
    ];
    for op in ops {
        if only.is_some() {
            break;
        }
        let delay = Duration::from_millis(next() % 150);
        c.ok(&["list"]);
        c.at_random(op, delay);
    }
    eprintln!("all in {} s", t0.elapsed().as_secs());
}
