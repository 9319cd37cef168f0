//! The Manager actor: root supervisor of every Container and Image actor. It owns the registry
//! of names (so creates and deletes of one name are serialized here), the image index used to
//! resolve references, the list cache that answers `List` without asking each container, the
//! startup reconciliation, and the restart policy for failed children.
//!
//! Restart policy: a Container or Image actor that fails (panics or returns an error) is
//! respawned from the database; its container keeps running meanwhile (the monitor is a
//! separate process) and the new actor finds it again. More than [`MAX_RESTARTS`] failures
//! within [`RESTART_WINDOW`] give up: the name answers `Unavailable` until berthd restarts.

mod images;

pub use images::{validate_alias, validate_property};

use crate::container::{ContainerActor, ContainerArgs, ContainerMsg};
use crate::error::{Error, Op, Result};
use crate::events::{Event, Events};
use crate::image::{ImageActor, ImageArgs, ImageMsg};
use crate::operation::{Operation, Operations};
use crate::runtime::{NewImage, Runtime, VolumeSource};
use crate::store::{Loaded, Store};
use crate::types::{
    ContainerInfo, ContainerRecord, ContainerSummary, CopyRequest, CreateRequest, Created,
    ImageOptions, ImageRecord, Pending, SnapshotRecord, Status, now_us, validate_name,
};
use images::{ImageReply, JobSpec};
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};
use std::collections::HashSet;
use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Failures tolerated per child within [`RESTART_WINDOW`].
pub const MAX_RESTARTS: usize = 5;
/// The window for [`MAX_RESTARTS`].
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// Messages of the Manager.
#[derive(Debug)]
pub enum ManagerMsg {
    /// Create a container: validate, register the name, persist it as pending, spawn its actor
    /// and have it provision (and start). Replies once it exists (and runs, if asked), or with
    /// `Identity` when the same container already exists.
    Create(
        Box<CreateRequest>,
        RpcReplyPort<Result<(ContainerInfo, Created)>>,
    ),
    /// Copy a container (or one of its snapshots) to a new container. Replies once the copy
    /// exists (and runs, if asked).
    Copy(Box<CopyRequest>, RpcReplyPort<Result<ContainerInfo>>),
    /// Internal: the source of a copy lent its record and files.
    CopyReady {
        /// The request.
        req: Box<CopyRequest>,
        /// The source's record and files, or why not.
        lent: Result<(ContainerRecord, VolumeSource)>,
        /// Reply.
        reply: RpcReplyPort<Result<ContainerInfo>>,
    },
    /// Deliver a message to a container's actor, or fail it with `NoSuchContainer`.
    ToContainer(String, ContainerMsg),
    /// Every container, by name.
    List(RpcReplyPort<Vec<ContainerSummary>>),
    /// Every image.
    ListImages(RpcReplyPort<Vec<ImageRecord>>),
    /// Resolve an image reference (alias, fingerprint or unique prefix).
    ResolveImage(String, RpcReplyPort<Result<ImageRecord>>),
    /// Build an image from a recipe, as an operation; replies once it is registered.
    BuildImage {
        /// Recipe name.
        recipe: String,
        /// Aliases and properties.
        opts: ImageOptions,
        /// Caller.
        uid: u32,
        /// Reply.
        reply: ImageReply,
    },
    /// Import an image from open files, as an operation; replies once it is registered.
    ImportImage {
        /// The unified tarball or a split image's metadata tarball.
        archive: OwnedFd,
        /// A split image's rootfs.
        rootfs: Option<OwnedFd>,
        /// Aliases and properties.
        opts: ImageOptions,
        /// Caller.
        uid: u32,
        /// Reply.
        reply: ImageReply,
    },
    /// Publish a container whose record and files the caller obtained with
    /// `ContainerMsg::BeginPublish`; the container is told `EndPublish` when the job ends.
    Publish {
        /// The container's record.
        record: Box<ContainerRecord>,
        /// The files to publish (the container's, or a snapshot's).
        source: VolumeSource,
        /// The snapshot published, if one was.
        snapshot: Option<String>,
        /// Aliases and properties of the new image.
        opts: ImageOptions,
        /// Caller.
        uid: u32,
        /// Reply.
        reply: ImageReply,
    },
    /// Internal: a job produced an image (or failed); register it and end its operation.
    ImageReady {
        /// The job's result.
        result: Box<Result<NewImage>>,
        /// Aliases and properties asked for.
        opts: ImageOptions,
        /// The operation.
        op: Arc<Operation>,
        /// Reply.
        reply: ImageReply,
    },
    /// Point an alias at an image.
    AddAlias(String, String, RpcReplyPort<Result<ImageRecord>>),
    /// Remove an alias.
    RemoveAlias(String, RpcReplyPort<Result<()>>),
    /// Rename an alias.
    RenameAlias(String, String, RpcReplyPort<Result<()>>),
    /// Set (empty value: remove) image properties.
    SetImageProperties(
        String,
        BTreeMap<String, String>,
        RpcReplyPort<Result<ImageRecord>>,
    ),
    /// Write an image's files to open files, as an operation started by the uid.
    ExportImage(
        String,
        OwnedFd,
        Option<OwnedFd>,
        u32,
        RpcReplyPort<Result<u64>>,
    ),
    /// Delete an image by reference.
    DeleteImage(String, RpcReplyPort<Result<()>>),
    /// Internal: a child's summary changed (from the container actor with that id).
    Updated(ContainerSummary, ActorId),
    /// Internal: a container was deleted (by the container actor with that id).
    Removed(String, ActorId),
    /// Internal: a create finished (successfully or not).
    Provisioned(String),
    /// Internal: an image's record changed (from the image actor with that id).
    ImageUpdated(Box<ImageRecord>, ActorId),
    /// Internal: an image was deleted (by the image actor with that id).
    ImageRemoved(String, ActorId),
    /// Sent by [`crate::Engine::startup`]: finish interrupted changes, sweep orphans, then
    /// spawn the containers' actors in batches (the first one only; later ones do nothing).
    Startup,
    /// Internal: spawn the next batch of containers loaded but not spawned yet (the first
    /// batch was sent at the instant given).
    SpawnSome(std::time::Instant),
    /// Answers once every message sent before it was handled (the watchdog's liveness probe).
    Ping(RpcReplyPort<()>),
    /// Register the container volumes and images of the pools that have no row (from their
    /// `backup.yaml`), as `incus admin recover`.
    Recover(RpcReplyPort<Result<crate::recover::Report>>),
}

