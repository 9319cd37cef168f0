//! The engine's front door: a cheap, cloneable handle with one async method per domain
//! operation. Interfaces (D-Bus, varlink) call only these; each is a message to the Manager
//! (which forwards container operations to the container's own actor).

use crate::container::ContainerMsg;
use crate::container::ContainerMsg as CMsg;
use crate::error::{Error, Result};
use crate::events::{Event, Events};
use crate::manager::{ManagerActor, ManagerArgs, ManagerMsg};
use crate::operation::{Operation, Operations};
use crate::runtime::Runtime;
use crate::store::{Db, Store, StoreActor};
use crate::types::{
    ContainerInfo, ContainerSummary, CopyRequest, CreateRequest, Created, ExecRequest, HostInfo,
    ImageOptions, ImageRecord, SnapshotRecord, StartOptions, StopOptions, validate_name,
};
use ractor::{Actor, ActorRef, RactorErr, RpcReplyPort};
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use tokio::sync::broadcast;

/// Handle on a running engine.
#[derive(Clone)]
pub struct Engine {
    manager: ActorRef<ManagerMsg>,
    runtime: Arc<dyn Runtime>,
    store: Store,
    events: Events,
    ops: Operations,
    host: Arc<HostInfo>,
    activity: crate::activity::Activity,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("manager", &self.manager)
            .finish_non_exhaustive()
    }
}

fn gone<T>(what: &str) -> impl FnOnce(RactorErr<T>) -> Error + '_ {
    move |_| Error::Unavailable(what.to_string())
}

impl Engine {
    /// Starts the Store and Manager actors over `db`, and the Manager's [`Engine::startup`].
    pub async fn start(db: Db, runtime: Arc<dyn Runtime>, host: HostInfo) -> Result<Engine> {
        let engine = Self::start_idle(db, runtime, host).await?;
        engine.startup();
        Ok(engine)
    }

    /// Starts the Store and Manager actors over `db`, the Manager answering from what it
    /// loaded; the work of [`Engine::startup`] waits to be asked for, so that a daemon can
    /// serve its first call before its containers' actors compete for the CPU.
    pub async fn start_idle(db: Db, runtime: Arc<dyn Runtime>, host: HostInfo) -> Result<Engine> {
        let (store_actor, _) = Actor::spawn(None, StoreActor, db)
            .await
            .map_err(|e| Error::Store(format!("start the store actor: {e}")))?;
        let store = Store::new(store_actor);
        let events = Events::default();
        let ops = Operations::new(events.clone());
        let args = ManagerArgs {
            store: store.clone(),
            runtime: runtime.clone(),
            events: events.clone(),
            ops: ops.clone(),
        };
        let (manager, _) = Actor::spawn(None, ManagerActor, args)
            .await
            .map_err(|e| Error::Store(format!("start the manager: {e}")))?;
        Ok(Engine {
            manager,
            runtime,
            store,
            events,
            ops,
            host: Arc::new(host),
            activity: Default::default(),
        })
    }

    /// Finishes the changes a crash interrupted (the sweep of files no record names ran
    /// before: in [`Engine::start_idle`], before berthd serves), then spawns the
    /// containers' actors in the background, a batch at a time (each reconciles its state with
    /// what runs); a container a call needs is spawned at once. Once only: a second call does
    /// nothing.
    pub fn startup(&self) {
        let _ = self.manager.send_message(ManagerMsg::Startup);
    }

    /// Stops the actors (containers keep running under their monitors).
    pub async fn shutdown(&self) {
        let _ = self
            .manager
            .stop_and_wait(
                Some("shutdown".into()),
                Some(std::time::Duration::from_secs(10)),
            )
            .await;
        let _ = self
            .store
            .actor()
            .stop_and_wait(None, Some(std::time::Duration::from_secs(5)))
            .await;
    }

    /// Writes the manifests (`backup.yaml`) that are missing or stale in the background: rows
    /// an older berth wrote, or a write that failed. berthd asks once it serves, so a daemon
    /// with many containers answers its first call without reading every manifest first.
    pub fn refresh_backups(&self) {
        self.store.refresh_backups_in_background();
    }

    /// Calls in flight and when the engine was last used (for the daemon's idle exit).
    pub fn activity(&self) -> &crate::activity::Activity {
        &self.activity
    }

    /// How long the engine has been idle: nothing in flight, no operation running; `None`
    /// while busy.
    pub fn idle_for(&self) -> Option<std::time::Duration> {
        if !self.ops.list().is_empty() {
            return None;
        }
        self.activity.idle_for()
    }

