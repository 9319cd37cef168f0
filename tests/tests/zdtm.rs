//! The checkpoint matrix: CRIU's own zdtm static tests run inside a berth container, on the
//! default btrfs pool and on `dir`.
//!
//! `scripts/setup` builds the tests `tests/zdtm/tests` lists from the CRIU source it builds
//! CRIU from (statically linked: the busybox image has no libc) into `/var/lib/berth-test/zdtm`,
//! with the line each test's Makefile starts it with. Here each test is started in the
//! container as zdtm starts it (its launcher returns once the test has set up what it checks),
//! a stateful snapshot is taken while it runs, and the snapshot is restored twice. After each
//! restore the test is told to finish (SIGTERM) and must report PASS, which a zdtm test does
//! only when everything it set up came back as it was: memory, files, sockets, signals, timers,
//! the process tree. A test the list marks `crfail` is one CRIU refuses to dump (zdtm's own
//! `crfail` flag): the snapshot must fail with `CheckpointFailed` naming CRIU's reason; one it
//! marks `refused` is one berth's pre-flight refuses before freezing (`NotSupported`, the
//! reason named); either way the container must run on with its init.
//!
//! One container per pool runs the tests one after another. After each, the test's processes
//! are killed and its files removed; a test that left more behind (a mount, a process outside
//! its session) or stopped the container has it restarted, so each test starts from the same
//! container at rest. A failure is recorded and the run goes on, so one run reports every
//! test that fails.

use berth_tests::{Env, Storage, root_or_skip, text};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const C: &str = "zdtm";

/// What the list expects of one test.
#[derive(Debug)]
enum Expect {
    /// Checkpointed and restored twice, PASS after each restore.
    Pass,
    /// The snapshot fails with CheckpointFailed and this text from CRIU.
    CrFail(String),
    /// berth's pre-flight refuses the snapshot (NotSupported) with this text, before
    /// anything is frozen: what CRIU would fail at, or hang on, here.
    Refused(String),
}

/// Whether berth freezes containers through a cgroup v1 freezer here, where the pre-flight
/// refuses stopped processes (the list's `stopped`: refused on v1, checkpointed on v2).
fn v1_freezer() -> bool {
    Path::new("/sys/fs/cgroup/freezer/freezer.state").exists()
        || Path::new("/sys/fs/cgroup/freezer/cgroup.procs").exists()
}

fn built() -> PathBuf {
    let dir = PathBuf::from("/var/lib/berth-test/zdtm");
    assert!(
        dir.join("commands").is_file(),
        "{} is missing: scripts/setup builds CRIU's zdtm tests there",
        dir.display()
    );
    dir
}

/// The list: `NAME`, `NAME crfail REASON…`, `NAME refused REASON…`, `NAME stopped` or
/// `NAME btrfs REASON…` (run on the btrfs pool only; REASON is the dir pool's gap); `#`
/// starts a comment.
fn list(storage: Storage) -> Vec<(String, Expect)> {
    let path = berth_tests::repo().join("tests/zdtm/tests");
    let body = std::fs::read_to_string(&path).unwrap();
    let mut tests = Vec::new();
    for line in body.lines() {
        let line = line.split('#').next().unwrap().trim();
        let mut words = line.split_whitespace();
        let Some(name) = words.next() else { continue };
        let expect = match words.next() {
            None => Expect::Pass,
            Some("btrfs") if matches!(storage, Storage::Btrfs) => Expect::Pass,
            Some("btrfs") => continue,
            Some("stopped") if v1_freezer() => Expect::Refused("is stopped".into()),
            Some("stopped") => Expect::Pass,
            Some(how @ ("crfail" | "refused")) => {
                let reason = words.collect::<Vec<_>>().join(" ");
                assert!(!reason.is_empty(), "{name}: {how} needs the reason");
                if how == "crfail" {
                    Expect::CrFail(reason)
                } else {
                    Expect::Refused(reason)
                }
            }
            Some(other) => panic!("{}: {name}: unknown expectation {other:?}", path.display()),
        };
        tests.push((name.to_string(), expect));
    }
    assert!(
        tests.len() > 100,
        "{} lists {} tests",
        path.display(),
        tests.len()
    );
    tests
}

