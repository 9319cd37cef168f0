//! The Container actor: one per container. It owns the container's record and state machine
//! (Stopped → Starting → Running → Stopping → Stopped, and Error), its monitor watch and its
//! pending waiters. Every operation on one container goes through this mailbox, so operations
//! are serialized without locks; long ones (a graceful stop, an exec) run as tasks that report
//! back by message, so the mailbox keeps answering `Info` meanwhile.
//!
//! Persistence: the intended status is written before acting (Starting, Stopping, pending
//! delete) and the result after (Running with its init pid, Stopped). A reply is sent only when
//! what it says is true and recorded.
//!
//! Snapshots are child actors (see [`crate::snapshot`]); checkpoints, restores and snapshot
//! captures run as tasks while the container is *busy*: requests that would change it wait in
//! a queue of their own and are replayed in order when the task reports back, while `Info`
//! and the list of snapshots keep being answered.

mod snapshots;
mod tasks;

use crate::error::{Error, Op, Result};
use crate::events::{Event, Events};
use crate::manager::ManagerMsg;
use crate::operation::Operations;
use crate::runtime::{MonitorEvent, Runtime, RuntimeError, VolumeSource};
use crate::snapshot::SnapshotMsg;
use crate::store::Store;
use crate::types::{
    ContainerInfo, ContainerRecord, ContainerSummary, DEFAULT_STOP_TIMEOUT, ExecRequest, Pending,
    SnapshotRecord, StartOptions, Status, StopOptions,
};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

pub use tasks::TaskDone;

/// Config key recording that a stateful stop saved the running state (the next start
/// restores it).
pub const STATEFUL_KEY: &str = "volatile.stateful";

/// Messages of a Container actor. Each says when it is allowed and what it replies.
#[derive(Debug)]
pub enum ContainerMsg {
    /// The container as it is now. Always allowed.
    Info(RpcReplyPort<Result<ContainerInfo>>),
    /// Create the storage of a just-registered container (pending create), then start it if
    /// `start`. Replies with the container's info once it exists (and runs, if asked).
    Provision {
        /// Start after creating.
        start: bool,
        /// Where the files come from (the image, or a copy's source).
        source: VolumeSource,
        /// Reply.
        reply: RpcReplyPort<Result<ContainerInfo>>,
    },
    /// Start init, or restore the state a stateful stop saved. Allowed when Stopped (or
    /// Error). Replies once init runs.
    Start(StartOptions, RpcReplyPort<Result<()>>),
    /// Start, provided it is the kind the caller was authorized for: a restore of a stateful
    /// stop's saved state (`restore`) or a boot. Decided here, in the step that starts, so that
    /// no stop in between turns an authorized boot into a restore.
    StartAs {
        /// How to start.
        opts: StartOptions,
        /// The caller was authorized to restore (else to boot).
        restore: bool,
        /// The answer.
        reply: RpcReplyPort<Result<()>>,
    },
    /// Stop. Allowed when Running or Stopping (a forced stop escalates a graceful one).
    /// Replies once init is gone.
    Stop(StopOptions, RpcReplyPort<Result<()>>),
    /// Stop, then start. Allowed when Running. Replies once the new init runs.
    Restart(StopOptions, RpcReplyPort<Result<()>>),
    /// Run a process. Allowed when Running. Replies with its exit status when it ends; the
    /// mailbox stays free meanwhile.
    Exec(Box<ExecRequest>, RpcReplyPort<Result<i32>>),
    /// Delete the container. Allowed when Stopped, or in any state with `force` (it is killed
    /// first). Replies once its files and record are gone; the actor then stops.
    Delete {
        /// Kill it first if it runs.
        force: bool,
        /// Reply.
        reply: RpcReplyPort<Result<()>>,
    },
    /// Set the `set` keys and remove the `unset` ones (user keys only: `volatile.*` is
    /// refused). Allowed in any state but while created; what the runtime applies live
    /// (`limits.disk`) is applied before the change is recorded. Replies once both are done.
    SetConfig {
        /// Keys to set, with their values.
        set: BTreeMap<String, String>,
        /// Keys to remove (missing ones are fine).
        unset: Vec<String>,
        /// Reply.
        reply: RpcReplyPort<Result<()>>,
    },
    /// Lend the record and the files (its own, or snapshot `.0`'s) for publishing. Allowed when
    /// Stopped, or for a snapshot in any state; until `EndPublish` the container cannot start
    /// or be deleted (`Busy`).
    BeginPublish(
        Option<String>,
        RpcReplyPort<Result<(ContainerRecord, VolumeSource)>>,
    ),
    /// Publishing ended.
    EndPublish(Option<String>),
    /// Take a snapshot (`stateful`: with the running state). An empty name picks `snapN`.
    /// Replies once it is committed.
    CreateSnapshot {
        /// Name, or empty.
        name: String,
        /// Checkpoint the running state too.
        stateful: bool,
        /// Caller (for the operation).
        uid: u32,
        /// Reply.
        reply: RpcReplyPort<Result<SnapshotRecord>>,
    },
    /// Every snapshot, oldest first. Always allowed.
    ListSnapshots(RpcReplyPort<Result<Vec<SnapshotRecord>>>),
    /// One snapshot. Always allowed.
    GetSnapshot(String, RpcReplyPort<Result<SnapshotRecord>>),
    /// Restore a snapshot's files (and, `stateful`, its running state; default: what the
    /// snapshot holds). A running container is stopped first; after a stateless restore it is
    /// started again.
    RestoreSnapshot {
        /// Snapshot name.
        name: String,
        /// Restore the running state (None: when the snapshot has one).
        stateful: Option<bool>,
        /// Caller (for the operation).
        uid: u32,
        /// Reply.
        reply: RpcReplyPort<Result<()>>,
    },
    /// Rename a snapshot.
    RenameSnapshot {
        /// Current name.
        from: String,
        /// New name.
        to: String,
        /// Reply.
        reply: RpcReplyPort<Result<SnapshotRecord>>,
    },
    /// Delete a snapshot.
    DeleteSnapshot {
        /// Name.
        name: String,
        /// Reply.
        reply: RpcReplyPort<Result<()>>,
    },
    /// Lend the record and the files (its own or snapshot `snapshot`'s) for a copy; the
    /// container cannot be deleted until `EndCopy`.
    BeginCopy {
        /// Copy this snapshot instead of the container's current files.
        snapshot: Option<String>,
        /// Reply.
        reply: RpcReplyPort<Result<(ContainerRecord, VolumeSource)>>,
    },
    /// The copy is done with the files.
    EndCopy(Option<String>),
    /// Internal: a checkpoint, restore or capture task finished.
    TaskDone(Box<TaskDone>),
    /// Internal: a stop task finished (for run generation `run`).
    StopDone(u64, std::result::Result<String, RuntimeError>),
    /// Internal: the monitor of run generation `run` reported something.
    Monitor(u64, MonitorEvent),
    /// Test hook: panic inside the handler (exercises the Manager's restart policy).
    #[cfg(test)]
    Crash,
}

