//! The runtime's error type: every failure names the step that failed and keeps its cause.

use std::io;
use std::path::PathBuf;

/// "container setup failed at STEP: ERRNO", or the step alone when it carries no errno (a
/// restore's failure, which names CRIU's step and first error itself).
fn setup_message(step: &str, errno: i32) -> String {
    if errno == 0 {
        step.to_string()
    } else {
        format!(
            "container setup failed at {step}: {}",
            io::Error::from_raw_os_error(errno)
        )
    }
}

/// Result alias for the runtime.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in the runtime. Messages are lowercase and name the failing step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call or file operation failed.
    #[error("{step}: {source}")]
    Os {
        /// What was being done, e.g. "mount proc on /var/lib/berth/…/rootfs/proc".
        step: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// The container's init could not be started; `step` is the setup step that failed inside
    /// the new namespaces, `errno` the kernel's answer there.
    #[error("{}", setup_message(step, *errno))]
    Setup {
        /// The failing step as reported by the child.
        step: String,
        /// errno from the child.
        errno: i32,
    },
    /// The container has no running monitor (it is stopped, or its monitor died).
    #[error("container {0} is not running")]
    NotRunning(String),
    /// The container already has a live monitor.
    #[error("container {0} is already running")]
    AlreadyRunning(String),
    /// The monitor answered something this version does not understand.
    #[error("monitor protocol error: {0}")]
    Protocol(String),
    /// An external tool the runtime relies on failed.
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        /// The program, e.g. "mkfs.btrfs".
        tool: String,
        /// Its exit status, as text.
        status: String,
        /// The last lines it wrote to stderr.
        stderr: String,
    },
    /// A storage pool is missing, unmounted, or of the wrong kind.
    #[error("storage pool at {path}: {reason}")]
    Pool {
        /// The pool's mount point.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// An image is malformed or unusable.
    #[error("invalid image: {0}")]
    InvalidImage(String),
    /// A caller-supplied value is unusable (a path outside the rootfs, a bad signal name…).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The request cannot work here (e.g. a root disk limit on a pool without quotas).
    #[error("not supported: {0}")]
    NotSupported(String),
    /// The operation was cancelled; nothing of it was kept.
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    /// Wraps an `io::Error` with the step that failed.
    pub fn os(step: impl Into<String>, source: io::Error) -> Self {
        Error::Os {
            step: step.into(),
            source,
        }
    }

    /// The errno of an OS-level failure, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Os { source, .. } => source.raw_os_error(),
            Error::Setup { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// Adds a step description to `io::Result`s.
pub trait Context<T> {
    /// Maps the error to [`Error::Os`] with the step computed lazily.
    fn step<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T>;
}

impl<T> Context<T> for io::Result<T> {
    fn step<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| Error::os(f(), e))
    }
}
