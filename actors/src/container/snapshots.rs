//! The Container actor's side of snapshots: naming, spawning and supervising Snapshot actors,
//! and lending their files to restores, copies and publishing.

use super::tasks::TaskDone;
use super::{ContainerMsg, ContainerState, map_rt};
use crate::error::{Error, Op, Result};
use crate::runtime::{StateSlot, VolumeSource};
use crate::snapshot::{SnapshotActor, SnapshotArgs, SnapshotMsg};
use crate::types::{
    ContainerRecord, SnapshotRecord, Status, new_snapshot_id, now_us, validate_name,
};
use ractor::{Actor, ActorCell, ActorRef, RpcReplyPort};

impl ContainerState {
    /// Spawns the actors of the committed snapshots and sweeps files no row names.
    pub(super) async fn load_snapshots(&mut self, me: &ActorRef<ContainerMsg>) -> Result<()> {
        let records = std::mem::take(&mut self.initial_snapshots);
        let keep: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
        for note in self.rt.sweep_snapshots(&self.rec.name, keep).await {
            tracing::warn!(container = %self.rec.name, "removed debris of an interrupted snapshot: {note}");
        }
        for rec in records {
            let actor = self.spawn_snapshot(me, rec.clone(), false).await?;
            self.snaps.insert(rec.name.clone(), (rec, actor));
        }
        Ok(())
    }

    async fn spawn_snapshot(
        &self,
        me: &ActorRef<ContainerMsg>,
        record: SnapshotRecord,
        staged: bool,
    ) -> Result<ActorRef<SnapshotMsg>> {
        let what = format!("snapshot {}/{}", record.container, record.name);
        let args = SnapshotArgs {
            record,
            staged,
            store: self.store.clone(),
            runtime: self.rt.clone(),
            events: self.events.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, SnapshotActor, args, me.get_cell())
            .await
            .map_err(|e| Error::Unavailable(format!("{what} actor ({e})")))?;
        Ok(actor)
    }

    /// A Snapshot actor failed: respawn it from its record.
    pub(super) async fn snapshot_failed(
        &mut self,
        me: &ActorRef<ContainerMsg>,
        cell: ActorCell,
        err: String,
    ) {
        let Some(name) = self
            .snaps
            .iter()
            .find(|(_, (_, a))| a.get_id() == cell.get_id())
            .map(|(n, _)| n.clone())
        else {
            return; // a staged snapshot: its task sees the failure and reports it
        };
        tracing::error!(container = %self.rec.name, snapshot = %name, "snapshot actor failed: {err}; respawning it");
        let Some((rec, _)) = self.snaps.remove(&name) else {
            return;
        };
        match self.spawn_snapshot(me, rec.clone(), false).await {
            Ok(actor) => drop(self.snaps.insert(name, (rec, actor))),
            Err(e) => {
                tracing::error!(container = %self.rec.name, snapshot = %name, "respawn failed: {e}")
            }
        }
    }

    pub(super) fn snapshot_record(&self, name: &str) -> Result<SnapshotRecord> {
        self.snaps
            .get(name)
            .map(|(r, _)| r.clone())
            .ok_or_else(|| Error::NoSuchSnapshot {
                container: self.rec.name.clone(),
                name: name.to_string(),
            })
    }

    fn snapshot_actor(&self, name: &str) -> Result<ActorRef<SnapshotMsg>> {
        self.snaps
            .get(name)
            .map(|(_, a)| a.clone())
            .ok_or_else(|| Error::NoSuchSnapshot {
                container: self.rec.name.clone(),
                name: name.to_string(),
            })
    }

    /// `snapN`, N one more than the highest in use (names are never reused while a later one
    /// exists, as LXD does).
    fn next_snapshot_name(&self) -> String {
        let n = self
            .snaps
            .keys()
            .filter_map(|k| k.strip_prefix("snap")?.parse::<u64>().ok())
            .max()
            .map_or(0, |m| m + 1);
        format!("snap{n}")
    }