impl ContainerMsg {
    /// Answers the message's caller with `e` (used when the actor cannot take it).
    pub fn fail(self, e: Error) {
        match self {
            ContainerMsg::Info(r) => drop(r.send(Err(e))),
            ContainerMsg::Provision { reply, .. } => drop(reply.send(Err(e))),
            ContainerMsg::Start(_, r) | ContainerMsg::Stop(_, r) | ContainerMsg::Restart(_, r) => {
                drop(r.send(Err(e)))
            }
            ContainerMsg::StartAs { reply, .. } => drop(reply.send(Err(e))),
            ContainerMsg::Delete { reply, .. } | ContainerMsg::DeleteSnapshot { reply, .. } => {
                drop(reply.send(Err(e)))
            }
            ContainerMsg::RestoreSnapshot { reply, .. } | ContainerMsg::SetConfig { reply, .. } => {
                drop(reply.send(Err(e)))
            }
            ContainerMsg::Exec(_, r) => drop(r.send(Err(e))),
            ContainerMsg::BeginPublish(_, r) => drop(r.send(Err(e))),
            ContainerMsg::BeginCopy { reply, .. } => drop(reply.send(Err(e))),
            ContainerMsg::CreateSnapshot { reply, .. }
            | ContainerMsg::RenameSnapshot { reply, .. } => drop(reply.send(Err(e))),
            ContainerMsg::GetSnapshot(_, r) => drop(r.send(Err(e))),
            ContainerMsg::ListSnapshots(r) => drop(r.send(Err(e))),
            ContainerMsg::TaskDone(t) => t.fail(e),
            ContainerMsg::StopDone(..)
            | ContainerMsg::Monitor(..)
            | ContainerMsg::EndPublish(_)
            | ContainerMsg::EndCopy(_) => {}
            #[cfg(test)]
            ContainerMsg::Crash => {}
        }
    }

