//! Control groups for containers and their monitors, on cgroup v1 (including the hybrid layout
//! with a controller-less v2 tree) and on pure cgroup v2.
//!
//! Each container gets `<parent>/<name>` in **every** hierarchy (CRIU and exec'd processes need
//! the container confined in all of them); monitors share `<parent>.monitor` so that stopping
//! berthd's own unit never takes them (or their containers) down. Directories are created when a
//! container is created, so starting it only writes a pid to each `cgroup.procs`.
//!
//! On a pure cgroup v2 host managed by systemd a container is instead placed in a unit systemd
//! delegated to berth ([`Placement::Unit`]: its transient scope, or the `berth@NAME.service`
//! that started it): the monitor in `<unit>/monitor`, the container in `<unit>/payload` (v2
//! allows no processes in a group whose controllers are handed to children). berth writes
//! nothing outside that unit's group there.

use crate::error::{Context, Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hierarchy {
    /// Where the hierarchy is mounted on the host.
    pub mountpoint: PathBuf,
    /// `None` for the v2 (unified) hierarchy; for v1 the mount options that name it, e.g.
    /// `"memory"`, `"cpu,cpuacct"` or `"name=systemd"`.
    pub v1_options: Option<String>,
}

impl Hierarchy {
    /// Whether this is the cgroup v2 tree.
    pub fn is_v2(&self) -> bool {
        self.v1_options.is_none()
    }

    /// Whether this v1 hierarchy carries `controller`.
    pub fn has_controller(&self, controller: &str) -> bool {
        self.v1_options
            .as_deref()
            .is_some_and(|o| o.split(',').any(|c| c == controller))
    }

    /// The name of the directory a container sees this hierarchy under in `/sys/fs/cgroup`.
    pub fn container_dir_name(&self) -> String {
        match &self.v1_options {
            None => "unified".to_string(),
            Some(o) => o.strip_prefix("name=").unwrap_or(o).to_string(),
        }
    }
}

/// The host's cgroup layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// All hierarchies; on a pure v2 host exactly one.
    pub hierarchies: Vec<Hierarchy>,
}

/// v1 controller options berth knows and mounts inside containers.
const KNOWN_V1: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "blkio",
    "perf_event",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

impl Layout {
    /// Reads the layout from `/proc/self/mountinfo`.
    pub fn detect() -> Result<Layout> {
        let mi =
            std::fs::read_to_string("/proc/self/mountinfo").step(|| "read /proc/self/mountinfo")?;
        Ok(Self::parse(&mi))
    }

    /// Parses mountinfo text (separate for tests).
    ///
    /// A hierarchy can be mounted more than once: CRIU mounts each one again under a
    /// `.criu.cgyard.*` directory for the length of a dump or restore, and with `/` shared
    /// (every systemd host) those mounts show in every namespace. One mount stands for each
    /// hierarchy: the one under `/sys/fs/cgroup` showing its root, else the first. Otherwise a
    /// berthd starting beside a restore could take the yard for the hierarchy, and fail when
    /// CRIU unmounts it.
    pub fn parse(mountinfo: &str) -> Layout {
        // (hierarchy, preference) in the order the hierarchies first appear
        let mut found: Vec<(Hierarchy, u8)> = Vec::new();
        for m in cgroup_mounts(mountinfo) {
            let v1_options = if m.fstype == "cgroup2" {
                None
            } else {
                let opts: Vec<&str> = m
                    .super_options
                    .split(',')
                    .filter(|o| KNOWN_V1.contains(o) || o.starts_with("name="))
                    .collect();
                if opts.is_empty() {
                    continue;
                }
                Some(opts.join(","))
            };
            let preference =
                u8::from(m.mountpoint.starts_with("/sys/fs/cgroup")) * 2 + u8::from(m.root == "/");
            let candidate = Hierarchy {
                mountpoint: m.mountpoint,
                v1_options,
            };
            match found
                .iter_mut()
                .find(|(h, _)| h.v1_options == candidate.v1_options)
            {
                Some(slot) if preference > slot.1 => *slot = (candidate, preference),
                Some(_) => {}
                None => found.push((candidate, preference)),
            }
        }
        Layout {
            hierarchies: found.into_iter().map(|(h, _)| h).collect(),
        }
    }

    /// 1 when any v1 hierarchy carries controllers, else 2.
    pub fn version(&self) -> u32 {
        if self.hierarchies.iter().any(|h| !h.is_v2()) {
            1
        } else {
            2
        }
    }

    /// The v2 tree, when one is mounted.
    pub fn unified(&self) -> Option<&Hierarchy> {
        self.hierarchies.iter().find(|h| h.is_v2())
    }
}

/// What [`favor_dynamic_changes`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Favor {
    /// A cgroup mount already had `favordynmods`.
    Already(PathBuf),
    /// The cgroup2 mount at this path was remounted with it.
    Remounted(PathBuf),
    /// No cgroup2 was mounted: one was mounted here with it, and unmounted again.
    Mounted(PathBuf),
}

