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
}

impl From<berth_runtime::Error> for RuntimeError {
    fn from(e: berth_runtime::Error) -> Self {
        match e {
            berth_runtime::Error::NotRunning(_) => RuntimeError::NotRunning,
            berth_runtime::Error::InvalidImage(m) => RuntimeError::InvalidImage(m),
            berth_runtime::Error::Invalid(m) => RuntimeError::Invalid(m),
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
}

/// What the engine needs from the host.
#[ractor::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Creates a container's storage and cgroups from its image. Returns config entries to
    /// record (`volatile.*`). Called with the record persisted as pending.
    async fn provision(&self, rec: &ContainerRecord) -> Result<BTreeMap<String, String>, RuntimeError>;
    /// Removes everything a container has on the host (storage, cgroups, runtime files).
    /// It must not be running. Idempotent.
    async fn deprovision(&self, name: &str) -> Result<(), RuntimeError>;
    /// Starts the container; returns once init has exec'd.
    async fn start(&self, rec: &ContainerRecord) -> Result<Running, RuntimeError>;
    /// Stops the container: `signal` (None = the init's power-off signal), SIGKILL after
    /// `timeout` (zero = at once). Returns once init is gone, with the reason.
    async fn stop(&self, rec: &ContainerRecord, force: bool, timeout: Duration) -> Result<String, RuntimeError>;
    /// Whether the container runs (reconciliation after a daemon restart).
    async fn probe(&self, name: &str) -> Result<Option<Running>, RuntimeError>;
    /// Events of a running container until it stops (the channel closes after `Exited`).
    async fn watch(&self, name: &str) -> Result<mpsc::UnboundedReceiver<MonitorEvent>, RuntimeError>;
    /// Runs a process in the running container and returns its exit status.
    async fn exec(&self, name: &str, req: ExecRequest) -> Result<i32, RuntimeError>;
    /// Builds an image from a built-in recipe, stores and unpacks it. `known`: registered
    /// fingerprints (a known result changes nothing).
    async fn build_image(&self, recipe: &str, known: HashSet<String>, op: Arc<Operation>) -> Result<NewImage, RuntimeError>;
    /// Stores an image read from `archive` (and a split image's `rootfs`) and unpacks it.
    async fn import_image(
        &self,
        archive: OwnedFd,
        rootfs: Option<OwnedFd>,
        known: HashSet<String>,
        op: Arc<Operation>,
    ) -> Result<NewImage, RuntimeError>;
    /// Makes an image of a stopped container: `properties` go into its metadata.yaml.
    async fn publish(
        &self,
        rec: &ContainerRecord,
        properties: BTreeMap<String, String>,
        known: HashSet<String>,
        op: Arc<Operation>,
    ) -> Result<NewImage, RuntimeError>;
    /// Writes a stored image's file(s) to `out` (and a split image's rootfs to `rootfs`).
    async fn export_image(&self, fingerprint: &str, out: OwnedFd, rootfs: Option<OwnedFd>, op: Arc<Operation>) -> Result<u64, RuntimeError>;
    /// Removes image files nobody registered (interrupted imports); returns what it did.
    async fn cleanup_images(&self, known: HashSet<String>) -> Vec<String>;
    /// Removes an image's files. Idempotent.
    async fn remove_image(&self, fingerprint: &str) -> Result<(), RuntimeError>;
}