    /// Whether the message must wait while a checkpoint, restore or capture runs.
    fn waits_while_busy(&self) -> bool {
        matches!(
            self,
            ContainerMsg::Start(..)
                | ContainerMsg::StartAs { .. }
                | ContainerMsg::Stop(..)
                | ContainerMsg::Restart(..)
                | ContainerMsg::Exec(..)
                | ContainerMsg::Delete { .. }
                | ContainerMsg::BeginPublish(..)
                | ContainerMsg::CreateSnapshot { .. }
                | ContainerMsg::RestoreSnapshot { .. }
                | ContainerMsg::RenameSnapshot { .. }
                | ContainerMsg::DeleteSnapshot { .. }
                | ContainerMsg::BeginCopy { .. }
                | ContainerMsg::SetConfig { .. }
        )
    }
}

/// What a Container actor is started with.
pub struct ContainerArgs {
    /// The record as loaded or just inserted.
    pub record: ContainerRecord,
    /// The store.
    pub store: Store,
    /// The host.
    pub runtime: Arc<dyn Runtime>,
    /// Event publisher.
    pub events: Events,
    /// The supervising manager.
    pub manager: ActorRef<ManagerMsg>,
    /// Its snapshots (committed), oldest first.
    pub snapshots: Vec<SnapshotRecord>,
    /// Long operations (checkpoints and restores are shown as operations).
    pub ops: Operations,
    /// Undo what a checkpoint interrupted by the death of an earlier berthd left behind: true
    /// when berthd loads its containers at start, when no checkpoint of its own can be running
    /// (a respawned actor's may be: its task outlives the actor).
    pub recover: bool,
}

impl std::fmt::Debug for ContainerArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerArgs")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

/// The actor.
#[derive(Debug)]
pub struct ContainerActor;

/// The actor's state.
pub struct ContainerState {
    /// This actor's id, which names it in what it tells the manager.
    id: ActorId,
    rec: ContainerRecord,
    store: Store,
    rt: Arc<dyn Runtime>,
    events: Events,
    manager: ActorRef<ManagerMsg>,
    /// Run generation: bumped at each start so late reports of an earlier run are ignored.
    run: u64,
    watcher: Option<JoinHandle<()>>,
    stop_waiters: Vec<RpcReplyPort<Result<()>>>,
    restart_waiters: Vec<RpcReplyPort<Result<()>>>,
    delete_waiters: Vec<RpcReplyPort<Result<()>>>,
    /// Images being made from it (or its snapshots).
    publishing: u32,
    /// Copies being made from it (or its snapshots).
    copying: u32,
    /// Snapshots by name: their record (a cache: the Snapshot actor owns it) and actor.
    snaps: BTreeMap<String, (SnapshotRecord, ActorRef<SnapshotMsg>)>,
    /// A checkpoint, restore or capture task runs.
    busy: Option<&'static str>,
    /// Requests waiting for it to end, in arrival order.
    deferred: VecDeque<ContainerMsg>,
    ops: Operations,
    /// Snapshots to spawn actors for once started.
    initial_snapshots: Vec<SnapshotRecord>,
    /// See [`ContainerArgs::recover`]; done once, in `post_start`.
    recover: bool,
}

impl std::fmt::Debug for ContainerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerState")
            .field("rec", &self.rec)
            .field("run", &self.run)
            .finish_non_exhaustive()
    }
}

#[ractor::async_trait]
impl Actor for ContainerActor {
    type Msg = ContainerMsg;
    type State = ContainerState;
    type Arguments = ContainerArgs;

    async fn pre_start(
        &self,
        me: ActorRef<ContainerMsg>,
        a: ContainerArgs,
    ) -> Result<ContainerState, ActorProcessingErr> {
        Ok(ContainerState {
            id: me.get_id(),
            rec: a.record,
            store: a.store,
            rt: a.runtime,
            events: a.events,
            manager: a.manager,
            run: 1,
            watcher: None,
            stop_waiters: Vec::new(),
            restart_waiters: Vec::new(),
            delete_waiters: Vec::new(),
            publishing: 0,
            copying: 0,
            snaps: BTreeMap::new(),
            busy: None,
            deferred: VecDeque::new(),
            ops: a.ops,
            initial_snapshots: a.snapshots,
            recover: a.recover,
        })
    }

