//! Self-describing manifests beside the data they describe, so that a lost or corrupt
//! database can be rebuilt from the pools (`berthd recover`, `berth admin recover`), as Incus
//! does with its `backup.yaml`.
//!
//! - `<pool>/containers/<name>/backup.yaml`: everything a container's row and its snapshots'
//!   rows hold that cannot be derived from disk (config, profiles, image fingerprint,
//!   creation time, architecture, each snapshot's id, time and stateful flag). Not its
//!   status: that is found again from the monitors.
//! - `<state>/images/<fingerprint>/backup.yaml`: an image's row with its aliases.
//!
//! The store writes them (see [`crate::store::Db`]) after each change of a row it describes,
//! through a temporary file, fsync and rename, root-only (0600); a write whose bytes equal
//! the file's is skipped, so status changes cost no disk write.

use crate::types::{ContainerRecord, ImageRecord, Pending, SnapshotRecord, Status};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The manifest's file name.
pub const FILE: &str = "backup.yaml";

/// The manifest format this berth writes and reads.
pub const VERSION: u32 = 1;

/// Largest manifest read back (config is bounded well below this).
const MAX_LEN: u64 = 64 << 20;

/// A container's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerBackup {
    /// Manifest format.
    pub version: u32,
    /// The container.
    pub container: ContainerPart,
    /// Its snapshots, oldest first.
    #[serde(default)]
    pub snapshots: Vec<SnapshotPart>,
}

/// A container's row, without what is found again from the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerPart {
    /// Name.
    pub name: String,
    /// Image fingerprint it was made from.
    pub image: String,
    /// Architecture.
    pub architecture: String,
    /// Creation time, µs since the epoch.
    pub created_at_us: u64,
    /// Deleted when stopped.
    pub ephemeral: bool,
    /// Applied profiles, in order.
    pub profiles: Vec<String>,
    /// Local config (devices, limits, user and volatile keys).
    pub config: BTreeMap<String, String>,
}

/// A snapshot's row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotPart {
    /// Name.
    pub name: String,
    /// Where its files are (`snapshots/<container>/<id>`).
    pub id: String,
    /// When it was taken, µs.
    pub created_at_us: u64,
    /// It holds the running state too.
    pub stateful: bool,
    /// Bytes it holds on its own.
    pub size: u64,
}

/// An image's manifest: its record, aliases included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageBackup {
    /// Manifest format.
    pub version: u32,
    /// The image.
    pub image: ImageRecord,
}

impl ContainerBackup {
    /// The manifest of a row and its snapshots.
    pub fn of(c: &ContainerRecord, snapshots: &[SnapshotRecord]) -> ContainerBackup {
        ContainerBackup {
            version: VERSION,
            container: ContainerPart {
                name: c.name.clone(),
                image: c.image.clone(),
                architecture: c.architecture.clone(),
                created_at_us: c.created_at_us,
                ephemeral: c.ephemeral,
                profiles: c.profiles.clone(),
                config: c.config.clone(),
            },
            snapshots: snapshots
                .iter()
                .map(|s| SnapshotPart {
                    name: s.name.clone(),
                    id: s.id.clone(),
                    created_at_us: s.created_at_us,
                    stateful: s.stateful,
                    size: s.size,
                })
                .collect(),
        }
    }

    /// The row it describes: stopped until the monitors say otherwise.
    pub fn record(&self) -> ContainerRecord {
        let c = &self.container;
        ContainerRecord {
            name: c.name.clone(),
            image: c.image.clone(),
            status: Status::Stopped,
            init_pid: 0,
            created_at_us: c.created_at_us,
            ephemeral: c.ephemeral,
            profiles: c.profiles.clone(),
            config: c.config.clone(),
            architecture: c.architecture.clone(),
            pending: Pending::None,
        }
    }

    /// The snapshots' rows.
    pub fn snapshot_records(&self) -> Vec<SnapshotRecord> {
        self.snapshots
            .iter()
            .map(|s| SnapshotRecord {
                container: self.container.name.clone(),
                name: s.name.clone(),
                id: s.id.clone(),
                created_at_us: s.created_at_us,
                stateful: s.stateful,
                size: s.size,
            })
            .collect()
    }
}

