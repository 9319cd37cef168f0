//! Dumping a running container with CRIU.
//!
//! The caller freezes the container's cgroup first (CRIU polls a v1 freezer in 100 ms steps
//! and often loses one; a cgroup frozen beforehand is simply seized) and thaws it afterwards.
//! CRIU then dumps the tree with the network locked through nftables; the `post-dump`
//! notification arrives while the tree is still frozen, and is where the caller copies the
//! files so that memory and files agree. Without `leave_running` CRIU kills the tree once it
//! is dumped.

use super::{
    CheckpointMeta, DEV_MOUNTS, Failure, META_FILE, base_opts, call, ext_mount, failure, open_dir,
    tty_key,
};
use protobuf::MessageField;
use rust_criu::rust_criu_protobuf::rpc;
use std::path::Path;
use std::time::{Duration, Instant};

/// What to dump and where.
#[derive(Debug, Clone)]
pub struct DumpPlan<'a> {
    /// The criu binary.
    pub criu: &'a Path,
    /// The container's init (host pid).
    pub pid: i32,
    /// The (empty) images directory.
    pub images: &'a Path,
    /// Where CRIU works and writes its log.
    pub work: &'a Path,
    /// The log's file name in `work`.
    pub log: &'a str,
    /// Keep the tree running (a snapshot) rather than killing it (a stateful stop).
    pub leave_running: bool,
    /// The container's freezer cgroup (v1 `freezer` or the v2 group), already frozen.
    pub freeze_cgroup: Option<&'a Path>,
    /// The container's cgroup v2 group, if it has one.
    pub cgroup2: Option<&'a Path>,
    /// Host path of the container's console pty slave.
    pub console: &'a Path,
    /// The CRIU version (recorded with the images).
    pub criu_version: &'a str,
    /// How CRIU is watched: how long it may go silent, how much it may log.
    pub watch: super::Watch,
}

/// What a dump produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DumpStats {
    /// Bytes of memory pages in the images.
    pub memory_bytes: u64,
    /// Bytes of all images.
    pub image_bytes: u64,
    /// How long CRIU took.
    pub criu_us: u64,
}

/// Dumps the tree of `plan.pid` into `plan.images`. `post_dump` runs while the tree is still
/// frozen (an error aborts the dump: CRIU then resumes the tree); `progress` gets the bytes of
/// memory written so far, about ten times a second.
pub fn dump(
    plan: &DumpPlan<'_>,
    post_dump: &mut dyn FnMut() -> Result<(), String>,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<DumpStats, Failure> {
    let log = plan.work.join(plan.log);
    let _ = std::fs::remove_file(&log);
    let early = |m: String| Failure {
        step: "prepare the dump".into(),
        message: m,
        log: None,
    };
    let console_key = tty_key(plan.console)
        .map_err(|e| early(format!("stat the console {}: {e}", plan.console.display())))?;
    let ctty_key =
        tty_key(Path::new("/dev/tty")).map_err(|e| early(format!("stat /dev/tty: {e}")))?;
    let images = open_dir(plan.images).map_err(early)?;
    let work = open_dir(plan.work).map_err(early)?;

    let mut o = base_opts(&images, &work, plan.log);
    o.set_pid(plan.pid);
    o.set_leave_running(plan.leave_running);
    o.set_network_lock(rpc::Criu_network_lock_method::NFTABLES);
    if let Some(f) = plan.freeze_cgroup {
        o.set_freeze_cgroup(f.to_string_lossy().into_owned());
    }
    o.ext_mnt = DEV_MOUNTS
        .iter()
        .map(|n| ext_mount(&format!("/dev/{n}"), &format!("dev_{n}")))
        .collect();
    o.external = vec![console_key.clone(), ctty_key.clone()];
    let mut req = rpc::Criu_req::new();
    req.set_type(rpc::Criu_req_type::DUMP);
    req.opts = MessageField::some(o);

    let started = Instant::now();
    let mut seen: Vec<String> = Vec::new();
    let mut hook_error: Option<String> = None;
    // the reporter wakes at once when the dump ends (a plain sleep would hold the scope,
    // and so the dump's reply, for up to its whole period)
    let (done, stop) = std::sync::mpsc::channel::<()>();
    let resp = std::thread::scope(|scope| {
        scope.spawn(move || {
            loop {
                progress(pages_bytes(plan.images));
                match stop.recv_timeout(Duration::from_millis(100)) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                    _ => break,
                }
            }
        });
        let r = call(plan.criu, &req, &log, plan.watch, &mut |n| {
            seen.push(n.script().to_string());
            if n.script() == "post-dump"
                && let Err(e) = post_dump()
            {
                hook_error = Some(e);
                return false;
            }
            true
        });
        drop(done);
        r
    });
    let criu_us = started.elapsed().as_micros() as u64;
    if let Some(e) = hook_error {
        return Err(Failure {
            step: "post-dump (copying the files while frozen)".into(),
            message: e,
            log: Some(log),
        });
    }
    match &resp {
        Ok(r) if r.success() => {}
        Ok(r) => return Err(failure("dump", &seen, Ok(r), &log)),
        Err(e) => return Err(failure("dump", &seen, Err(e.as_str()), &log)),
    }
    let memory_bytes = pages_bytes(plan.images);
    progress(memory_bytes);
    let meta = CheckpointMeta {
        console_key,
        ctty_key,
        criu_version: plan.criu_version.to_string(),
        created_at_us: crate::monitor::proto::now_us(),
        memory_bytes,
        cgroup_tree: plan
            .cgroup2
            .map(crate::cgroup::record_tree)
            .unwrap_or_default(),
    };
    let data = serde_json::to_vec_pretty(&meta).unwrap_or_default();
    std::fs::write(plan.images.join(META_FILE), data).map_err(|e| Failure {
        step: "record the checkpoint".into(),
        message: e.to_string(),
        log: None,
    })?;
    Ok(DumpStats {
        memory_bytes,
        image_bytes: apparent_size(plan.images),
        criu_us,
    })
}

/// Bytes of the files of an images directory (CRIU writes no subdirectories).
pub fn apparent_size(images: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(images) else {
        return 0;
    };
    rd.flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Bytes of memory pages written to an images directory so far.
pub fn pages_bytes(images: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(images) else {
        return 0;
    };
    rd.flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}