/// Turns on the kernel's `favordynmods` cgroup option, which berth's starts depend on for
/// their speed. Every move of a process into a cgroup (`cgroup.procs`, v1 and v2 alike) takes
/// one global rwsem for writing, and without this option the first writer after a quiet spell
/// waits out an RCU grace period: 5–20 ms measured on this 2-core host, against 0.25 ms with
/// it, and a start moves two processes. The option belongs to the v2 root, so it is set by a
/// remount of the cgroup2 tree keeping its other options (or, where none is mounted, by
/// mounting one at `scratch` for a moment); it also serves the v1 hierarchies, and the kernel
/// keeps it until the next boot. Its price, per the kernel's documentation, is a dearer fork
/// and exit: not measurable here (fork + exit + wait 160–190 µs either way).
pub fn favor_dynamic_changes(scratch: &Path) -> Result<Favor> {
    let mi =
        std::fs::read_to_string("/proc/self/mountinfo").step(|| "read /proc/self/mountinfo")?;
    let mounts = cgroup_mounts(&mi);
    if let Some(m) = mounts
        .iter()
        .find(|m| m.super_options.split(',').any(|o| o == "favordynmods"))
    {
        return Ok(Favor::Already(m.mountpoint.clone()));
    }
    // the v2 tree's own mount, not a CRIU yard's (see Layout::parse)
    if let Some(m) = mounts
        .iter()
        .filter(|m| m.fstype == "cgroup2")
        .min_by_key(|m| (!m.mountpoint.starts_with("/sys/fs/cgroup"), m.root != "/"))
    {
        let (flags, data) = remount_args(m);
        crate::sys::mount(None, &m.mountpoint, None, flags, Some(&data))
            .step(|| format!("remount {} with favordynmods", m.mountpoint.display()))?;
        return Ok(Favor::Remounted(m.mountpoint.clone()));
    }
    std::fs::create_dir_all(scratch).step(|| format!("create {}", scratch.display()))?;
    let r = crate::sys::mount(
        Some(Path::new("cgroup2")),
        scratch,
        Some(c"cgroup2"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some("favordynmods"),
    )
    .step(|| format!("mount cgroup2 with favordynmods on {}", scratch.display()));
    if r.is_ok() {
        let _ = crate::sys::umount2(scratch, libc::MNT_DETACH);
    }
    let _ = std::fs::remove_dir(scratch);
    r.map(|_| Favor::Mounted(scratch.to_path_buf()))
}

/// A cgroup or cgroup2 mount as mountinfo shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CgroupMount {
    /// The directory of the hierarchy this mount shows (`/` for its root).
    root: String,
    mountpoint: PathBuf,
    fstype: String,
    /// Per-mount options (`rw,nosuid,nodev,noexec,relatime`).
    mount_options: String,
    /// The file system's own options (`rw,nsdelegate,memory_recursiveprot`).
    super_options: String,
}

fn cgroup_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            if pre.len() < 6 || post.len() < 3 || !matches!(post[0], "cgroup" | "cgroup2") {
                return None;
            }
            Some(CgroupMount {
                root: crate::sys::unescape_mountinfo(pre[3])
                    .to_string_lossy()
                    .into_owned(),
                mountpoint: crate::sys::unescape_mountinfo(pre[4]),
                fstype: post[0].to_string(),
                mount_options: pre[5].to_string(),
                super_options: post[2].to_string(),
            })
        })
        .collect()
}

/// mount(2) flags and data that remount `m` as it is, plus `favordynmods`: a remount also
/// resets the per-mount flags, and the file system's options are parsed anew (one left out
/// would be turned off).
fn remount_args(m: &CgroupMount) -> (libc::c_ulong, String) {
    let mut flags = libc::MS_REMOUNT;
    for o in m.mount_options.split(',') {
        flags |= match o {
            "ro" => libc::MS_RDONLY,
            "nosuid" => libc::MS_NOSUID,
            "nodev" => libc::MS_NODEV,
            "noexec" => libc::MS_NOEXEC,
            "noatime" => libc::MS_NOATIME,
            "nodiratime" => libc::MS_NODIRATIME,
            "relatime" => libc::MS_RELATIME,
            "strictatime" => libc::MS_STRICTATIME,
            _ => 0,
        };
    }
    let mut data: Vec<&str> = m
        .super_options
        .split(',')
        .filter(|o| !o.is_empty() && *o != "rw" && *o != "ro")
        .collect();
    data.push("favordynmods");
    (flags, data.join(","))
}

/// Whether `dir` is on a cgroup2 file system (a unit's group always is; the unit tests
/// stand one in with a plain directory, where no device program can attach).
fn on_cgroup2(dir: &Path) -> bool {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    let Ok(c) = crate::sys::cpath(dir) else {
        return false;
    };
    // SAFETY: statfs is plain data.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type == CGROUP2_SUPER_MAGIC }
}

/// Where a container's groups are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Placement {
    /// berth's own tree: `<parent>/<name>` in every hierarchy, monitors in `<parent>.monitor`.
    #[default]
    Tree,
    /// A systemd unit's group delegated to berth, `cgroup` (relative to the v2 mount, e.g.
    /// `berth.slice/berth-web.scope`): the monitor in `monitor/`, the container in `payload/`.
    /// systemd creates the unit's group (and removes it with the unit); berth only its two
    /// children.
    Unit {
        /// The unit's group, relative to the cgroup2 mount, without a leading `/`.
        cgroup: String,
    },
}

/// The child of a unit's group that holds the container (its cgroup namespace root).
pub const PAYLOAD: &str = "payload";

/// The leaf below a container's cgroup that processes joining it (exec) use when the
/// container's own init has made its group an inner node (cgroup v2).
pub const EXEC_LEAF: &str = ".berth-exec";

/// Whether the cgroup v2 group `dir` hands controllers to its children.
fn has_subtree_control(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.subtree_control")).is_ok_and(|c| !c.trim().is_empty())
}
/// The child of a unit's group that holds the container's monitor.
pub const MONITOR: &str = "monitor";