/// Containers whose actors one `SpawnSome` spawns: between two batches the Manager answers
/// the calls that queued meanwhile. The next batch is spawned once this one's actors have
/// reconciled (answered a message), so at most this many reconcile at once and a daemon
/// that just started with many containers still has CPU for its first calls.
const SPAWN_BATCH: usize = 64;

/// How long the next batch waits for this one's actors at most: an actor whose reconcile
/// hangs (a monitor that accepts but never answers) must not hold back the others.
const SPAWN_BATCH_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What the Manager starts with.
pub struct ManagerArgs {
    /// Store handle.
    pub store: Store,
    /// Host.
    pub runtime: Arc<dyn Runtime>,
    /// Events.
    pub events: Events,
    /// Long operations.
    pub ops: Operations,
}

impl std::fmt::Debug for ManagerArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagerArgs").finish_non_exhaustive()
    }
}

/// The actor.
#[derive(Debug)]
pub struct ManagerActor;

enum Slot {
    Live(ActorRef<ContainerMsg>),
    /// Loaded from the database at start, its actor not spawned yet: the first message for it
    /// spawns it, and `SpawnSome` spawns the rest in the background.
    Unspawned(Box<(ContainerRecord, Vec<SnapshotRecord>)>),
    /// The actor failed too often.
    GaveUp,
}

struct Child {
    slot: Slot,
    summary: ContainerSummary,
    failures: Vec<Instant>,
    /// `summary` is still what the database said at start (an earlier berthd's last word):
    /// no actor has reported since. Its actor reports only what its probe changed.
    from_record: bool,
}

struct ImageEntry {
    actor: ActorRef<ImageMsg>,
    record: ImageRecord,
    failures: Vec<Instant>,
}

/// The Manager's state.
pub struct ManagerState {
    store: Store,
    rt: Arc<dyn Runtime>,
    events: Events,
    ops: Operations,
    containers: BTreeMap<String, Child>,
    by_id: HashMap<ActorId, String>,
    images: BTreeMap<String, ImageEntry>,
    image_ids: HashMap<ActorId, String>,
    /// Names being created (registered but not provisioned yet).
    creating: HashMap<String, ()>,
    /// Names reserved by copies waiting for their source, and by interrupted creates and
    /// deletes until startup has finished them.
    reserved: HashSet<String>,
    /// Interrupted creates and deletes found at load, finished by `startup`.
    interrupted: Vec<ContainerRecord>,
    /// Whether `startup` ran.
    started: bool,
}

impl std::fmt::Debug for ManagerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagerState")
            .field("containers", &self.containers.len())
            .field("images", &self.images.len())
            .finish_non_exhaustive()
    }
}

#[ractor::async_trait]
impl Actor for ManagerActor {
    type Msg = ManagerMsg;
    type State = ManagerState;
    type Arguments = ManagerArgs;

    async fn pre_start(
        &self,
        me: ActorRef<ManagerMsg>,
        a: ManagerArgs,
    ) -> Result<ManagerState, ActorProcessingErr> {
        let mut s = ManagerState {
            store: a.store,
            rt: a.runtime,
            events: a.events,
            ops: a.ops,
            containers: BTreeMap::new(),
            by_id: HashMap::new(),
            images: BTreeMap::new(),
            image_ids: HashMap::new(),
            creating: HashMap::new(),
            reserved: HashSet::new(),
            interrupted: Vec::new(),
            started: false,
        };
        let loaded = s.store.load().await?;
        s.load(&me, loaded).await?;
        // the sweeps of files no record names run before berthd serves: once it serves, an
        // import, build or restore may be writing such files (a build's tar was removed under
        // it when this ran after serving). Both are a few directory reads.
        for note in s.rt.cleanup_images(s.known_images()).await {
            tracing::warn!("{note}");
        }
        let names: HashSet<String> = s.containers.keys().cloned().collect();
        for note in s.rt.sweep_orphan_snapshots(names).await {
            tracing::warn!("{note}");
        }
        Ok(s)
    }

