//! The Snapshot actor: one per snapshot, a linked child of its Container actor. It owns the
//! snapshot's files and its row. A new snapshot starts *staged* (files being written under a
//! staging directory, no row); it becomes real in one step — files moved into place, then the
//! row inserted — when its container says the capture is complete (`Commit`), or vanishes
//! without a trace on `Abort`. A crash in between leaves only staging debris, swept at the
//! next start because no row names it.
//!
//! While a restore or a copy reads its files the snapshot is *lent* and refuses deletion.

use crate::error::{Error, Op, Result};
use crate::events::{Event, Events};
use crate::runtime::{CheckpointStats, Runtime};
use crate::store::Store;
use crate::types::SnapshotRecord;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::Arc;

/// Messages of a Snapshot actor.
#[derive(Debug)]
pub enum SnapshotMsg {
    /// The record. Always allowed.
    Info(RpcReplyPort<SnapshotRecord>),
    /// Staged only: copy the container's files now (stateless snapshot) and commit.
    Capture(RpcReplyPort<Result<SnapshotRecord>>),
    /// Staged only: a checkpoint filled the staging directory; commit it as stateful.
    Commit(CheckpointStats, RpcReplyPort<Result<SnapshotRecord>>),
    /// Staged only: the capture failed; remove what was staged and stop.
    Abort,
    /// Lend the files to a restore or copy (deletion waits for `Return`).
    Lend(RpcReplyPort<Result<SnapshotRecord>>),
    /// A restore or copy is done with the files.
    Return,
    /// The row takes a new name (the container checked it is free). Files keep their id.
    Rename(String, RpcReplyPort<Result<SnapshotRecord>>),
    /// Remove the row, then the files, then stop.
    Delete(RpcReplyPort<Result<()>>),
}

/// What a Snapshot actor starts with.
pub struct SnapshotArgs {
    /// The record (committed, or to be committed).
    pub record: SnapshotRecord,
    /// Whether it is still being captured.
    pub staged: bool,
    /// The store.
    pub store: Store,
    /// The host.
    pub runtime: Arc<dyn Runtime>,
    /// Events.
    pub events: Events,
}

impl std::fmt::Debug for SnapshotArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotArgs")
            .field("record", &self.record)
            .field("staged", &self.staged)
            .finish_non_exhaustive()
    }
}

/// The actor.
#[derive(Debug)]
pub struct SnapshotActor;

/// Its state.
pub struct SnapshotState {
    rec: SnapshotRecord,
    staged: bool,
    lends: u32,
    store: Store,
    rt: Arc<dyn Runtime>,
    events: Events,
}

impl std::fmt::Debug for SnapshotState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotState")
            .field("rec", &self.rec)
            .field("staged", &self.staged)
            .finish_non_exhaustive()
    }
}

#[ractor::async_trait]
impl Actor for SnapshotActor {
    type Msg = SnapshotMsg;
    type State = SnapshotState;
    type Arguments = SnapshotArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<SnapshotMsg>,
        a: SnapshotArgs,
    ) -> Result<SnapshotState, ActorProcessingErr> {
        Ok(SnapshotState {
            rec: a.record,
            staged: a.staged,
            lends: 0,
            store: a.store,
            rt: a.runtime,
            events: a.events,
        })
    }

    async fn handle(
        &self,
        me: ActorRef<SnapshotMsg>,
        msg: SnapshotMsg,
        s: &mut SnapshotState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SnapshotMsg::Info(r) => drop(r.send(s.rec.clone())),
            SnapshotMsg::Capture(r) => {
                let res = match s.rt.capture_snapshot(&s.rec.container, &s.rec.id).await {
                    Ok(bytes) => {
                        s.rec.size = bytes;
                        s.commit().await
                    }
                    Err(e) => Err(crate::container::map_rt(Op::Snapshot, s.what(), e)),
                };
                if res.is_err() {
                    s.discard(&me).await;
                }
                let _ = r.send(res);
            }
            SnapshotMsg::Commit(stats, r) => {
                s.rec.stateful = true;
                s.rec.size = stats.state_bytes + stats.volume_bytes;
                let res = s.commit().await;
                if res.is_err() {
                    s.discard(&me).await;
                }
                let _ = r.send(res);
            }
            SnapshotMsg::Abort => {
                if s.staged {
                    s.discard(&me).await;
                }
            }
            SnapshotMsg::Lend(r) => {
                let res = if s.staged {
                    Err(Error::Busy(format!(
                        "snapshot {} is still being taken",
                        s.what()
                    )))
                } else {
                    s.lends += 1;
                    Ok(s.rec.clone())
                };
                let _ = r.send(res);
            }
            SnapshotMsg::Return => s.lends = s.lends.saturating_sub(1),
            SnapshotMsg::Rename(to, r) => {
                let res = s.rename(to).await;
                let _ = r.send(res);
            }
            SnapshotMsg::Delete(r) => {
                let res = s.delete(&me).await;
                let _ = r.send(res);
            }
        }
        Ok(())
    }
}