/// The cgroups of one container (and the shared monitor cgroup) on this host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerCgroups {
    /// Host layout.
    pub layout: Layout,
    /// Parent directory name, `berth` unless configured (tests use their own).
    pub parent: String,
    /// The container's name.
    pub name: String,
    /// The container's root on the host (uid, gid): its groups are delegated to it, as LXC
    /// does, so that an init such as systemd can make and manage groups below its own.
    #[serde(default)]
    pub owner: Option<(u32, u32)>,
    /// Where the groups are.
    #[serde(default)]
    pub placement: Placement,
}

/// The process limit (`pids.max`) a container's cgroups get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessLimit {
    /// Asked for by the container's config: a host without the pids controller cannot give it.
    Set(u64),
    /// berth's default: applied where the pids controller exists, skipped where it does not.
    Default(u64),
}

impl ContainerCgroups {
    /// The cgroups for container `name` under `parent`.
    pub fn new(layout: Layout, parent: &str, name: &str) -> Self {
        ContainerCgroups {
            layout,
            parent: parent.to_string(),
            name: name.to_string(),
            owner: None,
            placement: Placement::Tree,
        }
    }

    /// The same, placed in the delegated unit group `cgroup` (see [`Placement::Unit`]). Only
    /// for a pure v2 layout.
    pub fn in_unit(mut self, cgroup: &str) -> Self {
        self.placement = Placement::Unit {
            cgroup: cgroup.trim_matches('/').to_string(),
        };
        self
    }

    /// The unit's group, when the container is placed in one (on the v2 mount).
    pub fn unit_dir(&self) -> Option<PathBuf> {
        match &self.placement {
            Placement::Tree => None,
            Placement::Unit { cgroup } => Some(self.layout.unified()?.mountpoint.join(cgroup)),
        }
    }

    /// The container's group relative to each hierarchy's root, with a leading `/` (CRIU's
    /// cgroup root for a restore).
    pub fn relative_dir(&self) -> String {
        match &self.placement {
            Placement::Tree => format!("/{}/{}", self.parent, self.name),
            Placement::Unit { cgroup } => format!("/{cgroup}/{PAYLOAD}"),
        }
    }

    /// The same, delegated to the container's root (`uid`, `gid` on the host).
    pub fn delegated_to(mut self, uid: u32, gid: u32) -> Self {
        self.owner = Some((uid, gid));
        self
    }