impl ImageBackup {
    /// The manifest of an image's row (aliases sorted).
    pub fn of(i: &ImageRecord) -> ImageBackup {
        let mut image = i.clone();
        image.aliases.sort();
        ImageBackup {
            version: VERSION,
            image,
        }
    }
}

/// Serializes a manifest.
pub fn to_yaml<T: Serialize>(v: &T) -> std::io::Result<String> {
    serde_norway::to_string(v).map_err(std::io::Error::other)
}

/// Reads a manifest; a missing file is `Ok(None)`, anything unreadable an error that says why.
pub fn read<T>(path: &Path) -> Result<Option<T>, String>
where
    T: for<'de> Deserialize<'de> + HasVersion,
{
    use std::io::Read;
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("open {}: {e}", path.display())),
    };
    let mut s = String::new();
    f.take(MAX_LEN)
        .read_to_string(&mut s)
        .map_err(|e| format!("read {}: {e}", path.display()))?;
    let v: T = serde_norway::from_str(&s).map_err(|e| format!("{}: {e}", path.display()))?;
    let version = v.version();
    if version != VERSION {
        return Err(format!(
            "{}: manifest version {version}, this berth reads version {VERSION}",
            path.display()
        ));
    }
    Ok(Some(v))
}

/// Manifests carry their format version.
pub trait HasVersion {
    /// The format version.
    fn version(&self) -> u32;
}

impl HasVersion for ContainerBackup {
    fn version(&self) -> u32 {
        self.version
    }
}

impl HasVersion for ImageBackup {
    fn version(&self) -> u32 {
        self.version
    }
}

/// Writes `data` to `path` unless it already holds exactly that: a temporary file (0600) in
/// the same directory, renamed over the old one. Returns whether it wrote.
///
/// No fsync: the database is the record and is synced; a manifest is its copy for a database
/// lost later, and writeback makes it durable within seconds. A manifest that a power loss
/// tore or lost is rewritten from the database at the next start
/// ([`crate::store::Db::refresh_backups`] compares bytes). Two fsyncs on the pool cost a
/// create 2.6 ms of its 4.6 (berth-bench).
pub fn write_if_changed(path: &Path, data: &str) -> std::io::Result<bool> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Ok(old) = std::fs::read(path)
        && old == data.as_bytes()
    {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    let tmp: PathBuf = dir.join(format!(".{FILE}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    {
        let mut f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        // the mode of create_new is masked by the umask: make sure
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(data.as_bytes())?;
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_manifest_round_trips_and_is_root_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("berth-backup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rec = ContainerRecord {
            name: "c1".into(),
            image: "a".repeat(64),
            status: Status::Running,
            init_pid: 7,
            created_at_us: 5,
            ephemeral: false,
            profiles: vec!["default".into()],
            config: BTreeMap::from([("user.k".into(), "v: with 'quotes'\n".into())]),
            architecture: "x86_64".into(),
            pending: Pending::None,
        };
        let snap = SnapshotRecord {
            container: "c1".into(),
            name: "s1".into(),
            id: "1-ab".into(),
            created_at_us: 9,
            stateful: true,
            size: 3,
        };
        let b = ContainerBackup::of(&rec, std::slice::from_ref(&snap));
        let path = dir.join(FILE);
        let yaml = to_yaml(&b).unwrap();
        assert!(write_if_changed(&path, &yaml).unwrap());
        assert!(
            !write_if_changed(&path, &yaml).unwrap(),
            "same bytes rewritten"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = read::<ContainerBackup>(&path).unwrap().unwrap();
        assert_eq!(back, b);
        let mut want = rec.clone();
        want.status = Status::Stopped;
        want.init_pid = 0;
        assert_eq!(back.record(), want);
        assert_eq!(back.snapshot_records(), vec![snap]);
        // hostile content: an error, no panic
        std::fs::write(&path, "version: 1\ncontainer: [").unwrap();
        assert!(read::<ContainerBackup>(&path).is_err());
        std::fs::write(&path, yaml.replace("version: 1", "version: 9")).unwrap();
        assert!(read::<ContainerBackup>(&path).is_err());
        assert!(
            read::<ContainerBackup>(&dir.join("none"))
                .unwrap()
                .is_none()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
