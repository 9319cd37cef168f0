//! Long container work that runs as a task while the actor is busy: stateful stops and starts,
//! snapshot captures and restores. Each task ends by sending [`TaskDone`] to the actor, which
//! records the outcome, answers the caller and replays the requests that waited.

use super::{ContainerMsg, ContainerState, STATEFUL_KEY, map_rt};
use crate::error::{Error, Op, Result};
use crate::operation::{OpStatus, Operation};
use crate::runtime::{CheckpointStats, Running, RuntimeError, StateSlot};
use crate::snapshot::SnapshotMsg;
use crate::types::{SnapshotRecord, StartOptions, Status, StopOptions};
use ractor::{ActorRef, RpcReplyPort};
use std::sync::Arc;
use std::time::Duration;

/// How a task ended.
#[derive(Debug)]
pub enum TaskDone {
    /// A snapshot was captured (and committed by its actor) or not.
    Snapshot {
        /// The committed snapshot.
        res: Result<SnapshotRecord>,
        /// Its actor (stopped by itself on failure).
        actor: ActorRef<SnapshotMsg>,
        /// The operation of a stateful snapshot.
        op: Option<Arc<Operation>>,
        /// Caller.
        reply: RpcReplyPort<Result<SnapshotRecord>>,
    },
    /// A snapshot was restored: the new init when the container runs again.
    Restore {
        /// Outcome.
        res: Result<Option<Running>>,
        /// The lent snapshot's actor.
        actor: ActorRef<SnapshotMsg>,
        /// The operation of a stateful restore.
        op: Option<Arc<Operation>>,
        /// Caller.
        reply: RpcReplyPort<Result<()>>,
    },
    /// A stateful stop's checkpoint ended.
    StatefulStop {
        /// Outcome.
        res: Result<CheckpointStats>,
        /// Its operation.
        op: Arc<Operation>,
        /// Caller.
        reply: RpcReplyPort<Result<()>>,
    },
    /// A start from the state a stateful stop saved ended.
    StatefulStart {
        /// Outcome.
        res: Result<Running>,
        /// Its operation.
        op: Arc<Operation>,
        /// Caller.
        reply: RpcReplyPort<Result<()>>,
    },
}

impl TaskDone {
    /// Answers the caller with `e` (the actor could not take the report).
    pub fn fail(self, e: Error) {
        match self {
            TaskDone::Snapshot { reply, .. } => drop(reply.send(Err(e))),
            TaskDone::Restore { reply, .. }
            | TaskDone::StatefulStop { reply, .. }
            | TaskDone::StatefulStart { reply, .. } => drop(reply.send(Err(e))),
        }
    }
}

fn finish(
    ops: &crate::operation::Operations,
    op: Option<&Arc<Operation>>,
    res: std::result::Result<(), &Error>,
) {
    if let Some(op) = op {
        ops.finish(
            op,
            match res {
                Ok(()) => OpStatus::Succeeded,
                Err(e) => OpStatus::Failed(e.to_string()),
            },
        );
    }
}

impl ContainerState {
    /// Records a task's outcome and answers its caller.
    pub(super) async fn task_done(&mut self, me: &ActorRef<ContainerMsg>, t: TaskDone) {
        match t {
            TaskDone::Snapshot {
                res,
                actor,
                op,
                reply,
            } => {
                finish(&self.ops, op.as_ref(), res.as_ref().map(drop));
                if let Ok(rec) = &res {
                    self.snaps.insert(rec.name.clone(), (rec.clone(), actor));
                }
                let _ = reply.send(res);
            }
            TaskDone::Restore {
                res,
                actor,
                op,
                reply,
            } => {
                let _ = actor.cast(SnapshotMsg::Return);
                finish(&self.ops, op.as_ref(), res.as_ref().map(drop));
                let res = match res {
                    Ok(run) => {
                        // the files are the snapshot's now: a state saved by a stateful stop
                        // no longer matches them
                        if self.rec.config.remove(STATEFUL_KEY).is_some()
                            && let Err(e) = self.rt.discard_stop_state(&self.rec.name, false).await
                        {
                            tracing::warn!(container = %self.rec.name, "discard the saved state: {e}");
                        }
                        self.ran(me, run).await
                    }
                    Err(e) => {
                        let run = self.rt.probe(&self.rec.name).await.ok().flatten();
                        let _ = self.ran(me, run).await;
                        Err(e)
                    }
                };
                let _ = reply.send(res);
            }
            TaskDone::StatefulStop { res, op, reply } => {
                finish(&self.ops, Some(&op), res.as_ref().map(drop));
                match res {
                    Ok(stats) => {
                        tracing::info!(container = %self.rec.name, state_bytes = stats.state_bytes, frozen_us = stats.frozen_us, "checkpointed for a stateful stop");
                        self.rec.config.insert(STATEFUL_KEY.into(), "true".into());
                        if self.rec.status.is_active() {
                            // CRIU killed the tree; the monitor's exit report finishes the stop
                            self.rec.status = Status::Stopping;
                            self.stop_waiters.push(reply);
                            if let Err(e) = self.commit().await {
                                tracing::error!(container = %self.rec.name, "persist the saved state: {e}");
                            }
                        } else {
                            let _ = reply.send(self.commit().await);
                        }
                    }
                    Err(e) => drop(reply.send(Err(e))),
                }
            }
            TaskDone::StatefulStart { res, op, reply } => {
                finish(&self.ops, Some(&op), res.as_ref().map(drop));
                let res = match res {
                    Ok(run) => {
                        self.rec.config.remove(STATEFUL_KEY);
                        let r = self.ran(me, Some(run)).await;
                        if let Err(e) = self.rt.discard_stop_state(&self.rec.name, false).await {
                            tracing::warn!(container = %self.rec.name, "discard the restored state: {e}");
                        }
                        r
                    }
                    Err(e) => {
                        let _ = self.ran(me, None).await;
                        Err(e)
                    }
                };
                let _ = reply.send(res);
            }
        }
    }

