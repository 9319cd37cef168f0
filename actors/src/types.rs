//! Domain types: names, statuses, records and the options of each operation. Nothing here
//! knows a wire format.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::OwnedFd;
use std::time::Duration;

/// Longest container name (a DNS label).
pub const MAX_NAME_LEN: usize = 63;

/// Checks a container (or snapshot/profile) name: a DNS label of 1–63 characters from
/// `[a-zA-Z0-9-]`, not starting with a digit or `-`, not ending with `-`.
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(Error::InvalidName {
            name: name.to_string(),
            reason: reason.to_string(),
        })
    };
    if name.is_empty() {
        return bad("the name is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad(&format!("longer than {MAX_NAME_LEN} characters"));
    }
    if name.contains('/') || name.contains("..") {
        return bad("names cannot contain '/' or '..'");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return bad(&format!(
            "{c:?} is not allowed; use letters, digits and '-' (a DNS label)"
        ));
    }
    let first = name.as_bytes()[0];
    if first.is_ascii_digit() || first == b'-' {
        return bad("must start with a letter");
    }
    if name.ends_with('-') {
        return bad("cannot end with '-'");
    }
    Ok(())
}

/// Lifecycle status of a container (the wire names are a contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Status {
    /// No process runs.
    Stopped,
    /// init is being started.
    Starting,
    /// init runs.
    Running,
    /// A stop was requested; init has not exited yet.
    Stopping,
    /// All processes are frozen.
    Frozen,
    /// The container could not be brought to a known state.
    Error,
}

impl Status {
    /// The contract name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Stopped => "Stopped",
            Status::Starting => "Starting",
            Status::Running => "Running",
            Status::Stopping => "Stopping",
            Status::Frozen => "Frozen",
            Status::Error => "Error",
        }
    }

    /// Parses a contract name.
    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "Stopped" => Status::Stopped,
            "Starting" => Status::Starting,
            "Running" => Status::Running,
            "Stopping" => Status::Stopping,
            "Frozen" => Status::Frozen,
            "Error" => Status::Error,
            _ => return None,
        })
    }

    /// Whether processes exist in this status.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Status::Starting | Status::Running | Status::Stopping | Status::Frozen
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str().to_ascii_lowercase())
    }
}

/// A pending multi-step change recorded before it starts, finished or undone at startup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Pending {
    /// Nothing pending.
    None,
    /// The container's storage is being created; undone if berthd dies meanwhile.
    Create,
    /// The container is being deleted; finished if berthd dies meanwhile.
    Delete,
}

impl Pending {
    /// Database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Pending::None => "",
            Pending::Create => "create",
            Pending::Delete => "delete",
        }
    }

    /// Parses the database spelling.
    pub fn parse(s: &str) -> Pending {
        match s {
            "create" => Pending::Create,
            "delete" => Pending::Delete,
            _ => Pending::None,
        }
    }
}

/// A container as persisted.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerRecord {
    /// Name (validated).
    pub name: String,
    /// Fingerprint of the image it was made from.
    pub image: String,
    /// Last recorded status.
    pub status: Status,
    /// init's pid when active, else 0.
    pub init_pid: u32,
    /// Creation time, µs since the epoch.
    pub created_at_us: u64,
    /// Deleted when stopped.
    pub ephemeral: bool,
    /// Applied profiles, in order.
    pub profiles: Vec<String>,
    /// Local config (user keys and `volatile.*`).
    pub config: BTreeMap<String, String>,
    /// Architecture name.
    pub architecture: String,
    /// Multi-step change in progress.
    pub pending: Pending,
}

