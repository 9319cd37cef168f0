//! `org.freedesktop.DBus.ObjectManager` at the root — berth's own rather than zbus's.
//!
//! zbus's emits `InterfacesAdded`, with every property read, for each object exported under
//! it: at each activation with 1,000 containers that was 0.4 s spent before berthd could own
//! its name, on signals nobody can have subscribed to yet. Here `GetManagedObjects` reads the
//! exported objects when asked, and the projector announces objects as they come and go
//! (`announce`, `withdraw`).

use super::{Context, container, image, operation, snapshot};
use crate::paths;
use std::collections::HashMap;
use zbus::names::OwnedInterfaceName;
use zbus::object_server::{Interface, ObjectServer, SignalEmitter};
use zbus::{Connection, ObjectPath, OwnedObjectPath, OwnedVariant, fdo, interface};

/// The ObjectManager object.
pub struct ObjectManagerIface {
    ctx: Context,
}

impl std::fmt::Debug for ObjectManagerIface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectManagerIface").finish_non_exhaustive()
    }
}

impl ObjectManagerIface {
    /// Serves the objects of `ctx`'s engine.
    pub fn new(ctx: Context) -> Self {
        ObjectManagerIface { ctx }
    }
}

/// Every property of interface `I` at `path`, if it is exported there.
async fn properties<I: Interface>(
    server: &ObjectServer,
    conn: &Connection,
    path: &str,
) -> Option<HashMap<String, OwnedVariant>> {
    let iface = server.interface::<_, I>(path).await.ok()?;
    let emitter = iface.signal_emitter().clone();
    let g = iface.get().await;
    g.get_all(server, conn, None, &emitter).await.ok()
}

fn entry(
    out: &mut fdo::ManagedObjects,
    path: &str,
    name: &str,
    props: HashMap<String, OwnedVariant>,
) {
    if let (Ok(p), Ok(n)) = (
        OwnedObjectPath::try_from(path.to_string()),
        OwnedInterfaceName::try_from(name.to_string()),
    ) {
        out.insert(p, HashMap::from([(n, props)]));
    }
}

#[interface(name = "org.freedesktop.DBus.ObjectManager")]
impl ObjectManagerIface {
    /// Every container, snapshot, image and operation object with its properties.
    async fn get_managed_objects(
        &self,
        #[zbus(object_server)] server: &ObjectServer,
        #[zbus(connection)] conn: &Connection,
    ) -> fdo::Result<fdo::ManagedObjects> {
        let engine = &self.ctx.engine;
        let err = |e: berth_actors::Error| fdo::Error::Failed(e.to_string());
        let mut out = fdo::ManagedObjects::new();
        for c in engine.list_containers().await.map_err(err)? {
            let p = paths::container(&c.name);
            if let Some(props) = properties::<container::ContainerIface>(server, conn, &p).await {
                entry(&mut out, &p, container::INTERFACE, props);
            }
        }
        for sn in engine.all_snapshots().await.map_err(err)? {
            let p = paths::snapshot(&sn.container, &sn.name);
            if let Some(props) = properties::<snapshot::SnapshotIface>(server, conn, &p).await {
                entry(&mut out, &p, snapshot::INTERFACE, props);
            }
        }
        for i in engine.list_images().await.map_err(err)? {
            let p = paths::image(&i.fingerprint);
            if let Some(props) = properties::<image::ImageIface>(server, conn, &p).await {
                entry(&mut out, &p, image::INTERFACE, props);
            }
        }
        for op in engine.operations() {
            let p = paths::operation(op.id);
            if let Some(props) = properties::<operation::OperationIface>(server, conn, &p).await {
                entry(&mut out, &p, operation::INTERFACE, props);
            }
        }
        Ok(out)
    }

    /// An object appeared.
    #[zbus(signal)]
    async fn interfaces_added(
        emitter: &SignalEmitter<'_>,
        object_path: ObjectPath<'_>,
        interfaces_and_properties: HashMap<&str, HashMap<String, OwnedVariant>>,
    ) -> zbus::Result<()>;

    /// An object went away.
    #[zbus(signal)]
    async fn interfaces_removed(
        emitter: &SignalEmitter<'_>,
        object_path: ObjectPath<'_>,
        interfaces: &[&str],
    ) -> zbus::Result<()>;
}

/// Emits `InterfacesAdded` for interface `I` (named `name`) newly exported at `path`.
pub(crate) async fn announce<I: Interface>(
    conn: &Connection,
    path: &str,
    name: &str,
) -> zbus::Result<()> {
    let server = conn.object_server();
    let Some(props) = properties::<I>(server, conn, path).await else {
        return Ok(());
    };
    let root = SignalEmitter::new(conn, paths::ROOT)?;
    ObjectManagerIface::interfaces_added(
        &root,
        ObjectPath::try_from(path)?,
        HashMap::from([(name, props)]),
    )
    .await
}

/// Emits `InterfacesRemoved` for the interface `name` no longer exported at `path`.
pub(crate) async fn withdraw(conn: &Connection, path: &str, name: &str) -> zbus::Result<()> {
    let root = SignalEmitter::new(conn, paths::ROOT)?;
    ObjectManagerIface::interfaces_removed(&root, ObjectPath::try_from(path)?, &[name]).await
}
