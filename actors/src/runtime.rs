//! The seam between the actors and the host: what a container actor asks of the machine.
//! [`crate::host::HostRuntime`] does it for real (monitor processes, storage, cgroups);
//! [`crate::fake::FakeRuntime`] does it in memory for actor and interface tests.

use crate::types::{ContainerRecord, ExecRequest};
use std::collections::BTreeMap;
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
}

impl From<berth_runtime::Error> for RuntimeError {
    fn from(e: berth_runtime::Error) -> Self {
        match e {
            berth_runtime::Error::NotRunning(_) => RuntimeError::NotRunning,
            berth_runtime::Error::InvalidImage(m) => RuntimeError::InvalidImage(m),
            berth_runtime::Error::Invalid(m) => RuntimeError::Invalid(m),
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

/// A new image produced by a recipe, stored and unpacked.
#[derive(Debug, Clone, PartialEq)]
pub struct NewImage {
    /// sha256 fingerprint.
    pub fingerprint: String,
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
    /// Builds an image from a built-in recipe and unpacks it into the pool.
    async fn build_image(&self, recipe: &str) -> Result<NewImage, RuntimeError>;
    /// Removes an image's files. Idempotent.
    async fn remove_image(&self, fingerprint: &str) -> Result<(), RuntimeError>;
}
