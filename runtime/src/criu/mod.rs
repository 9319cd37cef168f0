//! CRIU, spoken to over its RPC protocol: one `criu swrk` child per request, a SOCK_SEQPACKET
//! pair, protobuf messages (the types of the `rust-criu` crate). Speaking the protocol directly
//! rather than through `rust_criu::Criu` gives every option (`network_lock`, `cg_root`,
//! `ghost_limit`…), notifications handled by a closure (so no global state), and the restore
//! response with the restored pid.
//!
//! What berth containers need from CRIU (measured on CRIU 4.2.1, see docs/architecture.md):
//! every bind-mounted host device node and the console are external mounts; the console pty
//! and the host's `/dev/tty` are external ttys, handed back at restore as inherited fds of a
//! new pty; network locking uses nftables; the restore runs with `rst_sibling` from the
//! monitor so the restored init is its child, onto an idmapped mount of the rootfs made on the
//! host, in an empty network namespace whose veth the monitor re-creates when CRIU says the
//! namespaces exist.

pub mod checkpoint;
pub mod images;
pub mod preflight;
pub mod prepare;
pub mod recover;
pub mod restore;

use protobuf::Message;
use rust_criu::rust_criu_protobuf::rpc;
use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

/// The oldest CRIU berth works with: 3.17 fails on this kernel's vDSO and 4.1 cannot dump
/// network sockets here.
pub const MIN_VERSION: (u32, u32) = (4, 2);

/// Host device nodes berth bind-mounts into every container's /dev, and the console: each is
/// an external mount `dev_<name>` to CRIU. One list for both directions.
pub const DEV_MOUNTS: &[&str] = &[
    "null", "zero", "full", "random", "urandom", "tty", "console",
];

/// Unlinked-but-open files up to this size are copied into the images.
pub const GHOST_LIMIT: u32 = 64 << 20;

/// What a checkpoint records next to CRIU's images for its restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// CRIU's key of the console pty slave at dump time (`tty[rdev:dev]`).
    pub console_key: String,
    /// CRIU's key of the host's `/dev/tty`.
    pub ctty_key: String,
    /// The CRIU version that wrote the images.
    pub criu_version: String,
    /// When (µs since the epoch).
    pub created_at_us: u64,
    /// Bytes of memory pages dumped.
    pub memory_bytes: u64,
    /// The container's cgroup v2 tree at dump time, with the controllers each group handed
    /// to its children (a systemd inside makes groups and enables controllers at boot). CRIU
    /// recreates only the groups that held processes, restores no property of the
    /// container's own group (it exists), and the properties of the others only after it
    /// reopened the files in them: the restore rebuilds this tree once CRIU's root task has
    /// left the container's group (it enters it to root its cgroup namespace). Without it
    /// CRIU cannot reopen systemd's inotify watches on `cgroup.events` of empty groups and
    /// `memory.events` of its units.
    #[serde(default)]
    pub cgroup_tree: Vec<crate::cgroup::TreeGroup>,
}

/// The file holding [`CheckpointMeta`] in an images directory.
pub const META_FILE: &str = "berth-checkpoint.json";

/// A failed CRIU request: the step it failed at, the first error CRIU logged, and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Where it failed (the last notification seen, or the phase).
    pub step: String,
    /// The first error line of the log (or CRIU's own message).
    pub message: String,
    /// The full log.
    pub log: Option<PathBuf>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step, self.message)?;
        if let Some(l) = &self.log {
            write!(f, " (log: {})", l.display())?;
        }
        Ok(())
    }
}