    /// The container's directory in each hierarchy.
    pub fn dirs(&self) -> impl Iterator<Item = PathBuf> + '_ {
        self.layout
            .hierarchies
            .iter()
            .filter_map(|h| self.dir_in(h))
    }

    /// The container's directory in hierarchy `h` (a unit placement has one only in v2).
    fn dir_in(&self, h: &Hierarchy) -> Option<PathBuf> {
        match &self.placement {
            Placement::Tree => Some(h.mountpoint.join(&self.parent).join(&self.name)),
            Placement::Unit { cgroup } => {
                h.is_v2().then(|| h.mountpoint.join(cgroup).join(PAYLOAD))
            }
        }
    }

    /// The container's directory in the hierarchy carrying `controller` (v1) or the v2 tree.
    pub fn dir_for(&self, controller: &str) -> Option<PathBuf> {
        let h = self
            .layout
            .hierarchies
            .iter()
            .find(|h| h.has_controller(controller))
            .or_else(|| {
                if self.layout.version() == 2 {
                    self.layout.unified()
                } else {
                    None
                }
            })?;
        self.dir_in(h)
    }

    /// The monitors' shared directory in each hierarchy (in a unit: its monitor's).
    fn monitor_dirs(&self) -> impl Iterator<Item = (&Hierarchy, PathBuf)> + '_ {
        let m = format!("{}.monitor", self.parent);
        self.layout
            .hierarchies
            .iter()
            .filter_map(move |h| match &self.placement {
                Placement::Tree => Some((h, h.mountpoint.join(&m))),
                Placement::Unit { cgroup } => h
                    .is_v2()
                    .then(|| (h, h.mountpoint.join(cgroup).join(MONITOR))),
            })
    }

    /// Creates the parent, monitor and container directories where missing, and delegates the
    /// container's to its root. Idempotent. In a unit, only the unit's `monitor/` and
    /// `payload/` are made: the unit's own group must exist (systemd makes it).
    pub fn create(&self) -> Result<()> {
        if let Some(unit) = self.unit_dir() {
            if !unit.is_dir() {
                return Err(Error::os(
                    format!("use the cgroup of the container's unit {}", unit.display()),
                    std::io::ErrorKind::NotFound.into(),
                ));
            }
            for d in [unit.join(MONITOR), unit.join(PAYLOAD)] {
                match std::fs::create_dir(&d) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(Error::os(format!("create cgroup {}", d.display()), e)),
                }
            }
            // the unit is new at each start (systemd removes it with its last process)
            if let Some(h) = self.layout.unified()
                && on_cgroup2(&unit)
            {
                crate::devices::confine(h, &unit.join(PAYLOAD))?;
            }
            if let Some((uid, gid)) = self.owner {
                delegate(&unit.join(PAYLOAD), uid, gid)?;
            }
            return Ok(());
        }
        for h in &self.layout.hierarchies {
            let parent = h.mountpoint.join(&self.parent);
            ensure_dir(h, &parent, &h.mountpoint)?;
            let dir = parent.join(&self.name);
            ensure_dir(h, &dir, &parent)?;
            crate::devices::confine(h, &dir)?;
            if let Some((uid, gid)) = self.owner {
                delegate(&dir, uid, gid)?;
            }
        }
        for (h, dir) in self.monitor_dirs() {
            ensure_dir(h, &dir, &h.mountpoint)?;
        }
        Ok(())
    }

    /// Whether every container directory exists (a reboot wipes them).
    pub fn exists(&self) -> bool {
        self.dirs().all(|d| d.is_dir())
    }

    /// Moves `pid` into the container's cgroups (`0` = the calling process).
    ///
    /// On cgroup v2, a container whose init has enabled controllers for its children (a
    /// systemd inside does, at boot) may hold no process itself (the "no internal processes"
    /// rule: the kernel answers EBUSY). The process then goes into the leaf [`EXEC_LEAF`]
    /// below it, made on first use and delegated like the container's own group, as LXC's
    /// attach uses `.lxc`. Limits, the device program and freezing hold there too.
    pub fn attach(&self, pid: libc::pid_t) -> Result<()> {
        let s = pid.to_string();
        for d in self.dirs() {
            let p = d.join("cgroup.procs");
            match crate::sys::write_file(&p, s.as_bytes()) {
                Ok(()) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && has_subtree_control(&d) => {}
                Err(e) => return Err(Error::os(format!("join cgroup {}", d.display()), e)),
            }
            let leaf = d.join(EXEC_LEAF);
            match std::fs::create_dir(&leaf) {
                Ok(()) => {
                    if let Some((uid, gid)) = self.owner {
                        delegate(&leaf, uid, gid)?;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::os(format!("create cgroup {}", leaf.display()), e)),
            }
            crate::sys::write_file(&leaf.join("cgroup.procs"), s.as_bytes())
                .step(|| format!("join cgroup {}", leaf.display()))?;
        }
        Ok(())
    }

    /// In a unit: moves `pid` (the monitor) into `monitor/`, and with it whatever else runs in
    /// the unit's own group (a service's main process), then hands the unit's controllers to
    /// its children, which v2 allows only once the group itself holds no process.
    /// [`Self::create`] must have run. Does nothing in berth's tree.
    pub fn settle_monitor(&self, pid: libc::pid_t) -> Result<()> {
        let Some(unit) = self.unit_dir() else {
            return Ok(());
        };
        self.attach_monitor(pid)?;
        if let Ok(procs) = std::fs::read_to_string(unit.join("cgroup.procs")) {
            for p in procs
                .lines()
                .filter_map(|l| l.trim().parse::<libc::pid_t>().ok())
            {
                match self.attach_monitor(p) {
                    Ok(()) => {}
                    // (exited meanwhile)
                    Err(e) if e.errno() == Some(libc::ESRCH) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let controllers = std::fs::read_to_string(unit.join("cgroup.controllers"))
            .step(|| format!("read {}", unit.join("cgroup.controllers").display()))?;
        let want: Vec<String> = controllers
            .split_whitespace()
            .map(|c| format!("+{c}"))
            .collect();
        if !want.is_empty() {
            let p = unit.join("cgroup.subtree_control");
            crate::sys::write_file(&p, want.join(" ").as_bytes())
                .step(|| format!("enable {} in {}", controllers.trim(), p.display()))?;
        }
        Ok(())
    }

    /// Moves `pid` into the monitors' cgroups (`0` = the calling process).
    pub fn attach_monitor(&self, pid: libc::pid_t) -> Result<()> {
        let s = pid.to_string();
        for p in self.monitor_procs() {
            crate::sys::write_file(&p, s.as_bytes())
                .step(|| format!("join cgroup {}", p.parent().unwrap_or(&p).display()))?;
        }
        Ok(())
    }

    /// The `cgroup.procs` files of the monitors' cgroups, one per hierarchy.
    pub fn monitor_procs(&self) -> Vec<PathBuf> {
        self.monitor_dirs()
            .map(|(_, d)| d.join("cgroup.procs"))
            .collect()
    }

    /// Sets (or clears, with `None`) the memory limit in bytes, and the process limit. A limit
    /// asked for on a host without the controller is an error; clearing one that cannot exist,
    /// or a default process limit where there is no pids controller, is not.
    pub fn apply_limits(&self, memory: Option<u64>, processes: ProcessLimit) -> Result<()> {
        let v2 = self.layout.version() == 2;
        let write = |controller: &str,
                     knob: &str,
                     value: Option<String>,
                     unlimited: &str|
         -> Result<()> {
            let file = self
                .dir_for(controller)
                .map(|d| d.join(knob))
                .filter(|p| p.exists());
            match (file, value) {
                (Some(p), v) => {
                    let v = v.unwrap_or_else(|| unlimited.to_string());
                    crate::sys::write_file(&p, v.as_bytes())
                        .step(|| format!("write {v} to {}", p.display()))
                }
                (None, None) => Ok(()),
                (None, Some(_)) => Err(Error::Invalid(format!(
                    "the {controller} cgroup controller is not available to containers on this host"
                ))),
            }
        };
        let mem = memory.map(|m| m.to_string());
        if v2 {
            write("memory", "memory.max", mem, "max")?;
        } else {
            write("memory", "memory.limit_in_bytes", mem, "-1")?;
        }
        match processes {
            ProcessLimit::Set(n) => write("pids", "pids.max", Some(n.to_string()), "max"),
            ProcessLimit::Default(n)
                if self
                    .dir_for("pids")
                    .is_some_and(|d| d.join("pids.max").exists()) =>
            {
                write("pids", "pids.max", Some(n.to_string()), "max")
            }
            ProcessLimit::Default(_) => Ok(()),
        }
    }

    /// The container's cgroup v2 group, if the host has a v2 hierarchy.
    pub fn unified_dir(&self) -> Option<PathBuf> {
        self.dir_in(self.layout.unified()?)
    }

    /// The group that freezes the container: the v1 `freezer` hierarchy's, else the v2 one's
    /// (on a hybrid host the v2 tree has no controllers, so no freezer).
    pub fn freezer_dir(&self) -> Option<PathBuf> {
        if let Some(h) = self
            .layout
            .hierarchies
            .iter()
            .find(|h| h.has_controller("freezer"))
        {
            return self.dir_in(h);
        }
        let d = self.dir_in(self.layout.unified()?)?;
        d.join("cgroup.freeze").exists().then_some(d)
    }

    /// Freezes every process of the container and waits until they are (up to `timeout`).
    ///
    /// On v1 the write is repeated while the group is FREEZING: the legacy freezer stops each
    /// task once, when `FROZEN` is written, and a task that was running then and went to a
    /// freezable sleep afterwards is never visited again. A parent in `vfork` is that task:
    /// its child is frozen as it is born, and the parent, still in the syscall at the write,
    /// then waits for that child for ever, so the group never reaches FROZEN (kernel 6.1 on;
    /// v2 counts a vfork waiter as frozen, `cgroup_enter_frozen`). Each write visits them again.
    pub fn freeze(&self, timeout: std::time::Duration) -> Result<()> {
        let dir = self
            .freezer_dir()
            .ok_or_else(|| Error::Invalid("no cgroup freezer on this host".into()))?;
        let v1 = dir.join("freezer.state").exists();
        let (knob, value) = if v1 {
            ("freezer.state", "FROZEN")
        } else {
            ("cgroup.freeze", "1")
        };
        let ask = || {
            crate::sys::write_file(&dir.join(knob), value.as_bytes())
                .step(|| format!("freeze {}", dir.display()))
        };
        ask()?;
        let start = std::time::Instant::now();
        let mut asked = start;
        loop {
            let frozen = if v1 {
                std::fs::read_to_string(dir.join("freezer.state"))
                    .is_ok_and(|s| s.trim() == "FROZEN")
            } else {
                std::fs::read_to_string(dir.join("cgroup.events"))
                    .is_ok_and(|s| s.lines().any(|l| l.trim() == "frozen 1"))
            };
            if frozen {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                let stuck = unfrozen_tasks(&dir);
                let _ = self.thaw();
                return Err(Error::Invalid(format!(
                    "the container did not freeze within {} ms{}",
                    timeout.as_millis(),
                    if stuck.is_empty() {
                        String::new()
                    } else {
                        format!("; not frozen: {}", stuck.join(", "))
                    }
                )));
            }
            if v1 && asked.elapsed() >= FREEZE_REASK {
                if let Err(e) = ask() {
                    let _ = self.thaw();
                    return Err(e);
                }
                asked = std::time::Instant::now();
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Whether the container's freezer says frozen (or freezing): v1 `freezer.state`, v2
    /// `cgroup.freeze` (what was asked, not whether every process has stopped yet).
    pub fn is_frozen(&self) -> bool {
        let Some(dir) = self.freezer_dir() else {
            return false;
        };
        match std::fs::read_to_string(dir.join("freezer.state")) {
            Ok(s) => s.trim() != "THAWED",
            Err(_) => {
                std::fs::read_to_string(dir.join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1")
            }
        }
    }

    /// Thaws the container.
    pub fn thaw(&self) -> Result<()> {
        let Some(dir) = self.freezer_dir() else {
            return Ok(());
        };
        let (knob, value) = if dir.join("freezer.state").exists() {
            ("freezer.state", "THAWED")
        } else {
            ("cgroup.freeze", "0")
        };
        crate::sys::write_file(&dir.join(knob), value.as_bytes())
            .step(|| format!("thaw {}", dir.display()))
    }

    /// Pids in the container's cgroups (all hierarchies, whole subtree), deduplicated.
    pub fn pids(&self) -> Vec<libc::pid_t> {
        let mut pids = Vec::new();
        for d in self.dirs() {
            collect_pids(&d, &mut pids);
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Kills whatever is left in the container's cgroups and removes its directories
    /// (deepest first). Idempotent: missing directories are fine. In a unit, its `monitor/`
    /// goes too (the unit's own group is systemd's, removed with the unit).
    pub fn remove(&self) -> Result<()> {
        for _attempt in 0..50 {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            for p in pids {
                // SAFETY: kill(2) with a pid read from the container's own cgroup.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        for d in self.dirs() {
            remove_tree(&d).step(|| format!("remove cgroup {}", d.display()))?;
        }
        if let Some(unit) = self.unit_dir() {
            let d = unit.join(MONITOR);
            // busy while the monitor still runs in it: then its unit goes with it
            let _ = remove_tree(&d);
        }
        Ok(())
    }
}

/// One group of a container's cgroup v2 tree, as a checkpoint records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeGroup {
    /// Its path below the container's group ("" for that group itself).
    pub path: String,
    /// The controllers it hands to its children.
    pub subtree_control: Vec<String>,
}

/// At most this many groups are recorded of a container's tree (a systemd has a few dozen).
const TREE_MAX: usize = 4096;

/// The groups of the cgroup v2 tree at `dir` (itself first), parents before their children.
/// What cannot be read is left out.
pub fn record_tree(dir: &Path) -> Vec<TreeGroup> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        if out.len() >= TREE_MAX {
            break;
        }
        let abs = dir.join(&rel);
        let Ok(control) = std::fs::read_to_string(abs.join("cgroup.subtree_control")) else {
            continue;
        };
        let Some(path) = rel.to_str() else { continue };
        out.push(TreeGroup {
            path: path.to_string(),
            subtree_control: control.split_whitespace().map(str::to_string).collect(),
        });
        if let Ok(rd) = std::fs::read_dir(&abs) {
            let mut children: Vec<PathBuf> = rd
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| rel.join(e.file_name()))
                .collect();
            children.sort();
            // popped in order, each after its parent
            todo.extend(children.into_iter().rev());
        }
    }
    out
}

/// Rebuilds below the cgroup v2 group `dir` the groups of `tree` that are missing (owned, with
/// their files, as `dir` is: by the container's root, who made them) and hands each group's
/// recorded controllers to its children, those it has. Parents first; every group but the
/// leaves must hold no process yet. For a restore: CRIU recreates only the groups that held
/// processes, and sets their controllers only after it reopened the files in them, while a
/// systemd inside watches `cgroup.events` of empty groups and `memory.events` of every unit.
pub fn rebuild_tree(dir: &Path, tree: &[TreeGroup]) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(dir).step(|| format!("stat {}", dir.display()))?;
    for g in tree {
        let rel = Path::new(&g.path);
        if !rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
        {
            return Err(Error::Invalid(format!(
                "a recorded cgroup path {:?} is not below the container's group",
                g.path
            )));
        }
        let p = dir.join(rel);
        match std::fs::create_dir(&p) {
            Ok(()) => chown_group(&p, owner.uid(), owner.gid())?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::os(format!("create cgroup {}", p.display()), e)),
        }
        if g.subtree_control.is_empty() {
            continue;
        }
        let have = std::fs::read_to_string(p.join("cgroup.controllers"))
            .step(|| format!("read {}", p.join("cgroup.controllers").display()))?;
        let want: Vec<String> = g
            .subtree_control
            .iter()
            .filter(|c| have.split_whitespace().any(|h| h == c.as_str()))
            .map(|c| format!("+{c}"))
            .collect();
        if !want.is_empty() {
            let f = p.join("cgroup.subtree_control");
            crate::sys::write_file(&f, want.join(" ").as_bytes())
                .step(|| format!("enable {} in {}", want.join(" "), f.display()))?;
        }
    }
    Ok(())
}

/// Gives the group `dir` and all its files to `uid`:`gid`.
fn chown_group(dir: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))
        .step(|| format!("chown {}", dir.display()))?;
    for e in std::fs::read_dir(dir)
        .step(|| format!("read {}", dir.display()))?
        .flatten()
    {
        if e.file_type().is_ok_and(|t| t.is_file()) {
            std::os::unix::fs::chown(e.path(), Some(uid), Some(gid))
                .step(|| format!("chown {}", e.path().display()))?;
        }
    }
    Ok(())
}

/// Files of a group its owner may write to manage groups below it (not its own limits).
const DELEGATED: &[&str] = &[
    "cgroup.procs",
    "tasks",
    "cgroup.subtree_control",
    "cgroup.threads",
    "cgroup.clone_children",
    "notify_on_release",
];

fn delegate(dir: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))
        .step(|| format!("delegate {}", dir.display()))?;
    for f in DELEGATED {
        let p = dir.join(f);
        if p.exists() {
            std::os::unix::fs::chown(&p, Some(uid), Some(gid))
                .step(|| format!("delegate {}", p.display()))?;
        }
    }
    Ok(())
}