impl SnapshotState {
    fn what(&self) -> String {
        format!("{}/{}", self.rec.container, self.rec.name)
    }

    /// Files into place, then the row: the row is the commit point.
    async fn commit(&mut self) -> Result<SnapshotRecord> {
        if !self.staged {
            return Err(Error::Busy(format!(
                "snapshot {} is already committed",
                self.what()
            )));
        }
        self.rt
            .commit_snapshot(&self.rec.container, &self.rec.id)
            .await
            .map_err(|e| crate::container::map_rt(Op::Snapshot, self.what(), e))?;
        berth_runtime::crash::point("berthd.snapshot.committed");
        self.store.insert_snapshot(&self.rec).await?;
        berth_runtime::crash::point("berthd.snapshot.row-inserted");
        self.staged = false;
        self.events.publish(Event::SnapshotCreated {
            container: self.rec.container.clone(),
            name: self.rec.name.clone(),
        });
        Ok(self.rec.clone())
    }

    /// Removes staged (or uncommitted) files and stops.
    async fn discard(&mut self, me: &ActorRef<SnapshotMsg>) {
        if let Err(e) = self
            .rt
            .remove_snapshot(&self.rec.container, &self.rec.id)
            .await
        {
            tracing::warn!(snapshot = %self.what(), "remove staged files: {e} (swept at the next start)");
        }
        me.stop(Some("discarded".into()));
    }

    async fn rename(&mut self, to: String) -> Result<SnapshotRecord> {
        if self.staged {
            return Err(Error::Busy(format!(
                "snapshot {} is still being taken",
                self.what()
            )));
        }
        self.store
            .rename_snapshot(&self.rec.container, &self.rec.name, &to)
            .await?;
        let from = std::mem::replace(&mut self.rec.name, to);
        self.events.publish(Event::SnapshotRemoved {
            container: self.rec.container.clone(),
            name: from,
        });
        self.events.publish(Event::SnapshotCreated {
            container: self.rec.container.clone(),
            name: self.rec.name.clone(),
        });
        Ok(self.rec.clone())
    }

    /// Row first (the snapshot is gone for everyone at once), files after: a crash in between
    /// leaves files no row names, swept at the next start.
    async fn delete(&mut self, me: &ActorRef<SnapshotMsg>) -> Result<()> {
        if self.lends > 0 {
            return Err(Error::Busy(format!(
                "snapshot {} is being restored or copied; try again when that is done",
                self.what()
            )));
        }
        if self.staged {
            return Err(Error::Busy(format!(
                "snapshot {} is still being taken",
                self.what()
            )));
        }
        self.store
            .delete_snapshot(&self.rec.container, &self.rec.name)
            .await?;
        self.events.publish(Event::SnapshotRemoved {
            container: self.rec.container.clone(),
            name: self.rec.name.clone(),
        });
        if let Err(e) = self
            .rt
            .remove_snapshot(&self.rec.container, &self.rec.id)
            .await
        {
            tracing::warn!(snapshot = %self.what(), "remove files: {e} (swept at the next start)");
        }
        me.stop(Some("deleted".into()));
        Ok(())
    }
}