/// Test name → the arguments its Makefile starts it with.
fn commands(dir: &Path) -> BTreeMap<String, String> {
    let body = std::fs::read_to_string(dir.join("commands")).unwrap();
    body.lines()
        .filter_map(|l| {
            let (prog, args) = l.split_once(' ')?;
            Some((prog.strip_prefix("./")?.to_string(), args.to_string()))
        })
        .collect()
}

/// Runs `script` in the container; Ok(stdout) or Err(what it said).
fn sh(env: &Env, script: &str) -> Result<String, String> {
    let out = env.berth(&["exec", C, "--", "sh", "-c", script]);
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(format!(
            "{}{}",
            text(&out.stdout).trim(),
            text(&out.stderr).trim()
        ))
    }
}

fn berth(env: &Env, args: &[&str]) -> Result<(), String> {
    let out = env.berth(args);
    if out.status.success() {
        Ok(())
    } else {
        Err(text(&out.stderr).trim().to_string())
    }
}

/// Tells the test to finish and reads its verdict. It has a minute to end, though a TCP test
/// draining its restored connections takes under a second: socket-tcpbuf-local once seemed
/// slow past 10 s and was deadlocked (restored sockets sent 524-byte segments, fixed in
/// berth's CRIU: scripts/criu/0005-…).
fn finish(env: &Env, t: &str) -> Result<(), String> {
    sh(
        env,
        &format!(
            "cd /zdtm/run/{t} && kill -TERM $(cat {t}.pid) && \
             for i in $(seq 3000); do [ -e {t}.pid ] || break; usleep 20000; done; \
             grep -q PASS {t}.out 2>/dev/null || {{ ls -l; cat {t}.out*; exit 1; }}"
        ),
    )
    .map(drop)
}

/// One test: Ok, or what went wrong.
fn one(env: &Env, bin: &Path, t: &str, args: &str, expect: &Expect) -> Result<(), String> {
    // each test's binary is put in for it alone (they are ~1 MB each, statically linked): a
    // snapshot on the dir pool copies the whole rootfs
    let binary = std::fs::read(bin.join(t)).map_err(|e| format!("{t}: {e}"))?;
    let out = env.berth_stdin(
        &[
            "exec",
            C,
            "--",
            "sh",
            "-c",
            &format!("cat > /zdtm/bin/{t} && chmod 0755 /zdtm/bin/{t}"),
        ],
        Some(&binary),
    );
    if !out.status.success() {
        return Err(format!("copying in: {}", text(&out.stderr)));
    }
    sh(
        env,
        // stdin from the container's /dev/null: the host's, which an exec from a test
        // harness gets, is a file CRIU cannot put anywhere (the pre-flight says so); the
        // directory open to all, as zdtm's, for the tests that drop root and then finish
        // their output file there
        &format!(
            "mkdir -p /zdtm/run/{t} && chmod 0777 /zdtm/run/{t} && cd /zdtm/run/{t} && \
             {{ /zdtm/bin/{t} {args} </dev/null || {{ cat {t}.out* 2>/dev/null; exit 1; }}; }}"
        ),
    )
    .map_err(|e| format!("start: {e}"))?;
    let init = env.init_pid(C);
    let dump = berth(env, &["snapshot", "create", "--stateful", C, "z"]);
    match (expect, dump) {
        (Expect::CrFail(reason) | Expect::Refused(reason), Err(e)) => {
            let name = match expect {
                Expect::CrFail(_) => "(CheckpointFailed)",
                _ => "(NotSupported)",
            };
            // CRIU's messages hold tabs ("fsnotify: \tCan't dump that handle")
            let flat = e.split_whitespace().collect::<Vec<_>>().join(" ");
            if !flat.contains(name) || !flat.contains(reason.as_str()) {
                return Err(format!("dump failed otherwise than {name} `{reason}`: {e}"));
            }
            if env.status(C) != "Running" || env.init_pid(C) != init {
                return Err(format!(
                    "the refused dump left the container {}",
                    env.status(C)
                ));
            }
            return Ok(());
        }
        (Expect::CrFail(_) | Expect::Refused(_), Ok(())) => {
            return Err(format!("dump succeeded; the list expects {expect:?}"));
        }
        (Expect::Pass, Err(e)) => return Err(format!("dump: {e}")),
        (Expect::Pass, Ok(())) => {}
    }
    for round in 1..=2 {
        berth(env, &["snapshot", "restore", C, "z"])
            .map_err(|e| format!("restore {round}: {e}"))?;
        finish(env, t).map_err(|e| format!("check after restore {round}: {e}"))?;
    }
    Ok(())
}

