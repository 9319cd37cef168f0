//! The real [`Runtime`]: containers run under per-container monitor processes (started ahead
//! of need as `berth-monitor (standby)`, then `berth-monitor <name>`), storage lives in the
//! pool, cgroups in the host's hierarchies.
//! Blocking runtime calls run on tokio's blocking pool; monitors are spoken to asynchronously
//! over their SOCK_SEQPACKET sockets.

use crate::operation::Operation;
use crate::runtime::{
    CheckpointStats, MonitorEvent, NewImage, Running, Runtime, RuntimeError, StateSlot,
    VolumeSource,
};
use crate::types::{ContainerRecord, ExecRequest};
use berth_runtime::cgroup::{ContainerCgroups, Layout, ProcessLimit};
use berth_runtime::idmap::IdMap;
use berth_runtime::image::store::Store as ImageStore;
use berth_runtime::image::template;
use berth_runtime::monitor::proto::{self, ExitInfo, Reply, Request, TtySize};
use berth_runtime::spec::{ContainerSpec, DEFAULT_CAP_DROP, RunFiles, default_init_env};
use berth_runtime::storage::Pool;
use berth_runtime::systemd::{self, ScopeError, UnitManager};
use berth_runtime::{fdpass, image, init};
use std::collections::{BTreeMap, HashSet};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

/// Where and how the host runtime works.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// State directory (`/var/lib/berth`).
    pub state_dir: PathBuf,
    /// Runtime directory (`/run/berth`).
    pub run_dir: PathBuf,
    /// The berth-monitor binary (run ahead of need, see `monitor::Standby`).
    pub exe: PathBuf,
    /// Name of the parent cgroup (`berth`).
    pub cgroup_parent: String,
    /// The static busybox used by the `busybox` recipe.
    pub busybox: PathBuf,
    /// The berth-helper binary (unpacks images as the containers' mapped root).
    pub helper: PathBuf,
    /// Never use idmapped mounts: shift new containers' roots with a one-time chown instead
    /// (for filesystems whose idmap support is broken in ways the probe cannot see).
    pub no_idmapped_mounts: bool,
    /// The host bridge containers' `eth0` attach to; None gives containers only `lo`.
    pub bridge: Option<String>,
    /// systemd's unit manager, on a host systemd runs: on a pure cgroup v2 tree each running
    /// container then gets a transient scope of its own (see `berth_runtime::systemd`).
    pub units: Option<Arc<dyn UnitManager>>,
}

/// The host runtime.
#[derive(Debug)]
pub struct HostRuntime {
    cfg: HostConfig,
    pool: Pool,
    layout: Layout,
    idmap: IdMap,
    idmap_supported: bool,
    network: Option<berth_runtime::net::BridgeNetwork>,
    /// The criu binary, if any.
    criu: Option<PathBuf>,
    /// Whether CRIU works here (its version, or why not), probed on first use: `criu check`
    /// takes longer than berthd takes to start.
    criu_probe: std::sync::OnceLock<Result<String, String>>,
    /// A monitor started ahead of the next start or restore, so that it skips the monitor's
    /// exec and start-up; refilled in the background after each use.
    standby: std::sync::Mutex<Option<berth_runtime::monitor::Standby>>,
    /// A refill is under way (concurrent starts start one spare, not one each).
    filling: std::sync::atomic::AtomicBool,
    /// CRIU processes an earlier berthd left dumping containers, found once (at start).
    orphan_criu: std::sync::OnceLock<Vec<berth_runtime::criu::recover::OrphanCriu>>,
    /// Done once `orphan_criu` is filled: the container actors starting together wait for one
    /// scan on one blocking thread instead of each taking a thread of its own.
    orphan_scan: tokio::sync::OnceCell<()>,
    /// Set when running containers go in systemd units (systemd manages the host's pure v2
    /// tree); None where berth keeps its own tree.
    units: Option<Arc<dyn UnitManager>>,
}

/// How long a start waits for an earlier run's scope of the same name to go (its monitor
/// exits right after the stop is answered, and systemd collects the scope once it is empty).
const SCOPE_GONE_WAIT: Duration = Duration::from_secs(5);

/// How long berthd, starting, waits for a CRIU that an earlier berthd left dumping a
/// container before killing it. Such a CRIU ends on its own at its next notification (it
/// then lets the processes go and unlocks the network), and a dump of a few GiB ends within
/// this (200 MB take 0.5–1.4 s here); killing it mid-dump leaves more to undo.
const ORPHAN_CRIU_WAIT: Duration = Duration::from_secs(20);

/// Maximum console log size before rotation.
const CONSOLE_LOG_MAX: u64 = 1 << 20;

impl HostRuntime {
    /// Detects the host (cgroup layout, id range, idmapped-mount support of the pool).
    pub fn new(cfg: HostConfig, pool: Pool) -> Result<HostRuntime, RuntimeError> {
        let layout = Layout::detect()?;
        if layout.hierarchies.is_empty() {
            return Err(RuntimeError::NotSupported(
                "no cgroup hierarchy is mounted".into(),
            ));
        }
        let idmap_supported = !cfg.no_idmapped_mounts && pool.supports_idmap();
        if !idmap_supported {
            tracing::warn!(pool = %pool.config().path.display(), "the pool refuses idmapped mounts; container roots will be shifted with chown");
        }
        // image archives are root's alone, also where an older berthd made their directory
        berth_runtime::image::store::ensure_dir(&cfg.state_dir.join("images"))?;
        let network = match &cfg.bridge {
            Some(b) => Some(berth_runtime::net::BridgeNetwork::setup(
                &cfg.state_dir.join("network"),
                b,
            )?),
            None => None,
        };
        // systemd's tree: containers go in scopes; elsewhere (hybrid or v1 hosts, no systemd)
        // berth's own tree as before
        let units = cfg
            .units
            .clone()
            .filter(|_| layout.version() == 2 && layout.unified().is_some() && systemd::booted());
        if units.is_some() {
            tracing::info!(
                "cgroups: each running container gets a systemd scope in {}",
                systemd::scope(&cfg.cgroup_parent, "x").slice
            );
        }
        Ok(HostRuntime {
            units,
            cfg,
            pool,
            layout,
            idmap: IdMap::host_default(),
            idmap_supported,
            network,
            criu: berth_runtime::criu::find(),
            criu_probe: std::sync::OnceLock::new(),
            standby: std::sync::Mutex::new(None),
            filling: std::sync::atomic::AtomicBool::new(false),
            orphan_criu: std::sync::OnceLock::new(),
            orphan_scan: tokio::sync::OnceCell::new(),
        })
    }

    /// The cgroup version (1 when any v1 controller is in use).
    pub fn cgroup_version(&self) -> u32 {
        self.layout.version()
    }

    /// The bridge network, if containers get one.
    pub fn network(&self) -> Option<&berth_runtime::net::BridgeNetwork> {
        self.network.as_ref()
    }

    /// The NICs of `rec`: `eth0` on the bridge, with its leased address and recorded MAC.
    fn nics(&self, rec: &ContainerRecord) -> Result<Vec<berth_runtime::net::Nic>, RuntimeError> {
        let Some(net) = &self.network else {
            return Ok(Vec::new());
        };
        let addr = net.lease(&rec.name)?;
        let mac = rec
            .config
            .get("volatile.eth0.hwaddr")
            .and_then(|m| berth_runtime::net::parse_mac(m))
            .unwrap_or_else(|| berth_runtime::net::stable_mac(&rec.name));
        Ok(vec![net.nic(&rec.name, addr, mac)])
    }

    /// The NICs of `rec` (see [`Self::nics`]), each port held to the NIC's own MAC and address
    /// on the bridge before the container can send on it.
    fn guarded_nics(
        &self,
        rec: &ContainerRecord,
    ) -> Result<Vec<berth_runtime::net::Nic>, RuntimeError> {
        let nics = self.nics(rec)?;
        if let Some(net) = &self.network {
            for nic in &nics {
                net.guard(nic)?;
            }
        }
        Ok(nics)
    }

    /// The files of a container or snapshot.
    fn volume_of(&self, name: &str, source: &VolumeSource) -> PathBuf {
        match source {
            VolumeSource::Snapshot { container, id } => self.pool.snapshot(container, id).volume(),
            VolumeSource::Container(c) => self.pool.container_volume(c),
            VolumeSource::Image => self.pool.container_volume(name),
        }
    }

