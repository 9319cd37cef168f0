//! Domain errors of the engine. Each variant corresponds to one named error on the wire (the
//! mapping table lives in berth-interfaces); messages are lowercase and say what to do.

use crate::types::Status;

/// What went wrong in the engine.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum Error {
    /// No container of that name.
    #[error("no container named {0:?}")]
    NoSuchContainer(String),
    /// No snapshot of that name.
    #[error("container {container:?} has no snapshot named {name:?}")]
    NoSuchSnapshot {
        /// The container.
        container: String,
        /// The snapshot name.
        name: String,
    },
    /// No image matches the reference.
    #[error("no image matches {0:?} (see the image list)")]
    NoSuchImage(String),
    /// An image reference is an ambiguous fingerprint prefix.
    #[error("image reference {reference:?} is ambiguous: it matches {candidates}")]
    AmbiguousImage {
        /// The prefix given.
        reference: String,
        /// Matching fingerprints, comma-separated.
        candidates: String,
    },
    /// No profile of that name.
    #[error("no profile named {0:?}")]
    NoSuchProfile(String),
    /// Something with that name already exists (with a different definition).
    #[error("{kind} {name:?} already exists")]
    AlreadyExists {
        /// "container", "image alias"…
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// A name is not acceptable.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: String,
    },
    /// A config key, value or option is not acceptable.
    #[error("{0}")]
    InvalidConfig(String),
    /// The operation is not allowed in the container's current state.
    #[error("container {name:?} is {status}: {hint}")]
    InvalidState {
        /// Container.
        name: String,
        /// Its status.
        status: Status,
        /// What the caller can do, e.g. "stop it first or pass force".
        hint: String,
    },
    /// Another operation is in progress on the object.
    #[error("{0}")]
    Busy(String),
    /// An image is malformed.
    #[error("invalid image: {0}")]
    InvalidImage(String),
    /// Not supported on this host or in this version.
    #[error("{0}")]
    NotSupported(String),
    /// The host failed while doing `op` on `what`.
    #[error("{op} {what} failed: {detail}")]
    Runtime {
        /// The operation.
        op: Op,
        /// Its object, e.g. "container web".
        what: String,
        /// The runtime's message (names the failing step).
        detail: String,
    },
    /// The state database failed.
    #[error("state database: {0}")]
    Store(String),
    /// The operation was cancelled; nothing of it was kept.
    #[error("the operation was cancelled; nothing of it was kept")]
    Cancelled,
    /// An actor is gone (the engine is shutting down or the object was just removed).
    #[error("{0} is not available (it may have just been deleted); try again")]
    Unavailable(String),
}

/// Operations that can fail on the host, each with its own wire error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Creating a container's storage and cgroups.
    Create,
    /// Starting init.
    Start,
    /// Stopping.
    Stop,
    /// Running a process.
    Exec,
    /// Removing a container.
    Delete,
    /// Building an image.
    BuildImage,
    /// Removing an image.
    DeleteImage,
    /// Importing an image.
    ImportImage,
    /// Exporting an image.
    ExportImage,
    /// Publishing a container as an image.
    Publish,
    /// Taking, restoring the files of, or removing a snapshot.
    Snapshot,
    /// Checkpointing a running container (CRIU dump).
    Checkpoint,
    /// Restoring a running state (CRIU restore).
    Restore,
    /// Applying a config change to the host (a root disk limit).
    Configure,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Op::Create => "create",
            Op::Start => "start",
            Op::Stop => "stop",
            Op::Exec => "exec in",
            Op::Delete => "delete",
            Op::BuildImage => "build",
            Op::DeleteImage => "delete",
            Op::ImportImage => "import",
            Op::ExportImage => "export",
            Op::Publish => "publish",
            Op::Snapshot => "snapshot",
            Op::Checkpoint => "checkpoint",
            Op::Restore => "restore",
            Op::Configure => "configure",
        })
    }
}

impl Error {
    /// A host failure of `op` on `what`.
    pub fn runtime(op: Op, what: impl Into<String>, e: impl std::fmt::Display) -> Self {
        Error::Runtime {
            op,
            what: what.into(),
            detail: e.to_string(),
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Store(e.to_string())
    }
}

/// Result alias for the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;