fn matrix(storage: Storage) {
    if !root_or_skip() {
        return;
    }
    let dir = built();
    let cmds = commands(&dir);
    let tests = list(storage);
    let env = Env::new(storage);
    env.ok(&["launch", "busybox", C]);
    env.ok(&["exec", C, "--", "mkdir", "-p", "/zdtm/bin", "/zdtm/run"]);

    // mounts and live processes of the container at rest: a test that leaves more behind
    // (mounts, children outside its process group) has the container restarted after it
    let at_rest = || {
        sh(
            &env,
            "echo $(wc -l < /proc/self/mountinfo) $(ps -o stat | grep -vc Z)",
        )
        .unwrap_or_default()
    };
    // busybox's init starts its console shell and mounts /run just after the start
    let mut rest = at_rest();
    for _ in 0..50 {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let now = at_rest();
        if now == rest {
            break;
        }
        rest = now;
    }
    let mut failed = Vec::new();
    let mut restarts = 0;
    for (t, expect) in &tests {
        let args = cmds
            .get(t)
            .unwrap_or_else(|| panic!("{t} is not built: run scripts/setup"));
        // a call that does not answer in time panics (tests/src/lib.rs run_input): a hang
        // is this test's failure, and the container is no use for the rest of the run
        let result = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            one(&env, &dir.join("bin"), t, args, expect)
        })) {
            Ok(r) => r,
            Err(p) => {
                let what = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failed.push(format!("{t}: {what} (the run stops here)"));
                break;
            }
        };
        let _ = berth(&env, &["snapshot", "delete", C, "z"]);
        if let Err(e) = result {
            failed.push(format!("{t}: {e}"));
        }
        // the test's processes (its session, as zdtm starts it), then its files
        let _ = sh(
            &env,
            &format!(
                "cd /zdtm/run/{t} 2>/dev/null && [ -e {t}.pid ] && kill -9 -$(cat {t}.pid) $(cat {t}.pid); \
                 cd / && rm -rf /zdtm/run/{t} /zdtm/bin/{t}"
            ),
        );
        if env.status(C) != "Running" || at_rest() != rest {
            restarts += 1;
            let _ = berth(&env, &["stop", "--force", C]);
            env.ok(&["start", C]);
            // busybox's init mounts and starts its console shell once started
            let t0 = std::time::Instant::now();
            while at_rest() != rest && t0.elapsed().as_secs() < 10 {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
    eprintln!(
        "zdtm: {} tests, {} failed, the container restarted after {restarts}",
        tests.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} zdtm tests failed:\n{}",
        failed.len(),
        tests.len(),
        failed.join("\n")
    );
}

#[test]
fn zdtm_static_tests_checkpoint_and_restore_twice_on_btrfs() {
    matrix(Storage::Btrfs);
}

#[test]
fn zdtm_static_tests_checkpoint_and_restore_twice_on_dir() {
    matrix(Storage::Dir);
}