/// mkdir for a cgroup directory; on v1 cpuset hierarchies the new group gets its parent's cpus
/// and mems, and `clone_children` so that its own children inherit them.
fn ensure_dir(h: &Hierarchy, dir: &Path, parent: &Path) -> Result<()> {
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(Error::os(format!("create cgroup {}", dir.display()), e)),
    }
    if h.has_controller("cpuset") {
        for knob in ["cpuset.cpus", "cpuset.mems"] {
            let v = std::fs::read(parent.join(knob))
                .step(|| format!("read {}", parent.join(knob).display()))?;
            crate::sys::write_file(&dir.join(knob), &v)
                .step(|| format!("write {}", dir.join(knob).display()))?;
        }
        let _ = crate::sys::write_file(&dir.join("cgroup.clone_children"), b"1");
    }
    if h.is_v2() {
        // Let the new group hand its controllers to its children (ignored where none exist).
        if let Ok(c) = std::fs::read_to_string(parent.join("cgroup.controllers")) {
            let want: Vec<String> = c.split_whitespace().map(|c| format!("+{c}")).collect();
            if !want.is_empty() && parent != h.mountpoint {
                let _ = crate::sys::write_file(
                    &parent.join("cgroup.subtree_control"),
                    want.join(" ").as_bytes(),
                );
            }
        }
    }
    Ok(())
}

