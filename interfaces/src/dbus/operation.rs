//! `org.berth.Berth1.Operation` at `/org/berth/Berth1/operation/<n>`: a long job (import,
//! build, publish) visible while its method call is pending. Progress properties change at
//! most four times a second; `Completed` is emitted and the object removed when it ends.

use super::Context;
use crate::auth;
use crate::errors::{Error, Name, Result};
use crate::paths;
use berth_actors::operation::Operation;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::{OwnedObjectPath, OwnedVariant, interface};

/// The interface name (a contract).
pub const INTERFACE: &str = "org.berth.Berth1.Operation";

/// One operation's object.
#[derive(Debug)]
pub struct OperationIface {
    ctx: Context,
    op: Arc<Operation>,
}

impl OperationIface {
    /// The object for `op`.
    pub fn new(ctx: Context, op: Arc<Operation>) -> Self {
        OperationIface { ctx, op }
    }
}

/// Object paths of what an operation concerns (`container:x`, `image:<fp>`).
fn object_paths(op: &Operation) -> Vec<OwnedObjectPath> {
    let objs = op.objects.lock().map(|g| g.clone()).unwrap_or_default();
    objs.iter()
        .filter_map(|o| match o.split_once(':') {
            Some(("container", n)) => Some(paths::container(n)),
            Some(("image", fp)) if fp.len() == 64 && fp.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(paths::image(fp))
            }
            _ => None,
        })
        .filter_map(|p| OwnedObjectPath::try_from(p).ok())
        .collect()
}

#[interface(name = "org.berth.Berth1.Operation")]
impl OperationIface {
    /// Asks the operation to stop; it ends with status `cancelled` and keeps nothing. Your own
    /// operations need `cancel-operation`, others' `cancel-operation-other-user`.
    async fn cancel(
        &self,
        options: HashMap<String, OwnedVariant>,
        #[zbus(header)] h: Header<'_>,
    ) -> Result<()> {
        super::options::Options::parse("Cancel", options, &[])?;
        let id = self.op.id.to_string();
        let uid = self
            .ctx
            .authorize(
                &h,
                auth::CANCEL_OPERATION,
                &[("operation", &id), ("verb", "cancel")],
            )
            .await?;
        if uid != 0 && uid != self.op.started_by_uid {
            self.ctx
                .authorize(
                    &h,
                    auth::CANCEL_OPERATION_OTHER_USER,
                    &[("operation", &id), ("verb", "cancel")],
                )
                .await?;
        }
        if !self.op.cancelable {
            return Err(Error::new(
                Name::NotSupported,
                "this operation cannot be cancelled",
            ));
        }
        self.op.cancel.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// What it does: image-import, image-build, publish.
    #[zbus(property(emits_changed_signal = "const"), name = "Operation")]
    async fn verb(&self) -> String {
        self.op.verb.clone()
    }

    /// Progress from 0 to 1 (see ProgressValid).
    #[zbus(property)]
    async fn progress(&self) -> f64 {
        self.op.progress().unwrap_or(0.0)
    }

    /// Whether the total is known, so that Progress means something.
    #[zbus(property)]
    async fn progress_valid(&self) -> bool {
        self.op.progress().is_some()
    }

    /// Bytes processed.
    #[zbus(property)]
    async fn bytes(&self) -> u64 {
        self.op.done.load(Ordering::Relaxed)
    }

    /// Bytes per second so far.
    #[zbus(property)]
    async fn rate(&self) -> u64 {
        self.op.rate()
    }

    /// When it started (µs since the epoch).
    #[zbus(property(emits_changed_signal = "const"))]
    async fn start_time(&self) -> u64 {
        self.op.started_at_us
    }

    /// The objects it concerns.
    #[zbus(property)]
    async fn objects(&self) -> Vec<OwnedObjectPath> {
        object_paths(&self.op)
    }

    /// Who started it.
    #[zbus(property(emits_changed_signal = "const"), name = "StartedByUID")]
    async fn started_by_uid(&self) -> u32 {
        self.op.started_by_uid
    }

    /// Whether Cancel works.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn cancelable(&self) -> bool {
        self.op.cancelable
    }

    /// running, success, failure or cancelled.
    #[zbus(property)]
    async fn status(&self) -> String {
        self.op.status().as_str().to_string()
    }

    /// It ended: whether it succeeded, and the error if not.
    #[zbus(signal)]
    pub async fn completed(
        emitter: &SignalEmitter<'_>,
        success: bool,
        message: &str,
    ) -> zbus::Result<()>;
}
