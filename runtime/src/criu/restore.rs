//! Restoring a checkpointed container, run by its (new) monitor so that, with `rst_sibling`,
//! the restored init is the monitor's child exactly as after a start.
//!
//! The monitor prepares what CRIU cannot: a new console pty whose slave stands in for the
//! dump-time console (two inherited fds, one per external tty key, since CRIU takes each into
//! its fd store), an idmapped mount of the rootfs as `root` (CRIU does not preserve idmapped
//! mounts), the container's cgroups as per-controller roots, in the `setup-namespaces`
//! notification the veth and addresses of the empty network namespace CRIU created, and in the
//! `post-setup-namespaces` one the container's cgroup tree as it was (see `CheckpointMeta`).

use super::{CheckpointMeta, DEV_MOUNTS, META_FILE, base_opts, call, ext_mount, failure, open_dir};
use crate::error::{Error, Result};
use crate::launch::Started;
use crate::spec::ContainerSpec;
use crate::{pty, sys};
use protobuf::MessageField;
use rust_criu::rust_criu_protobuf::rpc;
use serde::{Deserialize, Serialize};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Where a restore reads from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePlan {
    /// The criu binary.
    pub criu: PathBuf,
    /// The images directory.
    pub images: PathBuf,
    /// The log's file name in the container's run directory.
    pub log: String,
}

fn fail(step: &str, e: impl std::fmt::Display) -> Error {
    Error::Setup {
        step: format!("{step}: {e}"),
        errno: 0,
    }
}

/// Restores the container of `spec` from `plan`; returns its restored init, our child. What
/// a CRIU killed as hung or looping (see [`super::Watch`]) had restored is killed with it: the
/// restore is then an error, not tried again here, since CRIU had already changed the files
/// (its ghost files made, its link-remap files consumed) and the cgroup tree.
///
/// Must be called from a single-threaded process (the monitor).
pub fn restore(spec: &ContainerSpec, plan: &RestorePlan) -> Result<Started> {
    restore_with_criu(spec, plan).map_err(|e| match e {
        Killed(e, log) => {
            kill_leftovers(spec);
            // a task CRIU had forked may have logged on until now
            super::cut_log(&log);
            e
        }
        Other(e) => e,
    })
}

/// Why the restore failed: a CRIU we killed (hung, or its log past the cap; see
/// [`super::Watch`]) and its log, or anything else.
enum Failed {
    Killed(Error, std::path::PathBuf),
    Other(Error),
}
use Failed::{Killed, Other};

impl From<Error> for Failed {
    fn from(e: Error) -> Self {
        Other(e)
    }
}

