//! The seam between the actors and the host: what a container actor asks of the machine.
//! [`crate::host::HostRuntime`] does it for real (monitor processes, storage, cgroups);
//! [`crate::fake::FakeRuntime`] does it in memory for actor and interface tests.

use crate::operation::Operation;
use crate::types::{ContainerRecord, ExecRequest};
use std::collections::{BTreeMap, HashSet};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// A runtime failure, with the step that failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum RuntimeError {
    /// The container is not running (no monitor answers).
    #[error("the container is not running")]
    NotRunning,
    /// An image is unusable.
    #[error("{0}")]
    InvalidImage(String),
    /// The request cannot work on this host.
    #[error("{0}")]
    NotSupported(String),
    /// A caller-supplied value is unusable.
    #[error("{0}")]
    Invalid(String),
    /// Anything else; the text names the failing step.
    #[error("{0}")]
    Failed(String),
    /// Cancelled on request; nothing was kept.
    #[error("cancelled")]
    Cancelled,
    /// Something else is under way in the container; the same call can succeed later.
    #[error("{0}")]
    Busy(String),
}

impl From<berth_runtime::Error> for RuntimeError {
    fn from(e: berth_runtime::Error) -> Self {
        match e {
            berth_runtime::Error::NotRunning(_) => RuntimeError::NotRunning,
            berth_runtime::Error::InvalidImage(m) => RuntimeError::InvalidImage(m),
            berth_runtime::Error::Invalid(m) => RuntimeError::Invalid(m),
            berth_runtime::Error::NotSupported(m) => RuntimeError::NotSupported(m),
            berth_runtime::Error::Cancelled => RuntimeError::Cancelled,
            other => RuntimeError::Failed(other.to_string()),
        }
    }
}

/// A running container as the runtime sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Running {
    /// init's pid.
    pub init_pid: u32,
    /// The monitor's pid.
    pub monitor_pid: u32,
}

/// Something a running container's monitor reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitorEvent {
    /// init rebooted the container; the new init.
    Restarted {
        /// New init pid.
        init_pid: u32,
    },
    /// init is gone for good.
    Exited {
        /// Human-readable reason ("poweroff", "killed", "exited with 1"…).
        reason: String,
    },
    /// The monitor vanished without reporting an exit.
    Lost,
}

/// An image produced by an import, a recipe or a publish, stored and unpacked — or found
/// already known (`known`), in which case nothing was stored and only the fingerprint counts.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NewImage {
    /// sha256 fingerprint.
    pub fingerprint: String,
    /// It was already registered.
    pub known: bool,
    /// Split (metadata + rootfs files).
    pub split: bool,
    /// Architecture.
    pub architecture: String,
    /// Properties from metadata.yaml.
    pub properties: BTreeMap<String, String>,
    /// metadata creation_date, µs.
    pub created_at_us: u64,
    /// Archive size.
    pub size: u64,
    /// The runtime's claim on the fingerprint, held until the image is registered.
    pub claim: ImageClaim,
}

/// Keeps the runtime's claim on a stored image's fingerprint while the Manager registers it:
/// another import of the same bytes waits for the claim and then finds the image registered,
/// instead of racing to store it a second time. Dropping the last clone releases the claim.
#[derive(Clone, Default)]
pub struct ImageClaim(Option<Arc<dyn std::any::Any + Send + Sync>>);

impl ImageClaim {
    /// Wraps whatever releases the claim when dropped.
    pub fn new(held: impl std::any::Any + Send + Sync) -> ImageClaim {
        ImageClaim(Some(Arc::new(held)))
    }
}

impl std::fmt::Debug for ImageClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "ImageClaim(held)"
        } else {
            "ImageClaim(none)"
        })
    }
}

/// Claims do not take part in comparisons of what was produced.
impl PartialEq for ImageClaim {
    fn eq(&self, _: &ImageClaim) -> bool {
        true
    }
}

/// Where a new container's files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// Its image (the record's fingerprint).
    Image,
    /// Another container's volume as it is now.
    Container(String),
    /// A snapshot's volume.
    Snapshot {
        /// The snapshot's container.
        container: String,
        /// The snapshot's id (its directory).
        id: String,
    },
}

