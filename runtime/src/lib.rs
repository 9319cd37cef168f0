//! berth-runtime: the synchronous, single-threaded-friendly half of berth. It creates
//! unprivileged system containers (user/mount/pid/uts/ipc/net/cgroup namespaces, an idmapped
//! rootfs, /dev, the console), runs the per-container monitor, manages cgroups (v1 and v2),
//! storage pools (dir, btrfs) and image files.
//!
//! Nothing here knows tokio or ractor: the daemon calls in through blocking functions or runs
//! them in helper processes. Functions that clone or join namespaces say so and must run in a
//! single-threaded process (the monitor or a helper).

pub mod cgroup;
pub mod crash;
pub mod criu;
pub mod devices;
pub mod error;
pub mod fdpass;
pub mod idmap;
pub mod launch;
pub mod monitor;
pub mod net;
pub mod pty;
pub mod rootfs;
pub mod seccomp;
pub mod spec;
pub mod sys;
pub mod systemd;

pub use error::{Error, Result};
pub mod image;
pub mod init;
pub mod storage;
