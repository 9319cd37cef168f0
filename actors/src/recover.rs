//! Rebuilding rows from the pools (`berthd recover`, `berth admin recover`), as
//! `incus admin recover` does: every container volume and kept image that has no row but a
//! readable `backup.yaml` (see [`crate::backup`]) is registered again; what cannot be is
//! reported with the reason and left untouched on disk.

use crate::backup::{self, ContainerBackup, ImageBackup};
use crate::error::{Error, Result};
use crate::store::Db;
use crate::types::{ContainerRecord, ImageRecord, SnapshotRecord, validate_name};
use std::collections::HashSet;

/// What a recovery found and did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Volumes and images on disk without a row: `container NAME`, `image FINGERPRINT`.
    pub found: Vec<String>,
    /// What was registered again, with what it brought back.
    pub recovered: Vec<String>,
    /// What was found but not registered, with the reason (nothing of it was changed).
    pub skipped: Vec<String>,
    /// The containers registered, with their snapshots.
    pub containers: Vec<(ContainerRecord, Vec<SnapshotRecord>)>,
    /// The images registered.
    pub images: Vec<ImageRecord>,
}

fn is_fingerprint(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// A snapshot id as [`crate::types::new_snapshot_id`] makes them: digits, '-', hex.
fn is_snapshot_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('-')
        && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// Entries of a directory, sorted; a missing directory has none.
fn entries(dir: &std::path::Path) -> Result<Vec<String>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::Store(format!("read {}: {e}", dir.display()))),
    };
    let mut names: Vec<String> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    Ok(names)
}

/// Registers every unrecorded image and container volume that describes itself. Images
/// first, so that containers find theirs.
pub fn recover(db: &mut Db) -> Result<Report> {
    let layout = db
        .layout()
        .cloned()
        .ok_or_else(|| Error::Store("recover: the storage pool is not known".into()))?;
    let mut report = Report::default();
    let loaded = db.load()?;
    let known_images: HashSet<String> = loaded
        .images
        .iter()
        .map(|i| i.fingerprint.clone())
        .collect();
    let mut taken_aliases: HashSet<String> = loaded
        .images
        .iter()
        .flat_map(|i| i.aliases.iter().cloned())
        .collect();
    for fp in entries(&layout.images)? {
        if !is_fingerprint(&fp) || known_images.contains(&fp) {
            continue;
        }
        report.found.push(format!("image {fp}"));
        let skip = |why: String| format!("image {fp}: {why}");
        let b = match backup::read::<ImageBackup>(&layout.images.join(&fp).join(backup::FILE)) {
            Ok(Some(b)) => b,
            Ok(None) => {
                report.skipped.push(skip("no backup.yaml".into()));
                continue;
            }
            Err(e) => {
                report.skipped.push(skip(e));
                continue;
            }
        };
        if b.image.fingerprint != fp {
            report.skipped.push(skip(format!(
                "its backup.yaml describes image {}",
                b.image.fingerprint
            )));
            continue;
        }
        if !layout.pool.image_volume(&fp).is_dir() {
            report
                .skipped
                .push(skip("its unpacked files are missing from the pool".into()));
            continue;
        }
        let mut rec = b.image;
        let (kept, lost): (Vec<String>, Vec<String>) = rec
            .aliases
            .drain(..)
            .partition(|a| !taken_aliases.contains(a));
        rec.aliases = kept;
        match db.insert_image(&rec) {
            Ok(()) => {
                taken_aliases.extend(rec.aliases.iter().cloned());
                let mut what = format!("image {fp}");
                if !rec.aliases.is_empty() {
                    what.push_str(&format!(" (aliases {})", rec.aliases.join(", ")));
                }
                if !lost.is_empty() {
                    what.push_str(&format!(
                        "; aliases now used by another image left out: {}",
                        lost.join(", ")
                    ));
                }
                report.recovered.push(what);
                report.images.push(rec);
            }
            Err(e) => report.skipped.push(skip(e.to_string())),
        }
    }
    let mut names_lower: HashSet<String> = loaded
        .containers
        .iter()
        .map(|c| c.name.to_ascii_lowercase())
        .collect();
    let known: HashSet<String> = loaded.containers.iter().map(|c| c.name.clone()).collect();
    let containers_dir = layout.pool.config().path.join("containers");
    for name in entries(&containers_dir)? {
        if known.contains(&name) {
            continue;
        }
        report.found.push(format!("container {name}"));
        match recover_container(db, &layout, &name, &names_lower) {
            Ok((rec, snaps, notes)) => {
                names_lower.insert(name.to_ascii_lowercase());
                let mut what = format!("container {name} ({} snapshots", snaps.len());
                for n in notes {
                    what.push_str("; ");
                    what.push_str(&n);
                }
                what.push(')');
                report.recovered.push(what);
                report.containers.push((rec, snaps));
            }
            Err(why) => report.skipped.push(format!("container {name}: {why}")),
        }
    }
    Ok(report)
}