    /// Records that the container runs `run` (follow its monitor) or is stopped.
    async fn ran(&mut self, me: &ActorRef<ContainerMsg>, run: Option<Running>) -> Result<()> {
        match run {
            Some(run) => {
                self.run += 1;
                self.rec.status = Status::Running;
                self.rec.init_pid = run.init_pid;
                self.commit().await?;
                self.watch(me);
            }
            None => {
                self.rec.status = Status::Stopped;
                self.rec.init_pid = 0;
                self.commit().await?;
            }
        }
        Ok(())
    }

    /// Restores a lent snapshot: stop (kill) if running, replace the files, then restore the
    /// running state or start again if it ran.
    pub(super) async fn spawn_restore(
        &mut self,
        me: &ActorRef<ContainerMsg>,
        snap: SnapshotRecord,
        actor: ActorRef<SnapshotMsg>,
        stateful: bool,
        uid: u32,
        reply: RpcReplyPort<Result<()>>,
    ) {
        let was_running = matches!(self.rec.status, Status::Running | Status::Frozen);
        self.busy = Some("restore");
        if was_running {
            // this run ends here: its monitor's reports are no longer ours
            if let Some(w) = self.watcher.take() {
                w.abort();
            }
            self.run += 1;
            self.rec.status = Status::Stopping;
            if let Err(e) = self.commit().await {
                tracing::error!(container = %self.rec.name, "persist Stopping: {e}");
            }
        }
        let op = stateful.then(|| {
            self.ops.start(
                "snapshot-restore",
                vec![
                    format!("container:{}", self.rec.name),
                    format!("snapshot:{}/{}", snap.container, snap.name),
                ],
                uid,
                false,
            )
        });
        let (rt, rec, me2, op2) = (self.rt.clone(), self.rec.clone(), me.clone(), op.clone());
        tokio::spawn(async move {
            let what = format!("container {}", rec.name);
            let t0 = std::time::Instant::now();
            let mut stopped_ms = 0;
            let mut disconnect_ms = 0;
            let mut files_ms = 0;
            let res = async {
                if was_running {
                    // the restored tree takes over the connections of this one: its death
                    // must not close them (a FIN or RST would reach every peer)
                    if op2.is_some() {
                        rt.disconnect(&rec)
                            .await
                            .map_err(|e| map_rt(Op::Restore, what.clone(), e))?;
                    }
                    disconnect_ms = t0.elapsed().as_millis();
                    match rt.stop(&rec, true, Duration::ZERO).await {
                        Ok(_) | Err(RuntimeError::NotRunning) => {}
                        Err(e) => return Err(map_rt(Op::Stop, what.clone(), e)),
                    }
                }
                stopped_ms = t0.elapsed().as_millis();
                rt.restore_files(&rec, &snap.id, op2.is_some())
                    .await
                    .map_err(|e| {
                        map_rt(
                            Op::Snapshot,
                            format!("{}/{} (restoring its files)", snap.container, snap.name),
                            e,
                        )
                    })?;
                files_ms = t0.elapsed().as_millis() - stopped_ms;
                if let Some(op) = op2 {
                    rt.restore(&rec, &StateSlot::Snapshot(snap.id.clone()), op)
                        .await
                        .map(Some)
                        .map_err(|e| map_rt(Op::Restore, what.clone(), e))
                } else if was_running {
                    rt.start(&rec)
                        .await
                        .map(Some)
                        .map_err(|e| map_rt(Op::Start, what.clone(), e))
                } else {
                    Ok(None)
                }
            }
            .await;
            if res.is_ok() {
                berth_runtime::crash::point("berthd.restore.restored");
                tracing::info!(
                    container = %rec.name,
                    "restored {}/{} in {} ms: old tree gone {stopped_ms} ms (disconnected {disconnect_ms} ms), files {files_ms} ms, start or restore {} ms",
                    snap.container,
                    snap.name,
                    t0.elapsed().as_millis(),
                    t0.elapsed().as_millis() - stopped_ms - files_ms
                );
            }
            let _ = me2.cast(ContainerMsg::TaskDone(Box::new(TaskDone::Restore {
                res,
                actor,
                op,
                reply,
            })));
        });
    }