/// Where a checkpoint goes, or a restore comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateSlot {
    /// Snapshot `id` (staged by a checkpoint; committed by its Snapshot actor).
    Snapshot(String),
    /// The saved state of a stateful stop.
    Stop,
}

/// What a checkpoint produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CheckpointStats {
    /// Bytes of CRIU images written.
    pub state_bytes: u64,
    /// Bytes of the file copy (0 for a btrfs snapshot, which shares its extents).
    pub volume_bytes: u64,
    /// How long the container was frozen, µs.
    pub frozen_us: u64,
}

/// What the engine needs from the host.
#[ractor::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Creates a container's storage and cgroups from its image or `source`. Returns config
    /// entries to record (`volatile.*`). Called with the record persisted as pending.
    async fn provision(
        &self,
        rec: &ContainerRecord,
        source: &VolumeSource,
    ) -> Result<BTreeMap<String, String>, RuntimeError>;
    /// Removes everything a container has on the host (storage, cgroups, runtime files).
    /// It must not be running. Idempotent.
    async fn deprovision(&self, name: &str) -> Result<(), RuntimeError>;
    /// Sets (or, `None`, removes) the limit on the bytes the container's root disk holds,
    /// running or not. `NotSupported` where the pool has no quotas.
    async fn set_disk_limit(&self, name: &str, bytes: Option<u64>) -> Result<(), RuntimeError>;
    /// Starts the container; returns once init has exec'd.
    async fn start(&self, rec: &ContainerRecord) -> Result<Running, RuntimeError>;
    /// Stops the container: `signal` (None = the init's power-off signal), SIGKILL after
    /// `timeout` (zero = at once). Returns once init is gone, with the reason.
    async fn stop(
        &self,
        rec: &ContainerRecord,
        force: bool,
        timeout: Duration,
    ) -> Result<String, RuntimeError>;
    /// Cuts the running container off its network without a word to its peers (its host
    /// veths go), so that killing its tree closes no connection: a stateful restore onto it
    /// brings those connections back. Idempotent.
    async fn disconnect(&self, rec: &ContainerRecord) -> Result<(), RuntimeError>;
    /// Whether the container runs (reconciliation after a daemon restart).
    async fn probe(&self, name: &str) -> Result<Option<Running>, RuntimeError>;
    /// Undoes what a checkpoint interrupted by the death of an earlier berthd left on the
    /// container: a CRIU still dumping it is waited for (killed after a while), a cgroup left
    /// frozen thawed, CRIU's network lock removed, the monitor told no checkpoint runs. Only
    /// when no checkpoint of this berthd's can be running (at start). Returns what it did.
    async fn recover_checkpoint(&self, name: &str) -> Result<Vec<String>, RuntimeError>;
    /// Events of a running container until it stops (the channel closes after `Exited`).
    async fn watch(
        &self,
        name: &str,
    ) -> Result<mpsc::UnboundedReceiver<MonitorEvent>, RuntimeError>;
    /// Runs a process in the running container and returns its exit status.
    async fn exec(&self, name: &str, req: ExecRequest) -> Result<i32, RuntimeError>;
    /// Builds an image from a built-in recipe, stores and unpacks it. `known`: registered
    /// fingerprints (a known result changes nothing).
    async fn build_image(
        &self,
        recipe: &str,
        known: HashSet<String>,
        op: Arc<Operation>,
    ) -> Result<NewImage, RuntimeError>;
    /// Stores an image read from `archive` (and a split image's `rootfs`) and unpacks it.
    async fn import_image(
        &self,
        archive: OwnedFd,
        rootfs: Option<OwnedFd>,
        known: HashSet<String>,
        op: Arc<Operation>,
    ) -> Result<NewImage, RuntimeError>;
    /// Makes an image of a container's files (its own, stopped, or a snapshot's): `properties`
    /// go into its metadata.yaml.
    async fn publish(
        &self,
        rec: &ContainerRecord,
        source: &VolumeSource,
        properties: BTreeMap<String, String>,
        known: HashSet<String>,
        op: Arc<Operation>,
    ) -> Result<NewImage, RuntimeError>;
    /// Writes a stored image's file(s) to `out` (and a split image's rootfs to `rootfs`).
    async fn export_image(
        &self,
        fingerprint: &str,
        out: OwnedFd,
        rootfs: Option<OwnedFd>,
        op: Arc<Operation>,
    ) -> Result<u64, RuntimeError>;
    /// Removes image files nobody registered (interrupted imports); returns what it did.
    async fn cleanup_images(&self, known: HashSet<String>) -> Vec<String>;
    /// Removes an image's files. Idempotent.
    async fn remove_image(&self, fingerprint: &str) -> Result<(), RuntimeError>;

    /// Stages snapshot `id` of `container` with a copy of its files as they are now (a
    /// read-only btrfs snapshot, or a copy). Returns the bytes the copy holds.
    async fn capture_snapshot(&self, container: &str, id: &str) -> Result<u64, RuntimeError>;
    /// Checkpoints the running container into `slot` with CRIU. For a snapshot the tree keeps
    /// running and the files are captured while it is frozen (staged like
    /// [`Runtime::capture_snapshot`]); for a stop the tree is killed once dumped. On failure
    /// nothing is kept and the container runs on.
    async fn checkpoint(
        &self,
        rec: &ContainerRecord,
        slot: &StateSlot,
        op: Arc<Operation>,
    ) -> Result<CheckpointStats, RuntimeError>;
    /// Moves staged snapshot `id` into place.
    async fn commit_snapshot(&self, container: &str, id: &str) -> Result<(), RuntimeError>;
    /// Removes snapshot `id`'s files, staged or committed. Idempotent.
    async fn remove_snapshot(&self, container: &str, id: &str) -> Result<(), RuntimeError>;
    /// Removes the snapshots of containers not in `containers` (a delete interrupted after the
    /// row went); returns what it removed.
    async fn sweep_orphan_snapshots(&self, containers: HashSet<String>) -> Vec<String>;
    /// Removes snapshot files of `container` that `keep` does not name; returns what it removed.
    async fn sweep_snapshots(&self, container: &str, keep: Vec<String>) -> Vec<String>;
    /// Replaces the stopped container's files with snapshot `id`'s. `with_state`: its running
    /// state is restored next (so the links CRIU made in the files for it stay).
    async fn restore_files(
        &self,
        rec: &ContainerRecord,
        id: &str,
        with_state: bool,
    ) -> Result<(), RuntimeError>;
    /// Starts the stopped container from the running state in `slot` (files must already be
    /// those of the checkpoint). Returns once the restored init runs.
    async fn restore(
        &self,
        rec: &ContainerRecord,
        slot: &StateSlot,
        op: Arc<Operation>,
    ) -> Result<Running, RuntimeError>;
    /// Checks, before anything is stopped or replaced, that the running state in `slot` is
    /// whole enough to give CRIU (see [`berth_runtime::criu::images::check_pages`]).
    async fn check_state(&self, _container: &str, _slot: &StateSlot) -> Result<(), RuntimeError> {
        Ok(())
    }
    /// Whether a stateful stop saved a state for `container`.
    async fn has_stop_state(&self, container: &str) -> bool;
    /// Removes the saved state of a stateful stop. Idempotent. `unused`: the state was not
    /// restored and the files are still those it was saved with, so the links CRIU left in them
    /// for its restore go too.
    async fn discard_stop_state(&self, container: &str, unused: bool) -> Result<(), RuntimeError>;
    /// Path of the log of the last checkpoint or restore of `container`, if any.
    fn criu_log(&self, container: &str) -> Option<std::path::PathBuf>;
    /// Whether `container` surely runs no more, from one cheap look (no monitor to ask): what
    /// the Manager answers for a container whose actor is not spawned yet, recorded as running
    /// by an earlier berthd. `false` means "maybe running": its actor's probe decides.
    fn surely_stopped(&self, container: &str) -> bool;
}
