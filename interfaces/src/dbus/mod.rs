//! The D-Bus service: the Manager at `/org/berth/Berth1` (with the ObjectManager), one object
//! per container and per image, and the projector that turns engine events into exported
//! objects, signals and PropertiesChanged.
//!
//! Methods are thin: authorize, send one engine call, map the result through the error table.

pub mod container;
pub mod image;
pub mod manager;
pub mod objects;
pub mod operation;
pub mod options;
pub mod snapshot;

use crate::auth::{Authorizer, Caller};
use crate::errors::Error;
use crate::paths;
use berth_actors::{Engine, Event};
use std::collections::HashMap;
use std::sync::Arc;
use zbus::message::{Flags, Header};
use zbus::object_server::SignalEmitter;
use zbus::{Connection, OwnedObjectPath, Variant, fdo};
use zbus_polkit::policykit1::Subject;

/// What every object needs: the engine and the authorizer.
#[derive(Clone)]
pub struct Context {
    /// The engine.
    pub engine: Engine,
    /// Authorization.
    pub auth: Arc<dyn Authorizer>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl Context {
    /// Checks `action` for the sender of `header` with `details` (always including `verb`);
    /// returns the caller's uid.
    pub async fn authorize(
        &self,
        header: &Header<'_>,
        action: &str,
        details: &[(&str, &str)],
    ) -> Result<u32, Error> {
        let caller = Caller {
            subject: Subject::new_for_message_header(header).ok(),
            fallback_subject: None,
            bus_name: header.sender().map(|s| s.to_string()),
            uid: if header.sender().is_none() {
                Some(current_uid())
            } else {
                None
            },
            interactive: header
                .primary()
                .flags()
                .contains(Flags::ALLOW_INTERACTIVE_AUTH),
        };
        self.authorize_caller(&caller, action, details).await
    }

    /// Checks `action` for `caller` with `details` (always including `verb`); returns the
    /// caller's uid. Both transports end here: D-Bus with the sender's bus name, varlink with
    /// the peer's pidfd and uid.
    pub async fn authorize_caller(
        &self,
        caller: &Caller,
        action: &str,
        details: &[(&str, &str)],
    ) -> Result<u32, Error> {
        // a pending check (a password prompt may take minutes) keeps berthd from idling out
        let _busy = self.engine.activity().hold();
        let detail = |k: &str| {
            details
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| *v)
                .unwrap_or("")
        };
        let (container, verb) = (detail("container"), detail("verb"));
        let r = self.auth.check(caller, action, details).await;
        // one journal entry per authorization, with fields a journalctl match can select on
        match &r {
            Ok(uid) => tracing::info!(
                operation = verb,
                action,
                container,
                caller_uid = uid,
                "authorized"
            ),
            Err(e) => tracing::info!(
                operation = verb,
                action,
                container,
                caller = caller.bus_name.as_deref().unwrap_or(""),
                "refused: {e}"
            ),
        }
        r
    }
}

/// On a peer-to-peer connection (tests) there is no bus to ask: the peer is trusted as the
/// connection's own user, which is what the socket's permissions allowed.
fn current_uid() -> u32 {
    // SAFETY: getuid has no failure mode.
    unsafe { libc::getuid() }
}

/// An object path from a string we built.
pub(crate) fn path(p: String) -> OwnedObjectPath {
    OwnedObjectPath::try_from(p).expect("berth builds valid object paths")
}

/// Exports the Manager, the ObjectManager and every existing object, and starts the
/// projector. Call before requesting the bus name.
pub async fn serve(conn: &Connection, ctx: Context) -> Result<(), Error> {
    // Subscribe before listing so that nothing created in between is missed.
    let events = ctx.engine.subscribe();
    let server = conn.object_server();
    // nothing is announced: nobody can listen before berthd owns its name (see objects.rs)
    resync(conn, &ctx, false).await?;
    server
        .at(paths::ROOT, manager::ManagerIface::new(ctx.clone()))
        .await?;
    server
        .at(paths::ROOT, objects::ObjectManagerIface::new(ctx.clone()))
        .await?;
    tokio::spawn(project(conn.clone(), ctx, events));
    Ok(())
}

async fn export_container(conn: &Connection, ctx: &Context, name: &str) -> zbus::Result<bool> {
    let added = conn
        .object_server()
        .at(
            paths::container(name),
            container::ContainerIface::new(ctx.clone(), name.to_string()),
        )
        .await?;
    Ok(added.is_none())
}