    async fn post_start(
        &self,
        me: ActorRef<ContainerMsg>,
        s: &mut ContainerState,
    ) -> Result<(), ActorProcessingErr> {
        // A loaded or respawned container finds out whether it really runs and brings up its
        // snapshots; a new one (pending create) waits for Provision.
        if s.rec.pending == Pending::None {
            // first: a CRIU an earlier berthd left may still write a staged snapshot, which
            // loading the snapshots sweeps
            if std::mem::take(&mut s.recover) && s.rec.status != Status::Frozen {
                s.recover_checkpoint().await;
            }
            s.load_snapshots(&me).await?;
            s.reconcile(&me).await;
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<ContainerMsg>,
        evt: SupervisionEvent,
        s: &mut ContainerState,
    ) -> Result<(), ActorProcessingErr> {
        // Snapshot actors are our children. A clean stop (deleted, discarded) was already
        // accounted for; a failed one is respawned from its record, which it cannot have lost:
        // the row is written before the cache is.
        if let SupervisionEvent::ActorFailed(cell, err) = evt {
            s.snapshot_failed(&me, cell, err.to_string()).await;
        }
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<ContainerMsg>,
        msg: ContainerMsg,
        s: &mut ContainerState,
    ) -> Result<(), ActorProcessingErr> {
        // not provisioned yet: the manager sends Provision right after the spawn, and a
        // request that raced it waits for it rather than finding no files
        if s.rec.pending == Pending::Create && msg.waits_while_busy() {
            s.deferred.push_back(msg);
            return Ok(());
        }
        if let Some(what) = s.busy
            && msg.waits_while_busy()
        {
            tracing::debug!(container = %s.rec.name, "request waits for the {what} to end");
            s.deferred.push_back(msg);
            return Ok(());
        }
        match msg {
            ContainerMsg::Info(r) => drop(r.send(Ok(s.info()))),
            ContainerMsg::Provision {
                start,
                source,
                reply,
            } => {
                let res = s.provision(&me, start, &source).await;
                let failed = res.is_err();
                let _ = reply.send(res);
                if failed {
                    for m in std::mem::take(&mut s.deferred) {
                        m.fail(Error::NoSuchContainer(s.rec.name.clone()));
                    }
                    me.stop(Some("provisioning failed".into()));
                } else if s.busy.is_none() {
                    s.resend_deferred(&me);
                }
            }
            ContainerMsg::Start(opts, r) => s.start_with(&me, opts, r).await,
            ContainerMsg::StartAs {
                opts,
                restore,
                reply,
            } => {
                // one that runs (another client's start won) answers as any start does,
                // InvalidState, not Busy: the kind of start matters only from stopped
                let stopped = matches!(s.rec.status, Status::Stopped | Status::Error);
                if s.start_restores(&opts) == restore || !stopped {
                    s.start_with(&me, opts, reply).await
                } else {
                    let _ = reply.send(Err(Error::Busy(format!(
                        "container {:?} changed while the start was being authorized (it {} \
                         saved running state now); try again",
                        s.rec.name,
                        if restore { "has no" } else { "has a" }
                    ))));
                }
            }
            ContainerMsg::Stop(opts, r) => s.stop(&me, opts, r).await,
            ContainerMsg::Restart(opts, r) => {
                if s.rec.status != Status::Running {
                    let _ = r.send(Err(s.invalid_state("start it instead")));
                } else {
                    s.restart_waiters.push(r);
                    s.begin_stop(&me, opts).await;
                }
            }
            ContainerMsg::Exec(req, r) => s.exec(*req, r),
            ContainerMsg::BeginPublish(snapshot, r) => {
                let res = s.begin_publish(snapshot).await;
                let _ = r.send(res);
            }
            ContainerMsg::EndPublish(snapshot) => {
                s.publishing = s.publishing.saturating_sub(1);
                s.give_back(snapshot.as_deref());
            }
            ContainerMsg::CreateSnapshot {
                name,
                stateful,
                uid,
                reply,
            } => s.create_snapshot(&me, name, stateful, uid, reply).await,
            ContainerMsg::ListSnapshots(r) => {
                let mut list: Vec<SnapshotRecord> =
                    s.snaps.values().map(|(r, _)| r.clone()).collect();
                list.sort_by(|a, b| (a.created_at_us, &a.name).cmp(&(b.created_at_us, &b.name)));
                let _ = r.send(Ok(list));
            }
            ContainerMsg::GetSnapshot(name, r) => drop(r.send(s.snapshot_record(&name))),
            ContainerMsg::RestoreSnapshot {
                name,
                stateful,
                uid,
                reply,
            } => s.restore_snapshot(&me, name, stateful, uid, reply).await,
            ContainerMsg::RenameSnapshot { from, to, reply } => {
                let res = s.rename_snapshot(&from, to).await;
                let _ = reply.send(res);
            }
            ContainerMsg::DeleteSnapshot { name, reply } => {
                let res = s.delete_snapshot(&name).await;
                let _ = reply.send(res);
            }
            ContainerMsg::BeginCopy { snapshot, reply } => {
                let res = s.begin_copy(snapshot).await;
                let _ = reply.send(res);
            }
            ContainerMsg::EndCopy(snapshot) => {
                s.copying = s.copying.saturating_sub(1);
                s.give_back(snapshot.as_deref());
            }
            ContainerMsg::TaskDone(t) => {
                s.task_done(&me, *t).await;
                s.busy = None;
                s.resend_deferred(&me);
            }
            ContainerMsg::Delete { force, reply } => s.delete(&me, force, reply).await,
            ContainerMsg::SetConfig { set, unset, reply } => {
                let res = s.set_config(set, unset).await;
                let _ = reply.send(res);
            }
            ContainerMsg::StopDone(run, res) => s.stop_done(&me, run, res).await,
            ContainerMsg::Monitor(run, ev) => s.monitor_event(&me, run, ev).await,
            #[cfg(test)]
            ContainerMsg::Crash => panic!("container {} asked to crash", s.rec.name),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _me: ActorRef<ContainerMsg>,
        s: &mut ContainerState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(w) = s.watcher.take() {
            w.abort();
        }
        Ok(())
    }
}

impl ContainerState {
    fn info(&self) -> ContainerInfo {
        self.rec.info()
    }

    fn summary(&self) -> ContainerSummary {
        ContainerSummary {
            name: self.rec.name.clone(),
            status: self.rec.status,
            image: self.rec.image.clone(),
            init_pid: self.rec.init_pid,
        }
    }

    fn invalid_state(&self, hint: &str) -> Error {
        Error::InvalidState {
            name: self.rec.name.clone(),
            status: self.rec.status,
            hint: hint.to_string(),
        }
    }

    /// Sends the requests that waited (for a task or for provisioning) to the mailbox again,
    /// in their order.
    fn resend_deferred(&mut self, me: &ActorRef<ContainerMsg>) {
        for m in std::mem::take(&mut self.deferred) {
            if let Err(ractor::MessagingErr::SendErr(m)) = me.send_message(m) {
                m.fail(Error::Unavailable(format!("container {:?}", self.rec.name)));
            }
        }
    }

    /// Persists the record, then tells the manager and the world.
    async fn commit(&mut self) -> Result<()> {
        self.store.update_container(&self.rec).await?;
        self.announce();
        Ok(())
    }

    fn announce(&self) {
        let _ = self
            .manager
            .cast(ManagerMsg::Updated(self.summary(), self.id));
        self.events.publish(Event::ContainerChanged {
            name: self.rec.name.clone(),
            status: self.rec.status,
            init_pid: self.rec.init_pid,
        });
    }

    /// Undoes what a checkpoint interrupted by the death of an earlier berthd left on the
    /// container (see [`Runtime::recover_checkpoint`]), and says so in the log.
    async fn recover_checkpoint(&mut self) {
        match self.rt.recover_checkpoint(&self.rec.name).await {
            Ok(notes) => {
                for note in notes {
                    tracing::warn!(container = %self.rec.name, "recovered from an interrupted checkpoint: {note}");
                }
            }
            Err(e) => {
                tracing::error!(container = %self.rec.name, "recover from an interrupted checkpoint: {e}")
            }
        }
    }

    /// Brings the record in line with what runs (startup or respawn).
    async fn reconcile(&mut self, me: &ActorRef<ContainerMsg>) {
        let running = match self.rt.probe(&self.rec.name).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(container = %self.rec.name, "probe failed: {e}");
                None
            }
        };
        let before = (self.rec.status, self.rec.init_pid);
        match running {
            Some(run) => {
                self.rec.status = Status::Running;
                self.rec.init_pid = run.init_pid;
                self.watch(me);
            }
            None => {
                self.rec.status = if self.rec.status == Status::Error {
                    Status::Error
                } else {
                    Status::Stopped
                };
                self.rec.init_pid = 0;
            }
        }
        if before != (self.rec.status, self.rec.init_pid) {
            tracing::info!(container = %self.rec.name, from = ?before, to = ?(self.rec.status, self.rec.init_pid), "reconciled");
            if let Err(e) = self.commit().await {
                tracing::error!(container = %self.rec.name, "persist reconciled state: {e}");
            }
        }
        if self.rec.ephemeral && self.rec.status == Status::Stopped {
            // an ephemeral container that stopped while berthd was away
            if let Err(e) = self.remove(me).await {
                tracing::error!(container = %self.rec.name, "remove stopped ephemeral container: {e}");
            }
        }
    }

