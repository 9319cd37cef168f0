//! Domain events, published by the actors and projected by the interfaces as D-Bus signals and
//! property changes. A bounded broadcast channel: a subscriber that falls behind gets
//! `Lagged` and must resynchronize from a list call.

use crate::types::Status;
use tokio::sync::broadcast;

/// Something that happened to an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A container was created (its storage exists and it is registered).
    ContainerCreated {
        /// Name.
        name: String,
    },
    /// A container's status or init changed.
    ContainerChanged {
        /// Name.
        name: String,
        /// New status.
        status: Status,
        /// init pid (0 when stopped).
        init_pid: u32,
    },
    /// A container's config changed.
    ContainerConfigChanged {
        /// Name.
        name: String,
    },
    /// A container is gone.
    ContainerRemoved {
        /// Name.
        name: String,
    },
    /// A snapshot was committed (or renamed to this name).
    SnapshotCreated {
        /// Its container.
        container: String,
        /// Its name.
        name: String,
    },
    /// A snapshot is gone (or was renamed away from this name).
    SnapshotRemoved {
        /// Its container.
        container: String,
        /// Its name.
        name: String,
    },
    /// An image was added.
    ImageAdded {
        /// Fingerprint.
        fingerprint: String,
    },
    /// An image was removed.
    ImageRemoved {
        /// Fingerprint.
        fingerprint: String,
    },
    /// An image's aliases or properties changed.
    ImageChanged {
        /// Fingerprint.
        fingerprint: String,
    },
    /// A long operation started.
    OperationNew {
        /// Its id.
        id: u64,
    },
    /// A long operation ended.
    OperationDone {
        /// Its id.
        id: u64,
        /// Whether it succeeded.
        success: bool,
        /// The error, when it did not.
        message: String,
    },
}

/// Capacity of the event channel.
pub const CAPACITY: usize = 4096;

/// The publishing side, cloned into every actor.
#[derive(Debug, Clone)]
pub struct Events {
    tx: broadcast::Sender<Event>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            tx: broadcast::channel(CAPACITY).0,
        }
    }
}

impl Events {
    /// Publishes (a no-op without subscribers).
    pub fn publish(&self, e: Event) {
        let _ = self.tx.send(e);
    }

    /// A new subscription.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