/// Finds the criu binary: `$BERTH_CRIU`, then /usr/local/sbin (where setup builds 4.2.1),
/// then the usual places.
pub fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BERTH_CRIU") {
        return Some(PathBuf::from(p));
    }
    [
        "/usr/local/sbin/criu",
        "/usr/sbin/criu",
        "/usr/local/bin/criu",
        "/usr/bin/criu",
        "/sbin/criu",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

/// Parses `criu --version` output ("Version: 4.2.1").
pub fn parse_version(out: &str) -> Option<(u32, u32, u32)> {
    let v = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Version:"))?
        .trim();
    let mut it = v.split(['.', '-']).map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
}

/// Whether stateful operations can work on this host: CRIU present, recent enough, `criu check`
/// passing and nftables network locking built in. Returns the version, or why not.
pub fn probe(criu: Option<&Path>) -> Result<String, String> {
    let Some(criu) = criu else {
        return Err(
            "CRIU is not installed (scripts/setup builds CRIU 4.2.1 into /usr/local/sbin)".into(),
        );
    };
    let run = |args: &[&str]| std::process::Command::new(criu).args(args).output();
    let out = run(&["--version"]).map_err(|e| format!("cannot run {}: {e}", criu.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (ma, mi, pa) = parse_version(&text)
        .ok_or_else(|| format!("cannot read the version of {}", criu.display()))?;
    if (ma, mi) < MIN_VERSION {
        return Err(format!(
            "CRIU {ma}.{mi}.{pa} at {} is too old: berth needs {}.{} or newer (3.17 fails on this kernel's vDSO, 4.1 cannot dump network sockets); scripts/setup builds 4.2.1",
            criu.display(),
            MIN_VERSION.0,
            MIN_VERSION.1
        ));
    }
    let check = run(&["check"]).map_err(|e| format!("cannot run {} check: {e}", criu.display()))?;
    if !check.status.success() {
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let first = all
            .lines()
            .find(|l| l.contains("Error") || l.contains("error"))
            .or_else(|| all.lines().next())
            .unwrap_or("")
            .trim();
        return Err(format!("`criu check` fails on this kernel: {first}"));
    }
    let nft = run(&["check", "--feature", "network_lock_nftables"]).map_err(|e| e.to_string())?;
    if !nft.status.success() {
        return Err(format!(
            "CRIU at {} was built without nftables support, which berth uses to lock the network",
            criu.display()
        ));
    }
    Ok(format!("{ma}.{mi}.{pa}"))
}

/// CRIU's key of an external tty: `tty[<st_rdev>:<st_dev>]` in hex.
pub fn tty_key(path: &Path) -> std::io::Result<String> {
    let m = std::fs::metadata(path)?;
    Ok(format!("tty[{:x}:{:x}]", m.rdev(), m.dev()))
}

/// The first error CRIU logged (known noise skipped), without its timestamp and source.
pub fn first_error(log: &Path) -> Option<String> {
    const NOISE: &[&str] = &[
        "RLIMIT_NOFILE",
        "iptables",
        "ip6tables",
        "Can't create a temporary directory",
        "Address already assigned",
    ];
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .find(|l| l.contains("Error (") && !NOISE.iter().any(|n| l.contains(n)))
        .map(|l| {
            let l = l.trim();
            match l.find("): ") {
                Some(i) if l.starts_with('(') || l.contains("Error (") => {
                    l[i + 3..].trim().to_string()
                }
                _ => l.to_string(),
            }
        })
}

/// How [`call`] watches a CRIU: how long it may go silent, how much it may log.
#[derive(Clone, Copy, Debug)]
pub struct Watch {
    /// How long CRIU may go without a word to us and without a line in its log (it logs at
    /// debug level, every few milliseconds while it works) before it is taken for hung.
    pub stall: std::time::Duration,
    /// How large its log may grow before it is taken for looping.
    pub log_cap: u64,
}

impl Watch {
    /// The watch for a CRIU working on `bytes` of memory.
    ///
    /// Stall: `$BERTH_CRIU_STALL_SECS` (60 by default) plus a second per 20 MiB, for a slow
    /// disk. Seen twice in the VM tier (pure cgroup v2 under TCG), not reproduced in 150 tries
    /// since: a dump, and a restore whose log ended in CRIU's wait for every restored task to
    /// reach its final sigreturn; each held the container by ptrace for good, and every later
    /// call on it was `Busy`.
    ///
    /// Log: `$BERTH_CRIU_LOG_MIB` (128 by default) MiB plus 1 byte per 64 of memory. A CRIU
    /// log grows with the number of mappings and page runs, some MiB for a large container;
    /// CRIU 4.2.1 restoring from a pages image shorter than its pagemap loops for good
    /// writing the same line, gigabytes a minute, into the log on the host's /run.
    pub fn for_memory(bytes: u64) -> Watch {
        let env = |k: &str, default: u64| {
            std::env::var(k)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .filter(|s| *s > 0)
                .unwrap_or(default)
        };
        Watch {
            stall: std::time::Duration::from_secs(
                env("BERTH_CRIU_STALL_SECS", 60) + bytes / (20 << 20),
            ),
            log_cap: (env("BERTH_CRIU_LOG_MIB", 128) << 20) + bytes / 64,
        }
    }
}

/// The start of the error [`call`] returns for a CRIU it killed as hung.
const STALLED: &str = "criu hung";

/// The start of the error [`call`] returns for a CRIU it killed for a log past its cap.
const RUNAWAY: &str = "criu ran away";

/// Whether an error of [`call`] is a CRIU killed as hung (see [`Watch`]).
pub fn is_stall(error: &str) -> bool {
    error.starts_with(STALLED)
}

/// Whether an error of [`call`] is a CRIU it killed (hung, or its log past the cap): what
/// CRIU had restored, or locked, is still there.
pub fn was_killed(error: &str) -> bool {
    is_stall(error) || error.starts_with(RUNAWAY)
}

/// How much of a runaway CRIU's log is kept: its start, where the cause is, and its end,
/// what it repeated.
const KEEP_HEAD: u64 = 4 << 20;
const KEEP_TAIL: u64 = 64 << 10;

/// Cuts the log of a CRIU killed for its size down to its first [`KEEP_HEAD`] and last
/// [`KEEP_TAIL`] bytes, with a line saying so between them.
pub(crate) fn cut_log(log: &Path) {
    use std::io::{Read, Seek, SeekFrom, Write};
    // appending, as CRIU's own writers do: a late line of theirs cannot overwrite ours
    let Ok(mut f) = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .open(log)
    else {
        return;
    };
    let Ok(len) = f.metadata().map(|m| m.len()) else {
        return;
    };
    if len <= KEEP_HEAD + KEEP_TAIL {
        return;
    }
    let mut tail = Vec::with_capacity(KEEP_TAIL as usize);
    if f.seek(SeekFrom::Start(len - KEEP_TAIL)).is_err()
        || (&mut f).take(KEEP_TAIL).read_to_end(&mut tail).is_err()
    {
        return;
    }
    if f.set_len(KEEP_HEAD).is_ok() {
        let _ = write!(
            f,
            "\n(berth: {} bytes of this log cut here; CRIU was killed for a log past its cap)\n",
            len - KEEP_HEAD - KEEP_TAIL
        );
        let _ = f.write_all(&tail);
    }
}

/// One request to a fresh `criu swrk`, answering its notifications with `notify` (whose
/// `false` makes CRIU abort). Returns CRIU's final response, successful or not. A CRIU that
/// neither answers nor writes to `log` for `watch.stall` is killed (its tracees go free: a
/// parasite cures itself when its control socket closes) and the error says so
/// ([`is_stall`]); the time spent in `notify` does not count. One whose log grows past
/// `watch.log_cap` is killed too, and its log cut ([`cut_log`]); a restore's tasks, outside
/// CRIU's process group, are the caller's to kill ([`was_killed`]).
pub(crate) fn call(
    criu: &Path,
    req: &rpc::Criu_req,
    log: &Path,
    watch: Watch,
    notify: &mut dyn FnMut(&rpc::Criu_notify) -> bool,
) -> Result<rpc::Criu_resp, String> {
    let stall = watch.stall;
    let mut sv = [0; 2];
    // SAFETY: sv is a valid out array. Our end gets CLOEXEC below; criu's end is inherited.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, sv.as_mut_ptr()) } < 0 {
        return Err(format!("socketpair: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fresh fds.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) };
    crate::sys::set_cloexec(ours.as_raw_fd(), true).map_err(|e| e.to_string())?;
    // in a process group of its own: a CRIU given up on is killed with the processes it
    // forked (seen: a hung dump's fork, holding its socket, outlived the dump)
    let mut child = std::process::Command::new(criu)
        .arg("swrk")
        .arg(theirs.as_raw_fd().to_string())
        .stdin(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("run {} swrk: {e}", criu.display()))?;
    drop(theirs);
    let send = |m: &rpc::Criu_req| -> Result<(), String> {
        let b = m.write_to_bytes().map_err(|e| e.to_string())?;
        // SAFETY: sending our buffer on our socket.
        let n = unsafe {
            libc::send(
                ours.as_raw_fd(),
                b.as_ptr().cast(),
                b.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n != b.len() as isize {
            return Err(format!("send to criu: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    };
    let log_len = || std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
    let res = (|| {
        send(req)?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let (mut quiet_since, mut seen_len) = (std::time::Instant::now(), log_len());
            loop {
                let mut p = libc::pollfd {
                    fd: ours.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                let r = unsafe { libc::poll(&mut p, 1, 250) };
                if r > 0 {
                    break;
                }
                if r < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(format!("poll the criu socket: {e}"));
                }
                let len = log_len();
                if len > watch.log_cap {
                    return Err(format!(
                        "{RUNAWAY}: its log passed {} MiB without an answer (looping?); killed it",
                        watch.log_cap >> 20
                    ));
                }
                if len != seen_len {
                    (quiet_since, seen_len) = (std::time::Instant::now(), len);
                } else if quiet_since.elapsed() >= stall {
                    return Err(format!(
                        "{STALLED}: no answer and nothing logged for {} s; killed it",
                        stall.as_secs()
                    ));
                }
            }
            // SAFETY: receiving into our buffer.
            let n = unsafe { libc::recv(ours.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                return Err("criu exited without answering (see its log)".to_string());
            }
            let resp = rpc::Criu_resp::parse_from_bytes(&buf[..n as usize])
                .map_err(|e| format!("unreadable answer from criu: {e}"))?;
            if resp.type_() != rpc::Criu_req_type::NOTIFY {
                return Ok(resp);
            }
            let mut ack = rpc::Criu_req::new();
            ack.set_type(rpc::Criu_req_type::NOTIFY);
            ack.set_notify_success(notify(&resp.notify));
            send(&ack)?;
        }
    })();
    drop(ours);
    if res.is_err() {
        // a CRIU we stopped listening to (hung, or unreadable) has nobody left to answer
        // SAFETY: kill(2) of the process group of our child, which it leads.
        unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = child.kill();
    }
    let _ = child.wait();
    if res.as_ref().is_err_and(|e| e.starts_with(RUNAWAY)) {
        cut_log(log);
    }
    res
}

/// What a restoring CRIU names its cgroup yard in its work directory.
const CGYARD: &str = ".criu.cgyard.";

/// The cgroup yards a restoring CRIU left in `work`, its work directory (a container's run
/// directory), unmounted and removed; returns them. CRIU mounts a tmpfs at
/// `<work>/.criu.cgyard.XXXXXX` with each cgroup hierarchy mounted again inside, in the mount
/// namespace of whoever runs it, and takes it down on its way out, but not when it is killed
/// (by the stall or log-cap watch, or as an orphan at start). Left, the yards pile up, one
/// per killed restore, and with `/` shared (every systemd host) they show in every namespace,
/// where a second mount of each hierarchy changes what a cgroup layout reads as. Only call
/// it while no CRIU works in `work` (a container's CRIUs run one at a time).
pub fn sweep_cgyards(work: &Path) -> Vec<PathBuf> {
    let Ok(work) = std::fs::canonicalize(work) else {
        return Vec::new();
    };
    let is_yard = |p: &Path| {
        p.parent() == Some(work.as_path())
            && p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(CGYARD))
    };
    let mut yards: Vec<PathBuf> = crate::sys::mounts_under(&work)
        .unwrap_or_default()
        .into_iter()
        .filter(|m| is_yard(m))
        .collect();
    yards.dedup();
    // detaching the tmpfs takes the hierarchies mounted in it along; one detach per mount
    // stacked there
    for y in &yards {
        for _ in 0..16 {
            if crate::sys::umount2(y, libc::MNT_DETACH).is_err() {
                break;
            }
        }
    }
    for e in std::fs::read_dir(&work).into_iter().flatten().flatten() {
        let p = e.path();
        // empty once unmounted; one still mounted, or not empty, is left as it is
        if is_yard(&p) && std::fs::remove_dir(&p).is_ok() && !yards.contains(&p) {
            yards.push(p);
        }
    }
    yards
}

/// Opens a directory for CRIU (`images_dir_fd`, `work_dir_fd`): CRIU reaches it through
/// `/proc/<caller>/fd/N`, so close-on-exec is fine.
pub(crate) fn open_dir(p: &Path) -> Result<OwnedFd, String> {
    std::fs::File::open(p)
        .map(OwnedFd::from)
        .map_err(|e| format!("open {}: {e}", p.display()))
}

pub(crate) fn ext_mount(key: &str, val: &str) -> rpc::Ext_mount_map {
    let mut m = rpc::Ext_mount_map::new();
    m.set_key(key.to_string());
    m.set_val(val.to_string());
    m
}

/// The statistics CRIU writes in its work directory (a container's run directory, which the
/// container's root must traverse) are created there 0644: made beforehand 0600 (CRIU keeps
/// the mode of a file it truncates), they stay root's alone like the logs beside them.
fn private_stats(work: &OwnedFd) {
    for name in [c"stats-dump", c"stats-restore"] {
        // SAFETY: openat on a directory fd we hold, with a valid C string.
        let fd = unsafe {
            libc::openat(
                work.as_raw_fd(),
                name.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                0o600,
            )
        };
        if fd >= 0 {
            // SAFETY: fd was just opened by us and is closed once here.
            unsafe {
                libc::fchmod(fd, 0o600);
                libc::close(fd);
            }
        }
    }
}

/// Options every berth dump and restore shares.
pub(crate) fn base_opts(images: &OwnedFd, work: &OwnedFd, log: &str) -> rpc::Criu_opts {
    private_stats(work);
    let mut o = rpc::Criu_opts::new();
    o.set_images_dir_fd(images.as_raw_fd());
    o.set_work_dir_fd(work.as_raw_fd());
    o.set_log_level(4);
    o.set_log_file(log.to_string());
    o.set_tcp_established(true);
    o.set_file_locks(true);
    o.set_link_remap(true);
    o.set_ghost_limit(GHOST_LIMIT);
    // inotify watches (systemd has many) are recorded by path, not by file handle: handles do
    // not resolve through the idmapped mount a restore runs on. A watch on a deleted file has
    // no path: berth's CRIU (scripts/criu/0002-…) restores it on the file's ghost
    o.set_force_irmap(true);
    o.set_notify_scripts(true);
    o
}

/// Where a dump or restore was when it failed, from the notifications seen (the clean-up
/// ones, `network-unlock`, say nothing).
pub(crate) fn step(phase: &str, seen: &[String]) -> String {
    let has = |s: &str| seen.iter().any(|x| x == s);
    let what = match phase {
        "dump" if has("post-dump") => "finishing the dump",
        "dump" if has("network-lock") => "dumping the processes (network locked)",
        "dump" => "collecting the process tree",
        _ if has("post-restore") => "resuming the restored processes",
        _ if has("post-setup-namespaces") => "restoring the processes",
        _ if has("setup-namespaces") => "setting up the restored namespaces",
        _ => "preparing the restore",
    };
    format!("{phase}: {what}")
}

/// A failure from CRIU's answer, the log and the notifications seen.
pub(crate) fn failure(
    phase: &str,
    seen: &[String],
    resp: Result<&rpc::Criu_resp, &str>,
    log: &Path,
) -> Failure {
    let step = step(phase, seen);
    // (with the first error of the log, if it has one: what led there)
    let stalled = match resp {
        Err(e) if was_killed(e) => Some(match first_error(log) {
            Some(first) => format!("{e} (its log's first error: {first})"),
            None => e.to_string(),
        }),
        _ => None,
    };
    let message = stalled
        .or_else(|| first_error(log))
        .unwrap_or_else(|| match resp {
            Ok(r) if !r.cr_errmsg().is_empty() => r.cr_errmsg().to_string(),
            Ok(r) => format!("criu failed (errno {})", r.cr_errno()),
            Err(e) => e.to_string(),
        });
    Failure {
        step,
        message,
        log: log.exists().then(|| log.to_path_buf()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup_yards_a_killed_restore_left_are_swept_and_nothing_else() {
        // SAFETY: geteuid has no failure mode.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let dir = std::env::temp_dir().join(format!("berth-cgyard-test-{}", std::process::id()));
        let tmpfs = |at: &Path| {
            std::fs::create_dir_all(at).unwrap();
            crate::sys::mount(Some(Path::new("none")), at, Some(c"tmpfs"), 0, None).unwrap();
        };
        // a yard as CRIU makes it: a tmpfs, a hierarchy mounted in it (a tmpfs stands in)
        let yard = dir.join(".criu.cgyard.Ab12Cd");
        tmpfs(&yard);
        tmpfs(&yard.join("pids"));
        // one made but not mounted yet when CRIU was killed
        let bare = dir.join(".criu.cgyard.Zz9Yy8");
        std::fs::create_dir_all(&bare).unwrap();
        // what is not a yard stays: a mount, a yard-named file, a yard one level down
        let other = dir.join("rootfs");
        tmpfs(&other);
        std::fs::write(dir.join(".criu.cgyard.file"), b"x").unwrap();
        let deeper = dir.join("sub/.criu.cgyard.Qq1Ww2");
        tmpfs(&deeper);
        let canon = std::fs::canonicalize(&dir).unwrap();

        let mut swept = sweep_cgyards(&dir);
        swept.sort();
        assert_eq!(
            swept,
            [
                canon.join(".criu.cgyard.Ab12Cd"),
                canon.join(".criu.cgyard.Zz9Yy8")
            ]
        );
        assert!(!yard.exists() && !bare.exists());
        assert_eq!(
            crate::sys::mounts_under(&canon).unwrap(),
            [canon.join("rootfs"), canon.join("sub/.criu.cgyard.Qq1Ww2")]
        );
        assert!(dir.join(".criu.cgyard.file").exists());
        assert!(sweep_cgyards(&dir).is_empty(), "nothing is left to sweep");

        for m in [&deeper, &other] {
            crate::sys::umount2(m, 0).unwrap();
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("Version: 4.2.1\n"), Some((4, 2, 1)));
        assert_eq!(
            parse_version("Version: 3.17\nGitID: v3.17\n"),
            Some((3, 17, 0))
        );
        assert_eq!(parse_version("nonsense"), None);
    }

    /// A fake `criu` (a shell script: `criu swrk FD`), written by a child process so that no
    /// writable fd on it leaks into a process another test thread forks (ETXTBSY at exec).
    fn fake_criu(name: &str, script: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("berth-fake-criu-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        let st = std::process::Command::new("sh")
            .args([
                "-c",
                "printf '%s\\n' \"$1\" > \"$2\" && chmod 755 \"$2\"",
                "sh",
            ])
            .arg(format!("#!/bin/sh\n{script}"))
            .arg(&path)
            .status()
            .unwrap();
        assert!(st.success());
        path
    }

    /// The error of a dump request to the fake `criu`, which never answers.
    fn failed_dump(criu: &Path, log: &Path, stall: std::time::Duration) -> String {
        let mut req = rpc::Criu_req::new();
        req.set_type(rpc::Criu_req_type::DUMP);
        let watch = Watch {
            stall,
            log_cap: 1 << 30,
        };
        call(criu, &req, log, watch, &mut |_| true).unwrap_err()
    }

    /// A scratch directory for fake CRIU `name`: it, its log and its pid file.
    fn scratch(name: &str) -> (PathBuf, PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("berth-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (log, pid) = (
            dir.join(format!("{name}.log")),
            dir.join(format!("{name}.pid")),
        );
        (dir, log, pid)
    }

    /// The fake CRIU that wrote its pid to `pidfile` was killed and reaped.
    fn assert_gone(pidfile: &Path) {
        let pid = std::fs::read_to_string(pidfile).unwrap();
        assert!(
            !Path::new(&format!("/proc/{}", pid.trim())).exists(),
            "the fake criu {} still runs",
            pid.trim()
        );
    }

    #[test]
    fn a_criu_that_logs_without_end_is_killed_and_its_log_cut() {
        let (dir, log, pidfile) = scratch("runaway");
        // CRIU 4.2.1 on a short pages image: the same line, for good, ~80 MB/s
        let criu = fake_criu(
            "runaway",
            &format!(
                "echo $$ > {}\necho 'Error (criu/x.c:1): the cause' > {}\nyes 'Advanced iov 0 bytes, 3->3 iovs, 0 tail' >> {}",
                pidfile.display(),
                log.display(),
                log.display()
            ),
        );
        let mut req = rpc::Criu_req::new();
        req.set_type(rpc::Criu_req_type::RESTORE);
        let watch = Watch {
            stall: std::time::Duration::from_secs(600),
            log_cap: 32 << 20,
        };
        let e = call(&criu, &req, &log, watch, &mut |_| true).unwrap_err();
        assert!(was_killed(&e) && !is_stall(&e), "{e}");
        assert!(e.contains("32 MiB"), "{e}");
        assert_gone(&pidfile);
        // (and perhaps a last write of the dying `yes`, 8 KiB at most)
        let len = std::fs::metadata(&log).unwrap().len();
        assert!(len <= KEEP_HEAD + KEEP_TAIL + 200 + 8192, "{len}");
        let text = String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned();
        assert!(
            text.starts_with("Error (criu/x.c:1): the cause"),
            "the start is kept"
        );
        assert!(text.contains("bytes of this log cut here"));
        // (the end of the log, perhaps in the middle of a line)
        assert!(
            text[text.len() - 200..].contains("Advanced iov 0 bytes, 3->3 iovs, 0 tail"),
            "the end is kept"
        );
        let f = failure("restore", &[], Err(&e), &log);
        assert!(f.message.starts_with(RUNAWAY), "{}", f.message);
        assert!(
            f.message.contains("first error: the cause"),
            "{}",
            f.message
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_criu_that_neither_answers_nor_logs_is_killed() {
        let (_, log, pidfile) = scratch("silent");
        let criu = fake_criu(
            "silent",
            &format!("echo $$ > {}\nexec sleep 600", pidfile.display()),
        );
        let t = std::time::Instant::now();
        let e = failed_dump(&criu, &log, std::time::Duration::from_secs(1));
        assert!(is_stall(&e), "{e}");
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            t.elapsed()
        );
        assert_gone(&pidfile);
    }

    #[test]
    fn a_criu_that_logs_is_not_taken_for_hung() {
        let dir = std::env::temp_dir().join(format!("berth-busy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("busy.log");
        // logs for 3 s, twice the stall limit, then exits without an answer
        let criu = fake_criu(
            "busy",
            &format!(
                "for i in 1 2 3 4 5 6; do echo line $i >> {}; sleep 0.5; done",
                log.display()
            ),
        );
        let e = failed_dump(&criu, &log, std::time::Duration::from_millis(1500));
        assert!(!is_stall(&e), "{e}");
        assert!(e.contains("exited without answering"), "{e}");
    }

    #[test]
    fn first_error_skips_noise() {
        let p = std::env::temp_dir().join(format!("berth-criu-log-{}", std::process::id()));
        std::fs::write(
            &p,
            "(00.001) Error (criu/rlimit.c:12): rlimit: Can't setup RLIMIT_NOFILE\n(00.100) Error (criu/sk-queue.c:505): skqueue: Control messages in queue, not supported\n(00.2) Error (criu/cr-dump.c:1): Dumping FAILED.\n",
        )
        .unwrap();
        assert_eq!(
            first_error(&p).as_deref(),
            Some("skqueue: Control messages in queue, not supported")
        );
        let _ = std::fs::remove_file(&p);
    }
}