    async fn handle(
        &self,
        me: ActorRef<ManagerMsg>,
        msg: ManagerMsg,
        s: &mut ManagerState,
    ) -> Result<(), ActorProcessingErr> {
        // a message about a container whose actor is not spawned yet spawns it first
        match &msg {
            // an unspawned container's info is its record's: reading it spawns nothing
            ManagerMsg::ToContainer(name, m) if !matches!(m, ContainerMsg::Info(_)) => {
                s.wake(&me, name).await
            }
            ManagerMsg::Create(req, _) => s.wake(&me, &req.name).await,
            ManagerMsg::Copy(req, _) => s.wake(&me, &req.source).await,
            _ => {}
        }
        match msg {
            ManagerMsg::Startup => s.startup(&me).await?,
            ManagerMsg::SpawnSome(since) => {
                let next: Vec<String> =
                    s.containers.iter().filter(|(_, c)| matches!(c.slot, Slot::Unspawned(_))).map(|(n, _)| n.clone()).take(SPAWN_BATCH).collect();
                for name in &next {
                    s.wake(&me, name).await;
                }
                let last = next.len() < SPAWN_BATCH;
                let spawned: Vec<ActorRef<ContainerMsg>> = next
                    .iter()
                    .filter_map(|n| match s.containers.get(n).map(|c| &c.slot) {
                        Some(Slot::Live(a)) => Some(a.clone()),
                        _ => None,
                    })
                    .collect();
                let me = me.clone();
                tokio::spawn(async move {
                    // an actor answers once its post_start (the reconcile) is done; one that
                    // died answers with an error, which is as good
                    let answered = async {
                        for a in spawned {
                            let _ = ractor::call!(a, ContainerMsg::Info);
                        }
                    };
                    if tokio::time::timeout(SPAWN_BATCH_WAIT, answered).await.is_err() {
                        tracing::warn!("a container actor has not reconciled after {SPAWN_BATCH_WAIT:?}; going on");
                    }
                    if last {
                        tracing::info!("every container's actor is up, {:?} after the first was spawned", since.elapsed());
                        // the start has settled: what it freed goes back to the kernel
                        berth_runtime::sys::trim_heap();
                    } else {
                        let _ = me.send_message(ManagerMsg::SpawnSome(since));
                    }
                });
            }
            ManagerMsg::Ping(r) => drop(r.send(())),
            ManagerMsg::Recover(r) => {
                let res = s.recover(&me).await;
                let _ = r.send(res);
            }
            ManagerMsg::Create(req, reply) => s.create(&me, *req, reply).await,
            ManagerMsg::Copy(req, reply) => s.copy(&me, *req, reply),
            ManagerMsg::CopyReady { req, lent, reply } => s.copy_ready(&me, *req, lent, reply).await,
            ManagerMsg::ToContainer(name, m) => match s.containers.get(&name).map(|c| &c.slot) {
                Some(Slot::Live(a)) => {
                    if let Err(ractor::MessagingErr::SendErr(m)) = a.send_message(m) {
                        m.fail(Error::Unavailable(format!("container {name:?}")));
                    }
                }
                Some(Slot::Unspawned(loaded)) => match m {
                    ContainerMsg::Info(r) => {
                        let mut info = loaded.0.info();
                        if info.status != Status::Stopped && s.rt.surely_stopped(&name) {
                            info.status = Status::Stopped;
                            info.init_pid = 0;
                        }
                        drop(r.send(Ok(info)))
                    }
                    m => m.fail(Error::Unavailable(format!("container {name:?}"))),
                },
                Some(Slot::GaveUp) => m.fail(Error::Unavailable(format!(
                    "container {name:?} (its actor failed {MAX_RESTARTS} times within {} s; restart berthd)",
                    RESTART_WINDOW.as_secs()
                ))),
                None => m.fail(Error::NoSuchContainer(name)),
            },
            ManagerMsg::List(r) => {
                s.forget_ended_while_away();
                drop(r.send(s.containers.values().map(|c| c.summary.clone()).collect()))
            }
            ManagerMsg::ListImages(r) => drop(r.send(s.images.values().map(|i| i.record.clone()).collect())),
            ManagerMsg::ResolveImage(reference, r) => drop(r.send(s.resolve_image(&reference).map(|e| e.record.clone()))),
            ManagerMsg::BuildImage { recipe, opts, uid, reply } => {
                let rt = s.rt.clone();
                let r = recipe.clone();
                let spec = JobSpec { verb: "image-build", object: format!("image:{recipe}"), uid, op_kind: Op::BuildImage, opts, reply };
                s.spawn_image_job(&me, spec, move |op, known| async move {
                    rt.build_image(&r, known, op).await
                });
            }
            ManagerMsg::ImportImage { archive, rootfs, opts, uid, reply } => {
                let rt = s.rt.clone();
                let spec = JobSpec { verb: "image-import", object: "image:import".into(), uid, op_kind: Op::ImportImage, opts, reply };
                s.spawn_image_job(&me, spec, move |op, known| async move {
                    rt.import_image(archive, rootfs, known, op).await
                });
            }
            ManagerMsg::Publish { record, source, snapshot, opts, uid, reply } => {
                let rt = s.rt.clone();
                let name = record.name.clone();
                let props = opts.properties.clone();
                let me2 = me.clone();
                let snap2 = snapshot.clone();
                let object = match &snapshot {
                    Some(sn) => format!("snapshot:{name}/{sn}"),
                    None => format!("container:{name}"),
                };
                let spec = JobSpec { verb: "publish", object, uid, op_kind: Op::Publish, opts, reply };
                let started = s.spawn_image_job(&me, spec, move |op, known| async move {
                    let r = rt.publish(&record, &source, props, known, op).await;
                    let _ = me2.cast(ManagerMsg::ToContainer(record.name.clone(), ContainerMsg::EndPublish(snap2)));
                    r
                });
                if !started {
                    // refused before it ran (a bad alias): release the container
                    let _ = me.cast(ManagerMsg::ToContainer(name, ContainerMsg::EndPublish(snapshot)));
                }
            }
            ManagerMsg::ImageReady { result, opts, op, reply } => s.image_ready(&me, *result, opts, op, reply).await,
            ManagerMsg::AddAlias(reference, alias, r) => {
                let res = s.add_alias(&reference, &alias).await;
                let _ = r.send(res);
            }
            ManagerMsg::RemoveAlias(alias, r) => {
                let res = s.remove_alias(&alias).await;
                let _ = r.send(res);
            }
            ManagerMsg::RenameAlias(from, to, r) => {
                let res = s.rename_alias(&from, &to).await;
                let _ = r.send(res);
            }
            ManagerMsg::SetImageProperties(reference, props, r) => {
                let res = s.set_properties(&reference, props).await;
                let _ = r.send(res);
            }
            ManagerMsg::ExportImage(reference, out, rootfs, uid, r) => match s.resolve_image(&reference) {
                Ok(e) => {
                    let (rt, fp, ops) = (s.rt.clone(), e.record.fingerprint.clone(), s.ops.clone());
                    let op = ops.start("image-export", vec![format!("image:{fp}")], uid, true);
                    tokio::spawn(async move {
                        let res = rt.export_image(&fp, out, rootfs, op.clone()).await.map_err(|e| match e {
                            crate::runtime::RuntimeError::Cancelled => Error::Cancelled,
                            e => crate::container::map_rt(Op::ExportImage, format!("image {fp}"), e),
                        });
                        ops.finish(&op, match &res {
                            Ok(_) => crate::operation::OpStatus::Succeeded,
                            Err(Error::Cancelled) => crate::operation::OpStatus::Cancelled,
                            Err(e) => crate::operation::OpStatus::Failed(e.to_string()),
                        });
                        let _ = r.send(res);
                    });
                }
                Err(e) => drop(r.send(Err(e))),
            },
            ManagerMsg::DeleteImage(reference, reply) => match s.resolve_image(&reference) {
                Ok(e) => {
                    if let Err(ractor::MessagingErr::SendErr(ImageMsg::Delete(r))) = e.actor.send_message(ImageMsg::Delete(reply)) {
                        let _ = r.send(Err(Error::Unavailable(format!("image {reference}"))));
                    }
                }
                Err(e) => drop(reply.send(Err(e))),
            },
            // These come from a child's mailbox, while its end comes as a supervision event,
            // which the manager may take first: by then the name can belong to a new
            // container (deleted and created again), which a late word from the old one must
            // not touch. So each names its sender.
            ManagerMsg::Updated(summary, from) => {
                if let Some(c) = s.containers.get_mut(&summary.name)
                    && matches!(&c.slot, Slot::Live(a) if a.get_id() == from)
                {
                    c.summary = summary;
                    c.from_record = false;
                }
            }
            ManagerMsg::Removed(name, from) => {
                if let Some(c) = s.containers.get(&name)
                    && matches!(&c.slot, Slot::Live(a) if a.get_id() == from)
                {
                    s.creating.remove(&name);
                    s.containers.remove(&name);
                    s.by_id.remove(&from);
                }
            }
            ManagerMsg::Provisioned(name) => {
                s.creating.remove(&name);
            }
            ManagerMsg::ImageUpdated(rec, from) => {
                if let Some(e) = s.images.get_mut(&rec.fingerprint)
                    && e.actor.get_id() == from
                {
                    e.record = *rec;
                }
            }
            ManagerMsg::ImageRemoved(fp, from) => {
                if s.images.get(&fp).is_some_and(|e| e.actor.get_id() == from) {
                    s.images.remove(&fp);
                    s.image_ids.remove(&from);
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<ManagerMsg>,
        evt: SupervisionEvent,
        s: &mut ManagerState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                s.child_failed(&me, cell, err.to_string()).await
            }
            SupervisionEvent::ActorTerminated(cell, ..) => {
                // a clean stop (deleted, or failed provisioning): forget its id
                if let Some(name) = s.by_id.remove(&cell.get_id())
                    && let Some(c) = s.containers.get(&name)
                    && matches!(&c.slot, Slot::Live(a) if a.get_id() == cell.get_id())
                {
                    s.creating.remove(&name);
                    s.containers.remove(&name);
                }
                if let Some(fp) = s.image_ids.remove(&cell.get_id()) {
                    s.images.remove(&fp);
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        me: ActorRef<ManagerMsg>,
        _s: &mut ManagerState,
    ) -> Result<(), ActorProcessingErr> {
        // Stop children gracefully (their post_stop cancels watch tasks); containers keep
        // running under their monitors.
        me.stop_children_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5)))
            .await;
        Ok(())
    }
}

impl ManagerState {
    /// Registers what the database holds, without touching the host: image actors (few) are
    /// spawned, containers are listed from their records and spawned later (`wake`), so that
    /// berthd answers its first call quickly however many containers are defined. Names with
    /// an interrupted create or delete stay reserved until `startup` has finished them.
    async fn load(&mut self, me: &ActorRef<ManagerMsg>, loaded: Loaded) -> Result<()> {
        for rec in &loaded.images {
            self.spawn_image(me, rec.clone()).await?;
        }
        let mut snapshots: HashMap<String, Vec<SnapshotRecord>> = HashMap::new();
        for sn in loaded.snapshots {
            snapshots.entry(sn.container.clone()).or_default().push(sn);
        }
        for rec in loaded.containers {
            match rec.pending {
                Pending::Create | Pending::Delete => {
                    self.reserved.insert(rec.name.clone());
                    self.interrupted.push(rec);
                }
                Pending::None => {
                    let summary = ContainerSummary {
                        name: rec.name.clone(),
                        status: rec.status,
                        image: rec.image.clone(),
                        init_pid: rec.init_pid,
                    };
                    let snaps = snapshots.remove(&rec.name).unwrap_or_default();
                    let slot = Slot::Unspawned(Box::new((rec, snaps)));
                    self.containers.insert(
                        summary.name.clone(),
                        Child {
                            slot,
                            summary,
                            failures: Vec::new(),
                            from_record: true,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// After `load`, with the name owned: finishes or undoes interrupted changes, removes
    /// orphaned files, then has the containers' actors spawned in batches (each reconciles
    /// its own state with what runs).
    async fn startup(&mut self, me: &ActorRef<ManagerMsg>) -> Result<()> {
        if std::mem::replace(&mut self.started, true) {
            return Ok(());
        }
        let t0 = std::time::Instant::now();
        // interrupted changes keep their names reserved until finished, so nothing served
        // meanwhile lands on their files
        for rec in std::mem::take(&mut self.interrupted) {
            tracing::info!(container = %rec.name, pending = rec.pending.as_str(), "finishing interrupted change");
            match self.rt.deprovision(&rec.name).await {
                Ok(()) => {
                    self.store.delete_container(&rec.name).await?;
                    self.reserved.remove(&rec.name);
                }
                // the name stays reserved: a new container must not land on those files
                Err(e) => {
                    tracing::error!(container = %rec.name, "cleanup failed, will retry next start: {e}")
                }
            }
        }
        tracing::info!("finished interrupted changes in {:?}", t0.elapsed());
        let _ = me.send_message(ManagerMsg::SpawnSome(std::time::Instant::now()));
        Ok(())
    }

    /// Registers what the store recovered from the pools: image actors, then the containers'
    /// (each reconciles with what runs, so a container that kept running is found running),
    /// announced as new objects.
    async fn recover(&mut self, me: &ActorRef<ManagerMsg>) -> Result<crate::recover::Report> {
        let report = self.store.recover().await?;
        for img in &report.images {
            self.spawn_image(me, img.clone()).await?;
            self.events.publish(Event::ImageAdded {
                fingerprint: img.fingerprint.clone(),
            });
        }
        for (rec, snaps) in &report.containers {
            let summary = ContainerSummary {
                name: rec.name.clone(),
                status: rec.status,
                image: rec.image.clone(),
                init_pid: rec.init_pid,
            };
            self.containers.insert(
                rec.name.clone(),
                Child {
                    slot: Slot::Unspawned(Box::new((rec.clone(), snaps.clone()))),
                    summary,
                    failures: Vec::new(),
                    from_record: true,
                },
            );
            self.wake(me, &rec.name).await;
            self.events.publish(Event::ContainerCreated {
                name: rec.name.clone(),
            });
        }
        Ok(report)
    }

    /// Spawns the actor of a container loaded but not spawned yet (no-op otherwise). An actor
    /// that cannot be spawned leaves the name unavailable, as one that failed too often.
    /// Containers recorded as running by an earlier berthd that surely stopped meanwhile (their
    /// init died while no berthd ran), listed as stopped instead of as the record says, while
    /// their actors are not spawned or have not looked yet (they record how it ended). One
    /// stat each, and only for those recorded as running that no actor reported on since.
    fn forget_ended_while_away(&mut self) {
        for (name, c) in &mut self.containers {
            if c.from_record && c.summary.status != Status::Stopped && self.rt.surely_stopped(name)
            {
                c.summary.status = Status::Stopped;
                c.summary.init_pid = 0;
            }
        }
    }

    async fn wake(&mut self, me: &ActorRef<ManagerMsg>, name: &str) {
        let Some(child) = self.containers.get_mut(name) else {
            return;
        };
        if !matches!(child.slot, Slot::Unspawned(_)) {
            return;
        }
        let Slot::Unspawned(loaded) = std::mem::replace(&mut child.slot, Slot::GaveUp) else {
            return;
        };
        let (rec, snaps) = *loaded;
        // loaded at start: no checkpoint of this berthd can be running on it yet
        if let Err(e) = self.spawn_container(me, rec, snaps, true).await {
            tracing::error!(container = %name, "{e}");
        }
    }

    async fn spawn_container(
        &mut self,
        me: &ActorRef<ManagerMsg>,
        rec: ContainerRecord,
        snapshots: Vec<SnapshotRecord>,
        recover: bool,
    ) -> Result<ActorRef<ContainerMsg>> {
        let summary = ContainerSummary {
            name: rec.name.clone(),
            status: rec.status,
            image: rec.image.clone(),
            init_pid: rec.init_pid,
        };
        let name = rec.name.clone();
        let args = ContainerArgs {
            record: rec,
            store: self.store.clone(),
            runtime: self.rt.clone(),
            events: self.events.clone(),
            manager: me.clone(),
            snapshots,
            ops: self.ops.clone(),
            recover,
        };
        let (actor, _) = Actor::spawn_linked(None, ContainerActor, args, me.get_cell())
            .await
            .map_err(|e| Error::Unavailable(format!("container {name:?} actor ({e})")))?;
        self.by_id.insert(actor.get_id(), name.clone());
        let (failures, from_record) = self
            .containers
            .remove(&name)
            .map(|c| (c.failures, c.from_record))
            .unwrap_or_default();
        self.containers.insert(
            name,
            Child {
                slot: Slot::Live(actor.clone()),
                summary,
                failures,
                from_record,
            },
        );
        Ok(actor)
    }

    pub(super) async fn spawn_image(
        &mut self,
        me: &ActorRef<ManagerMsg>,
        rec: ImageRecord,
    ) -> Result<()> {
        let fp = rec.fingerprint.clone();
        let args = ImageArgs {
            record: rec.clone(),
            store: self.store.clone(),
            runtime: self.rt.clone(),
            events: self.events.clone(),
            manager: me.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, ImageActor, args, me.get_cell())
            .await
            .map_err(|e| Error::Unavailable(format!("image {fp} actor ({e})")))?;
        self.image_ids.insert(actor.get_id(), fp.clone());
        let failures = self
            .images
            .remove(&fp)
            .map(|e| e.failures)
            .unwrap_or_default();
        self.images.insert(
            fp,
            ImageEntry {
                actor,
                record: rec,
                failures,
            },
        );
        Ok(())
    }

    /// Restart policy.
    async fn child_failed(&mut self, me: &ActorRef<ManagerMsg>, cell: ActorCell, err: String) {
        let now = Instant::now();
        let recent = |f: &mut Vec<Instant>| {
            f.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
            f.push(now);
            f.len()
        };
        if let Some(name) = self.by_id.remove(&cell.get_id()) {
            tracing::error!(container = %name, "container actor failed: {err}");
            let Some(child) = self.containers.get_mut(&name) else {
                return;
            };
            if recent(&mut child.failures) > MAX_RESTARTS {
                tracing::error!(container = %name, "giving up after {MAX_RESTARTS} failures in {:?}", RESTART_WINDOW);
                child.slot = Slot::GaveUp;
                return;
            }
            let snaps = match self.store.snapshots(&name).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(container = %name, "respawn failed, cannot read its snapshots: {e}");
                    child.slot = Slot::GaveUp;
                    return;
                }
            };
            match self.store.container(&name).await {
                // it failed while provisioning: its creator got the error, and nothing would
                // provision the new actor (requests to it would wait for good), so the create
                // is undone as one interrupted by a crash is at start
                Ok(Some(rec)) if rec.pending == Pending::Create => {
                    match self.rt.deprovision(&name).await {
                        Ok(()) => {
                            if let Err(e) = self.store.delete_container(&name).await {
                                tracing::error!(container = %name, "undo the failed create: {e}");
                            }
                            self.creating.remove(&name);
                            self.containers.remove(&name);
                        }
                        Err(e) => {
                            tracing::error!(container = %name, "undo the failed create: {e}");
                            if let Some(c) = self.containers.get_mut(&name) {
                                c.slot = Slot::GaveUp;
                            }
                        }
                    }
                }
                Ok(Some(rec)) => match self.spawn_container(me, rec, snaps, false).await {
                    Ok(_) => {
                        tracing::info!(container = %name, "container actor respawned from the database")
                    }
                    Err(e) => {
                        tracing::error!(container = %name, "respawn failed: {e}");
                        if let Some(c) = self.containers.get_mut(&name) {
                            c.slot = Slot::GaveUp;
                        }
                    }
                },
                Ok(None) => {
                    self.containers.remove(&name);
                }
                Err(e) => {
                    tracing::error!(container = %name, "respawn failed, cannot read its record: {e}");
                    if let Some(c) = self.containers.get_mut(&name) {
                        c.slot = Slot::GaveUp;
                    }
                }
            }
        } else if let Some(fp) = self.image_ids.remove(&cell.get_id()) {
            tracing::error!(image = %fp, "image actor failed: {err}");
            let Some(entry) = self.images.get_mut(&fp) else {
                return;
            };
            if recent(&mut entry.failures) > MAX_RESTARTS {
                tracing::error!(image = %fp, "giving up on the image actor");
                self.images.remove(&fp);
                return;
            }
            let rec = entry.record.clone();
            if let Err(e) = self.spawn_image(me, rec).await {
                tracing::error!(image = %fp, "respawn failed: {e}");
            }
        }
    }

    async fn create(
        &mut self,
        me: &ActorRef<ManagerMsg>,
        req: CreateRequest,
        reply: RpcReplyPort<Result<(ContainerInfo, Created)>>,
    ) {
        match self.prepare_create(req).await {
            Err(e) => drop(reply.send(Err(e))),
            Ok(Prepared::Identity(actor)) => {
                tokio::spawn(async move {
                    let r = ractor::call!(actor, ContainerMsg::Info)
                        .unwrap_or_else(|_| Err(Error::Unavailable("the container".into())));
                    let _ = reply.send(r.map(|i| (i, Created::Identity)));
                });
            }
            Ok(Prepared::New(rec, start)) => {
                let name = rec.name.clone();
                let image = rec.image.clone();
                if let Err(e) = self.store.insert_container(&rec).await {
                    let _ = reply.send(Err(e));
                    return;
                }
                berth_runtime::crash::point("berthd.create.row-inserted");
                let actor = match self.spawn_container(me, rec, Vec::new(), false).await {
                    Ok(a) => a,
                    Err(e) => {
                        let _ = self.store.delete_container(&name).await;
                        let _ = reply.send(Err(e));
                        return;
                    }
                };
                self.creating.insert(name.clone(), ());
                if let Some(img) = self.images.get(&image) {
                    let _ = img.actor.cast(ImageMsg::Used(now_us()));
                }
                let me = me.clone();
                tokio::spawn(async move {
                    let r = ractor::call!(actor, |reply| ContainerMsg::Provision {
                        start,
                        source: VolumeSource::Image,
                        reply
                    })
                    .unwrap_or_else(|_| Err(Error::Unavailable(format!("container {name:?}"))));
                    let _ = me.cast(ManagerMsg::Provisioned(name));
                    let _ = reply.send(r.map(|i| (i, Created::New)));
                });
            }
        }
    }

    async fn prepare_create(&mut self, req: CreateRequest) -> Result<Prepared> {
        let name = if req.name.is_empty() && req.pick_name {
            self.pick_name()
        } else {
            req.name.clone()
        };
        validate_name(&name)?;
        crate::config::validate_user_config(&req.config)?;
        let profiles = req
            .profiles
            .clone()
            .unwrap_or_else(|| vec!["default".to_string()]);
        for p in &profiles {
            if p != "default" {
                return Err(Error::NoSuchProfile(p.clone()));
            }
        }
        let image = self.resolve_image(&req.image)?.record.clone();
        if self.reserved.contains(&name) {
            return Err(Error::AlreadyExists {
                kind: "container",
                name,
            });
        }
        // a container's name is its hostname, and hostnames ignore case
        if let Some(other) = self.clash_ignoring_case(&name) {
            return Err(Error::AlreadyExists {
                kind: "container",
                name: format!("{name} (as {other}: names differ in more than case)"),
            });
        }
        if let Some(existing) = self.containers.get(&name) {
            // Typed idempotence: the same definition again is Identity, anything else a clash.
            if let Slot::Live(actor) = &existing.slot
                && existing.summary.image == image.fingerprint
                && !self.creating.contains_key(&name)
            {
                let info = ractor::call!(actor, ContainerMsg::Info)
                    .map_err(|_| Error::Unavailable(format!("container {name:?}")))??;
                let user: BTreeMap<_, _> = info
                    .config
                    .iter()
                    .filter(|(k, _)| !k.starts_with("volatile.") && !k.starts_with("image."))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let wanted: BTreeMap<_, _> = req
                    .config
                    .iter()
                    .filter(|(k, _)| !k.starts_with("image."))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if user == wanted && info.profiles == profiles && info.ephemeral == req.ephemeral {
                    return Ok(Prepared::Identity(actor.clone()));
                }
            }
            return Err(Error::AlreadyExists {
                kind: "container",
                name,
            });
        }
        let mut config = req.config.clone();
        for (k, v) in &image.properties {
            config
                .entry(format!("image.{k}"))
                .or_insert_with(|| v.clone());
        }
        let rec = ContainerRecord {
            name,
            image: image.fingerprint.clone(),
            status: Status::Stopped,
            init_pid: 0,
            created_at_us: now_us(),
            ephemeral: req.ephemeral,
            profiles,
            config,
            architecture: image.architecture.clone(),
            pending: Pending::Create,
        };
        Ok(Prepared::New(rec, req.start))
    }

    /// Another container (or reserved name) whose name equals `name` but for case.
    fn clash_ignoring_case(&self, name: &str) -> Option<String> {
        self.containers
            .keys()
            .chain(self.reserved.iter())
            .find(|k| *k != name && k.eq_ignore_ascii_case(name))
            .cloned()
    }

    /// A free name such as `brisk-otter`.
    fn pick_name(&self) -> String {
        const ADJ: &[&str] = &[
            "brisk", "calm", "eager", "fond", "keen", "lucid", "merry", "noble", "quiet", "sunny",
            "tidy", "vivid",
        ];
        const NOUN: &[&str] = &[
            "otter", "heron", "lynx", "finch", "marten", "puffin", "wren", "ibex", "tern", "vole",
            "koi", "gecko",
        ];
        let mut seed = now_us() ^ (std::process::id() as u64).rotate_left(32);
        for _ in 0..1000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let n = format!(
                "{}-{}",
                ADJ[(seed >> 33) as usize % ADJ.len()],
                NOUN[(seed >> 17) as usize % NOUN.len()]
            );
            if !self.containers.contains_key(&n) && !self.reserved.contains(&n) {
                return n;
            }
        }
        format!("c-{}", now_us())
    }
}

impl ManagerState {
    /// Reserves the new name and asks the source for its record and files (in a task: the
    /// source may be busy with a checkpoint, and the Manager must not wait for it).
    fn copy(
        &mut self,
        me: &ActorRef<ManagerMsg>,
        mut req: CopyRequest,
        reply: RpcReplyPort<Result<ContainerInfo>>,
    ) {
        let checked = (|| {
            if req.name.is_empty() && req.pick_name {
                req.name = self.pick_name();
            }
            validate_name(&req.name)?;
            validate_name(&req.source)?;
            if let Some(sn) = &req.snapshot {
                validate_name(sn)?;
            }
            crate::config::validate_user_config(&req.config)?;
            if let Some(profiles) = &req.profiles
                && let Some(p) = profiles.iter().find(|p| *p != "default")
            {
                return Err(Error::NoSuchProfile(p.clone()));
            }
            if self.containers.contains_key(&req.name)
                || self.reserved.contains(&req.name)
                || self.clash_ignoring_case(&req.name).is_some()
            {
                return Err(Error::AlreadyExists {
                    kind: "container",
                    name: req.name.clone(),
                });
            }
            match self.containers.get(&req.source).map(|c| &c.slot) {
                Some(Slot::Live(a)) => Ok(a.clone()),
                Some(Slot::GaveUp | Slot::Unspawned(_)) => {
                    Err(Error::Unavailable(format!("container {:?}", req.source)))
                }
                None => Err(Error::NoSuchContainer(req.source.clone())),
            }
        })();
        let source = match checked {
            Ok(a) => a,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        self.reserved.insert(req.name.clone());
        let me = me.clone();
        tokio::spawn(async move {
            let snapshot = req.snapshot.clone();
            let lent = ractor::call!(source, |reply| ContainerMsg::BeginCopy { snapshot, reply })
                .unwrap_or_else(|_| Err(Error::Unavailable(format!("container {:?}", req.source))));
            if let Err(ractor::MessagingErr::SendErr(ManagerMsg::CopyReady { reply, .. })) = me
                .send_message(ManagerMsg::CopyReady {
                    req: Box::new(req),
                    lent,
                    reply,
                })
            {
                let _ = reply.send(Err(Error::Unavailable("the manager".into())));
            }
        });
    }

    /// The source lent its files: register the copy and have its actor provision it.
    async fn copy_ready(
        &mut self,
        me: &ActorRef<ManagerMsg>,
        req: CopyRequest,
        lent: Result<(ContainerRecord, VolumeSource)>,
        reply: RpcReplyPort<Result<ContainerInfo>>,
    ) {
        self.reserved.remove(&req.name);
        let (src, source) = match lent {
            Ok(l) => l,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let release = {
            let (me, name, snapshot) = (me.clone(), src.name.clone(), req.snapshot.clone());
            move || {
                drop(me.cast(ManagerMsg::ToContainer(
                    name,
                    ContainerMsg::EndCopy(snapshot),
                )))
            }
        };
        // the copy keeps what describes the files (id shift, image keys) and gets its own
        // identity: a new address and MAC, no saved running state
        let mut config: BTreeMap<String, String> = src
            .config
            .iter()
            .filter(|(k, _)| {
                !k.starts_with("volatile.eth") && k.as_str() != crate::container::STATEFUL_KEY
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        config.extend(req.config.clone());
        let rec = ContainerRecord {
            name: req.name.clone(),
            image: src.image.clone(),
            status: Status::Stopped,
            init_pid: 0,
            created_at_us: now_us(),
            ephemeral: req.ephemeral,
            profiles: req.profiles.clone().unwrap_or(src.profiles.clone()),
            config,
            architecture: src.architecture.clone(),
            pending: Pending::Create,
        };
        if self.containers.contains_key(&rec.name) {
            release();
            let _ = reply.send(Err(Error::AlreadyExists {
                kind: "container",
                name: rec.name,
            }));
            return;
        }
        if let Err(e) = self.store.insert_container(&rec).await {
            release();
            let _ = reply.send(Err(e));
            return;
        }
        let name = rec.name.clone();
        let actor = match self.spawn_container(me, rec, Vec::new(), false).await {
            Ok(a) => a,
            Err(e) => {
                let _ = self.store.delete_container(&name).await;
                release();
                let _ = reply.send(Err(e));
                return;
            }
        };
        self.creating.insert(name.clone(), ());
        let (me, start) = (me.clone(), req.start);
        tokio::spawn(async move {
            let r = ractor::call!(actor, |reply| ContainerMsg::Provision {
                start,
                source,
                reply
            })
            .unwrap_or_else(|_| Err(Error::Unavailable(format!("container {name:?}"))));
            release();
            let _ = me.cast(ManagerMsg::Provisioned(name));
            let _ = reply.send(r);
        });
    }
}

enum Prepared {
    New(ContainerRecord, bool),
    Identity(ActorRef<ContainerMsg>),
}