/// What callers see of a container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerInfo {
    /// Name.
    pub name: String,
    /// Status.
    pub status: Status,
    /// init's pid (0 when stopped).
    pub init_pid: u32,
    /// Image fingerprint.
    pub image: String,
    /// Creation time, µs.
    pub created_at_us: u64,
    /// Ephemeral flag.
    pub ephemeral: bool,
    /// Profiles.
    pub profiles: Vec<String>,
    /// Local config.
    pub config: BTreeMap<String, String>,
    /// Config with profiles applied.
    pub expanded_config: BTreeMap<String, String>,
    /// Architecture.
    pub architecture: String,
    /// Saved state exists (stateful stop).
    pub stateful: bool,
}

impl ContainerRecord {
    /// What callers see of this record.
    pub fn info(&self) -> ContainerInfo {
        ContainerInfo {
            name: self.name.clone(),
            status: self.status,
            init_pid: self.init_pid,
            image: self.image.clone(),
            created_at_us: self.created_at_us,
            ephemeral: self.ephemeral,
            profiles: self.profiles.clone(),
            config: self.config.clone(),
            expanded_config: self.config.clone(),
            architecture: self.architecture.clone(),
            stateful: self.config.contains_key(crate::container::STATEFUL_KEY),
        }
    }
}

/// A short line for lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSummary {
    /// Name.
    pub name: String,
    /// Status.
    pub status: Status,
    /// Image fingerprint.
    pub image: String,
    /// init's pid.
    pub init_pid: u32,
}

/// Whether a create made something new or found the same thing already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// Newly created.
    New,
    /// It already existed with the same definition (nothing changed).
    Identity,
}

/// A request to create a container.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CreateRequest {
    /// Name (empty only with `pick_name`).
    pub name: String,
    /// With an empty name, let berth pick a free one (such as `brisk-otter`), as `lxc launch
    /// IMAGE` does. An empty name without it is an invalid name.
    pub pick_name: bool,
    /// Image alias, fingerprint or unique prefix.
    pub image: String,
    /// Start after creation.
    pub start: bool,
    /// Profiles (default: `["default"]`).
    pub profiles: Option<Vec<String>>,
    /// Config.
    pub config: BTreeMap<String, String>,
    /// Delete when stopped.
    pub ephemeral: bool,
}

/// A request to copy a container (or one of its snapshots) to a new container.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CopyRequest {
    /// The source container.
    pub source: String,
    /// Copy this snapshot of it instead of its current files.
    pub snapshot: Option<String>,
    /// The new container's name (empty only with `pick_name`).
    pub name: String,
    /// With an empty name, let berth pick a free one.
    pub pick_name: bool,
    /// Config set over the source's.
    pub config: BTreeMap<String, String>,
    /// Profiles (default: the source's).
    pub profiles: Option<Vec<String>>,
    /// Delete the copy when it stops.
    pub ephemeral: bool,
    /// Start the copy.
    pub start: bool,
}

/// How to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StopOptions {
    /// Kill at once.
    pub force: bool,
    /// Grace period before killing (None = the container's configured default).
    pub timeout: Option<Duration>,
    /// Checkpoint the running state first; the next start restores it.
    pub stateful: bool,
    /// Caller (for the operation of a stateful stop).
    pub uid: u32,
}

/// How to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StartOptions {
    /// Boot afresh even if a stateful stop saved the running state (which is discarded).
    pub stateless: bool,
    /// Caller (for the operation of a restore).
    pub uid: u32,
}

/// A snapshot as persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// The container's name.
    pub container: String,
    /// The snapshot's name (a DNS label, unique per container).
    pub name: String,
    /// Where its files are (`snapshots/<container>/<id>` in the pool); never changes.
    pub id: String,
    /// When it was taken, µs.
    pub created_at_us: u64,
    /// It holds the running state (CRIU images) too.
    pub stateful: bool,
    /// Bytes it holds on its own (CRIU images; a dir-pool copy of the files).
    pub size: u64,
}

