//! An in-memory [`Runtime`] for actor and interface tests: containers "run" as entries in a
//! map, exec writes its argv to the stdout fd it is given and exits with a status derived from
//! it, and tests can make a container power off by itself or a start fail.

use crate::operation::Operation;
use crate::runtime::{
    CheckpointStats, MonitorEvent, NewImage, Running, Runtime, RuntimeError, StateSlot,
    VolumeSource,
};
use crate::types::{ContainerRecord, ExecRequest};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Debug, Default)]
struct Inner {
    provisioned: HashSet<String>,
    running: HashMap<String, Running>,
    watchers: HashMap<String, Vec<mpsc::UnboundedSender<MonitorEvent>>>,
    images: HashSet<String>,
    archives: HashMap<String, Vec<u8>>,
    next_pid: u32,
    fail_start: HashMap<String, String>,
    stop_delay: Duration,
    log: Vec<String>,
    /// Each container's "files".
    files: HashMap<String, String>,
    /// Snapshots by (container, id): (files, committed, running state: the pid it ran as).
    snapshots: HashMap<(String, String), FakeSnapshot>,
    /// Saved states of stateful stops: the files they go with.
    stop_states: HashMap<String, String>,
    fail_checkpoint: HashMap<String, String>,
    fail_restore: HashMap<String, String>,
    checkpoint_delay: Duration,
    publish_delay: Duration,
}

#[derive(Debug, Clone, Default)]
struct FakeSnapshot {
    files: String,
    committed: bool,
    state: bool,
}

/// The fake host.
#[derive(Debug, Default)]
pub struct FakeRuntime {
    inner: Mutex<Inner>,
}