    /// Answers once the Manager has handled every message sent before (a liveness probe).
    pub async fn ping(&self) -> Result<()> {
        ractor::call!(self.manager, ManagerMsg::Ping).map_err(gone("the manager"))
    }

    /// Host facts.
    pub fn host(&self) -> &HostInfo {
        &self.host
    }

    /// A subscription to domain events.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Creates a container (and starts it if asked).
    pub async fn create_container(&self, req: CreateRequest) -> Result<(ContainerInfo, Created)> {
        let _busy = self.activity.hold();
        if !(req.name.is_empty() && req.pick_name) {
            validate_name(&req.name)?;
        }
        ractor::call!(self.manager, ManagerMsg::Create, Box::new(req))
            .map_err(gone("the manager"))?
    }

    /// Every container.
    pub async fn list_containers(&self) -> Result<Vec<ContainerSummary>> {
        let _busy = self.activity.hold();
        ractor::call!(self.manager, ManagerMsg::List).map_err(gone("the manager"))
    }

    async fn to_container<T: Send + 'static>(
        &self,
        name: &str,
        build: impl FnOnce(RpcReplyPort<Result<T>>) -> ContainerMsg,
    ) -> Result<T> {
        validate_name(name)?;
        let (tx, rx) = ractor::concurrency::oneshot();
        self.manager
            .send_message(ManagerMsg::ToContainer(name.to_string(), build(tx.into())))
            .map_err(|_| Error::Unavailable("the manager".into()))?;
        rx.await
            .unwrap_or_else(|_| Err(Error::Unavailable(format!("container {name:?}"))))
    }

    /// A container's current info.
    pub async fn container(&self, name: &str) -> Result<ContainerInfo> {
        let _busy = self.activity.hold();
        self.to_container(name, ContainerMsg::Info).await
    }

    /// Starts a container (restoring the state a stateful stop saved, unless `stateless`).
    pub async fn start_container(&self, name: &str, opts: StartOptions) -> Result<()> {
        let _busy = self.activity.hold();
        self.to_container(name, |r| ContainerMsg::Start(opts, r))
            .await
    }

    /// Starts a container as [`Engine::start_container`] does, provided the start is the kind
    /// the caller was authorized for: `restore` when it was authorized to restore a stateful
    /// stop's saved state (the `checkpoint` action), else to boot (`manage-containers`). The
    /// container's actor decides on its own state in the step that starts, so a stateful stop
    /// between the caller's authorization and the start cannot turn an authorized boot into a
    /// CRIU restore (nor the reverse); the answer is then `Busy` and nothing happens.
    pub async fn start_container_authorized(
        &self,
        name: &str,
        opts: StartOptions,
        restore: bool,
    ) -> Result<()> {
        let _busy = self.activity.hold();
        self.to_container(name, |reply| ContainerMsg::StartAs {
            opts,
            restore,
            reply,
        })
        .await
    }

    /// Sets and removes config keys of a container (see [`ContainerMsg::SetConfig`]).
    pub async fn set_config(
        &self,
        name: &str,
        set: BTreeMap<String, String>,
        unset: Vec<String>,
    ) -> Result<()> {
        let _busy = self.activity.hold();
        self.to_container(name, |reply| ContainerMsg::SetConfig { set, unset, reply })
            .await
    }

    /// Copies a container, or one of its snapshots, to a new container.
    pub async fn copy_container(&self, req: CopyRequest) -> Result<ContainerInfo> {
        let _busy = self.activity.hold();
        ractor::call!(self.manager, ManagerMsg::Copy, Box::new(req)).map_err(gone("the manager"))?
    }

    /// Takes a snapshot (an empty name picks `snapN`).
    pub async fn create_snapshot(
        &self,
        container: &str,
        name: &str,
        stateful: bool,
        uid: u32,
    ) -> Result<SnapshotRecord> {
        let _busy = self.activity.hold();
        if !name.is_empty() {
            validate_name(name)?;
        }
        let name = name.to_string();
        self.to_container(container, |reply| ContainerMsg::CreateSnapshot {
            name,
            stateful,
            uid,
            reply,
        })
        .await
    }

    /// A container's snapshots, oldest first.
    pub async fn list_snapshots(&self, container: &str) -> Result<Vec<SnapshotRecord>> {
        let _busy = self.activity.hold();
        self.to_container(container, ContainerMsg::ListSnapshots)
            .await
    }

    /// The log of the last checkpoint or restore of a container, if any (at most the last
    /// 256 KiB).
    pub async fn criu_log(&self, name: &str) -> Result<Option<(String, String)>> {
        let _busy = self.activity.hold();
        self.container(name).await?;
        let Some(path) = self.runtime.criu_log(name) else {
            return Ok(None);
        };
        let text = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Seek, SeekFrom};
            let mut f = std::fs::File::open(&path).ok()?;
            let len = f.metadata().ok()?.len();
            f.seek(SeekFrom::Start(len.saturating_sub(256 << 10)))
                .ok()?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).ok()?;
            Some((
                path.display().to_string(),
                String::from_utf8_lossy(&buf).into_owned(),
            ))
        })
        .await
        .ok()
        .flatten();
        Ok(text)
    }

    /// Every snapshot of every container (from the database: one query).
    pub async fn all_snapshots(&self) -> Result<Vec<SnapshotRecord>> {
        let _busy = self.activity.hold();
        self.store.all_snapshots().await
    }

    /// One snapshot.
    pub async fn snapshot(&self, container: &str, name: &str) -> Result<SnapshotRecord> {
        let _busy = self.activity.hold();
        validate_name(name)?;
        self.to_container(container, |r| {
            ContainerMsg::GetSnapshot(name.to_string(), r)
        })
        .await
    }

    /// Restores a snapshot (`stateful`: its running state too; None: what it holds).
    pub async fn restore_snapshot(
        &self,
        container: &str,
        name: &str,
        stateful: Option<bool>,
        uid: u32,
    ) -> Result<()> {
        let _busy = self.activity.hold();
        validate_name(name)?;
        let name = name.to_string();
        self.to_container(container, |reply| ContainerMsg::RestoreSnapshot {
            name,
            stateful,
            uid,
            reply,
        })
        .await
    }

    /// Renames a snapshot.
    pub async fn rename_snapshot(
        &self,
        container: &str,
        from: &str,
        to: &str,
    ) -> Result<SnapshotRecord> {
        let _busy = self.activity.hold();
        validate_name(from)?;
        validate_name(to)?;
        let (from, to) = (from.to_string(), to.to_string());
        self.to_container(container, |reply| ContainerMsg::RenameSnapshot {
            from,
            to,
            reply,
        })
        .await
    }

    /// Deletes a snapshot.
    pub async fn delete_snapshot(&self, container: &str, name: &str) -> Result<()> {
        let _busy = self.activity.hold();
        validate_name(name)?;
        let name = name.to_string();
        self.to_container(container, |reply| ContainerMsg::DeleteSnapshot {
            name,
            reply,
        })
        .await
    }

    /// Stops a container.
    pub async fn stop_container(&self, name: &str, opts: StopOptions) -> Result<()> {
        let _busy = self.activity.hold();
        self.to_container(name, |r| ContainerMsg::Stop(opts, r))
            .await
    }

    /// Restarts a container.
    pub async fn restart_container(&self, name: &str, opts: StopOptions) -> Result<()> {
        let _busy = self.activity.hold();
        self.to_container(name, |r| ContainerMsg::Restart(opts, r))
            .await
    }

    /// Deletes a container.
    pub async fn delete_container(&self, name: &str, force: bool) -> Result<()> {
        let _busy = self.activity.hold();
        self.to_container(name, |reply| ContainerMsg::Delete { force, reply })
            .await
    }

    /// Runs a process in a container; returns its exit status.
    pub async fn exec(&self, name: &str, req: ExecRequest) -> Result<i32> {
        let _busy = self.activity.hold();
        self.to_container(name, |r| ContainerMsg::Exec(Box::new(req), r))
            .await
    }

    /// Every image.
    pub async fn list_images(&self) -> Result<Vec<ImageRecord>> {
        let _busy = self.activity.hold();
        ractor::call!(self.manager, ManagerMsg::ListImages).map_err(gone("the manager"))
    }

    /// Registers the container volumes and images of the pools that have no row, from their
    /// `backup.yaml`; reports what it found, recovered and skipped.
    pub async fn recover(&self) -> Result<crate::recover::Report> {
        let _busy = self.activity.hold();
        ractor::call!(self.manager, ManagerMsg::Recover).map_err(gone("the manager"))?
    }

    /// An image by alias, fingerprint or unique prefix.
    pub async fn image(&self, reference: &str) -> Result<ImageRecord> {
        let _busy = self.activity.hold();
        ractor::call!(
            self.manager,
            ManagerMsg::ResolveImage,
            reference.to_string()
        )
        .map_err(gone("the manager"))?
    }

    /// Builds an image from a built-in recipe (an operation).
    pub async fn build_image(
        &self,
        recipe: &str,
        opts: ImageOptions,
        uid: u32,
    ) -> Result<(ImageRecord, Created)> {
        let _busy = self.activity.hold();
        ractor::call!(self.manager, |reply| ManagerMsg::BuildImage {
            recipe: recipe.to_string(),
            opts,
            uid,
            reply
        })
        .map_err(gone("the manager"))?
    }

    /// Imports an image from open files (an operation).
    pub async fn import_image(
        &self,
        archive: OwnedFd,
        rootfs: Option<OwnedFd>,
        opts: ImageOptions,
        uid: u32,
    ) -> Result<(ImageRecord, Created)> {
        let _busy = self.activity.hold();
        ractor::call!(self.manager, |reply| ManagerMsg::ImportImage {
            archive,
            rootfs,
            opts,
            uid,
            reply
        })
        .map_err(gone("the manager"))?
    }

    /// Publishes a stopped container, or a snapshot of any container, as a new image (an
    /// operation).
    pub async fn publish(
        &self,
        name: &str,
        snapshot: Option<&str>,
        opts: ImageOptions,
        uid: u32,
    ) -> Result<(ImageRecord, Created)> {
        let _busy = self.activity.hold();
        if let Some(s) = snapshot {
            validate_name(s)?;
        }
        let snapshot = snapshot.map(str::to_string);
        let sn = snapshot.clone();
        let (record, source) = self
            .to_container(name, |r| CMsg::BeginPublish(sn, r))
            .await?;
        let sn = snapshot.clone();
        let res = ractor::call!(self.manager, |reply| ManagerMsg::Publish {
            record: Box::new(record),
            source,
            snapshot: sn,
            opts,
            uid,
            reply
        });
        match res {
            Ok(r) => r,
            Err(_) => {
                let _ = self.manager.cast(ManagerMsg::ToContainer(
                    name.to_string(),
                    CMsg::EndPublish(snapshot),
                ));
                Err(Error::Unavailable("the manager".into()))
            }
        }
    }

    /// Points an alias at an image.
    pub async fn add_image_alias(&self, reference: &str, alias: &str) -> Result<ImageRecord> {
        let _busy = self.activity.hold();
        ractor::call!(
            self.manager,
            ManagerMsg::AddAlias,
            reference.to_string(),
            alias.to_string()
        )
        .map_err(gone("the manager"))?
    }

    /// Removes an alias.
    pub async fn remove_image_alias(&self, alias: &str) -> Result<()> {
        let _busy = self.activity.hold();
        ractor::call!(self.manager, ManagerMsg::RemoveAlias, alias.to_string())
            .map_err(gone("the manager"))?
    }

    /// Renames an alias.
    pub async fn rename_image_alias(&self, from: &str, to: &str) -> Result<()> {
        let _busy = self.activity.hold();
        ractor::call!(
            self.manager,
            ManagerMsg::RenameAlias,
            from.to_string(),
            to.to_string()
        )
        .map_err(gone("the manager"))?
    }

    /// Sets (empty value: removes) image properties.
    pub async fn set_image_properties(
        &self,
        reference: &str,
        props: BTreeMap<String, String>,
    ) -> Result<ImageRecord> {
        let _busy = self.activity.hold();
        ractor::call!(
            self.manager,
            ManagerMsg::SetImageProperties,
            reference.to_string(),
            props
        )
        .map_err(gone("the manager"))?
    }

    /// Writes an image's file(s) to open files; returns the bytes written.
    pub async fn export_image(
        &self,
        reference: &str,
        out: OwnedFd,
        rootfs: Option<OwnedFd>,
        uid: u32,
    ) -> Result<u64> {
        let _busy = self.activity.hold();
        ractor::call!(
            self.manager,
            ManagerMsg::ExportImage,
            reference.to_string(),
            out,
            rootfs,
            uid
        )
        .map_err(gone("the manager"))?
    }

    /// Live operations.
    pub fn operations(&self) -> Vec<Arc<Operation>> {
        self.ops.list()
    }

    /// One live operation.
    pub fn operation(&self, id: u64) -> Option<Arc<Operation>> {
        self.ops.get(id)
    }

    /// Deletes an image.
    pub async fn delete_image(&self, reference: &str) -> Result<()> {
        let _busy = self.activity.hold();
        ractor::call!(self.manager, ManagerMsg::DeleteImage, reference.to_string())
            .map_err(gone("the manager"))?
    }

    /// The Manager actor (tests).
    pub fn manager(&self) -> &ActorRef<ManagerMsg> {
        &self.manager
    }
}