pub(crate) async fn export_snapshot(
    conn: &Connection,
    ctx: &Context,
    container: &str,
    name: &str,
) -> zbus::Result<bool> {
    let iface = snapshot::SnapshotIface::new(ctx.clone(), container.to_string(), name.to_string());
    let added = conn
        .object_server()
        .at(paths::snapshot(container, name), iface)
        .await?;
    Ok(added.is_none())
}

async fn export_image(conn: &Connection, ctx: &Context, fp: &str) -> zbus::Result<bool> {
    let added = conn
        .object_server()
        .at(
            paths::image(fp),
            image::ImageIface::new(ctx.clone(), fp.to_string()),
        )
        .await?;
    Ok(added.is_none())
}

/// Makes the exported objects match the engine (startup, and after missed events, when the
/// objects that were missing are `announce`d).
async fn resync(conn: &Connection, ctx: &Context, announce: bool) -> Result<(), Error> {
    let containers = ctx.engine.list_containers().await?;
    let images = ctx.engine.list_images().await?;
    for c in &containers {
        if export_container(conn, ctx, &c.name).await? && announce {
            objects::announce::<container::ContainerIface>(
                conn,
                &paths::container(&c.name),
                container::INTERFACE,
            )
            .await?;
        }
    }
    for i in &images {
        if export_image(conn, ctx, &i.fingerprint).await? && announce {
            objects::announce::<image::ImageIface>(
                conn,
                &paths::image(&i.fingerprint),
                image::INTERFACE,
            )
            .await?;
        }
    }
    for sn in ctx.engine.all_snapshots().await? {
        if export_snapshot(conn, ctx, &sn.container, &sn.name).await? && announce {
            objects::announce::<snapshot::SnapshotIface>(
                conn,
                &paths::snapshot(&sn.container, &sn.name),
                snapshot::INTERFACE,
            )
            .await?;
        }
    }
    Ok(())
}