fn collect_pids(dir: &Path, out: &mut Vec<libc::pid_t>) {
    if let Ok(s) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(
            s.lines()
                .filter_map(|l| l.trim().parse::<libc::pid_t>().ok()),
        );
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_pids(&e.path(), out);
            }
        }
    }
}

/// How often a v1 freezer that is still FREEZING is asked again (see [`ContainerCgroups::freeze`]).
const FREEZE_REASK: std::time::Duration = std::time::Duration::from_millis(10);

/// The threads of a freezer group (and its children) that are not stopped in the freezer,
/// described: "thread 12 (sh) state D, in kernel_clone" (a frozen task is in
/// `__refrigerator`, v1, or `do_freezer_trap`, v2; one frozen asleep in the kernel keeps its
/// wait channel and is named too). At most 8, then how many more.
fn unfrozen_tasks(dir: &Path) -> Vec<String> {
    fn walk(d: &Path, out: &mut Vec<libc::pid_t>) {
        for f in ["tasks", "cgroup.threads"] {
            if let Ok(s) = std::fs::read_to_string(d.join(f)) {
                out.extend(
                    s.lines()
                        .filter_map(|l| l.trim().parse::<libc::pid_t>().ok()),
                );
                break;
            }
        }
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
        }
    }
    let mut tids = Vec::new();
    walk(dir, &mut tids);
    tids.sort_unstable();
    tids.dedup();
    let mut out: Vec<String> = tids
        .into_iter()
        .filter_map(|t| {
            let proc = PathBuf::from(format!("/proc/{t}"));
            let wchan = std::fs::read_to_string(proc.join("wchan")).unwrap_or_default();
            let wchan = wchan.trim();
            let stat = std::fs::read_to_string(proc.join("stat")).unwrap_or_default();
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next())
                .unwrap_or("?");
            let comm = std::fs::read_to_string(proc.join("comm")).unwrap_or_default();
            (!matches!(wchan, "__refrigerator" | "do_freezer_trap")).then(|| {
                format!(
                    "thread {t} ({}) state {state}, in {}",
                    comm.trim(),
                    if matches!(wchan, "" | "0") {
                        "running"
                    } else {
                        wchan
                    }
                )
            })
        })
        .collect();
    if out.len() > 8 {
        let more = out.len() - 8;
        out.truncate(8);
        out.push(format!("{more} more"));
    }
    out
}

