//! What a monitor needs to start one container, and where berth keeps things on disk.

use crate::cgroup::ContainerCgroups;
use crate::idmap::IdMap;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Everything the monitor needs to create a container. Built by the daemon from the
/// container's record; serialized to the monitor on its stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Container name (a DNS label, validated by the caller); also the hostname.
    pub name: String,
    /// Host path of the container's root filesystem directory.
    pub rootfs: PathBuf,
    /// The user-namespace mapping.
    pub idmap: IdMap,
    /// `true` when the rootfs was chowned into the mapped range once because its filesystem
    /// refuses idmapped mounts; then it is bind-mounted as is.
    pub shifted: bool,
    /// The container's cgroups.
    pub cgroups: ContainerCgroups,
    /// argv of init, `["/sbin/init"]` by default.
    pub init: Vec<String>,
    /// Environment of init.
    pub env: Vec<(String, String)>,
    /// Signal that asks this init to power off.
    pub stop_signal: i32,
    /// The container's runtime directory (monitor socket, console log, exit record).
    pub run_dir: PathBuf,
    /// Capabilities removed from the bounding set, lowercase without `cap_` (e.g. `sys_time`).
    pub cap_drop: Vec<String>,
    /// Maximum size of the console log file before it is rotated.
    pub console_log_max: u64,
    /// Network interfaces (veth pairs to host bridges); none leaves the container with `lo`.
    #[serde(default)]
    pub nics: Vec<crate::net::Nic>,
    /// Restore this checkpoint instead of booting init.
    #[serde(default)]
    pub restore: Option<crate::criu::restore::RestorePlan>,
}

/// Capabilities berth drops from every unprivileged container's bounding set (as LXC does).
pub const DEFAULT_CAP_DROP: &[&str] = &[
    "sys_module",
    "sys_time",
    "sys_rawio",
    "mac_admin",
    "mac_override",
];

/// Default environment of a container's init.
pub fn default_init_env() -> Vec<(String, String)> {
    vec![
        ("container".into(), "berth".into()),
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("TERM".into(), "linux".into()),
    ]
}

/// Files of one container under the runtime directory.
#[derive(Debug, Clone)]
pub struct RunFiles {
    dir: PathBuf,
}

impl RunFiles {
    /// Files under `run_root/containers/<name>`.
    pub fn new(run_root: &Path, name: &str) -> Self {
        RunFiles {
            dir: run_root.join("containers").join(name),
        }
    }

    /// Wraps an existing container run directory.
    pub fn at(dir: &Path) -> Self {
        RunFiles {
            dir: dir.to_path_buf(),
        }
    }

    /// The directory itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The monitor's control socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("monitor.sock")
    }

    /// The console log (bounded; rotated to `console.log.1`).
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// The monitor's own log.
    pub fn monitor_log(&self) -> PathBuf {
        self.dir.join("monitor.log")
    }

    /// The exit record the monitor writes when init is gone.
    pub fn exit_record(&self) -> PathBuf {
        self.dir.join("exit.json")
    }
}