/// Projects engine events onto the bus.
async fn project(
    conn: Connection,
    ctx: Context,
    mut events: tokio::sync::broadcast::Receiver<Event>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let Ok(root) = SignalEmitter::new(&conn, paths::ROOT) else {
        return;
    };
    loop {
        let ev = match events.recv().await {
            Ok(ev) => ev,
            Err(RecvError::Lagged(n)) => {
                tracing::warn!("the D-Bus projector missed {n} events; resynchronizing");
                if let Err(e) = resync(&conn, &ctx, true).await {
                    tracing::error!("resync: {e}");
                }
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        if let Err(e) = project_one(&conn, &ctx, &root, ev).await {
            tracing::warn!("projecting an event: {e}");
        }
    }
}

async fn project_one(
    conn: &Connection,
    ctx: &Context,
    root: &SignalEmitter<'_>,
    ev: Event,
) -> zbus::Result<()> {
    match ev {
        Event::ContainerCreated { name } => {
            // announced whoever exported it: a create exports its object before it replies
            export_container(conn, ctx, &name).await?;
            objects::announce::<container::ContainerIface>(
                conn,
                &paths::container(&name),
                container::INTERFACE,
            )
            .await?;
            let p = path(paths::container(&name));
            manager::ManagerIface::container_new(root, &name, p.as_ref()).await?;
        }
        Event::ContainerChanged {
            name,
            status,
            init_pid,
        } => {
            let p = paths::container(&name);
            if conn
                .object_server()
                .interface::<_, container::ContainerIface>(p.as_str())
                .await
                .is_ok()
            {
                let emitter = SignalEmitter::new(conn, p)?;
                let changed = HashMap::from([
                    ("Status", Variant::from(status.as_str())),
                    ("InitPid", Variant::from(init_pid)),
                ]);
                // a saved running state comes and goes with a stop or a start: Stateful is
                // invalidated rather than sent, so the projector never asks the actor here
                fdo::Properties::properties_changed(
                    &emitter,
                    container::INTERFACE.try_into()?,
                    changed,
                    std::borrow::Cow::Borrowed(&["Stateful"]),
                )
                .await?;
            }
        }
        Event::ContainerConfigChanged { name } => {
            let p = paths::container(&name);
            if let Ok(iface) = conn
                .object_server()
                .interface::<_, container::ContainerIface>(p.as_str())
                .await
            {
                let emitter = iface.signal_emitter().clone();
                let g = iface.get().await;
                g.config_changed(&emitter).await?;
                g.expanded_config_changed(&emitter).await?;
            }
        }
        Event::ContainerRemoved { name } => {
            let p = paths::container(&name);
            // withdrawn whoever removed it (a delete may have, before it replied)
            match conn
                .object_server()
                .remove::<container::ContainerIface, _>(p.as_str())
                .await
            {
                Ok(_) | Err(zbus::Error::InterfaceNotFound) => {
                    objects::withdraw(conn, &p, container::INTERFACE).await?
                }
                Err(e) => return Err(e),
            }
            manager::ManagerIface::container_removed(root, &name, path(p).as_ref()).await?;
        }
        Event::SnapshotCreated { container, name } => {
            export_snapshot(conn, ctx, &container, &name).await?;
            objects::announce::<snapshot::SnapshotIface>(
                conn,
                &paths::snapshot(&container, &name),
                snapshot::INTERFACE,
            )
            .await?;
        }
        Event::SnapshotRemoved { container, name } => {
            let p = paths::snapshot(&container, &name);
            // withdrawn whoever removed it (a delete may have, before it replied)
            match conn
                .object_server()
                .remove::<snapshot::SnapshotIface, _>(p.as_str())
                .await
            {
                Ok(_) | Err(zbus::Error::InterfaceNotFound) => {
                    objects::withdraw(conn, &p, snapshot::INTERFACE).await?
                }
                Err(e) => return Err(e),
            }
        }
        Event::ImageAdded { fingerprint } => {
            export_image(conn, ctx, &fingerprint).await?;
            objects::announce::<image::ImageIface>(
                conn,
                &paths::image(&fingerprint),
                image::INTERFACE,
            )
            .await?;
            manager::ManagerIface::image_new(
                root,
                &fingerprint,
                path(paths::image(&fingerprint)).as_ref(),
            )
            .await?;
        }
        Event::ImageChanged { fingerprint } => {
            let p = paths::image(&fingerprint);
            if let Ok(iface) = conn
                .object_server()
                .interface::<_, image::ImageIface>(p.as_str())
                .await
            {
                let emitter = iface.signal_emitter().clone();
                let g = iface.get().await;
                g.aliases_changed(&emitter).await?;
                g.properties_changed(&emitter).await?;
            }
        }
        Event::OperationNew { id } => {
            let Some(op) = ctx.engine.operation(id) else {
                return Ok(());
            };
            let p = paths::operation(id);
            if conn
                .object_server()
                .at(
                    p.as_str(),
                    operation::OperationIface::new(ctx.clone(), op.clone()),
                )
                .await?
                .is_none()
            {
                objects::announce::<operation::OperationIface>(conn, &p, operation::INTERFACE)
                    .await?;
            }
            manager::ManagerIface::operation_new(root, path(p.clone()).as_ref()).await?;
            // progress, at most four times a second, while it runs
            let conn = conn.clone();
            tokio::spawn(async move {
                let Ok(emitter) = SignalEmitter::new(&conn, p) else {
                    return;
                };
                let mut last = u64::MAX;
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                    if op.status() != berth_actors::operation::OpStatus::Running {
                        return;
                    }
                    let done = op.done.load(std::sync::atomic::Ordering::Relaxed);
                    if done == last {
                        continue;
                    }
                    last = done;
                    let changed = HashMap::from([
                        ("Progress", Variant::from(op.progress().unwrap_or(0.0))),
                        ("ProgressValid", Variant::from(op.progress().is_some())),
                        ("Bytes", Variant::from(done)),
                        ("Rate", Variant::from(op.rate())),
                    ]);
                    let iface = match operation::INTERFACE.try_into() {
                        Ok(i) => i,
                        Err(_) => return,
                    };
                    if fdo::Properties::properties_changed(
                        &emitter,
                        iface,
                        changed,
                        std::borrow::Cow::Borrowed(&[]),
                    )
                    .await
                    .is_err()
                    {
                        return;
                    }
                }
            });
        }
        Event::OperationDone {
            id,
            success,
            message,
        } => {
            let p = paths::operation(id);
            if let Ok(emitter) = SignalEmitter::new(conn, p.clone()) {
                operation::OperationIface::completed(&emitter, success, &message).await?;
            }
            match conn
                .object_server()
                .remove::<operation::OperationIface, _>(p.as_str())
                .await
            {
                Ok(true) => objects::withdraw(conn, &p, operation::INTERFACE).await?,
                Ok(false) | Err(zbus::Error::InterfaceNotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Event::ImageRemoved { fingerprint } => {
            let p = paths::image(&fingerprint);
            // withdrawn whoever removed it (a delete may have, before it replied)
            match conn
                .object_server()
                .remove::<image::ImageIface, _>(p.as_str())
                .await
            {
                Ok(_) | Err(zbus::Error::InterfaceNotFound) => {
                    objects::withdraw(conn, &p, image::INTERFACE).await?
                }
                Err(e) => return Err(e),
            }
            manager::ManagerIface::image_removed(root, &fingerprint, path(p).as_ref()).await?;
        }
    }
    Ok(())
}
