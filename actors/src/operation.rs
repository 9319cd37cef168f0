//! Long work (image import, build, publish, export) as operations: progress, rate, result and
//! cancellation, projected on the bus as Operation objects while the method call is pending.
//!
//! An operation is data, not an actor: the worker doing the job bumps atomic counters, the
//! projection reads them (at most 4 times a second), and cancelling sets a flag the worker
//! checks between steps and that kills its helper process. A mailbox would only add a hop to
//! every progress update.

use crate::events::{Event, Events};
use crate::types::now_us;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How an operation ended (or that it has not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpStatus {
    /// Still working.
    Running,
    /// Done.
    Succeeded,
    /// Failed, with the error message.
    Failed(String),
    /// Cancelled; nothing of it was kept.
    Cancelled,
}

impl OpStatus {
    /// The wire name.
    pub fn as_str(&self) -> &'static str {
        match self {
            OpStatus::Running => "running",
            OpStatus::Succeeded => "success",
            OpStatus::Failed(_) => "failure",
            OpStatus::Cancelled => "cancelled",
        }
    }
}

/// One operation.
#[derive(Debug)]
pub struct Operation {
    /// Its number (object path `/org/berth/Berth1/operation/<id>`).
    pub id: u64,
    /// What it does: `image-import`, `image-build`, `publish`, `image-export`.
    pub verb: String,
    /// What it concerns: `container:<name>`, `image:<fingerprint or recipe>`.
    pub objects: Mutex<Vec<String>>,
    /// When it started (µs).
    pub started_at_us: u64,
    /// Who started it.
    pub started_by_uid: u32,
    /// Whether Cancel works.
    pub cancelable: bool,
    /// Bytes processed.
    pub done: AtomicU64,
    /// Bytes expected (0 = unknown).
    pub total: AtomicU64,
    /// Set to ask the worker to stop.
    pub cancel: AtomicBool,
    status: Mutex<OpStatus>,
}

impl Operation {
    /// Progress in 0..1 when the total is known.
    pub fn progress(&self) -> Option<f64> {
        let t = self.total.load(Ordering::Relaxed);
        (t > 0).then(|| (self.done.load(Ordering::Relaxed) as f64 / t as f64).min(1.0))
    }

    /// Bytes per second since the start.
    pub fn rate(&self) -> u64 {
        let secs = (now_us().saturating_sub(self.started_at_us)) as f64 / 1e6;
        if secs <= 0.0 {
            0
        } else {
            (self.done.load(Ordering::Relaxed) as f64 / secs) as u64
        }
    }

    /// Current status.
    pub fn status(&self) -> OpStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records progress.
    pub fn set_progress(&self, done: u64, total: Option<u64>) {
        self.done.store(done, Ordering::Relaxed);
        if let Some(t) = total {
            self.total.store(t, Ordering::Relaxed);
        }
    }

    /// Whether cancellation was asked for.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
struct Registry {
    last_id: u64,
    live: BTreeMap<u64, Arc<Operation>>,
}

/// All live operations, shared by the engine and its workers.
#[derive(Debug, Clone)]
pub struct Operations {
    inner: Arc<Mutex<Registry>>,
    events: Events,
}

impl Operations {
    /// An empty registry publishing on `events`.
    pub fn new(events: Events) -> Operations {
        Operations {
            inner: Arc::new(Mutex::new(Registry::default())),
            events,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts tracking a new operation.
    pub fn start(
        &self,
        verb: &str,
        objects: Vec<String>,
        uid: u32,
        cancelable: bool,
    ) -> Arc<Operation> {
        let op = {
            let mut g = self.lock();
            g.last_id += 1;
            let op = Arc::new(Operation {
                id: g.last_id,
                verb: verb.to_string(),
                objects: Mutex::new(objects),
                started_at_us: now_us(),
                started_by_uid: uid,
                cancelable,
                done: AtomicU64::new(0),
                total: AtomicU64::new(0),
                cancel: AtomicBool::new(false),
                status: Mutex::new(OpStatus::Running),
            });
            g.live.insert(op.id, op.clone());
            op
        };
        self.events.publish(Event::OperationNew { id: op.id });
        op
    }

    /// Ends an operation with `status`; it is announced and forgotten.
    pub fn finish(&self, op: &Operation, status: OpStatus) {
        *op.status.lock().unwrap_or_else(|p| p.into_inner()) = status.clone();
        self.lock().live.remove(&op.id);
        let (success, message) = match &status {
            OpStatus::Succeeded => (true, String::new()),
            OpStatus::Failed(m) => (false, m.clone()),
            OpStatus::Cancelled => (false, "cancelled".into()),
            OpStatus::Running => (false, String::new()),
        };
        self.events.publish(Event::OperationDone {
            id: op.id,
            success,
            message,
        });
    }

    /// A live operation.
    pub fn get(&self, id: u64) -> Option<Arc<Operation>> {
        self.lock().live.get(&id).cloned()
    }

    /// Every live operation.
    pub fn list(&self) -> Vec<Arc<Operation>> {
        self.lock().live.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle() {
        let events = Events::default();
        let mut rx = events.subscribe();
        let ops = Operations::new(events);
        let op = ops.start("image-import", vec!["image:x".into()], 1000, true);
        assert_eq!(op.progress(), None);
        op.set_progress(50, Some(200));
        assert_eq!(op.progress(), Some(0.25));
        assert_eq!(ops.list().len(), 1);
        op.cancel.store(true, Ordering::Relaxed);
        assert!(op.cancelled());
        ops.finish(&op, OpStatus::Cancelled);
        assert!(ops.get(op.id).is_none());
        assert_eq!(op.status(), OpStatus::Cancelled);
        assert_eq!(rx.try_recv().unwrap(), Event::OperationNew { id: 1 });
        assert_eq!(
            rx.try_recv().unwrap(),
            Event::OperationDone {
                id: 1,
                success: false,
                message: "cancelled".into()
            }
        );
    }
}