/// Removes a cgroup directory and its child groups, deepest first.
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in rd.flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&e.path())?;
        }
    }
    let mut last = None;
    for _ in 0..100 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            // EBUSY while the last exited task is still being released by the kernel
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                last = Some(e);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::EBUSY)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remount_keeps_every_option_and_adds_favordynmods() {
        let mi = "\
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
31 23 0:27 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
32 23 0:28 / /tmp rw - tmpfs tmpfs rw
";
        let m = cgroup_mounts(mi);
        assert_eq!(m.len(), 2);
        let (flags, data) = remount_args(&m[0]);
        assert_eq!(
            flags,
            libc::MS_REMOUNT
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | libc::MS_NOEXEC
                | libc::MS_RELATIME
        );
        assert_eq!(data, "nsdelegate,memory_recursiveprot,favordynmods");
        let (flags, data) = remount_args(&CgroupMount {
            mount_options: "ro,relatime".into(),
            super_options: "rw".into(),
            ..m[0].clone()
        });
        assert_eq!(
            (flags, data.as_str()),
            (
                libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_RELATIME,
                "favordynmods"
            )
        );
    }

    const HYBRID: &str = "\
35 25 0:30 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
37 35 0:32 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
38 35 0:33 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
39 35 0:34 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";

    #[test]
    fn parses_hybrid_layout() {
        let l = Layout::parse(HYBRID);
        assert_eq!(l.version(), 1);
        assert_eq!(l.hierarchies.len(), 4);
        assert!(l.unified().is_some());
        let names: Vec<String> = l
            .hierarchies
            .iter()
            .map(|h| h.container_dir_name())
            .collect();
        assert_eq!(names, ["unified", "systemd", "cpu,cpuacct", "memory"]);
        let cg = ContainerCgroups::new(l, "berth", "c1");
        assert_eq!(
            cg.dir_for("memory").unwrap(),
            Path::new("/sys/fs/cgroup/memory/berth/c1")
        );
        assert_eq!(
            cg.dir_for("cpuacct").unwrap(),
            Path::new("/sys/fs/cgroup/cpu,cpuacct/berth/c1")
        );
        assert!(cg.dir_for("pids").is_none());
    }

    #[test]
    fn a_criu_cgroup_yard_is_not_taken_for_the_hierarchies() {
        // a restore's yard, mounted after the host's hierarchies (as mountinfo lists them) ...
        let yard = "\
60 1 0:50 / /tmp/.criu.cgyard.Xa1b2c rw - tmpfs none rw
61 60 0:31 / /tmp/.criu.cgyard.Xa1b2c/unified rw - cgroup2 none rw
62 60 0:33 / /tmp/.criu.cgyard.Xa1b2c/cpu,cpuacct rw - cgroup none rw,cpu,cpuacct
63 60 0:34 / /tmp/.criu.cgyard.Xa1b2c/memory rw - cgroup none rw,memory
64 60 0:35 / /tmp/.criu.cgyard.Xa1b2c/pids rw - cgroup none rw,pids
";
        let host = Layout::parse(HYBRID);
        let with_yard = Layout::parse(&format!("{HYBRID}{yard}"));
        let without_pids: Vec<_> = with_yard
            .hierarchies
            .iter()
            .filter(|h| !h.has_controller("pids"))
            .cloned()
            .collect();
        assert_eq!(without_pids, host.hierarchies);
        // ... or before them, and a hierarchy only the yard shows (a bind of a subtree elsewhere)
        let pids_elsewhere = "70 1 0:35 /berth /srv/pids rw - cgroup none rw,pids\n";
        let l = Layout::parse(&format!("{yard}{pids_elsewhere}{HYBRID}"));
        for h in &l.hierarchies {
            if h.has_controller("pids") {
                assert_eq!(
                    h.mountpoint,
                    Path::new("/tmp/.criu.cgyard.Xa1b2c/pids"),
                    "the root beats a subtree"
                );
            } else {
                assert!(h.mountpoint.starts_with("/sys/fs/cgroup"), "{h:?}");
            }
        }
        assert_eq!(l.hierarchies.len(), 5);
    }

    #[test]
    fn parses_pure_v2() {
        let l = Layout::parse(
            "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
        );
        assert_eq!(l.version(), 2);
        let cg = ContainerCgroups::new(l, "berth", "web");
        assert_eq!(
            cg.dir_for("memory").unwrap(),
            Path::new("/sys/fs/cgroup/berth/web")
        );
    }

    #[test]
    fn a_unit_placement_keeps_everything_in_the_unit_s_group() {
        let l = Layout::parse(
            "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
        );
        let scope = crate::systemd::scope("berth", "my-web");
        let cg = ContainerCgroups::new(l, "berth", "my-web").in_unit(&scope.cgroup);
        let unit = Path::new("/sys/fs/cgroup/berth.slice/berth-my\\x2dweb.scope");
        assert_eq!(cg.unit_dir().unwrap(), unit);
        assert_eq!(cg.dirs().collect::<Vec<_>>(), [unit.join("payload")]);
        assert_eq!(cg.dir_for("memory").unwrap(), unit.join("payload"));
        assert_eq!(cg.monitor_procs(), [unit.join("monitor/cgroup.procs")]);
        assert_eq!(
            cg.relative_dir(),
            "/berth.slice/berth-my\\x2dweb.scope/payload"
        );
        // the spec travels to the monitor as JSON, and a spec without a placement is berth's tree
        let back: ContainerCgroups =
            serde_json::from_str(&serde_json::to_string(&cg).unwrap()).unwrap();
        assert_eq!(back.placement, cg.placement);
        let mut old = serde_json::to_value(&cg).unwrap();
        old.as_object_mut().unwrap().remove("placement");
        let old: ContainerCgroups = serde_json::from_value(old).unwrap();
        assert_eq!(old.placement, Placement::Tree);
        assert_eq!(old.relative_dir(), "/berth/my-web");
        assert_eq!(
            old.monitor_procs(),
            [Path::new("/sys/fs/cgroup/berth.monitor/cgroup.procs")]
        );
    }

    #[test]
    fn a_recorded_tree_is_rebuilt_parents_first_with_its_controllers() {
        let base = std::env::temp_dir().join(format!("berth-cg-tree-{}", std::process::id()));
        let (old, new) = (base.join("old"), base.join("new"));
        let group = |root: &Path, rel: &str, control: &str| {
            let d = root.join(rel);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("cgroup.subtree_control"), control).unwrap();
            std::fs::write(d.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        };
        group(&old, "", "memory pids\n");
        group(&old, "init.scope", "");
        group(&old, "system.slice", "memory io\n");
        group(&old, "system.slice/system-getty.slice", "");
        group(&old, "system.slice/dbus.service", "");
        let tree = record_tree(&old);
        let paths: Vec<&str> = tree.iter().map(|g| g.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "",
                "init.scope",
                "system.slice",
                "system.slice/dbus.service",
                "system.slice/system-getty.slice"
            ]
        );
        assert_eq!(tree[2].subtree_control, ["memory", "io"]);
        // what CRIU made (the groups that held processes) is there, the rest is not
        group(&new, "", "");
        group(&new, "system.slice", "");
        group(&new, "system.slice/dbus.service", "");
        rebuild_tree(&new, &tree).unwrap();
        let read = |rel: &str| std::fs::read_to_string(new.join(rel)).unwrap();
        assert_eq!(read("cgroup.subtree_control"), "+memory +pids");
        // io is not among the group's controllers here: left out
        assert_eq!(read("system.slice/cgroup.subtree_control"), "+memory");
        assert!(new.join("init.scope").is_dir());
        assert!(new.join("system.slice/system-getty.slice").is_dir());
        // a path from the record never leads out of the container's group
        let evil = [TreeGroup {
            path: "../escape".into(),
            subtree_control: vec![],
        }];
        assert!(rebuild_tree(&new, &evil).is_err());
        assert!(!base.join("escape").exists());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_unit_placement_makes_nothing_without_its_unit() {
        let tmp = std::env::temp_dir().join(format!("berth-cg-unit-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let mi = format!("30 25 0:26 / {} rw - cgroup2 cgroup2 rw\n", tmp.display());
        let cg = ContainerCgroups::new(Layout::parse(&mi), "berth", "c1")
            .in_unit("berth.slice/berth-c1.scope");
        assert!(cg.create().is_err());
        assert_eq!(
            std::fs::read_dir(&tmp).unwrap().count(),
            0,
            "nothing made outside the unit"
        );
        std::fs::create_dir_all(tmp.join("berth.slice/berth-c1.scope")).unwrap();
        cg.create().unwrap();
        assert!(
            tmp.join("berth.slice/berth-c1.scope/payload").is_dir()
                && tmp.join("berth.slice/berth-c1.scope/monitor").is_dir()
        );
        assert!(cg.exists());
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 1);
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn cgroup_mounts_unescape_their_root_and_mount_point() {
        let m = cgroup_mounts(
            "30 25 0:26 /a\\040b /sys/fs/cgroup/my\\040mem rw,nosuid - cgroup cgroup rw,memory\n\
             31 25 0:27 / /plain rw - ext4 /dev/sda1 rw\n",
        );
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].root, "/a b");
        assert_eq!(m[0].mountpoint, PathBuf::from("/sys/fs/cgroup/my mem"));
        assert_eq!(m[0].super_options, "rw,memory");
    }
}