    /// Checkpoints the running container and lets CRIU kill it; the next start restores.
    pub(super) fn stateful_stop(
        &mut self,
        me: &ActorRef<ContainerMsg>,
        opts: StopOptions,
        r: RpcReplyPort<Result<()>>,
    ) {
        if self.rec.status != Status::Running {
            let _ = r.send(Err(self.invalid_state("a stateful stop needs it running")));
            return;
        }
        if self.rec.ephemeral {
            let _ = r.send(Err(Error::InvalidConfig(format!(
                "container {:?} is ephemeral: it is deleted when it stops; take a stateful snapshot instead",
                self.rec.name
            ))));
            return;
        }
        self.busy = Some("stateful stop");
        let op = self.ops.start(
            "stateful-stop",
            vec![format!("container:{}", self.rec.name)],
            opts.uid,
            false,
        );
        let (rt, rec, me2) = (self.rt.clone(), self.rec.clone(), me.clone());
        tokio::spawn(async move {
            let res = rt
                .checkpoint(&rec, &StateSlot::Stop, op.clone())
                .await
                .map_err(|e| map_rt(Op::Checkpoint, format!("container {}", rec.name), e));
            let _ = me2.cast(ContainerMsg::TaskDone(Box::new(TaskDone::StatefulStop {
                res,
                op,
                reply: r,
            })));
        });
    }

    /// Whether a start with `opts` would restore the saved state of a stateful stop (run CRIU)
    /// rather than boot.
    pub(super) fn start_restores(&self, opts: &StartOptions) -> bool {
        !opts.stateless && self.has_stop_state()
    }

    fn has_stop_state(&self) -> bool {
        self.rec.config.contains_key(STATEFUL_KEY)
            && matches!(self.rec.status, Status::Stopped | Status::Error)
    }

    /// Start: from the saved state of a stateful stop when there is one (unless `stateless`),
    /// else a fresh boot.
    pub(super) async fn start_with(
        &mut self,
        me: &ActorRef<ContainerMsg>,
        opts: StartOptions,
        r: RpcReplyPort<Result<()>>,
    ) {
        if self.has_stop_state() {
            if opts.stateless {
                if let Err(e) = self.rt.discard_stop_state(&self.rec.name, true).await {
                    let _ = r.send(Err(map_rt(
                        Op::Start,
                        format!("container {}", self.rec.name),
                        e,
                    )));
                    return;
                }
                self.rec.config.remove(STATEFUL_KEY);
            } else if self.publishing > 0 {
                let _ = r.send(Err(Error::Busy(format!(
                    "container {:?} is being published; start it when that is done",
                    self.rec.name
                ))));
                return;
            } else {
                if let Err(e) = self.rt.check_state(&self.rec.name, &StateSlot::Stop).await {
                    let _ = r.send(Err(map_rt(
                        Op::Restore,
                        format!(
                            "container {} (start it with stateless to boot afresh)",
                            self.rec.name
                        ),
                        e,
                    )));
                    return;
                }
                self.rec.status = Status::Starting;
                if let Err(e) = self.commit().await {
                    let _ = r.send(Err(e));
                    return;
                }
                self.busy = Some("stateful start");
                let op = self.ops.start(
                    "stateful-start",
                    vec![format!("container:{}", self.rec.name)],
                    opts.uid,
                    false,
                );
                let (rt, rec, me2) = (self.rt.clone(), self.rec.clone(), me.clone());
                tokio::spawn(async move {
                    let res = rt.restore(&rec, &StateSlot::Stop, op.clone()).await.map_err(|e| {
                        let mut err = map_rt(Op::Restore, format!("container {}", rec.name), e);
                        if let Error::Runtime { detail, .. } = &mut err {
                            detail.push_str("; the saved state is kept: start it with stateless to boot afresh");
                        }
                        err
                    });
                    let _ = me2.cast(ContainerMsg::TaskDone(Box::new(TaskDone::StatefulStart {
                        res,
                        op,
                        reply: r,
                    })));
                });
                return;
            }
        }
        let res = self.start(me).await;
        let _ = r.send(res);
    }
}
