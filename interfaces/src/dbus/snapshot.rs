//! `org.berth.Berth1.Snapshot` at `/org/berth/Berth1/container/<c>/snapshot/<s>`. The object
//! holds the container's and snapshot's names; everything else comes from the engine.

use super::Context;
use super::options::Options;
use crate::auth;
use crate::errors::Result;
use berth_actors::types::SnapshotRecord;
use std::collections::HashMap;
use zbus::message::Header;
use zbus::object_server::ObjectServer;
use zbus::{OwnedObjectPath, OwnedVariant, interface};

/// The interface name (a contract).
pub const INTERFACE: &str = "org.berth.Berth1.Snapshot";

/// One snapshot's object.
#[derive(Debug)]
pub struct SnapshotIface {
    ctx: Context,
    container: String,
    name: String,
}

impl SnapshotIface {
    /// The object for snapshot `name` of `container`.
    pub fn new(ctx: Context, container: String, name: String) -> Self {
        SnapshotIface {
            ctx,
            container,
            name,
        }
    }

    async fn record(&self) -> Result<SnapshotRecord> {
        Ok(self
            .ctx
            .engine
            .snapshot(&self.container, &self.name)
            .await?)
    }
}

/// Restore (shared by `Snapshot.Restore` and the CLI's by-name path): stateless restores need
/// `snapshot`, anything that runs CRIU `checkpoint`.
pub(crate) async fn restore(
    ctx: &Context,
    container: &str,
    name: &str,
    options: HashMap<String, OwnedVariant>,
    h: &Header<'_>,
) -> Result<()> {
    let o = Options::parse("Restore", options, &[("stateful", "b")])?;
    let asked = o.bool("stateful")?;
    let snap = ctx.engine.snapshot(container, name).await?;
    let stateful = asked.unwrap_or(snap.stateful);
    let action = if stateful {
        auth::CHECKPOINT
    } else {
        auth::SNAPSHOT
    };
    let uid = ctx
        .authorize(
            h,
            action,
            &[
                ("container", container),
                ("snapshot", name),
                ("verb", "restore"),
            ],
        )
        .await?;
    Ok(ctx
        .engine
        .restore_snapshot(container, name, asked, uid)
        .await?)
}

#[interface(name = "org.berth.Berth1.Snapshot")]
impl SnapshotIface {
    /// Brings the container back to this snapshot: its files, and, for a stateful snapshot
    /// (or option `stateful` b), its running processes. A running container is stopped first;
    /// after a stateless restore it is started again. Restoring the same snapshot again works.
    async fn restore(
        &self,
        options: HashMap<String, OwnedVariant>,
        #[zbus(header)] h: Header<'_>,
    ) -> Result<()> {
        restore(&self.ctx, &self.container, &self.name, options, &h).await
    }

    /// Deletes the snapshot.
    async fn delete(
        &self,
        #[zbus(header)] h: Header<'_>,
        #[zbus(object_server)] server: &ObjectServer,
    ) -> Result<()> {
        self.ctx
            .authorize(
                &h,
                auth::SNAPSHOT,
                &[
                    ("container", &self.container),
                    ("snapshot", &self.name),
                    ("verb", "delete"),
                ],
            )
            .await?;
        self.ctx
            .engine
            .delete_snapshot(&self.container, &self.name)
            .await?;
        match server
            .remove::<SnapshotIface, _>(
                crate::paths::snapshot(&self.container, &self.name).as_str(),
            )
            .await
        {
            Ok(_) | Err(zbus::Error::InterfaceNotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Renames the snapshot; its object moves to the new name's path, which is returned.
    #[zbus(out_args("snapshot"))]
    async fn rename(
        &self,
        new_name: String,
        #[zbus(header)] h: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<OwnedObjectPath> {
        self.ctx
            .authorize(
                &h,
                auth::SNAPSHOT,
                &[
                    ("container", &self.container),
                    ("snapshot", &self.name),
                    ("verb", "rename"),
                ],
            )
            .await?;
        let rec = self
            .ctx
            .engine
            .rename_snapshot(&self.container, &self.name, &new_name)
            .await?;
        super::export_snapshot(conn, &self.ctx, &rec.container, &rec.name).await?;
        Ok(super::path(crate::paths::snapshot(
            &rec.container,
            &rec.name,
        )))
    }

    /// Makes a new image of the snapshot's files. Options `aliases` (as), `properties`
    /// (a{ss}). Runs as an Operation.
    #[zbus(out_args("image"))]
    async fn publish(
        &self,
        options: HashMap<String, OwnedVariant>,
        #[zbus(header)] h: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<OwnedObjectPath> {
        let opts = super::manager::image_options("Publish", options, &[])?.0;
        let uid = self
            .ctx
            .authorize(
                &h,
                auth::MANAGE_IMAGES,
                &[
                    ("container", &self.container),
                    ("snapshot", &self.name),
                    ("verb", "publish"),
                ],
            )
            .await?;
        let (img, _) = self
            .ctx
            .engine
            .publish(&self.container, Some(&self.name), opts, uid)
            .await?;
        super::export_image(conn, &self.ctx, &img.fingerprint).await?;
        Ok(super::path(crate::paths::image(&img.fingerprint)))
    }

    /// Name.
    #[zbus(property)]
    async fn name(&self) -> String {
        self.name.clone()
    }

    /// The container's object.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn container(&self) -> OwnedObjectPath {
        super::path(crate::paths::container(&self.container))
    }

    /// When it was taken, µs since the epoch.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn created_at(&self) -> Result<u64> {
        Ok(self.record().await?.created_at_us)
    }

    /// It holds the running state (processes, memory, connections) too.
    #[zbus(property(emits_changed_signal = "const"))]
    async fn stateful(&self) -> Result<bool> {
        Ok(self.record().await?.stateful)
    }

    /// Bytes it holds on its own: CRIU images, and on a dir pool the copy of the files (a
    /// btrfs snapshot shares its extents with the container).
    #[zbus(property(emits_changed_signal = "const"))]
    async fn size(&self) -> Result<u64> {
        Ok(self.record().await?.size)
    }
}