/// A fresh snapshot id: time-ordered and unique.
pub fn new_snapshot_id() -> String {
    let mut r = [0u8; 4];
    // SAFETY: getrandom into a valid buffer.
    unsafe { libc::getrandom(r.as_mut_ptr().cast(), r.len(), 0) };
    format!(
        "{}-{}",
        now_us(),
        r.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// Default grace period of a stop.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A process to run in a container.
#[derive(Debug, Default)]
pub struct ExecRequest {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: Option<String>,
    /// uid inside the container.
    pub uid: u32,
    /// gid inside the container.
    pub gid: u32,
    /// Terminal size when a pty is wanted.
    pub tty: Option<(u16, u16)>,
    /// stdin, stdout, stderr (None = /dev/null).
    pub stdio: [Option<OwnedFd>; 3],
}

/// An image as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRecord {
    /// sha256 fingerprint.
    pub fingerprint: String,
    /// Aliases pointing at it.
    pub aliases: Vec<String>,
    /// Properties from metadata.yaml (and set later).
    pub properties: BTreeMap<String, String>,
    /// Architecture.
    pub architecture: String,
    /// Size of the archive(s) in bytes.
    pub size: u64,
    /// metadata.yaml creation_date, µs.
    pub created_at_us: u64,
    /// When berth stored it, µs.
    pub uploaded_at_us: u64,
    /// When a container was last made from it, µs.
    pub last_used_at_us: u64,
    /// A split image (metadata and rootfs files) rather than one unified tarball.
    pub split: bool,
}

impl ImageRecord {
    /// The image's description property, or "".
    pub fn description(&self) -> &str {
        self.properties
            .get("description")
            .map(String::as_str)
            .unwrap_or("")
    }
}

/// What to do with an image being imported, built or published.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageOptions {
    /// Aliases to give it (taken from other images).
    pub aliases: Vec<String>,
    /// Properties to set (over those of metadata.yaml).
    pub properties: BTreeMap<String, String>,
}

/// Host facts shown on the Manager object.
#[derive(Debug, Clone)]
pub struct HostInfo {
    /// berth's version.
    pub version: String,
    /// 1 or 2.
    pub cgroup_version: u32,
    /// Storage driver of the default pool.
    pub storage_driver: String,
    /// Whether stateful operations (CRIU) can work here.
    pub stateful: StatefulProbe,
}

/// Whether stateful operations work on this host: CRIU's version, or why not. Probing runs
/// CRIU (tens of milliseconds), so it happens once, on first use or in the background.
#[derive(Clone)]
pub struct StatefulProbe {
    cell: std::sync::Arc<std::sync::OnceLock<Result<String, String>>>,
    probe: std::sync::Arc<dyn Fn() -> Result<String, String> + Send + Sync>,
}

impl StatefulProbe {
    /// A probe run at most once.
    pub fn new(probe: impl Fn() -> Result<String, String> + Send + Sync + 'static) -> Self {
        StatefulProbe {
            cell: Default::default(),
            probe: std::sync::Arc::new(probe),
        }
    }

    /// A known answer (tests).
    pub fn fixed(r: Result<String, String>) -> Self {
        Self::new(move || r.clone())
    }

    /// The answer (blocks while the probe runs).
    pub fn get(&self) -> Result<String, String> {
        self.cell.get_or_init(|| (self.probe)()).clone()
    }
}

impl std::fmt::Debug for StatefulProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatefulProbe")
            .field("answer", &self.cell.get())
            .finish()
    }
}

/// Microseconds since the epoch.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["c1", "web", "a-b-c", "A9", &"x".repeat(63)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1abc",
            "-a",
            "a-",
            "a/b",
            "a..b",
            "..",
            "a_b",
            "a.b",
            "ü",
            "a b",
            &"x".repeat(64),
        ] {
            assert!(
                matches!(validate_name(bad), Err(Error::InvalidName { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn status_round_trip() {
        for s in [
            Status::Stopped,
            Status::Starting,
            Status::Running,
            Status::Stopping,
            Status::Frozen,
            Status::Error,
        ] {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
        assert_eq!(Status::parse("running"), None);
    }
}