type Recovered = (ContainerRecord, Vec<SnapshotRecord>, Vec<String>);

fn recover_container(
    db: &mut Db,
    layout: &crate::store::Layout,
    name: &str,
    names_lower: &HashSet<String>,
) -> std::result::Result<Recovered, String> {
    validate_name(name).map_err(|e| e.to_string())?;
    if names_lower.contains(&name.to_ascii_lowercase()) {
        return Err("a container of that name in another case exists".into());
    }
    let dir = layout.pool.container_volume(name);
    let b = backup::read::<ContainerBackup>(&dir.join(backup::FILE))?
        .ok_or_else(|| "no backup.yaml".to_string())?;
    if b.container.name != name {
        return Err(format!(
            "its backup.yaml describes container {:?}",
            b.container.name
        ));
    }
    if !is_fingerprint(&b.container.image) {
        return Err(format!(
            "its backup.yaml names image {:?}, not a fingerprint",
            b.container.image
        ));
    }
    for p in &b.container.profiles {
        validate_name(p).map_err(|e| format!("profile {p:?}: {e}"))?;
    }
    // the keys a caller could set are checked as a caller's; berth's own (`volatile.*`) are
    // bounded by the manifest's size
    let settable: std::collections::BTreeMap<String, String> = b
        .container
        .config
        .iter()
        .filter(|(k, _)| !k.starts_with("volatile."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    crate::config::validate_user_config(&settable).map_err(|e| e.to_string())?;
    if !layout.pool.rootfs(name).is_dir() {
        return Err("its rootfs is missing".into());
    }
    let rec = b.record();
    let mut notes = Vec::new();
    let mut snaps = Vec::new();
    let mut seen = HashSet::new();
    for mut s in b.snapshot_records() {
        if validate_name(&s.name).is_err() || !is_snapshot_id(&s.id) || !seen.insert(s.name.clone())
        {
            notes.push(format!("snapshot {:?} left out: not a valid entry", s.name));
            continue;
        }
        let paths = layout.pool.snapshot(name, &s.id);
        if !paths.volume().is_dir() {
            notes.push(format!(
                "snapshot {} left out: its files are missing",
                s.name
            ));
            continue;
        }
        if s.stateful && !paths.has_state() {
            notes.push(format!(
                "snapshot {}: its running state is missing, recovered as stateless",
                s.name
            ));
            s.stateful = false;
        }
        snaps.push(s);
    }
    db.insert_container(&rec).map_err(|e| e.to_string())?;
    for s in &snaps {
        if let Err(e) = db.insert_snapshot(s) {
            // all or nothing: the container's row goes (its snapshots' rows with it)
            let _ = db.delete_container(name);
            return Err(format!("snapshot {}: {e}", s.name));
        }
    }
    Ok((rec, snaps, notes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Layout;
    use crate::types::{Pending, Status};
    use berth_runtime::storage::{DriverKind, Pool, PoolConfig};
    use std::collections::BTreeMap;

    fn pool(dir: &std::path::Path) -> Layout {
        let pool = Pool::new(PoolConfig {
            driver: DriverKind::Dir,
            path: dir.join("pool"),
            source: None,
        });
        pool.mount().unwrap();
        Layout {
            pool,
            images: dir.join("images"),
        }
    }

    #[test]
    fn a_lost_database_is_rebuilt_from_the_manifests() {
        let dir = std::env::temp_dir().join(format!("berth-recover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let layout = pool(&dir);
        let fp = "b".repeat(64);
        std::fs::create_dir_all(layout.images.join(&fp)).unwrap();
        std::fs::create_dir_all(layout.pool.image_volume(&fp)).unwrap();
        let c = ContainerRecord {
            name: "web".into(),
            image: fp.clone(),
            status: Status::Running,
            init_pid: 9,
            created_at_us: 3,
            ephemeral: false,
            profiles: vec!["default".into()],
            config: BTreeMap::from([
                ("user.a".into(), "b".into()),
                ("volatile.eth0.hwaddr".into(), "00:16:3e:00:00:01".into()),
            ]),
            architecture: "x86_64".into(),
            pending: Pending::None,
        };
        std::fs::create_dir_all(layout.pool.rootfs("web")).unwrap();
        let snap = |name: &str, id: &str| SnapshotRecord {
            container: "web".into(),
            name: name.into(),
            id: id.into(),
            created_at_us: 4,
            stateful: true,
            size: 1,
        };
        // "kept" has its files (but no CRIU state), "gone" has none
        std::fs::create_dir_all(layout.pool.snapshot("web", "1-aa").volume()).unwrap();
        let img = ImageRecord {
            fingerprint: fp.clone(),
            aliases: vec!["busybox".into()],
            properties: BTreeMap::new(),
            architecture: "x86_64".into(),
            size: 1,
            created_at_us: 1,
            uploaded_at_us: 2,
            last_used_at_us: 0,
            split: false,
        };
        {
            let mut db = Db::open_in_memory().unwrap();
            db.set_layout(layout.clone());
            db.insert_image(&img).unwrap();
            db.insert_container(&c).unwrap();
            db.insert_snapshot(&snap("kept", "1-aa")).unwrap();
            db.insert_snapshot(&snap("gone", "2-bb")).unwrap();
        }
        // a stray volume without a manifest, and one whose manifest is garbage
        std::fs::create_dir_all(layout.pool.rootfs("stray")).unwrap();
        std::fs::create_dir_all(layout.pool.rootfs("bad")).unwrap();
        std::fs::write(
            layout.pool.container_volume("bad").join(backup::FILE),
            "version: 1\ncontainer: {name: ../x}",
        )
        .unwrap();

        let mut db = Db::open_in_memory().unwrap();
        db.set_layout(layout.clone());
        let r = recover(&mut db).unwrap();
        assert_eq!(
            r.found,
            vec![
                format!("image {fp}"),
                "container bad".into(),
                "container stray".into(),
                "container web".into()
            ]
        );
        assert_eq!(r.skipped.len(), 2, "{:?}", r.skipped);
        assert!(r.skipped[1].contains("no backup.yaml"), "{:?}", r.skipped);
        let loaded = db.load().unwrap();
        assert_eq!(loaded.images, vec![img]);
        let mut want = c.clone();
        want.status = Status::Stopped;
        want.init_pid = 0;
        assert_eq!(loaded.containers, vec![want]);
        let mut kept = snap("kept", "1-aa");
        kept.stateful = false;
        assert_eq!(loaded.snapshots, vec![kept]);
        assert!(
            r.recovered[1].contains("recovered as stateless"),
            "{:?}",
            r.recovered
        );
        assert!(
            r.recovered[1].contains("gone left out"),
            "{:?}",
            r.recovered
        );
        // again: nothing found
        let r = recover(&mut db).unwrap();
        assert!(
            r.found
                .iter()
                .all(|f| f.contains("bad") || f.contains("stray")),
            "{:?}",
            r.found
        );
        assert!(r.recovered.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