/// Kills the processes a killed CRIU left: the restored tasks it had not let go, in the
/// container's cgroups or still in ours (a root task CRIU had not moved yet), our children
/// with `rst_sibling`; and waits up to 5 s for them to go.
fn kill_leftovers(spec: &ContainerSpec) {
    // SAFETY: getpid has no failure mode.
    let me = unsafe { libc::getpid() };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let mut pids: Vec<_> = spec
            .cgroups
            .pids()
            .into_iter()
            .filter(|p| *p != me)
            .collect();
        // (the monitor is single-threaded: its one task's children are all of them; CRIU
        // needs this file, so it is there)
        pids.extend(
            std::fs::read_to_string(format!("/proc/{me}/task/{me}/children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse::<libc::pid_t>().ok()),
        );
        if pids.is_empty() || std::time::Instant::now() >= deadline {
            break;
        }
        for p in pids {
            // SAFETY: plain syscall.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        // reap those that were our children
        // SAFETY: plain syscall, no status wanted.
        while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG | libc::__WALL) } > 0 {
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn restore_with_criu(
    spec: &ContainerSpec,
    plan: &RestorePlan,
) -> std::result::Result<Started, Failed> {
    let meta: CheckpointMeta = std::fs::read(plan.images.join(META_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| {
            fail(
                "read the checkpoint",
                format!(
                    "{} is missing or unreadable",
                    plan.images.join(META_FILE).display()
                ),
            )
        })?;
    let console = pty::open_console(spec.idmap.uid_base, spec.idmap.gid_base)?;
    // one inheritable fd per tty key: CRIU moves each into its fd store and closes it
    let inherit = |what: &str| -> Result<OwnedFd> {
        // SAFETY: F_DUPFD on an fd we own returns a fresh fd without close-on-exec.
        let fd = unsafe { libc::fcntl(console.slave.as_raw_fd(), libc::F_DUPFD, 3) };
        if fd < 0 {
            return Err(fail(what, std::io::Error::last_os_error()));
        }
        // SAFETY: fresh fd.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let (con_fd, ctty_fd) = (inherit("pass the console")?, inherit("pass the console")?);

    let root_guard = RootMount::prepare(spec)?;
    let images = open_dir(&plan.images).map_err(|e| fail("open the images", e))?;
    let work = open_dir(&spec.run_dir).map_err(|e| fail("open the run directory", e))?;
    let mut o = base_opts(&images, &work, &plan.log);
    o.set_root(root_guard.path().to_string_lossy().into_owned());
    o.set_rst_sibling(true);
    o.set_empty_ns(libc::CLONE_NEWNET as u32);
    let slave = console.slave_path.to_string_lossy().into_owned();
    o.ext_mnt = DEV_MOUNTS
        .iter()
        .map(|n| {
            ext_mount(
                &format!("dev_{n}"),
                &if *n == "console" {
                    slave.clone()
                } else {
                    format!("/dev/{n}")
                },
            )
        })
        .collect();
    for (fd, key) in [(&con_fd, &meta.console_key), (&ctty_fd, &meta.ctty_key)] {
        let mut i = rpc::Inherit_fd::new();
        i.set_fd(fd.as_raw_fd());
        i.set_key(key.clone());
        o.inherit_fd.push(i);
    }
    for h in &spec.cgroups.layout.hierarchies {
        let mut r = rpc::Cgroup_root::new();
        r.set_ctrl(h.v1_options.clone().unwrap_or_default());
        r.set_path(spec.cgroups.relative_dir());
        o.cg_root.push(r);
    }
    let mut req = rpc::Criu_req::new();
    req.set_type(rpc::Criu_req_type::RESTORE);
    req.opts = MessageField::some(o);

    let mut seen: Vec<String> = Vec::new();
    let mut hook_error: Option<String> = None;
    let log = spec.run_dir.join(&plan.log);
    let resp = call(
        &plan.criu,
        &req,
        &log,
        super::Watch::for_memory(super::checkpoint::pages_bytes(&plan.images)),
        &mut |n| {
            seen.push(n.script().to_string());
            if n.script() == "setup-namespaces"
                && let Err(e) = network(spec, n.pid())
            {
                hook_error = Some(format!("setting up the network: {e}"));
                return false;
            }
            // The root task has set up its cgroup namespace (in the container's group, which must
            // then hold no controllers for children) and moved on into its own group; no other
            // task exists yet: the last moment to hand the controllers on before CRIU moves the
            // others into child groups and reopens files in them.
            if n.script() == "post-setup-namespaces"
                && let Some(dir) = spec.cgroups.unified_dir()
                && let Err(e) = crate::cgroup::rebuild_tree(&dir, &meta.cgroup_tree)
            {
                hook_error = Some(format!(
                    "rebuilding the container's cgroup tree in {}: {e}",
                    dir.display()
                ));
                return false;
            }
            true
        },
    );
    drop((con_fd, ctty_fd));
    drop(root_guard);
    if resp.is_err() {
        // killed (or died): its cgroup yard is left mounted in our namespace
        super::sweep_cgyards(&spec.run_dir);
    }
    if let Some(e) = hook_error {
        return Err(Other(Error::Setup {
            step: format!("restore ({e}) (log: {})", log.display()),
            errno: 0,
        }));
    }
    let resp = match resp {
        Ok(r) if r.success() => r,
        Ok(r) => {
            return Err(Other(Error::Setup {
                step: failure("restore", &seen, Ok(&r), &log).to_string(),
                errno: 0,
            }));
        }
        Err(e) => {
            let f = Error::Setup {
                step: failure("restore", &seen, Err(&e), &log).to_string(),
                errno: 0,
            };
            return Err(if super::was_killed(&e) {
                Killed(f, log)
            } else {
                Other(f)
            });
        }
    };
    let pid = resp.restore.pid();
    if pid <= 0 {
        return Err(Other(fail("restore", "criu reported no pid")));
    }
    let pidfd = sys::pidfd_open(pid).map_err(|e| fail("open the restored init", e))?;
    Ok(Started {
        pid,
        pidfd,
        console: console.master,
        console_slave: console.slave,
        console_path: console.slave_path,
    })
}

/// The veth pairs of the container, re-created into the empty network namespace of `pid`,
/// then `lo`, addresses and routes configured from inside it.
fn network(spec: &ContainerSpec, pid: i32) -> Result<()> {
    if !spec.nics.is_empty() {
        let mut nl = crate::net::Netlink::open()?;
        for nic in &spec.nics {
            nl.add_veth(nic, pid)?;
        }
    }
    let own = std::fs::File::open("/proc/self/ns/net")
        .map_err(|e| fail("open our network namespace", e))?;
    let theirs = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|e| fail("open the restored network namespace", e))?;
    sys::setns(theirs.as_fd(), libc::CLONE_NEWNET)
        .map_err(|e| fail("enter the restored network namespace", e))?;
    let res = crate::launch::configure_network(&spec.nics);
    sys::setns(own.as_fd(), libc::CLONE_NEWNET)
        .map_err(|e| fail("leave the restored network namespace", e))?;
    res
}

/// The root CRIU restores onto: an idmapped mount of the rootfs attached under the run
/// directory (the rootfs itself when it was shifted instead), detached again afterwards.
struct RootMount {
    path: PathBuf,
    mounted: bool,
}

impl RootMount {
    fn prepare(spec: &ContainerSpec) -> Result<RootMount> {
        if spec.shifted {
            return Ok(RootMount {
                path: spec.rootfs.clone(),
                mounted: false,
            });
        }
        let path = spec.run_dir.join("restore-root");
        let _ = sys::umount2(&path, libc::MNT_DETACH);
        std::fs::create_dir_all(&path).map_err(|e| fail("create the restore root", e))?;
        let tree = crate::storage::idmapped_tree(&spec.rootfs, &spec.idmap)?;
        sys::move_mount_to(tree.as_fd(), &path)
            .map_err(|e| fail("attach the idmapped rootfs", e))?;
        Ok(RootMount {
            path,
            mounted: true,
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RootMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = sys::umount2(&self.path, libc::MNT_DETACH);
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}