    /// The CRIU images whose dump left links in `source`'s files (see
    /// `berth_runtime::criu::images`): a stateful snapshot's, or a statefully stopped
    /// container's saved state (usually absent, which names no links).
    fn dump_state_of(&self, name: &str, source: &VolumeSource) -> PathBuf {
        match source {
            VolumeSource::Snapshot { container, id } => self.pool.snapshot(container, id).state(),
            VolumeSource::Container(c) => self.pool.stop_state(c).state(),
            VolumeSource::Image => self.pool.stop_state(name).state(),
        }
    }

    /// Whether stateful operations work here: CRIU's version, or why not (probed once).
    pub fn stateful_support(&self) -> Result<String, String> {
        self.criu_probe
            .get_or_init(|| berth_runtime::criu::probe(self.criu.as_deref()))
            .clone()
    }

    /// Why the running container `name` cannot be checkpointed (empty when it can). An
    /// exec being set up (the monitor's child between its fork and its exec, in the
    /// container's cgroup but not yet in all its namespaces) is waited for, up to a second;
    /// execs that keep starting past that make the checkpoint `Busy`, to be tried again.
    fn preflight(&self, name: &str, init: i32) -> Result<Vec<String>, RuntimeError> {
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        loop {
            let (reasons, starting) = self.preflight_once(name, init);
            if starting == 0 || reasons.is_empty() {
                return Ok(reasons);
            }
            if std::time::Instant::now() >= deadline {
                return Err(RuntimeError::Busy(format!(
                    "{starting} exec(s) are starting in container {name}; try again"
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// [`Self::preflight`] once: the reasons, and how many execs are being set up.
    fn preflight_once(&self, name: &str, init: i32) -> (Vec<String>, usize) {
        let cg = self.cgroups(name);
        let dir = cg.freezer_dir().or_else(|| cg.dirs().next());
        let mut pids = dir
            .as_ref()
            .map(|d| berth_runtime::criu::preflight::cgroup_pids(d))
            .unwrap_or_default();
        pids.retain(|p| *p != init);
        pids.insert(0, init);
        let starting = pids
            .iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim_end() == berth_runtime::monitor::COMM)
            })
            .count();
        let mut reasons = berth_runtime::criu::preflight::check(init, &pids);
        if dir
            .as_ref()
            .is_some_and(|d| d.join("freezer.state").exists())
        {
            reasons.extend(berth_runtime::criu::preflight::stopped(&pids));
        }
        if self.pool.driver() == berth_runtime::storage::DriverKind::Btrfs {
            reasons.extend(
                pids.iter()
                    .filter_map(|p| berth_runtime::criu::preflight::symlink_watch(*p)),
            );
        }
        (reasons, starting)
    }

    /// CRIU dump of a running container into `slot` (see [`Runtime::checkpoint`]).
    fn checkpoint(
        &self,
        rec: &ContainerRecord,
        slot: &StateSlot,
        op: &Operation,
    ) -> Result<CheckpointStats, RuntimeError> {
        use berth_runtime::criu::checkpoint::{DumpPlan, dump};
        let version = self
            .stateful_support()
            .map_err(RuntimeError::NotSupported)?;
        let criu = self
            .criu
            .clone()
            .ok_or_else(|| RuntimeError::NotSupported("CRIU is not installed".into()))?;
        let name = &rec.name;
        let files = self.files(name);
        let conn = berth_runtime::monitor::client::Conn::connect(&files.socket())
            .map_err(|_| RuntimeError::NotRunning)?;
        let status = match conn.call(&Request::Status)? {
            Reply::Status(s) => s,
            other => {
                return Err(RuntimeError::Failed(format!(
                    "unexpected answer from the monitor: {other:?}"
                )));
            }
        };
        let t0 = std::time::Instant::now();
        // no exec may start between the preflight and the dump: the monitor holds new ones
        // back while this connection is open, and those under way are waited for
        hold_execs(&conn, name)?;
        let reasons = self.preflight(name, status.init_pid)?;
        let preflight_us = t0.elapsed().as_micros();
        if !reasons.is_empty() {
            return Err(RuntimeError::NotSupported(format!(
                "cannot checkpoint container {name}: {}",
                reasons.join("; ")
            )));
        }
        let stop = *slot == StateSlot::Stop;
        let (staging, images) = match slot {
            StateSlot::Snapshot(id) => {
                let st = self.pool.stage_snapshot(name, id)?;
                let images = st.state();
                (st, images)
            }
            StateSlot::Stop => {
                let st = berth_runtime::storage::snapshots::SnapshotPaths {
                    dir: self.pool.snapshots_dir(name).join(".staging-stop"),
                };
                self.pool.remove_snapshot_dir(&st.dir)?;
                let images = st.state();
                (st, images)
            }
        };
        std::fs::create_dir_all(&images)
            .map_err(|e| RuntimeError::Failed(format!("create {}: {e}", images.display())))?;
        let cg = self.cgroups(name);
        let memory_total = memory_usage(&cg);
        if stop {
            conn.call(&Request::Checkpointing { active: true })?;
        }
        let freezer = cg.freezer_dir();
        let cgroup2 = cg.unified_dir();
        let mut volume_bytes = 0u64;
        let mut frozen_us = 0u64;
        let (mut freeze_us, mut files_us) = (0u128, 0u128);
        let mut attempt = 0u64;
        let mut stalled = false;
        let res = loop {
            attempt += 1;
            let _ = std::fs::remove_dir_all(&images);
            if let Err(e) = std::fs::create_dir_all(&images) {
                break Err(berth_runtime::criu::Failure {
                    step: "prepare the images".into(),
                    message: e.to_string(),
                    log: None,
                });
            }
            let freeze_at = std::time::Instant::now();
            if let Some(dir) = &freezer
                && let Err(e) = freeze_settled(&cg, dir)
            {
                break Err(berth_runtime::criu::Failure {
                    step: "freeze the container".into(),
                    message: e.to_string(),
                    log: None,
                });
            }
            if stop {
                berth_runtime::crash::point("berthd.stop-stateful.frozen");
            } else {
                berth_runtime::crash::point("berthd.snapshot.frozen");
            }
            freeze_us = freeze_at.elapsed().as_micros();
            let frozen_at = std::time::Instant::now();
            let r = dump(
                &DumpPlan {
                    criu: &criu,
                    pid: status.init_pid,
                    images: &images,
                    work: files.dir(),
                    log: "criu-dump.log",
                    leave_running: !stop,
                    freeze_cgroup: freezer.as_deref(),
                    cgroup2: cgroup2.as_deref(),
                    console: Path::new(&status.console),
                    criu_version: &version,
                    watch: berth_runtime::criu::Watch::for_memory(memory_total.unwrap_or(0)),
                },
                &mut || {
                    if !stop {
                        let t = std::time::Instant::now();
                        let _ = self.pool.delete_volume(&staging.volume());
                        volume_bytes = self
                            .pool
                            .capture_volume(name, &staging)
                            .map_err(|e| e.to_string())?;
                        files_us = t.elapsed().as_micros();
                        // frozen, CRIU's dump written, the files captured
                        berth_runtime::crash::point("berthd.snapshot.dumped");
                    }
                    Ok(())
                },
                &|bytes| op.set_progress(bytes, memory_total),
            );
            let _ = cg.thaw();
            frozen_us += frozen_at.elapsed().as_micros() as u64;

            match r {
                // datagrams with credentials queued for a reader (journald's sockets, while
                // something logs) cannot be dumped: let the reader drain them and try again
                Err(f)
                    if attempt < DUMP_ATTEMPTS
                        && f.message.contains("Control messages in queue") =>
                {
                    tracing::info!(container = %name, attempt, "a socket queue held credentials; retrying the dump");
                    std::thread::sleep(Duration::from_millis(25 * attempt));
                }
                // a CRIU killed as hung let the processes go, but not its network lock; once
                // (the processes stood still for the whole stall, held by it), and not in a
                // stateful stop, whose CRIU may have killed the tree already
                Err(f) if !stop && !stalled && berth_runtime::criu::is_stall(&f.message) => {
                    stalled = true;
                    let removed =
                        berth_runtime::criu::recover::remove_network_locks(status.init_pid);
                    // the next dump writes its log afresh: this one tells where CRIU hung
                    let log = files.dir().join("criu-dump.log");
                    let _ = std::fs::rename(&log, log.with_extension("log.hung"));
                    tracing::warn!(container = %name, attempt, ?removed, "{}; retrying the dump", f.message);
                }
                // a CRIU killed for good (looping, or hung twice) left its network lock too
                Err(f) if !stop && berth_runtime::criu::was_killed(&f.message) => {
                    let removed =
                        berth_runtime::criu::recover::remove_network_locks(status.init_pid);
                    tracing::warn!(container = %name, attempt, ?removed, "{}", f.message);
                    break Err(f);
                }
                r => break r,
            }
        };
        // the dump is over (the tree runs on, or is gone): execs may start again
        let _ = conn.call(&Request::HoldExecs { hold: false });
        match res {
            Err(mut f) => {
                if stop {
                    let _ = conn.call(&Request::Checkpointing { active: false });
                    let _ = self.pool.remove_snapshot_dir(&staging.dir);
                }
                if f.message.contains("Control messages in queue") {
                    f.message.push_str(&format!(
                        " — {DUMP_ATTEMPTS} tries: a process keeps sending datagrams (logging?) faster than their reader (journald?) drains them, and CRIU cannot dump queued messages that carry credentials; try again when it is quieter"
                    ));
                }
                Err(RuntimeError::Failed(f.to_string()))
            }
            Ok(stats) => {
                if stop {
                    berth_runtime::crash::point("berthd.stop-stateful.dumped");
                    let dst = self.pool.stop_state(name);
                    self.pool.remove_snapshot_dir(&dst.dir)?;
                    std::fs::rename(&staging.dir, &dst.dir).map_err(|e| {
                        RuntimeError::Failed(format!(
                            "keep the saved state: rename {}: {e}",
                            staging.dir.display()
                        ))
                    })?;
                    // the dead tree's network namespace goes away in the background; its
                    // veths must not be in the way of a quick restore
                    self.remove_host_veths(rec);
                }
                tracing::info!(
                    container = %name,
                    "checkpointed in {} ms: preflight {} ms, freeze {} ms, criu {} ms (files {} ms), {} attempt(s), {} MiB of memory",
                    t0.elapsed().as_millis(),
                    preflight_us / 1000,
                    freeze_us / 1000,
                    stats.criu_us / 1000,
                    files_us / 1000,
                    attempt,
                    stats.memory_bytes >> 20
                );
                Ok(CheckpointStats {
                    state_bytes: stats.image_bytes,
                    volume_bytes,
                    frozen_us,
                })
            }
        }
    }

    /// The CRIU processes an earlier berthd left dumping containers, scanned for at the first
    /// call (blocking: it reads /proc).
    fn orphans(&self) -> &[berth_runtime::criu::recover::OrphanCriu] {
        self.orphan_criu.get_or_init(|| {
            berth_runtime::criu::recover::orphan_criu(&self.cfg.run_dir.join("containers"))
        })
    }

    /// What a checkpoint interrupted by the death of an earlier berthd left on `name` (see
    /// `berth_runtime::criu::recover` for what is left, measured), undone. Returns notes.
    fn recover_checkpoint(&self, name: &str) -> Result<Vec<String>, RuntimeError> {
        use berth_runtime::criu::recover::{self, Ended};
        let orphans = self.orphans();
        let mut notes = Vec::new();
        let mut interrupted = false;
        // 1. its CRIU ends first: it freezes the cgroup again on its way out
        for o in orphans.iter().filter(|o| o.container == name) {
            interrupted = true;
            let ended = recover::wait_or_kill(o.pid, ORPHAN_CRIU_WAIT)
                .map_err(|e| RuntimeError::Failed(format!("wait for CRIU (pid {}): {e}", o.pid)))?;
            notes.push(match ended {
                Ended::Exited => format!(
                    "waited for CRIU (pid {}), left dumping it by an earlier berthd, to end",
                    o.pid
                ),
                Ended::Killed => format!(
                    "killed CRIU (pid {}), left dumping it by an earlier berthd, after {} s",
                    o.pid,
                    ORPHAN_CRIU_WAIT.as_secs()
                ),
            });
        }
        if interrupted {
            for y in berth_runtime::criu::sweep_cgyards(self.files(name).dir()) {
                notes.push(format!("removed CRIU's cgroup yard {}", y.display()));
            }
        }
        // 2. the rest concerns a container that runs
        let Ok(conn) = berth_runtime::monitor::client::Conn::connect(&self.files(name).socket())
        else {
            return Ok(notes);
        };
        let init = match conn.call(&Request::Status)? {
            Reply::Status(s) => s.init_pid,
            other => {
                return Err(RuntimeError::Failed(format!(
                    "unexpected answer from the monitor: {other:?}"
                )));
            }
        };
        let cg = self.cgroups(name);
        if cg.is_frozen() {
            interrupted = true;
            cg.thaw()?;
            notes.push("thawed it: a checkpoint froze it and never finished".into());
        }
        if interrupted && init > 0 {
            match berth_runtime::criu::recover::remove_network_locks(init) {
                Ok(tables) if !tables.is_empty() => notes.push(format!(
                    "removed CRIU's network lock ({})",
                    tables.join(", ")
                )),
                Ok(_) => {}
                Err(e) => notes.push(format!("could not look for CRIU's network lock: {e}")),
            }
        }
        // a stateful stop tells the monitor a checkpoint runs (so CRIU's kill reads as one)
        conn.call(&Request::Checkpointing { active: false })?;
        Ok(notes)
    }

    /// Puts the container's host veths aside (down, renamed: see `Netlink::set_aside`), so
    /// that nothing crosses them and their names are free for the next run at once.
    fn remove_host_veths(&self, rec: &ContainerRecord) {
        if let (Some(_), Ok(mut nl)) = (&self.network, berth_runtime::net::Netlink::open()) {
            for nic in self.nics(rec).unwrap_or_default() {
                let _ = nl.set_aside(&nic.host_name);
            }
        }
    }

    /// The CRIU images of `slot`.
    fn state_dir(&self, container: &str, slot: &StateSlot) -> PathBuf {
        match slot {
            StateSlot::Snapshot(id) => self.pool.snapshot(container, id).state(),
            StateSlot::Stop => self.pool.stop_state(container).state(),
        }
    }

    /// CRIU restore of `slot` under a new monitor (see [`Runtime::restore`]).
    fn restore(
        &self,
        rec: &ContainerRecord,
        slot: &StateSlot,
        op: &Operation,
    ) -> Result<Running, RuntimeError> {
        self.stateful_support()
            .map_err(RuntimeError::NotSupported)?;
        let criu = self
            .criu
            .clone()
            .ok_or_else(|| RuntimeError::NotSupported("CRIU is not installed".into()))?;
        let images = self.state_dir(&rec.name, slot);
        let meta: berth_runtime::criu::CheckpointMeta =
            std::fs::read(images.join(berth_runtime::criu::META_FILE))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(|| {
                    RuntimeError::Failed(format!("no saved running state in {}", images.display()))
                })?;
        op.set_progress(0, Some(meta.memory_bytes));
        let mut spec = self.spec(rec)?;
        if !spec.rootfs.is_dir() {
            return Err(RuntimeError::Failed(format!(
                "the root filesystem {} is missing",
                spec.rootfs.display()
            )));
        }
        if spec.cgroups.unit_dir().is_none() {
            spec.cgroups.create()?;
        }
        let limits = crate::config::limits(&rec.config);
        self.remove_host_veths(rec);
        spec.restore = Some(berth_runtime::criu::restore::RestorePlan {
            criu,
            images,
            log: "criu-restore.log".into(),
        });
        let (init_pid, monitor_pid) = self.start_monitor(&spec, limits)?;
        op.set_progress(meta.memory_bytes, Some(meta.memory_bytes));
        Ok(Running {
            init_pid: init_pid as u32,
            monitor_pid: monitor_pid as u32,
        })
    }

    /// Starts the monitor for `spec` (on the standby when a live one waits), with the
    /// container's `limits` (memory, processes) applied to its groups, and waits for its
    /// report: (init pid, monitor pid). In berth's own tree the groups exist already; in a
    /// systemd unit they are made here, once the monitor is in the unit.
    fn start_monitor(
        &self,
        spec: &berth_runtime::spec::ContainerSpec,
        limits: (Option<u64>, ProcessLimit),
    ) -> Result<(i32, i32), RuntimeError> {
        let in_unit = spec.cgroups.unit_dir().is_some();
        if !in_unit {
            spec.cgroups.apply_limits(limits.0, limits.1)?;
        }
        let waiting = self
            .standby
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        // (a standby that is not usable any more is ended as it is dropped)
        let monitor = match waiting.and_then(|mut m| m.usable().then_some(m)) {
            Some(m) => m,
            None => self.new_monitor()?,
        };
        if in_unit {
            // (on failure the monitor is dropped and exits: a scope, empty, goes too)
            self.place_in_unit(&spec.name, &spec.cgroups, monitor.pid())?;
            spec.cgroups.apply_limits(limits.0, limits.1)?;
        }
        Ok(monitor.start(spec)?)
    }

    /// Puts the monitor `pid` (still waiting for its spec) in the container's unit: a new
    /// scope (systemd moves it there), or the running `berth@NAME.service` that started the
    /// container; then makes the unit's `monitor/` and `payload/` groups and moves the monitor
    /// (and a service's own processes) to `monitor/`.
    fn place_in_unit(
        &self,
        name: &str,
        cg: &ContainerCgroups,
        pid: u32,
    ) -> Result<(), RuntimeError> {
        let Some(units) = &self.units else {
            return Err(RuntimeError::Failed(
                "no systemd to place the container with".into(),
            ));
        };
        let scope = systemd::scope(&self.cfg.cgroup_parent, name);
        let t0 = std::time::Instant::now();
        if cg.placement
            != (berth_runtime::cgroup::Placement::Unit {
                cgroup: scope.cgroup.clone(),
            })
        {
            // berth@NAME.service: systemd made (and delegated) its group
            cg.create()?;
            cg.settle_monitor(pid as i32)?;
            tracing::info!(container = %name, "placed in berth@{name}.service in {} µs", t0.elapsed().as_micros());
            return Ok(());
        }
        let deadline = t0 + SCOPE_GONE_WAIT;
        let mut stopped_leftover = false;
        loop {
            match units.start_scope(&scope, pid) {
                Ok(()) => break,
                // an earlier run's scope: its monitor is on its way out, or systemd has not
                // collected it yet
                Err(ScopeError::Exists(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(ScopeError::Exists(_)) if !stopped_leftover => {
                    // nothing of the container runs (no monitor holds it), so what is left
                    // in the scope is debris of a dead run
                    if berth_runtime::monitor::client::Conn::connect(&self.files(name).socket())
                        .is_ok()
                    {
                        return Err(RuntimeError::Failed(format!(
                            "container {name} is already running (in {})",
                            scope.unit
                        )));
                    }
                    tracing::warn!(container = %name, "stopping {}, left over from an earlier run", scope.unit);
                    units
                        .stop_unit(&scope.unit)
                        .map_err(|e| RuntimeError::Failed(format!("stop {}: {e}", scope.unit)))?;
                    stopped_leftover = true;
                }
                Err(e) => {
                    return Err(RuntimeError::Failed(format!(
                        "give container {name} its systemd scope {}: {e}",
                        scope.unit
                    )));
                }
            }
        }
        let t_scope = t0.elapsed();
        cg.create()?;
        cg.settle_monitor(pid as i32)?;
        tracing::info!(container = %name, "placed in {} in {} µs (systemd {} µs)", scope.unit, t0.elapsed().as_micros(), t_scope.as_micros());
        Ok(())
    }

    /// Runs a new monitor, to wait in the monitors' cgroups (their files are the same for
    /// every container); where containers get systemd units, in berthd's own group until it
    /// is moved into the unit of the container it starts.
    fn new_monitor(&self) -> Result<berth_runtime::monitor::Standby, berth_runtime::Error> {
        let join = if self.units.is_some() {
            Vec::new()
        } else {
            self.cgroups("").monitor_procs()
        };
        berth_runtime::monitor::Standby::spawn(&self.cfg.exe, &join)
    }

    /// Starts a standby monitor unless one waits or is being started. Blocking (one fork and
    /// exec).
    pub fn refill_standby(&self) {
        use std::sync::atomic::Ordering;
        if self
            .standby
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
            || self.filling.swap(true, Ordering::AcqRel)
        {
            return;
        }
        match self.new_monitor() {
            Ok(m) => {
                let spare = self
                    .standby
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .replace(m);
                // (cannot be Some: only this refill fills the slot; dropped outside the lock)
                drop(spare);
            }
            Err(e) => tracing::warn!("could not start a standby monitor: {e}"),
        }
        self.filling.store(false, Ordering::Release);
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The groups of container `name`: where containers get systemd units, in its scope, or
    /// in the `berth@NAME.service` that started it (or in berth's tree while one started
    /// there by an older berthd still runs in it); else in berth's tree.
    fn cgroups(&self, name: &str) -> ContainerCgroups {
        let tree = self.tree_cgroups(name);
        if self.units.is_none() {
            return tree;
        }
        let scoped = tree
            .clone()
            .in_unit(&systemd::scope(&self.cfg.cgroup_parent, name).cgroup);
        if scoped.exists() {
            return scoped;
        }
        let service = tree.clone().in_unit(&systemd::service_cgroup(name));
        if service.exists() {
            return service;
        }
        if tree.exists() && !tree.pids().is_empty() {
            return tree;
        }
        scoped
    }

    /// The groups of container `name` in berth's own tree.
    fn tree_cgroups(&self, name: &str) -> ContainerCgroups {
        ContainerCgroups::new(self.layout.clone(), &self.cfg.cgroup_parent, name)
            .delegated_to(self.idmap.uid_base, self.idmap.gid_base)
    }

    /// Whether `berth@NAME.service` runs (its group holds a process: `berth supervise NAME`,
    /// in the group itself until a start moved it to `monitor/`).
    fn service_runs(&self, name: &str) -> bool {
        let Some(v2) = self.layout.unified() else {
            return false;
        };
        let dir = v2.mountpoint.join(systemd::service_cgroup(name));
        let busy = |d: &Path| {
            std::fs::read_to_string(d.join("cgroup.procs")).is_ok_and(|s| !s.trim().is_empty())
        };
        busy(&dir) || busy(&dir.join(berth_runtime::cgroup::MONITOR))
    }

    /// The groups a new run of container `name` gets: where containers get systemd units,
    /// those of `berth@NAME.service` while it runs (it is starting the container, or
    /// restarting it), else a new scope's.
    fn new_cgroups(&self, name: &str) -> ContainerCgroups {
        let tree = self.tree_cgroups(name);
        match self.units {
            Some(_) if self.service_runs(name) => tree.in_unit(&systemd::service_cgroup(name)),
            Some(_) => tree.in_unit(&systemd::scope(&self.cfg.cgroup_parent, name).cgroup),
            None => tree,
        }
    }

    fn files(&self, name: &str) -> RunFiles {
        RunFiles::new(&self.cfg.run_dir, name)
    }

    fn images(&self) -> ImageStore<'_> {
        ImageStore {
            dir: self.cfg.state_dir.join("images"),
            pool: &self.pool,
            helper: &self.cfg.helper,
            ids: self.idmap,
        }
    }

    /// Renders the templates of `rec`'s volume for `trigger`.
    fn apply_templates(&self, rec: &ContainerRecord, trigger: &str) -> Result<(), RuntimeError> {
        let ctx = template::Context {
            trigger: trigger.to_string(),
            name: rec.name.clone(),
            architecture: rec.architecture.clone(),
            ephemeral: rec.ephemeral,
            config: rec.config.clone(),
            ..Default::default()
        };
        let shifted = rec
            .config
            .get("volatile.rootfs.shifted")
            .is_some_and(|v| v == "true");
        let owner = if shifted {
            (self.idmap.uid_base, self.idmap.gid_base)
        } else {
            (0, 0)
        };
        berth_runtime::image::store::apply_templates(
            &self.pool.container_volume(&rec.name),
            &ctx,
            owner,
        )?;
        Ok(())
    }

    /// Imports open files into the store, reporting to `op`.
    fn import_files(
        &self,
        archive: std::fs::File,
        rootfs: Option<std::fs::File>,
        known: &HashSet<String>,
        op: &Operation,
    ) -> Result<NewImage, RuntimeError> {
        let imported = self.images().import(
            archive,
            rootfs,
            known,
            &mut |done, total| op.set_progress(done, total),
            &op.cancel,
        )?;
        // the files in place, no row yet
        berth_runtime::crash::point("berthd.image.stored");
        let meta = imported.metadata.unwrap_or_default();
        Ok(NewImage {
            fingerprint: imported.fingerprint,
            known: imported.known,
            split: imported.split,
            architecture: meta.architecture,
            properties: meta.properties,
            created_at_us: (meta.creation_date.max(0) as u64) * 1_000_000,
            size: imported.size,
            claim: imported
                .claim
                .map(crate::runtime::ImageClaim::new)
                .unwrap_or_default(),
        })
    }

    fn spec(&self, rec: &ContainerRecord) -> Result<ContainerSpec, RuntimeError> {
        let rootfs = self.pool.rootfs(&rec.name);
        let stop_signal = init::stop_signal(
            &rootfs,
            rec.config.get("boot.stop_signal").map(String::as_str),
        );
        let mut env = default_init_env();
        for (k, v) in &rec.config {
            if let Some(var) = k.strip_prefix("environment.") {
                env.retain(|(e, _)| e != var);
                env.push((var.to_string(), v.clone()));
            }
        }
        Ok(ContainerSpec {
            name: rec.name.clone(),
            rootfs,
            idmap: self.idmap,
            shifted: rec
                .config
                .get("volatile.rootfs.shifted")
                .is_some_and(|v| v == "true"),
            cgroups: self.new_cgroups(&rec.name),
            init: vec!["/sbin/init".into()],
            env,
            stop_signal,
            run_dir: self.files(&rec.name).dir().to_path_buf(),
            cap_drop: DEFAULT_CAP_DROP.iter().map(|s| s.to_string()).collect(),
            console_log_max: CONSOLE_LOG_MAX,
            nics: self.guarded_nics(rec)?,
            restore: None,
        })
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RuntimeError> + Send + 'static,
) -> Result<T, RuntimeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RuntimeError::Failed(format!("blocking task: {e}")))?
}

/// The HostRuntime as shared by the engine.
#[derive(Debug, Clone)]
pub struct SharedHost(pub Arc<HostRuntime>);

impl SharedHost {
    /// Refills the standby monitor off the caller's path, after a start or restore used it.
    fn refill_standby(&self) {
        let h = self.0.clone();
        tokio::task::spawn_blocking(move || h.refill_standby());
    }
}

#[ractor::async_trait]
impl Runtime for SharedHost {
    async fn provision(
        &self,
        rec: &ContainerRecord,
        source: &VolumeSource,
    ) -> Result<BTreeMap<String, String>, RuntimeError> {
        let (h, rec, source) = (self.0.clone(), rec.clone(), source.clone());
        blocking(move || {
            // (a unit's groups are made at each start)
            if h.units.is_none() {
                h.cgroups(&rec.name).create()?;
            }
            let trigger = match &source {
                VolumeSource::Image => {
                    h.pool.clone_image(&rec.image, &rec.name)?;
                    berth_runtime::crash::point("berthd.create.volume-cloned");
                    "create"
                }
                VolumeSource::Container(_) | VolumeSource::Snapshot { .. } => {
                    h.pool
                        .copy_volume(&h.volume_of(&rec.name, &source), &rec.name)?;
                    berth_runtime::crash::point("berthd.copy.volume-copied");
                    // a copy of the files alone: the links CRIU made for a dump go
                    berth_runtime::criu::images::remove_link_remaps(
                        &h.dump_state_of(&rec.name, &source),
                        &h.pool.rootfs(&rec.name),
                    );
                    "copy"
                }
            };
            h.pool
                .set_disk_limit(&rec.name, crate::config::disk_limit(&rec.config))?;
            let rootfs = h.pool.rootfs(&rec.name);
            if !rootfs.is_dir() {
                return Err(RuntimeError::InvalidImage(format!(
                    "image {} has no rootfs/",
                    rec.image
                )));
            }
            let mut extra = BTreeMap::from([
                (
                    "volatile.idmap.base".to_string(),
                    h.idmap.uid_base.to_string(),
                ),
                (
                    "volatile.idmap.count".to_string(),
                    h.idmap.count.to_string(),
                ),
            ]);
            // a copy of shifted files is shifted already
            let shifted = rec
                .config
                .get("volatile.rootfs.shifted")
                .is_some_and(|v| v == "true");
            if let Some(net) = &h.network {
                let addr = net.lease(&rec.name)?;
                extra.insert(
                    "volatile.eth0.hwaddr".into(),
                    berth_runtime::net::format_mac(&berth_runtime::net::random_mac()),
                );
                extra.insert(
                    "volatile.eth0.ipv4".into(),
                    format!("{addr}/{}", net.subnet.1),
                );
            }
            if shifted {
                extra.insert("volatile.rootfs.shifted".into(), "true".into());
            } else if !h.idmap_supported {
                berth_runtime::storage::shift_tree(&rootfs, &h.idmap)?;
                extra.insert("volatile.rootfs.shifted".into(), "true".into());
            }
            let mut with = rec.clone();
            with.config.extend(extra.clone());
            h.apply_templates(&with, trigger)?;
            if rec
                .config
                .get("migration.stateful")
                .and_then(|v| crate::config::parse_bool(v))
                != Some(false)
            {
                let owner = if extra.contains_key("volatile.rootfs.shifted") {
                    (h.idmap.uid_base, h.idmap.gid_base)
                } else {
                    (0, 0)
                };
                for what in berth_runtime::criu::prepare::apply(&rootfs, owner)? {
                    tracing::info!(container = %rec.name, "made checkpointable: {what}");
                }
            }
            Ok(extra)
        })
        .await
    }

    async fn deprovision(&self, name: &str) -> Result<(), RuntimeError> {
        if self.probe(name).await?.is_some() {
            return Err(RuntimeError::Failed(format!("container {name} still runs")));
        }
        let (h, name) = (self.0.clone(), name.to_string());
        blocking(move || {
            h.cgroups(&name).remove()?;
            if h.units.is_some() {
                // what an older berthd made in its own tree (nothing is made there now)
                h.tree_cgroups(&name).remove()?;
            }
            if let Some(net) = &h.network {
                // a start leases and guards again
                net.unguard(&name)?;
                net.release(&name)?;
            }
            // the one step that can refuse and leave the container as it was: its volume and
            // its snapshots out of their names, both or neither (see Pool::retire_container)
            let volume = h.pool.retire_container(&name)?;
            let snapshots = match h.pool.retire_snapshots(&name) {
                Ok(s) => s,
                Err(e) => {
                    if let Some(old) = &volume {
                        h.pool.unretire_container(&name, old)?;
                    }
                    return Err(e.into());
                }
            };
            // deleted now: what cannot go is debris the next start sweeps
            let mut left = Vec::new();
            if let Some(old) = volume
                && let Err(e) = h.pool.delete_retired(&old)
            {
                left.push(e.to_string());
            }
            if let Some(old) = snapshots
                && let Err(e) = h
                    .pool
                    .remove_snapshots(&old.file_name().unwrap_or_default().to_string_lossy())
            {
                left.push(e.to_string());
            }
            let dir = h.files(&name).dir().to_path_buf();
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    left.push(format!("remove {}: {e}", dir.display()))
                }
                _ => {}
            }
            for e in left {
                tracing::warn!(container = %name, "deleted, but {e}");
            }
            Ok(())
        })
        .await
    }

    async fn set_disk_limit(&self, name: &str, bytes: Option<u64>) -> Result<(), RuntimeError> {
        let (h, name) = (self.0.clone(), name.to_string());
        blocking(move || Ok(h.pool.set_disk_limit(&name, bytes)?)).await
    }

    async fn start(&self, rec: &ContainerRecord) -> Result<Running, RuntimeError> {
        let (h, rec) = (self.0.clone(), rec.clone());
        let started = blocking(move || {
            let spec = h.spec(&rec)?;
            if !spec.rootfs.is_dir() {
                return Err(RuntimeError::Failed(format!(
                    "the root filesystem {} is missing",
                    spec.rootfs.display()
                )));
            }
            // recreates groups a reboot wiped (made at create, delegated then); a unit's are
            // made once the monitor is in it
            if spec.cgroups.unit_dir().is_none() && !spec.cgroups.exists() {
                spec.cgroups.create()?;
            }
            // (again: a restored snapshot's volume is a new subvolume)
            h.pool
                .set_disk_limit(&rec.name, crate::config::disk_limit(&rec.config))?;
            h.apply_templates(&rec, "start")?;
            let (init_pid, monitor_pid) =
                h.start_monitor(&spec, crate::config::limits(&rec.config))?;
            Ok(Running {
                init_pid: init_pid as u32,
                monitor_pid: monitor_pid as u32,
            })
        })
        .await;
        self.refill_standby();
        started
    }

    async fn stop(
        &self,
        rec: &ContainerRecord,
        force: bool,
        timeout: Duration,
    ) -> Result<String, RuntimeError> {
        let signal = init::stop_signal(
            &self.0.pool.rootfs(&rec.name),
            rec.config.get("boot.stop_signal").map(String::as_str),
        );
        let conn = MonitorConn::connect(&self.0.files(&rec.name).socket())?;
        let timeout_ms = if force {
            0
        } else {
            timeout.as_millis().max(1) as u64
        };
        conn.send(&Request::Stop { signal, timeout_ms }, &[])
            .await?;
        loop {
            match conn.recv().await? {
                Some(Reply::Exited(info)) => return Ok(describe(&info)),
                Some(Reply::Error { message }) => return Err(RuntimeError::Failed(message)),
                Some(_) => continue,
                // the monitor exits right after answering; EOF without an answer means it died
                None => return Err(RuntimeError::NotRunning),
            }
        }
    }

    async fn disconnect(&self, rec: &ContainerRecord) -> Result<(), RuntimeError> {
        let (h, rec) = (self.0.clone(), rec.clone());
        blocking(move || {
            h.remove_host_veths(&rec);
            Ok(())
        })
        .await
    }

    async fn probe(&self, name: &str) -> Result<Option<Running>, RuntimeError> {
        let conn = match MonitorConn::connect(&self.0.files(name).socket()) {
            Ok(c) => c,
            Err(RuntimeError::NotRunning) => return Ok(None),
            Err(e) => return Err(e),
        };
        conn.send(&Request::Status, &[]).await?;
        match conn.recv().await? {
            Some(Reply::Status(s)) if !s.stopping || s.init_pid > 0 => Ok(Some(Running {
                init_pid: s.init_pid as u32,
                monitor_pid: s.monitor_pid as u32,
            })),
            _ => Ok(None),
        }
    }

    async fn recover_checkpoint(&self, name: &str) -> Result<Vec<String>, RuntimeError> {
        let h = self.0.clone();
        self.0
            .orphan_scan
            .get_or_init(|| async move {
                let _ = tokio::task::spawn_blocking(move || {
                    h.orphans();
                })
                .await;
            })
            .await;
        // the usual case, a container that does not run and no CRIU of an earlier berthd
        // dumping it: nothing to recover, and no blocking thread for it (a daemon starting
        // with 1,000 containers took dozens at once)
        if let Some(orphans) = self.0.orphan_criu.get()
            && !orphans.iter().any(|o| o.container == name)
            && !self.0.files(name).socket().exists()
        {
            return Ok(Vec::new());
        }
        let (h, name) = (self.0.clone(), name.to_string());
        blocking(move || h.recover_checkpoint(&name)).await
    }

    async fn watch(
        &self,
        name: &str,
    ) -> Result<mpsc::UnboundedReceiver<MonitorEvent>, RuntimeError> {
        let conn = MonitorConn::connect(&self.0.files(name).socket())?;
        conn.send(&Request::Watch, &[]).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let ev = match conn.recv().await {
                    Ok(Some(Reply::Restarted { init_pid })) => MonitorEvent::Restarted {
                        init_pid: init_pid as u32,
                    },
                    Ok(Some(Reply::Exited(info))) => {
                        let _ = tx.send(MonitorEvent::Exited {
                            reason: describe(&info),
                        });
                        return;
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => {
                        let _ = tx.send(MonitorEvent::Lost);
                        return;
                    }
                };
                if tx.send(ev).is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }

    async fn exec(&self, name: &str, req: ExecRequest) -> Result<i32, RuntimeError> {
        let conn = MonitorConn::connect(&self.0.files(name).socket())?;
        let [a, b, c] = req.stdio;
        let null = || -> Result<OwnedFd, RuntimeError> {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map(OwnedFd::from)
                .map_err(|e| RuntimeError::Failed(format!("open /dev/null: {e}")))
        };
        let fds = [
            a.map_or_else(null, Ok)?,
            b.map_or_else(null, Ok)?,
            c.map_or_else(null, Ok)?,
        ];
        let wire = proto::ExecRequest {
            argv: req.argv,
            env: req.env,
            cwd: req.cwd,
            uid: req.uid,
            gid: req.gid,
            tty: req.tty.map(|(rows, cols)| TtySize { rows, cols }),
        };
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        conn.send(&Request::Exec(wire), &raw).await?;
        drop(fds);
        loop {
            match conn.recv().await? {
                Some(Reply::ExecStarted { .. }) => continue,
                Some(Reply::ExecExited { code }) => return Ok(code),
                // a stop raced the exec: as if it had come after
                Some(Reply::Stopping) => return Err(RuntimeError::NotRunning),
                Some(Reply::ExecsHeld) => {
                    return Err(RuntimeError::Busy(format!(
                        "container {name} is being checkpointed; run the command again when that is done"
                    )));
                }
                Some(Reply::Error { message }) => return Err(RuntimeError::Invalid(message)),
                Some(_) => continue,
                None => return Err(RuntimeError::NotRunning),
            }
        }
    }

    async fn build_image(
        &self,
        recipe: &str,
        known: HashSet<String>,
        op: Arc<Operation>,
    ) -> Result<NewImage, RuntimeError> {
        let h = self.0.clone();
        match recipe {
            "busybox" => {
                blocking(move || {
                    image::check_static(&h.cfg.busybox)?;
                    let images = h.cfg.state_dir.join("images");
                    image::store::ensure_dir(&images)?;
                    let tmp = images.join(format!(
                        ".build-{}-{}.tar",
                        std::process::id(),
                        crate::types::now_us()
                    ));
                    let res = image::build_busybox(&h.cfg.busybox, &tmp)
                        .map_err(RuntimeError::from)
                        .and_then(|_| {
                            berth_runtime::crash::point("berthd.build.packed");
                            let f = std::fs::File::open(&tmp).map_err(|e| {
                                RuntimeError::Failed(format!("open {}: {e}", tmp.display()))
                            })?;
                            h.import_files(f, None, &known, &op)
                        });
                    let _ = std::fs::remove_file(&tmp);
                    res
                })
                .await
            }
            "debian/bookworm" => {
                blocking(move || {
                    let images = h.cfg.state_dir.join("images");
                    let dir = image::debian::build_dir(&images);
                    let archive = dir.with_extension("tar.zst");
                    let res = (|| -> Result<NewImage, RuntimeError> {
                        // building is the first half of the progress, storing the second
                        let mirror = image::debian::host_mirror();
                        let meta = image::debian::build(
                            &dir,
                            &mirror,
                            &mut |p, t| op.set_progress(p, Some(2 * t)),
                            &op.cancel,
                        )?;
                        image::publish::publish(&dir, &meta, None, &[], &archive, &op.cancel)?;
                        image::debian::remove_build_dir(&dir)?;
                        let f = std::fs::File::open(&archive).map_err(|e| {
                            RuntimeError::Failed(format!("open {}: {e}", archive.display()))
                        })?;
                        h.import_files(f, None, &known, &op)
                    })();
                    // debootstrap, killed by a cancel, leaves /proc and friends mounted in it
                    if let Err(e) = image::debian::remove_build_dir(&dir) {
                        tracing::warn!("could not remove the build directory: {e}");
                    }
                    let _ = std::fs::remove_file(&archive);
                    res
                })
                .await
            }
            other => Err(RuntimeError::Invalid(format!(
                "unknown image recipe {other:?}; built-in recipes: busybox, debian/bookworm"
            ))),
        }
    }

    async fn import_image(
        &self,
        archive: OwnedFd,
        rootfs: Option<OwnedFd>,
        known: HashSet<String>,
        op: Arc<Operation>,
    ) -> Result<NewImage, RuntimeError> {
        let h = self.0.clone();
        blocking(move || {
            h.import_files(
                std::fs::File::from(archive),
                rootfs.map(std::fs::File::from),
                &known,
                &op,
            )
        })
        .await
    }

    async fn publish(
        &self,
        rec: &ContainerRecord,
        source: &VolumeSource,
        properties: BTreeMap<String, String>,
        known: HashSet<String>,
        op: Arc<Operation>,
    ) -> Result<NewImage, RuntimeError> {
        let (h, rec, source) = (self.0.clone(), rec.clone(), source.clone());
        blocking(move || {
            let volume = h.volume_of(&rec.name, &source);
            // the source's own metadata (its image's), with fresh dates and the new properties
            let mut meta = std::fs::read(volume.join("metadata.yaml"))
                .ok()
                .and_then(|t| image::Metadata::parse(&t).ok())
                .unwrap_or_default();
            meta.architecture = if rec.architecture.is_empty() {
                image::host_architecture().to_string()
            } else {
                rec.architecture.clone()
            };
            meta.creation_date = (crate::types::now_us() / 1_000_000) as i64;
            meta.expiry_date = 0;
            for (k, v) in rec
                .config
                .iter()
                .filter_map(|(k, v)| k.strip_prefix("image.").map(|k| (k, v)))
            {
                meta.properties
                    .entry(k.to_string())
                    .or_insert_with(|| v.clone());
            }
            meta.properties
                .entry("description".into())
                .or_insert_with(|| format!("published from container {}", rec.name));
            meta.properties.extend(properties);
            let shifted = rec
                .config
                .get("volatile.rootfs.shifted")
                .is_some_and(|v| v == "true")
                .then_some(h.idmap);
            let images = h.cfg.state_dir.join("images");
            std::fs::create_dir_all(&images)
                .map_err(|e| RuntimeError::Failed(format!("create {}: {e}", images.display())))?;
            let tmp = images.join(format!(
                ".build-{}-{}.tar.zst",
                std::process::id(),
                crate::types::now_us()
            ));
            let skip =
                berth_runtime::criu::images::link_remaps(&h.dump_state_of(&rec.name, &source));
            let res = image::publish::publish(&volume, &meta, shifted, &skip, &tmp, &op.cancel)
                .map_err(RuntimeError::from)
                .and_then(|_| {
                    berth_runtime::crash::point("berthd.publish.packed");
                    let f = std::fs::File::open(&tmp).map_err(|e| {
                        RuntimeError::Failed(format!("open {}: {e}", tmp.display()))
                    })?;
                    h.import_files(f, None, &known, &op)
                });
            let _ = std::fs::remove_file(&tmp);
            res
        })
        .await
    }

    async fn export_image(
        &self,
        fingerprint: &str,
        out: OwnedFd,
        rootfs: Option<OwnedFd>,
        op: Arc<Operation>,
    ) -> Result<u64, RuntimeError> {
        let (h, fp) = (self.0.clone(), fingerprint.to_string());
        blocking(move || {
            let mut out = std::fs::File::from(out);
            let mut r = rootfs.map(std::fs::File::from);
            Ok(h.images().export(
                &fp,
                &mut out,
                r.as_mut(),
                &mut |d, t| op.set_progress(d, t),
                &op.cancel,
            )?)
        })
        .await
    }

    async fn cleanup_images(&self, known: HashSet<String>) -> Vec<String> {
        let h = self.0.clone();
        tokio::task::spawn_blocking(move || h.images().remove_orphans(&known))
            .await
            .unwrap_or_default()
    }

    async fn remove_image(&self, fingerprint: &str) -> Result<(), RuntimeError> {
        let (h, fp) = (self.0.clone(), fingerprint.to_string());
        blocking(move || Ok(h.images().remove(&fp)?)).await
    }

    async fn capture_snapshot(&self, container: &str, id: &str) -> Result<u64, RuntimeError> {
        let (h, c, id) = (self.0.clone(), container.to_string(), id.to_string());
        blocking(move || {
            let staging = h.pool.stage_snapshot(&c, &id)?;
            let bytes = h.pool.capture_volume(&c, &staging)?;
            berth_runtime::crash::point("berthd.snapshot.captured");
            Ok(bytes)
        })
        .await
    }

    async fn checkpoint(
        &self,
        rec: &ContainerRecord,
        slot: &StateSlot,
        op: Arc<Operation>,
    ) -> Result<CheckpointStats, RuntimeError> {
        let (h, rec, slot) = (self.0.clone(), rec.clone(), slot.clone());
        blocking(move || h.checkpoint(&rec, &slot, &op)).await
    }

    async fn commit_snapshot(&self, container: &str, id: &str) -> Result<(), RuntimeError> {
        let (h, c, id) = (self.0.clone(), container.to_string(), id.to_string());
        blocking(move || {
            let staged = h.pool.staged_snapshot(&c, &id);
            h.pool.commit_snapshot(&c, &id, &staged)?;
            Ok(())
        })
        .await
    }

    async fn remove_snapshot(&self, container: &str, id: &str) -> Result<(), RuntimeError> {
        let (h, c, id) = (self.0.clone(), container.to_string(), id.to_string());
        blocking(move || {
            h.pool
                .remove_snapshot_dir(&h.pool.staged_snapshot(&c, &id).dir)?;
            h.pool.remove_snapshot_dir(&h.pool.snapshot(&c, &id).dir)?;
            Ok(())
        })
        .await
    }

    async fn sweep_orphan_snapshots(&self, containers: HashSet<String>) -> Vec<String> {
        let h = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let mut notes: Vec<String> = h
                .pool
                .sweep_volume_debris()
                .into_iter()
                .map(|d| format!("removed {d}, left by an interrupted restore or delete"))
                .collect();
            for c in h.pool.containers_with_snapshots() {
                // a volume without a record is recoverable (`berth admin recover`), and so
                // are its snapshots
                if !containers.contains(&c) && !h.pool.container_volume(&c).exists() {
                    match h.pool.remove_snapshots(&c) {
                        Ok(()) => {
                            notes.push(format!("removed the snapshots of deleted container {c}"))
                        }
                        Err(e) => notes.push(format!(
                            "remove the snapshots of deleted container {c}: {e}"
                        )),
                    }
                }
            }
            notes
        })
        .await
        .unwrap_or_default()
    }

    async fn sweep_snapshots(&self, container: &str, keep: Vec<String>) -> Vec<String> {
        // most containers have no snapshot directory: one stat here, rather than a blocking
        // thread each (a daemon starting with 1,000 containers made dozens of them at once)
        if keep.is_empty() && !self.0.pool.snapshots_dir(container).exists() {
            return Vec::new();
        }
        let (h, c) = (self.0.clone(), container.to_string());
        tokio::task::spawn_blocking(move || h.pool.sweep_snapshots(&c, &keep))
            .await
            .unwrap_or_default()
    }

    async fn restore_files(
        &self,
        rec: &ContainerRecord,
        id: &str,
        with_state: bool,
    ) -> Result<(), RuntimeError> {
        let (h, c, id) = (self.0.clone(), rec.name.clone(), id.to_string());
        let limit = crate::config::disk_limit(&rec.config);
        blocking(move || {
            let snap = h.pool.snapshot(&c, &id);
            h.pool.replace_volume(&c, &snap.volume())?;
            berth_runtime::crash::point("berthd.restore.volume-replaced");
            // the volume is a new subvolume: the container's limit holds for it too
            h.pool.set_disk_limit(&c, limit)?;
            if !with_state {
                // the files alone: the links CRIU made for a stateful snapshot's dump go
                berth_runtime::criu::images::remove_link_remaps(&snap.state(), &h.pool.rootfs(&c));
            }
            Ok(())
        })
        .await
    }

    async fn restore(
        &self,
        rec: &ContainerRecord,
        slot: &StateSlot,
        op: Arc<Operation>,
    ) -> Result<Running, RuntimeError> {
        let (h, rec, slot) = (self.0.clone(), rec.clone(), slot.clone());
        let restored = blocking(move || h.restore(&rec, &slot, &op)).await;
        self.refill_standby();
        restored
    }

    async fn check_state(&self, container: &str, slot: &StateSlot) -> Result<(), RuntimeError> {
        let images = self.0.state_dir(container, slot);
        blocking(move || {
            berth_runtime::criu::images::check_pages(&images).map_err(|e| {
                RuntimeError::Failed(format!(
                    "the saved running state in {} is damaged: {e}",
                    images.display()
                ))
            })
        })
        .await
    }

    async fn has_stop_state(&self, container: &str) -> bool {
        self.0.pool.stop_state(container).has_state()
    }

    async fn discard_stop_state(&self, container: &str, unused: bool) -> Result<(), RuntimeError> {
        let (h, c) = (self.0.clone(), container.to_string());
        blocking(move || {
            let saved = h.pool.stop_state(&c);
            if unused {
                berth_runtime::criu::images::remove_link_remaps(&saved.state(), &h.pool.rootfs(&c));
            }
            Ok(h.pool.remove_snapshot_dir(&saved.dir)?)
        })
        .await
    }

    fn surely_stopped(&self, container: &str) -> bool {
        // a monitor removes its socket once init has exited (and the container is stopped);
        // one killed leaves it, and counts as maybe running
        !self.0.files(container).socket().exists()
    }

    fn criu_log(&self, container: &str) -> Option<PathBuf> {
        let dir = self.0.files(container).dir().to_path_buf();
        ["criu-restore.log", "criu-dump.log"]
            .iter()
            .map(|f| dir.join(f))
            .filter_map(|p| {
                std::fs::metadata(&p)
                    .and_then(|m| m.modified())
                    .ok()
                    .map(|t| (t, p))
            })
            .max()
            .map(|(_, p)| p)
    }
}

/// How long a checkpoint waits for the execs under way in a container to end, once the
/// monitor holds new ones back; past it the checkpoint is `Busy`, to be tried again.
const EXEC_DRAIN: Duration = Duration::from_secs(2);

/// Asks the monitor on `conn` to hold new execs back for as long as `conn` is open, and waits
/// (up to [`EXEC_DRAIN`]) for the execs under way to end, those still being set up included:
/// a process half way into the container's cgroup and namespaces is caught by the freezer or
/// by CRIU's walk of the tree. A monitor older than the request answers an error: then the
/// preflight's wait for execs being set up is all there is.
fn hold_execs(conn: &berth_runtime::monitor::client::Conn, name: &str) -> Result<(), RuntimeError> {
    let deadline = std::time::Instant::now() + EXEC_DRAIN;
    loop {
        match conn.call(&Request::HoldExecs { hold: true })? {
            Reply::Execs { running: 0 } => return Ok(()),
            Reply::Execs { running } => {
                if std::time::Instant::now() >= deadline {
                    let _ = conn.call(&Request::HoldExecs { hold: false });
                    return Err(RuntimeError::Busy(format!(
                        "{running} exec(s) are running in container {name}; try again when they end"
                    )));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Reply::Error { message } => {
                tracing::debug!(container = %name, "the monitor cannot hold execs back ({message}); an older monitor");
                return Ok(());
            }
            other => {
                return Err(RuntimeError::Failed(format!(
                    "unexpected answer from the monitor: {other:?}"
                )));
            }
        }
    }
}

/// Freezes the container at a moment CRIU can seize every process: not while one waits
/// for a vfork'd child the freezer stopped before it exec'd (a shell loop running commands).
fn freeze_settled(cg: &ContainerCgroups, dir: &Path) -> Result<(), RuntimeError> {
    for _ in 0..200 {
        cg.freeze(Duration::from_secs(10))?;
        let pids = berth_runtime::criu::preflight::cgroup_pids(dir);
        if berth_runtime::criu::preflight::vfork_waiters(&pids).is_empty() {
            return Ok(());
        }
        cg.thaw()?;
        std::thread::sleep(Duration::from_millis(1));
    }
    Err(RuntimeError::Failed(
        "the container never froze outside a vfork (a process keeps spawning commands); try again"
            .into(),
    ))
}

/// Dumps tried before a transient failure (a socket queue holding credentials) is final.
const DUMP_ATTEMPTS: u64 = 5;

/// Memory the container uses now (the expected size of a dump), if the host says.
fn memory_usage(cg: &ContainerCgroups) -> Option<u64> {
    let dir = cg.dir_for("memory")?;
    ["memory.usage_in_bytes", "memory.current"]
        .iter()
        .find_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .and_then(|s| s.trim().parse().ok())
}

/// "poweroff", "killed", "exited with status 3", "crashed (signal 11)".
fn describe(info: &ExitInfo) -> String {
    match (info.reason, info.code, info.signal) {
        (proto::ExitReason::Exited, Some(c), _) => format!("exited with status {c}"),
        (proto::ExitReason::Crashed, _, Some(s)) => format!("crashed (signal {s})"),
        (r, _, _) => format!("{r:?}").to_lowercase(),
    }
}

/// An async connection to a monitor socket.
struct MonitorConn {
    fd: AsyncFd<OwnedFd>,
}

impl MonitorConn {
    /// Connects; `NotRunning` when nobody listens.
    fn connect(path: &Path) -> Result<MonitorConn, RuntimeError> {
        let c = match berth_runtime::monitor::client::Conn::connect(path) {
            Ok(c) => c,
            Err(e)
                if matches!(
                    e.errno(),
                    Some(libc::ENOENT) | Some(libc::ECONNREFUSED) | Some(libc::ENOTDIR)
                ) =>
            {
                return Err(RuntimeError::NotRunning);
            }
            Err(e) => return Err(e.into()),
        };
        // SAFETY: we take over the connected socket's fd from the blocking client.
        let fd = unsafe { OwnedFd::from_raw_fd(libc::dup(c.raw_fd())) };
        drop(c);
        if fd.as_raw_fd() < 0 {
            return Err(RuntimeError::Failed(format!(
                "dup: {}",
                io::Error::last_os_error()
            )));
        }
        // SAFETY: fcntl on our fd.
        unsafe {
            let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
        }
        // SAFETY: an OwnedFd is a valid open fd that stays the same until the AsyncFd drops it.
        let fd = unsafe { AsyncFd::register(fd) }
            .map_err(|e| RuntimeError::Failed(format!("register monitor socket: {e}")))?;
        Ok(MonitorConn { fd })
    }

    async fn send(&self, req: &Request, fds: &[RawFd]) -> Result<(), RuntimeError> {
        let data = proto::encode(req);
        if data.len() > proto::MAX_MESSAGE {
            // only an exec can be this big: its arguments and environment
            return Err(RuntimeError::Invalid(format!(
                "the command's arguments and environment take {} KiB; at most {} KiB fit (pass large data on stdin)",
                data.len().div_ceil(1024),
                proto::MAX_MESSAGE / 1024 - 1
            )));
        }
        loop {
            let mut guard = self.fd.writable().await.map_err(io_err)?;
            match guard.try_io(|inner| fdpass::send(inner.get_ref().as_fd(), &data, fds)) {
                Ok(r) => return r.map_err(io_err),
                Err(_would_block) => continue,
            }
        }
    }

    /// The next reply, or None at end of stream.
    async fn recv(&self) -> Result<Option<Reply>, RuntimeError> {
        let mut buf = vec![0u8; proto::MAX_MESSAGE];
        loop {
            let mut guard = self.fd.readable().await.map_err(io_err)?;
            match guard.try_io(|inner| fdpass::recv(inner.get_ref().as_fd(), &mut buf)) {
                Ok(Ok((0, _))) => return Ok(None),
                Ok(Ok((n, _fds))) => {
                    return proto::decode(&buf[..n])
                        .map(Some)
                        .map_err(|e| RuntimeError::Failed(e.to_string()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(None),
                Ok(Err(e)) => return Err(io_err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

fn io_err(e: io::Error) -> RuntimeError {
    if matches!(
        e.raw_os_error(),
        Some(libc::EPIPE) | Some(libc::ECONNRESET) | Some(libc::ENOTCONN)
    ) {
        RuntimeError::NotRunning
    } else {
        RuntimeError::Failed(format!("monitor connection: {e}"))
    }
}
