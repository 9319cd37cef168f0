//! Crash points: named steps of berth's operations at which a test build of berthd,
//! berth-monitor or berth-helper kills itself with SIGKILL, as `kill -9` would, so that the
//! crash tests (tests/tests/crash.rs) can prove the crash contract of docs/architecture.md at
//! every step.
//!
//! The libraries only mark the steps ([`point`]): a load of an unset `OnceLock` and a
//! return. What reads `BERTH_CRASH_AT` and arms the marks ([`arm_from_env`]) is called only
//! by binaries built with berth-service's `crash-points` feature — on in the workspace's
//! builds (`make bins`, `cargo build --workspace`, what the tests run), off in what
//! `scripts/setup` installs (`--no-default-features`). An installed berth never dies at a
//! point, whatever its environment says.
//!
//! `BERTH_CRASH_AT=<point>` names one of [`POINTS`]; `BERTH_CRASH_MARK=<file>` (optional)
//! makes the point fire once across all processes: the first to reach it creates the file
//! (`O_EXCL`) and dies, later ones go on. The file also tells the test that the point was
//! reached.

use std::sync::OnceLock;

/// The variable naming the point to die at.
pub const ENV: &str = "BERTH_CRASH_AT";
/// The variable naming the once-only mark file.
pub const MARK_ENV: &str = "BERTH_CRASH_MARK";

/// Every point, `<process>.<operation>.<step>`; the process is the one that dies (`berthd`,
/// `monitor`, `helper`).
pub const POINTS: &[&str] = &[
    // create: the row goes in marked pending, then the volume is made, then the row commits
    "berthd.create.row-inserted",
    "berthd.create.volume-cloned",
    "berthd.create.provisioned",
    // copy: a create whose volume is copied from a container or a snapshot
    "berthd.copy.volume-copied",
    // start
    "berthd.start.monitor-spawned",
    "berthd.start.recorded",
    "monitor.start.spec-read",
    "monitor.start.init-running",
    // stop
    "berthd.stop.requested",
    "berthd.stop.recorded",
    "monitor.stop.signalled",
    // delete: the row is marked pending, the files go, then the row
    "berthd.delete.marked",
    "berthd.delete.deprovisioned",
    // snapshot: files staged, moved into place, then the row
    "berthd.snapshot.captured",
    "berthd.snapshot.committed",
    "berthd.snapshot.row-inserted",
    // stateful snapshot: the container frozen, CRIU's dump and the files taken while frozen
    "berthd.snapshot.frozen",
    "berthd.snapshot.dumped",
    // stateful stop
    "berthd.stop-stateful.frozen",
    "berthd.stop-stateful.dumped",
    // restore
    "berthd.restore.volume-replaced",
    "berthd.restore.restored",
    // publish and build: an archive made, then imported
    "berthd.publish.packed",
    "berthd.build.packed",
    // image import (and the import half of publish and build)
    "helper.unpack.started",
    "helper.unpack.written",
    "berthd.import.staged",
    "berthd.image.stored",
    "berthd.image.recorded",
];

/// The armed point, if any (set once, by [`arm_from_env`]).
static ARMED: OnceLock<Armed> = OnceLock::new();

#[derive(Debug)]
struct Armed {
    point: String,
    mark: Option<std::path::PathBuf>,
}

/// Arms the point `BERTH_CRASH_AT` names. Only binaries built with the `crash-points`
/// feature call it. Errors name an unknown point (a typo in a test must not pass as a point
/// never reached).
pub fn arm_from_env() -> Result<(), String> {
    let Some(point) = std::env::var_os(ENV) else {
        return Ok(());
    };
    let point = point.to_string_lossy().into_owned();
    if point.is_empty() {
        return Ok(());
    }
    if !POINTS.contains(&point.as_str()) {
        return Err(format!("{ENV}={point}: no such crash point"));
    }
    let mark = std::env::var_os(MARK_ENV)
        .filter(|m| !m.is_empty())
        .map(std::path::PathBuf::from);
    let _ = ARMED.set(Armed { point, mark });
    Ok(())
}

/// Marks the step `name` (one of [`POINTS`]): the process dies here if it is armed for it.
#[inline]
pub fn point(name: &'static str) {
    if let Some(armed) = ARMED.get() {
        fire(armed, name);
    }
}

#[cold]
fn fire(armed: &Armed, name: &str) {
    if armed.point != name {
        return;
    }
    if let Some(mark) = &armed.mark {
        // the first process to get here dies; the others go on
        if std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(mark)
            .is_err()
        {
            return;
        }
    }
    eprintln!(
        "crash point {name}: killing myself (pid {})",
        std::process::id()
    );
    // SAFETY: kill(2) on our own pid; SIGKILL cannot be caught, so nothing runs after it.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    // (not reached; SIGKILL to oneself is delivered before kill returns)
    std::process::abort();
}

#[cfg(test)]
mod tests {
    use super::POINTS;
    use std::collections::BTreeSet;
    use std::path::Path;

    fn scan(dir: &Path, found: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                scan(&p, found);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                let needle = concat!("crash::point", "(\"");
                for (i, _) in text.match_indices(needle) {
                    let rest = &text[i + needle.len()..];
                    found.insert(rest[..rest.find('"').unwrap()].to_string());
                }
            }
        }
    }

    /// Every point the code marks is in the list the crash test walks, and every listed
    /// point is marked somewhere: a point added without its test, or a test of a point that
    /// no longer exists, fails here.
    #[test]
    fn the_list_is_the_points_the_code_marks() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut found = BTreeSet::new();
        for krate in ["runtime/src", "actors/src", "service/src"] {
            scan(&root.join(krate), &mut found);
        }
        let listed: BTreeSet<String> = POINTS.iter().map(|s| s.to_string()).collect();
        assert_eq!(listed.len(), POINTS.len(), "a point is listed twice");
        assert_eq!(found, listed);
    }
}