    pub(super) async fn create_snapshot(
        &mut self,
        me: &ActorRef<ContainerMsg>,
        name: String,
        stateful: bool,
        uid: u32,
        reply: RpcReplyPort<Result<SnapshotRecord>>,
    ) {
        let name = if name.is_empty() {
            self.next_snapshot_name()
        } else {
            name
        };
        if let Err(e) = validate_name(&name) {
            let _ = reply.send(Err(e));
            return;
        }
        if self.snaps.contains_key(&name) {
            let _ = reply.send(Err(Error::AlreadyExists {
                kind: "snapshot",
                name: format!("{}/{name}", self.rec.name),
            }));
            return;
        }
        if stateful && self.rec.status != Status::Running {
            let _ = reply.send(Err(self.invalid_state(
                "a stateful snapshot needs it running; start it, or take a stateless snapshot",
            )));
            return;
        }
        if matches!(self.rec.status, Status::Starting | Status::Stopping) {
            let _ = reply.send(Err(Error::Busy(format!(
                "container {:?} is {}; try again when it is done",
                self.rec.name, self.rec.status
            ))));
            return;
        }
        let rec = SnapshotRecord {
            container: self.rec.name.clone(),
            name,
            id: new_snapshot_id(),
            created_at_us: now_us(),
            stateful: false,
            size: 0,
        };
        let id = rec.id.clone();
        let actor = match self.spawn_snapshot(me, rec, true).await {
            Ok(a) => a,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let me2 = me.clone();
        if stateful {
            let op = self.ops.start(
                "snapshot-create",
                vec![format!("container:{}", self.rec.name)],
                uid,
                false,
            );
            self.busy = Some("stateful snapshot");
            let (rt, container) = (self.rt.clone(), self.rec.clone());
            tokio::spawn(async move {
                let res = match rt
                    .checkpoint(&container, &StateSlot::Snapshot(id), op.clone())
                    .await
                {
                    Ok(stats) => ractor::call!(actor, SnapshotMsg::Commit, stats)
                        .unwrap_or_else(|_| Err(Error::Unavailable("the snapshot".into()))),
                    Err(e) => {
                        let _ = actor.cast(SnapshotMsg::Abort);
                        Err(super::map_rt(
                            Op::Checkpoint,
                            format!("container {}", container.name),
                            e,
                        ))
                    }
                };
                let _ = me2.cast(ContainerMsg::TaskDone(Box::new(TaskDone::Snapshot {
                    res,
                    actor,
                    op: Some(op),
                    reply,
                })));
            });
        } else {
            self.busy = Some("snapshot");
            tokio::spawn(async move {
                let res = ractor::call!(actor, SnapshotMsg::Capture)
                    .unwrap_or_else(|_| Err(Error::Unavailable("the snapshot".into())));
                let _ = me2.cast(ContainerMsg::TaskDone(Box::new(TaskDone::Snapshot {
                    res,
                    actor,
                    op: None,
                    reply,
                })));
            });
        }
    }

    pub(super) async fn restore_snapshot(
        &mut self,
        me: &ActorRef<ContainerMsg>,
        name: String,
        stateful: Option<bool>,
        uid: u32,
        reply: RpcReplyPort<Result<()>>,
    ) {
        let res = async {
            let snap = self.snapshot_record(&name)?;
            let stateful = stateful.unwrap_or(snap.stateful);
            if stateful && !snap.stateful {
                return Err(Error::InvalidConfig(format!(
                    "snapshot {}/{name} holds no running state; restore it without stateful",
                    self.rec.name
                )));
            }
            if self.publishing > 0 || self.copying > 0 {
                return Err(Error::Busy(format!(
                    "container {:?} is being published or copied",
                    self.rec.name
                )));
            }
            if matches!(self.rec.status, Status::Starting | Status::Stopping) {
                return Err(Error::Busy(format!(
                    "container {:?} is {}; try again when it is done",
                    self.rec.name, self.rec.status
                )));
            }
            if stateful {
                // before the container is stopped: damage found after that costs its run
                self.rt
                    .check_state(&self.rec.name, &StateSlot::Snapshot(snap.id.clone()))
                    .await
                    .map_err(|e| {
                        map_rt(
                            Op::Restore,
                            format!(
                                "snapshot {}/{name} (restore it without stateful for its files)",
                                self.rec.name
                            ),
                            e,
                        )
                    })?;
            }
            let actor = self.snapshot_actor(&name)?;
            let lent = ractor::call!(actor, SnapshotMsg::Lend)
                .map_err(|_| Error::Unavailable(format!("snapshot {name:?}")))??;
            Ok((lent, actor, stateful))
        }
        .await;
        match res {
            Ok((snap, actor, stateful)) => {
                self.spawn_restore(me, snap, actor, stateful, uid, reply)
                    .await
            }
            Err(e) => drop(reply.send(Err(e))),
        }
    }

    pub(super) async fn rename_snapshot(
        &mut self,
        from: &str,
        to: String,
    ) -> Result<SnapshotRecord> {
        validate_name(&to)?;
        let actor = self.snapshot_actor(from)?;
        if self.snaps.contains_key(&to) {
            return Err(Error::AlreadyExists {
                kind: "snapshot",
                name: format!("{}/{to}", self.rec.name),
            });
        }
        let rec = ractor::call!(actor, SnapshotMsg::Rename, to.clone())
            .map_err(|_| Error::Unavailable(format!("snapshot {from:?}")))??;
        if let Some((_, a)) = self.snaps.remove(from) {
            self.snaps.insert(to, (rec.clone(), a));
        }
        Ok(rec)
    }

    pub(super) async fn delete_snapshot(&mut self, name: &str) -> Result<()> {
        let actor = self.snapshot_actor(name)?;
        ractor::call!(actor, SnapshotMsg::Delete)
            .map_err(|_| Error::Unavailable(format!("snapshot {name:?}")))??;
        self.snaps.remove(name);
        Ok(())
    }

    /// The files a copy or publish reads: the container's own, or a lent snapshot's.
    async fn lend_files(&mut self, snapshot: &Option<String>) -> Result<VolumeSource> {
        match snapshot {
            None => Ok(VolumeSource::Container(self.rec.name.clone())),
            Some(name) => {
                let actor = self.snapshot_actor(name)?;
                let snap = ractor::call!(actor, SnapshotMsg::Lend)
                    .map_err(|_| Error::Unavailable(format!("snapshot {name:?}")))??;
                Ok(VolumeSource::Snapshot {
                    container: self.rec.name.clone(),
                    id: snap.id,
                })
            }
        }
    }

    /// A copy or publish is done with a snapshot's files.
    pub(super) fn give_back(&mut self, snapshot: Option<&str>) {
        if let Some(name) = snapshot
            && let Some((_, a)) = self.snaps.get(name)
        {
            let _ = a.cast(SnapshotMsg::Return);
        }
    }

    pub(super) async fn begin_copy(
        &mut self,
        snapshot: Option<String>,
    ) -> Result<(ContainerRecord, VolumeSource)> {
        let source = self.lend_files(&snapshot).await?;
        self.copying += 1;
        Ok((self.rec.clone(), source))
    }

    pub(super) async fn begin_publish(
        &mut self,
        snapshot: Option<String>,
    ) -> Result<(ContainerRecord, VolumeSource)> {
        if snapshot.is_none() && self.rec.status != Status::Stopped {
            return Err(
                self.invalid_state("stop it before publishing it, or publish one of its snapshots")
            );
        }
        let source = self.lend_files(&snapshot).await?;
        self.publishing += 1;
        Ok((self.rec.clone(), source))
    }
}
