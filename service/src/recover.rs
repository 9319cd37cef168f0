//! The database's safety at start, and `berthd recover`: rebuilding rows from the pools with
//! berthd stopped (see `berth_actors::recover`; `berth admin recover` does the same through
//! a running berthd).

use berth_actors::store::{Db, Layout, Unusable};
use berth_runtime::storage::{DriverKind, Pool, PoolConfig};
use std::path::Path;

/// The database's file name under the state directory.
pub const DB_FILE: &str = "berth.db";

/// The pool's description, kept beside the database too: `berthd recover` needs it when
/// the database is gone.
pub const POOL_FILE: &str = "pool.json";

/// The way out of an unusable database, as commands to run.
fn way_out(state_dir: &Path) -> String {
    let s = state_dir.display();
    format!(
        "berthd leaves the file as it is. To rebuild the database from the storage pool, stop \
         berthd, move the database (with its -wal and -shm files) aside and recover:\n  \
         mkdir {s}/db.old && mv {s}/{DB_FILE}* {s}/db.old/ && berthd recover --state-dir {s}"
    )
}

/// What to tell about a database that cannot be used.
pub fn describe_unusable(state_dir: &Path, u: &Unusable) -> String {
    let path = state_dir.join(DB_FILE);
    match u {
        Unusable::Corrupt(_) => format!("{}: {u}. {}", path.display(), way_out(state_dir)),
        Unusable::Newer { .. } => format!(
            "{}: {u}: a newer berth wrote it, and this one cannot read it. Run that newer \
             berth again (a database is never downgraded). {}",
            path.display(),
            way_out(state_dir)
        ),
    }
}

/// Whether the state directory holds a pool or images (a database missing there was lost,
/// not yet made).
fn pool_has_data(state_dir: &Path) -> bool {
    let nonempty = |p: &Path| std::fs::read_dir(p).is_ok_and(|mut d| d.next().is_some());
    state_dir.join(POOL_FILE).exists()
        || state_dir.join("disks/default.img").exists()
        || nonempty(&state_dir.join("pool/containers"))
        || nonempty(&state_dir.join("images"))
}

/// Opens the database, refusing — and leaving untouched — one that is damaged or written by
/// a newer berth, and a missing one when the pool holds data (unless `recovering`): a fresh
/// database there would have the start-up sweeps remove the images and snapshots it does
/// not know. A write-ahead log without its database is refused too: SQLite would replay it
/// into a new one.
pub fn open_db(state_dir: &Path, recovering: bool) -> Result<Db, String> {
    let path = state_dir.join(DB_FILE);
    Db::check_file(&path).map_err(|u| describe_unusable(state_dir, &u))?;
    let missing = std::fs::metadata(&path).map_or(true, |m| m.len() == 0);
    if missing {
        let wal = state_dir.join(format!("{DB_FILE}-wal"));
        if wal.exists() {
            return Err(format!(
                "{} is missing but its write-ahead log {} is there; move the log aside (it \
                 belongs to the lost database) and run: berthd recover --state-dir {}",
                path.display(),
                wal.display(),
                state_dir.display()
            ));
        }
        if !recovering && pool_has_data(state_dir) {
            return Err(format!(
                "the database {} is missing, but the storage pool holds data; rebuild the \
                 database from the pool with: berthd recover --state-dir {}",
                path.display(),
                state_dir.display()
            ));
        }
    }
    Db::open(&path).map_err(|e| e.to_string())
}

/// Records the pool's description beside the database (root-only).
pub fn remember_pool(state_dir: &Path, cfg: &PoolConfig) -> Result<(), String> {
    let json = serde_json::to_string_pretty(cfg).map_err(|e| e.to_string())?;
    let path = state_dir.join(POOL_FILE);
    berth_actors::backup::write_if_changed(&path, &json)
        .map(drop)
        .map_err(|e| format!("write {}: {e}", path.display()))
}

/// The pool's description from `pool.json`, if there is one.
pub fn remembered_pool(state_dir: &Path) -> Result<Option<PoolConfig>, String> {
    let path = state_dir.join(POOL_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => serde_json::from_str(&s)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("read {}: {e}", path.display())),
    }
}

/// The pool as `berthd init` lays it out, when nothing describes it: its loop file if there
/// is one, else btrfs when the pool directory is btrfs, else dir.
fn detect_pool(state_dir: &Path) -> PoolConfig {
    let path = state_dir.join("pool");
    let loop_file = state_dir.join("disks/default.img");
    if loop_file.is_file() {
        PoolConfig {
            driver: DriverKind::Btrfs,
            path,
            source: Some(loop_file),
        }
    } else {
        let btrfs = berth_runtime::storage::btrfs::is_btrfs(&path);
        PoolConfig {
            driver: if btrfs {
                DriverKind::Btrfs
            } else {
                DriverKind::Dir
            },
            path,
            source: None,
        }
    }
}

/// Takes `<state>/berthd.lock` without waiting: a running berthd holds it.
fn lock_now(state_dir: &Path) -> Result<std::fs::File, String> {
    let (f, path) = crate::daemon::open_lock(state_dir)?;
    if crate::daemon::try_lock(&f, &path)? {
        return Ok(f);
    }
    Err(format!(
        "a berthd is running on {} (it holds {}): stop it first (systemctl stop \
         berthd.socket berthd.service), or recover through it with: berth admin recover",
        state_dir.display(),
        path.display()
    ))
}

/// `berthd recover`: with berthd stopped, registers every container volume and image of the
/// pool that has no row, from its `backup.yaml`; returns the report to print.
pub fn offline(state_dir: &Path) -> Result<String, String> {
    if !state_dir.is_dir() {
        return Err(format!(
            "no state directory {}: nothing to recover",
            state_dir.display()
        ));
    }
    let _lock = lock_now(state_dir)?;
    let mut db = open_db(state_dir, true)?;
    let cfg = match db
        .setting(crate::daemon::POOL_SETTING)
        .map_err(|e| e.to_string())?
    {
        Some(s) => serde_json::from_str(&s)
            .map_err(|e| format!("recorded pool config is unreadable: {e}"))?,
        None => {
            let cfg = match remembered_pool(state_dir)? {
                Some(c) => c,
                None => detect_pool(state_dir),
            };
            let json = serde_json::to_string(&cfg).map_err(|e| e.to_string())?;
            db.set_setting(crate::daemon::POOL_SETTING, &json)
                .map_err(|e| e.to_string())?;
            cfg
        }
    };
    let pool = Pool::new(cfg.clone());
    pool.mount().map_err(|e| format!("storage pool: {e}"))?;
    remember_pool(state_dir, &cfg)?;
    db.set_layout(Layout {
        pool,
        images: state_dir.join("images"),
    });
    let report = berth_actors::recover::recover(&mut db).map_err(|e| e.to_string())?;
    Ok(format_report(
        &report.found,
        &report.recovered,
        &report.skipped,
    ))
}

/// The report as printed: one line per finding, then the counts.
pub fn format_report(found: &[String], recovered: &[String], skipped: &[String]) -> String {
    let mut out = String::new();
    for (tag, list) in [
        ("found", found),
        ("recovered", recovered),
        ("skipped", skipped),
    ] {
        for l in list {
            out.push_str(&format!("{tag}: {l}\n"));
        }
    }
    out.push_str(&format!(
        "{} found without a database record, {} recovered, {} skipped\n",
        found.len(),
        recovered.len(),
        skipped.len()
    ));
    out
}