    async fn provision(
        &mut self,
        me: &ActorRef<ContainerMsg>,
        start: bool,
        source: &VolumeSource,
    ) -> Result<ContainerInfo> {
        if self.rec.pending != Pending::Create {
            return Ok(self.info());
        }
        match self.rt.provision(&self.rec, source).await {
            Ok(extra) => {
                berth_runtime::crash::point("berthd.create.provisioned");
                self.rec.config.extend(extra)
            }
            Err(e) => {
                let _ = self.rt.deprovision(&self.rec.name).await;
                let _ = self.store.delete_container(&self.rec.name).await;
                let _ = self
                    .manager
                    .cast(ManagerMsg::Removed(self.rec.name.clone(), self.id));
                return Err(map_rt(
                    Op::Create,
                    format!("container {}", self.rec.name),
                    e,
                ));
            }
        }
        self.rec.pending = Pending::None;
        self.store.update_container(&self.rec).await?;
        self.events.publish(Event::ContainerCreated {
            name: self.rec.name.clone(),
        });
        self.announce();
        if start {
            self.start(me).await?;
        }
        Ok(self.info())
    }

    async fn set_config(
        &mut self,
        set: BTreeMap<String, String>,
        unset: Vec<String>,
    ) -> Result<()> {
        if self.rec.pending != Pending::None {
            return Err(self.invalid_state("wait until it is created"));
        }
        for k in &unset {
            if k.starts_with("volatile.") {
                return Err(Error::InvalidConfig(format!(
                    "config key {k:?} is managed by berth and cannot be unset"
                )));
            }
        }
        for (k, v) in &set {
            crate::config::validate_key(k, v)?;
        }
        let mut next = self.rec.config.clone();
        for k in &unset {
            next.remove(k);
        }
        next.extend(set);
        let user: BTreeMap<String, String> = next
            .iter()
            .filter(|(k, _)| !k.starts_with("volatile."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        crate::config::validate_user_config(&user)?;
        let what = format!("container {}", self.rec.name);
        let (was, limit) = (
            crate::config::disk_limit(&self.rec.config),
            crate::config::disk_limit(&next),
        );
        if was != limit {
            self.rt
                .set_disk_limit(&self.rec.name, limit)
                .await
                .map_err(|e| map_rt(Op::Configure, what.clone(), e))?;
        }
        let before = std::mem::replace(&mut self.rec.config, next);
        if let Err(e) = self.store.update_container(&self.rec).await {
            self.rec.config = before;
            if was != limit {
                let _ = self.rt.set_disk_limit(&self.rec.name, was).await;
            }
            return Err(e);
        }
        self.events.publish(Event::ContainerConfigChanged {
            name: self.rec.name.clone(),
        });
        Ok(())
    }

    async fn start(&mut self, me: &ActorRef<ContainerMsg>) -> Result<()> {
        // the status first: a start of one that runs is InvalidState whatever else goes on
        // (`berth supervise` takes that answer as done)
        match self.rec.status {
            Status::Stopped | Status::Error => {}
            Status::Stopping => {
                return Err(Error::Busy(format!(
                    "container {:?} is stopping; wait for it",
                    self.rec.name
                )));
            }
            _ => return Err(self.invalid_state("it is already running")),
        }
        if self.publishing > 0 {
            return Err(Error::Busy(format!(
                "container {:?} is being published; start it when that is done",
                self.rec.name
            )));
        }
        self.rec.status = Status::Starting;
        self.commit().await?;
        match self.rt.start(&self.rec).await {
            Ok(run) => {
                berth_runtime::crash::point("berthd.start.monitor-spawned");
                self.run += 1;
                self.rec.status = Status::Running;
                self.rec.init_pid = run.init_pid;
                self.commit().await?;
                berth_runtime::crash::point("berthd.start.recorded");
                self.watch(me);
                Ok(())
            }
            Err(e) => {
                self.rec.status = Status::Stopped;
                self.rec.init_pid = 0;
                self.commit().await?;
                Err(map_rt(Op::Start, format!("container {}", self.rec.name), e))
            }
        }
    }

    /// Follows the monitor of the current run; its reports come back as messages.
    fn watch(&mut self, me: &ActorRef<ContainerMsg>) {
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
        let (rt, name, run, me) = (self.rt.clone(), self.rec.name.clone(), self.run, me.clone());
        self.watcher = Some(tokio::spawn(async move {
            match rt.watch(&name).await {
                Ok(mut rx) => {
                    while let Some(ev) = rx.recv().await {
                        let last = !matches!(ev, MonitorEvent::Restarted { .. });
                        if me.cast(ContainerMsg::Monitor(run, ev)).is_err() || last {
                            return;
                        }
                    }
                    let _ = me.cast(ContainerMsg::Monitor(run, MonitorEvent::Lost));
                }
                Err(_) => {
                    let _ = me.cast(ContainerMsg::Monitor(run, MonitorEvent::Lost));
                }
            }
        }));
    }

    async fn stop(
        &mut self,
        me: &ActorRef<ContainerMsg>,
        opts: StopOptions,
        r: RpcReplyPort<Result<()>>,
    ) {
        if opts.stateful {
            self.stateful_stop(me, opts, r);
            return;
        }
        match self.rec.status {
            Status::Running | Status::Frozen => {
                self.stop_waiters.push(r);
                self.begin_stop(me, opts).await;
            }
            Status::Stopping => {
                self.stop_waiters.push(r);
                if opts.force {
                    self.spawn_stop(me, opts);
                }
            }
            _ => drop(r.send(Err(self.invalid_state("it is not running")))),
        }
    }

    async fn begin_stop(&mut self, me: &ActorRef<ContainerMsg>, opts: StopOptions) {
        self.rec.status = Status::Stopping;
        if let Err(e) = self.commit().await {
            tracing::error!(container = %self.rec.name, "persist Stopping: {e}");
        }
        self.spawn_stop(me, opts);
    }

    fn spawn_stop(&self, me: &ActorRef<ContainerMsg>, opts: StopOptions) {
        let timeout = if opts.force {
            Duration::ZERO
        } else {
            opts.timeout.unwrap_or_else(|| {
                self.rec
                    .config
                    .get("boot.stop_timeout")
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_secs)
                    .unwrap_or(DEFAULT_STOP_TIMEOUT)
            })
        };
        let (rt, rec, run, me) = (self.rt.clone(), self.rec.clone(), self.run, me.clone());
        tokio::spawn(async move {
            berth_runtime::crash::point("berthd.stop.requested");
            let res = rt.stop(&rec, opts.force, timeout).await;
            let _ = me.cast(ContainerMsg::StopDone(run, res));
        });
    }

    async fn stop_done(
        &mut self,
        me: &ActorRef<ContainerMsg>,
        run: u64,
        res: std::result::Result<String, RuntimeError>,
    ) {
        if run != self.run || self.rec.status == Status::Stopped {
            return;
        }
        match res {
            Ok(reason) => self.stopped(me, &reason).await,
            Err(RuntimeError::NotRunning) => self.stopped(me, "not running").await,
            Err(e) => {
                // Did it stop anyway?
                if matches!(self.rt.probe(&self.rec.name).await, Ok(None)) {
                    self.stopped(me, "gone").await;
                    return;
                }
                self.rec.status = Status::Running;
                if let Err(pe) = self.commit().await {
                    tracing::error!(container = %self.rec.name, "persist: {pe}");
                }
                let err = map_rt(Op::Stop, format!("container {}", self.rec.name), e);
                for w in self
                    .stop_waiters
                    .drain(..)
                    .chain(self.restart_waiters.drain(..))
                    .chain(self.delete_waiters.drain(..))
                {
                    let _ = w.send(Err(err.clone()));
                }
            }
        }
    }

    async fn monitor_event(&mut self, me: &ActorRef<ContainerMsg>, run: u64, ev: MonitorEvent) {
        if run != self.run {
            return;
        }
        match ev {
            MonitorEvent::Restarted { init_pid } => {
                self.rec.init_pid = init_pid;
                if let Err(e) = self.commit().await {
                    tracing::error!(container = %self.rec.name, "persist restart: {e}");
                }
            }
            MonitorEvent::Exited { reason } => {
                if self.rec.status.is_active() {
                    self.stopped(me, &reason).await;
                }
            }
            MonitorEvent::Lost => {
                if self.rec.status.is_active() {
                    match self.rt.probe(&self.rec.name).await {
                        Ok(Some(run)) => {
                            // still running: follow it again
                            self.rec.init_pid = run.init_pid;
                            self.watch(me);
                        }
                        _ => self.stopped(me, "monitor lost").await,
                    }
                }
            }
        }
    }

    /// init is gone: record it and serve whoever waits (stop, restart, delete, ephemeral).
    async fn stopped(&mut self, me: &ActorRef<ContainerMsg>, reason: &str) {
        tracing::info!(container = %self.rec.name, reason, "stopped");
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
        self.run += 1;
        self.rec.status = Status::Stopped;
        self.rec.init_pid = 0;
        let persisted = self.commit().await;
        berth_runtime::crash::point("berthd.stop.recorded");
        for w in self.stop_waiters.drain(..) {
            let _ = w.send(persisted.clone());
        }
        // A delete that came while a restart stopped the container is the later word: it
        // wins, and the restart is answered that the container went (starting it again
        // would leave the delete waiting for a stop nobody asks for).
        if !self.restart_waiters.is_empty() && self.delete_waiters.is_empty() {
            let res = self.start(me).await;
            for w in self.restart_waiters.drain(..) {
                let _ = w.send(res.clone());
            }
            return;
        }
        if !self.delete_waiters.is_empty() || self.rec.ephemeral {
            let res = self.remove(me).await;
            if let Err(e) = &res {
                tracing::error!(container = %self.rec.name, "delete: {e}");
            }
            let restart = match &res {
                Ok(()) => Err(Error::NoSuchContainer(self.rec.name.clone())),
                Err(e) => Err(e.clone()),
            };
            for w in self.restart_waiters.drain(..) {
                let _ = w.send(restart.clone());
            }
            for w in self.delete_waiters.drain(..) {
                let _ = w.send(res.clone());
            }
        }
    }

    fn exec(&self, req: ExecRequest, r: RpcReplyPort<Result<i32>>) {
        if self.rec.status != Status::Running {
            let _ = r.send(Err(self.invalid_state("start it first")));
            return;
        }
        if req.argv.is_empty() {
            let _ = r.send(Err(Error::InvalidConfig("exec needs a command".into())));
            return;
        }
        let (rt, name) = (self.rt.clone(), self.rec.name.clone());
        tokio::spawn(async move {
            let res = rt.exec(&name, req).await.map_err(|e| match e {
                RuntimeError::NotRunning => Error::InvalidState {
                    name: name.clone(),
                    status: Status::Stopped,
                    hint: "it stopped; start it first".into(),
                },
                e => map_rt(Op::Exec, format!("container {name}"), e),
            });
            let _ = r.send(res);
        });
    }

    async fn delete(
        &mut self,
        me: &ActorRef<ContainerMsg>,
        force: bool,
        reply: RpcReplyPort<Result<()>>,
    ) {
        if self.publishing > 0 || self.copying > 0 {
            let _ = reply.send(Err(Error::Busy(format!(
                "container {:?} is being published or copied",
                self.rec.name
            ))));
            return;
        }
        match self.rec.status {
            Status::Stopped | Status::Error => {
                let res = self.remove(me).await;
                let _ = reply.send(res);
            }
            _ if !force => {
                let _ = reply.send(Err(
                    self.invalid_state("stop it first, or delete with force")
                ));
            }
            Status::Stopping => {
                self.delete_waiters.push(reply);
                self.spawn_stop(
                    me,
                    StopOptions {
                        force: true,
                        ..Default::default()
                    },
                );
            }
            _ => {
                self.delete_waiters.push(reply);
                self.begin_stop(
                    me,
                    StopOptions {
                        force: true,
                        ..Default::default()
                    },
                )
                .await;
            }
        }
    }

    /// Removes the container for good: pending delete recorded, host files removed, row
    /// deleted, manager told, then the actor stops.
    async fn remove(&mut self, me: &ActorRef<ContainerMsg>) -> Result<()> {
        self.rec.pending = Pending::Delete;
        self.store.update_container(&self.rec).await?;
        berth_runtime::crash::point("berthd.delete.marked");
        if let Err(e) = self.rt.deprovision(&self.rec.name).await {
            // refused, the container as it was: not a delete the next start should finish
            self.rec.pending = Pending::None;
            self.store.update_container(&self.rec).await?;
            return Err(map_rt(
                Op::Delete,
                format!("container {}", self.rec.name),
                e,
            ));
        }
        berth_runtime::crash::point("berthd.delete.deprovisioned");
        self.store.delete_container(&self.rec.name).await?;
        for (name, (_, actor)) in std::mem::take(&mut self.snaps) {
            actor.stop(Some("container deleted".into()));
            self.events.publish(Event::SnapshotRemoved {
                container: self.rec.name.clone(),
                name,
            });
        }
        let _ = self
            .manager
            .cast(ManagerMsg::Removed(self.rec.name.clone(), self.id));
        self.events.publish(Event::ContainerRemoved {
            name: self.rec.name.clone(),
        });
        me.stop(Some("deleted".into()));
        Ok(())
    }
}

/// Maps a runtime error of `op` to the domain error.
pub(crate) fn map_rt(op: Op, what: String, e: RuntimeError) -> Error {
    match e {
        RuntimeError::InvalidImage(m) => Error::InvalidImage(m),
        RuntimeError::NotSupported(m) => Error::NotSupported(m),
        RuntimeError::Invalid(m) => Error::InvalidConfig(m),
        RuntimeError::Cancelled => Error::Cancelled,
        RuntimeError::Busy(m) => Error::Busy(m),
        e => Error::runtime(op, what, e),
    }
}
