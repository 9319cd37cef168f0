//! Wire types shared by the server objects and the client proxies.

use serde::{Deserialize, Serialize};
use zbus::{OwnedObjectPath, Type};

/// One line of `ListContainers`: `(ssso)` name, status, image fingerprint, path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ContainerEntry {
    /// Name.
    pub name: String,
    /// Status (Stopped, Starting, Running, Stopping, Frozen, Error).
    pub status: String,
    /// Image fingerprint.
    pub image: String,
    /// Object path.
    pub path: OwnedObjectPath,
}

/// One line of `ListImages`: `(sasso)` fingerprint, aliases, description, path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ImageEntry {
    /// Fingerprint.
    pub fingerprint: String,
    /// Aliases.
    pub aliases: Vec<String>,
    /// Description property.
    pub description: String,
    /// Object path.
    pub path: OwnedObjectPath,
}

/// Bus name (a contract).
pub const BUS_NAME: &str = "org.berth.Berth1";