impl FakeRuntime {
    /// A fresh fake.
    pub fn new() -> Self {
        FakeRuntime {
            inner: Mutex::new(Inner {
                next_pid: 1000,
                ..Default::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next start of `name` fails with `msg`.
    pub fn fail_next_start(&self, name: &str, msg: &str) {
        self.lock().fail_start.insert(name.into(), msg.into());
    }

    /// Graceful stops take this long.
    pub fn set_stop_delay(&self, d: Duration) {
        self.lock().stop_delay = d;
    }

    /// init of `name` exits by itself (as after `poweroff` inside).
    pub fn power_off_from_inside(&self, name: &str) {
        let mut i = self.lock();
        i.running.remove(name);
        for w in i.watchers.remove(name).unwrap_or_default() {
            let _ = w.send(MonitorEvent::Exited {
                reason: "poweroff".into(),
            });
        }
    }

    /// Whether `name` runs.
    pub fn is_running(&self, name: &str) -> Option<Running> {
        self.lock().running.get(name).copied()
    }

    /// Whether `name` has storage.
    pub fn is_provisioned(&self, name: &str) -> bool {
        self.lock().provisioned.contains(name)
    }

    /// Sets the "files" of `name` (what snapshots capture and restores bring back).
    pub fn write_files(&self, name: &str, content: &str) {
        self.lock().files.insert(name.into(), content.into());
    }

    /// The "files" of `name`.
    pub fn files(&self, name: &str) -> Option<String> {
        self.lock().files.get(name).cloned()
    }

    /// Snapshot directories of `name` (committed or staged), as (id, committed).
    pub fn snapshot_dirs(&self, name: &str) -> Vec<(String, bool)> {
        let mut v: Vec<(String, bool)> = self
            .lock()
            .snapshots
            .iter()
            .filter(|((c, _), _)| c == name)
            .map(|((_, id), s)| (id.clone(), s.committed))
            .collect();
        v.sort();
        v
    }

    /// Stages snapshot files as an interrupted capture would leave them (no row).
    pub fn capture_snapshot_for_test(&self, name: &str, id: &str) {
        self.lock().snapshots.insert(
            (name.into(), id.into()),
            FakeSnapshot {
                files: String::new(),
                committed: false,
                state: false,
            },
        );
    }

    /// Whether a stateful stop saved a state for `name`.
    pub fn has_stop_state_for_test(&self, name: &str) -> bool {
        self.lock().stop_states.contains_key(name)
    }

    /// The next checkpoint of `name` fails with `msg`.
    pub fn fail_next_checkpoint(&self, name: &str, msg: &str) {
        self.lock().fail_checkpoint.insert(name.into(), msg.into());
    }

    /// The next restore of `name` fails with `msg`.
    pub fn fail_next_restore(&self, name: &str, msg: &str) {
        self.lock().fail_restore.insert(name.into(), msg.into());
    }

    /// Checkpoints take this long.
    pub fn set_checkpoint_delay(&self, d: Duration) {
        self.lock().checkpoint_delay = d;
    }

    /// Publishes take this long (after their "publish NAME" line in the log).
    pub fn set_publish_delay(&self, d: Duration) {
        self.lock().publish_delay = d;
    }

    fn new_run(i: &mut Inner, name: &str) -> Running {
        i.next_pid += 1;
        let run = Running {
            init_pid: i.next_pid,
            monitor_pid: i.next_pid + 10_000,
        };
        i.running.insert(name.to_string(), run);
        run
    }

    /// Operations done, in order ("start c1", "stop c1 force"…).
    pub fn log(&self) -> Vec<String> {
        self.lock().log.clone()
    }
}

#[ractor::async_trait]
impl Runtime for FakeRuntime {
    async fn provision(
        &self,
        rec: &ContainerRecord,
        source: &VolumeSource,
    ) -> Result<BTreeMap<String, String>, RuntimeError> {
        let mut i = self.lock();
        let files = match source {
            VolumeSource::Image if !i.images.contains(&rec.image) => {
                return Err(RuntimeError::InvalidImage(format!(
                    "image {} has no volume",
                    rec.image
                )));
            }
            VolumeSource::Image => format!("image {}", rec.image),
            VolumeSource::Container(c) => i
                .files
                .get(c)
                .cloned()
                .ok_or_else(|| RuntimeError::Failed(format!("{c} has no files")))?,
            VolumeSource::Snapshot { container, id } => i
                .snapshots
                .get(&(container.clone(), id.clone()))
                .filter(|s| s.committed)
                .map(|s| s.files.clone())
                .ok_or_else(|| RuntimeError::Failed(format!("no snapshot {container}/{id}")))?,
        };
        i.files.insert(rec.name.clone(), files);
        i.provisioned.insert(rec.name.clone());
        i.log.push(format!("provision {}", rec.name));
        Ok(BTreeMap::from([(
            "volatile.idmap.base".to_string(),
            "1000000".to_string(),
        )]))
    }

    async fn deprovision(&self, name: &str) -> Result<(), RuntimeError> {
        let mut i = self.lock();
        if i.running.contains_key(name) {
            return Err(RuntimeError::Failed(format!("{name} still runs")));
        }
        i.provisioned.remove(name);
        i.files.remove(name);
        i.snapshots.retain(|(c, _), _| c != name);
        i.stop_states.remove(name);
        i.log.push(format!("deprovision {name}"));
        Ok(())
    }

    async fn set_disk_limit(&self, name: &str, bytes: Option<u64>) -> Result<(), RuntimeError> {
        let mut i = self.lock();
        match bytes {
            Some(b) => i.log.push(format!("disk limit {name} {b}")),
            None => i.log.push(format!("disk limit {name} none")),
        }
        Ok(())
    }

    async fn start(&self, rec: &ContainerRecord) -> Result<Running, RuntimeError> {
        let mut i = self.lock();
        i.log.push(format!("start {}", rec.name));
        if let Some(msg) = i.fail_start.remove(&rec.name) {
            return Err(RuntimeError::Failed(msg));
        }
        if !i.provisioned.contains(&rec.name) {
            return Err(RuntimeError::Failed("no rootfs".into()));
        }
        Ok(Self::new_run(&mut i, &rec.name))
    }

    async fn stop(
        &self,
        rec: &ContainerRecord,
        force: bool,
        timeout: Duration,
    ) -> Result<String, RuntimeError> {
        let delay = {
            let mut i = self.lock();
            i.log.push(format!(
                "stop {}{}",
                rec.name,
                if force { " force" } else { "" }
            ));
            if !i.running.contains_key(&rec.name) {
                return Err(RuntimeError::NotRunning);
            }
            if force {
                Duration::ZERO
            } else {
                i.stop_delay.min(timeout)
            }
        };
        tokio::time::sleep(delay).await;
        let mut i = self.lock();
        if i.running.remove(&rec.name).is_none() {
            return Ok("already gone".into());
        }
        let reason = if force || delay >= timeout && timeout > Duration::ZERO {
            "killed"
        } else {
            "poweroff"
        };
        for w in i.watchers.remove(&rec.name).unwrap_or_default() {
            let _ = w.send(MonitorEvent::Exited {
                reason: reason.into(),
            });
        }
        Ok(reason.into())
    }

    async fn disconnect(&self, rec: &ContainerRecord) -> Result<(), RuntimeError> {
        self.lock().log.push(format!("disconnect {}", rec.name));
        Ok(())
    }

    async fn probe(&self, name: &str) -> Result<Option<Running>, RuntimeError> {
        Ok(self.lock().running.get(name).copied())
    }

    async fn recover_checkpoint(&self, _name: &str) -> Result<Vec<String>, RuntimeError> {
        // nothing here outlives the engine
        Ok(Vec::new())
    }

    async fn watch(
        &self,
        name: &str,
    ) -> Result<mpsc::UnboundedReceiver<MonitorEvent>, RuntimeError> {
        let mut i = self.lock();
        if !i.running.contains_key(name) {
            return Err(RuntimeError::NotRunning);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        i.watchers.entry(name.to_string()).or_default().push(tx);
        Ok(rx)
    }

    async fn exec(&self, name: &str, req: ExecRequest) -> Result<i32, RuntimeError> {
        if !self.lock().running.contains_key(name) {
            return Err(RuntimeError::NotRunning);
        }
        self.lock()
            .log
            .push(format!("exec {name} {}", req.argv.join(" ")));
        if let Some(out) = req.stdio[1].as_ref() {
            let mut f = std::fs::File::from(
                out.try_clone()
                    .map_err(|e| RuntimeError::Failed(e.to_string()))?,
            );
            let _ = writeln!(f, "{}", req.argv.join(" "));
        }
        Ok(match req.argv.first().map(String::as_str) {
            Some("false") => 1,
            Some("exit") => req.argv.get(1).and_then(|c| c.parse().ok()).unwrap_or(0),
            _ => 0,
        })
    }

    async fn build_image(
        &self,
        recipe: &str,
        known: HashSet<String>,
        op: Arc<Operation>,
    ) -> Result<NewImage, RuntimeError> {
        if recipe != "busybox" {
            return Err(RuntimeError::Invalid(format!("unknown recipe {recipe:?}")));
        }
        op.set_progress(1234, Some(1234));
        let fp = format!("{:064x}", 0xb05b0c5u64);
        if known.contains(&fp) {
            return Ok(NewImage {
                fingerprint: fp,
                known: true,
                ..Default::default()
            });
        }
        self.lock().images.insert(fp.clone());
        Ok(NewImage {
            fingerprint: fp,
            architecture: "x86_64".into(),
            properties: BTreeMap::from([
                ("os".to_string(), "busybox".to_string()),
                ("description".to_string(), "fake busybox".to_string()),
            ]),
            created_at_us: 1,
            size: 1234,
            ..Default::default()
        })
    }

    /// The fake "image format": any bytes not starting with `bad`; the fingerprint is a hash.
    async fn import_image(
        &self,
        archive: OwnedFd,
        rootfs: Option<OwnedFd>,
        known: HashSet<String>,
        op: Arc<Operation>,
    ) -> Result<NewImage, RuntimeError> {
        let mut data = Vec::new();
        std::fs::File::from(archive)
            .read_to_end(&mut data)
            .map_err(|e| RuntimeError::Failed(e.to_string()))?;
        if let Some(r) = rootfs {
            std::fs::File::from(r)
                .read_to_end(&mut data)
                .map_err(|e| RuntimeError::Failed(e.to_string()))?;
        }
        if op.cancelled() {
            return Err(RuntimeError::Cancelled);
        }
        op.set_progress(data.len() as u64, Some(data.len() as u64));
        if data.starts_with(b"bad") || data.is_empty() {
            return Err(RuntimeError::InvalidImage(
                "the fake cannot read this archive".into(),
            ));
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        data.hash(&mut h);
        let fp = format!("{:064x}", h.finish());
        if known.contains(&fp) {
            return Ok(NewImage {
                fingerprint: fp,
                known: true,
                ..Default::default()
            });
        }
        let mut i = self.lock();
        i.images.insert(fp.clone());
        i.archives.insert(fp.clone(), data.clone());
        Ok(NewImage {
            fingerprint: fp,
            architecture: "x86_64".into(),
            properties: BTreeMap::from([("description".to_string(), "imported".to_string())]),
            created_at_us: 2,
            size: data.len() as u64,
            ..Default::default()
        })
    }

    async fn publish(
        &self,
        rec: &ContainerRecord,
        _source: &VolumeSource,
        properties: BTreeMap<String, String>,
        _known: HashSet<String>,
        op: Arc<Operation>,
    ) -> Result<NewImage, RuntimeError> {
        op.set_progress(1, Some(1));
        let delay = {
            let mut i = self.lock();
            i.log.push(format!("publish {}", rec.name));
            i.publish_delay
        };
        tokio::time::sleep(delay).await;
        let fp = format!("{:064x}", crate::types::now_us());
        let mut i = self.lock();
        i.images.insert(fp.clone());
        i.archives.insert(fp.clone(), rec.name.as_bytes().to_vec());
        Ok(NewImage {
            fingerprint: fp,
            architecture: rec.architecture.clone(),
            properties,
            size: 1,
            ..Default::default()
        })
    }

    async fn export_image(
        &self,
        fingerprint: &str,
        out: OwnedFd,
        _rootfs: Option<OwnedFd>,
        op: Arc<Operation>,
    ) -> Result<u64, RuntimeError> {
        let data = self
            .lock()
            .archives
            .get(fingerprint)
            .cloned()
            .unwrap_or_default();
        op.set_progress(data.len() as u64, Some(data.len() as u64));
        std::fs::File::from(out)
            .write_all(&data)
            .map_err(|e| RuntimeError::Failed(e.to_string()))?;
        Ok(data.len() as u64)
    }

    async fn cleanup_images(&self, _known: HashSet<String>) -> Vec<String> {
        self.lock().log.push("cleanup images".into());
        Vec::new()
    }

    async fn remove_image(&self, fingerprint: &str) -> Result<(), RuntimeError> {
        self.lock().images.remove(fingerprint);
        Ok(())
    }

    async fn capture_snapshot(&self, container: &str, id: &str) -> Result<u64, RuntimeError> {
        let mut i = self.lock();
        let files = i
            .files
            .get(container)
            .cloned()
            .ok_or_else(|| RuntimeError::Failed(format!("{container} has no files")))?;
        i.log.push(format!("capture {container}"));
        i.snapshots.insert(
            (container.into(), id.into()),
            FakeSnapshot {
                files,
                committed: false,
                state: false,
            },
        );
        Ok(7)
    }

    async fn checkpoint(
        &self,
        rec: &ContainerRecord,
        slot: &StateSlot,
        op: Arc<Operation>,
    ) -> Result<CheckpointStats, RuntimeError> {
        let delay = self.lock().checkpoint_delay;
        tokio::time::sleep(delay).await;
        let mut i = self.lock();
        i.log.push(format!("checkpoint {} {slot:?}", rec.name));
        if !i.running.contains_key(&rec.name) {
            return Err(RuntimeError::NotRunning);
        }
        if let Some(msg) = i.fail_checkpoint.remove(&rec.name) {
            return Err(RuntimeError::Failed(msg));
        }
        op.set_progress(4096, Some(4096));
        let files = i.files.get(&rec.name).cloned().unwrap_or_default();
        match slot {
            StateSlot::Snapshot(id) => {
                i.snapshots.insert(
                    (rec.name.clone(), id.clone()),
                    FakeSnapshot {
                        files,
                        committed: false,
                        state: true,
                    },
                );
            }
            StateSlot::Stop => {
                i.stop_states.insert(rec.name.clone(), files);
                i.running.remove(&rec.name);
                for w in i.watchers.remove(&rec.name).unwrap_or_default() {
                    let _ = w.send(MonitorEvent::Exited {
                        reason: "checkpointed".into(),
                    });
                }
            }
        }
        Ok(CheckpointStats {
            state_bytes: 4096,
            volume_bytes: 0,
            frozen_us: 10,
        })
    }

    async fn commit_snapshot(&self, container: &str, id: &str) -> Result<(), RuntimeError> {
        match self
            .lock()
            .snapshots
            .get_mut(&(container.into(), id.into()))
        {
            Some(s) => {
                s.committed = true;
                Ok(())
            }
            None => Err(RuntimeError::Failed(format!(
                "nothing staged for {container}/{id}"
            ))),
        }
    }

    async fn remove_snapshot(&self, container: &str, id: &str) -> Result<(), RuntimeError> {
        self.lock().snapshots.remove(&(container.into(), id.into()));
        Ok(())
    }

    async fn sweep_orphan_snapshots(&self, containers: HashSet<String>) -> Vec<String> {
        let mut i = self.lock();
        i.log.push("sweep orphan snapshots".into());
        let before = i.snapshots.len();
        i.snapshots.retain(|(c, _), _| containers.contains(c));
        (0..before - i.snapshots.len())
            .map(|n| format!("orphan {n}"))
            .collect()
    }

    async fn sweep_snapshots(&self, container: &str, keep: Vec<String>) -> Vec<String> {
        let mut i = self.lock();
        let gone: Vec<String> = i
            .snapshots
            .keys()
            .filter(|(c, id)| c == container && !keep.contains(id))
            .map(|(_, id)| id.clone())
            .collect();
        for id in &gone {
            i.snapshots.remove(&(container.to_string(), id.clone()));
        }
        gone
    }

    async fn restore_files(
        &self,
        rec: &ContainerRecord,
        id: &str,
        _with_state: bool,
    ) -> Result<(), RuntimeError> {
        let mut i = self.lock();
        if i.running.contains_key(&rec.name) {
            return Err(RuntimeError::Failed(format!("{} still runs", rec.name)));
        }
        let files = i
            .snapshots
            .get(&(rec.name.clone(), id.to_string()))
            .filter(|s| s.committed)
            .map(|s| s.files.clone())
            .ok_or_else(|| RuntimeError::Failed(format!("no snapshot {id}")))?;
        i.log.push(format!("restore files {}", rec.name));
        i.files.insert(rec.name.clone(), files);
        Ok(())
    }

    async fn restore(
        &self,
        rec: &ContainerRecord,
        slot: &StateSlot,
        op: Arc<Operation>,
    ) -> Result<Running, RuntimeError> {
        let mut i = self.lock();
        i.log.push(format!("restore {} {slot:?}", rec.name));
        if let Some(msg) = i.fail_restore.remove(&rec.name) {
            return Err(RuntimeError::Failed(msg));
        }
        let has = match slot {
            StateSlot::Snapshot(id) => i
                .snapshots
                .get(&(rec.name.clone(), id.clone()))
                .is_some_and(|s| s.state),
            StateSlot::Stop => i.stop_states.contains_key(&rec.name),
        };
        if !has {
            return Err(RuntimeError::Failed("no saved state".into()));
        }
        op.set_progress(4096, Some(4096));
        Ok(Self::new_run(&mut i, &rec.name))
    }

    async fn has_stop_state(&self, container: &str) -> bool {
        self.lock().stop_states.contains_key(container)
    }

    async fn discard_stop_state(&self, container: &str, _unused: bool) -> Result<(), RuntimeError> {
        self.lock().stop_states.remove(container);
        Ok(())
    }

    fn criu_log(&self, _container: &str) -> Option<std::path::PathBuf> {
        None
    }

    fn surely_stopped(&self, container: &str) -> bool {
        !self.lock().running.contains_key(container)
    }
}
