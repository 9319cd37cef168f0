//! What a dump leaves on a running container when the berthd that asked for it dies midway,
//! found and undone when berthd starts again (no dump of the new berthd's can be running then).
//!
//! Measured with CRIU 4.2.1, berthd killed 30–400 ms into a dump: `criu swrk` ignores
//! SIGPIPE, so it outlives berthd (reparented to init) and dumps on until its next
//! notification, which fails on the closed socket. It then aborts as after any error: it lets
//! the processes go and removes its network lock (the `inet CRIU-<run id>` nftables table in
//! the container's network namespace) — but it also puts the freezer cgroup back the way it
//! found it, and berth had frozen it beforehand: the container stays frozen for good. While
//! CRIU works it holds the processes by ptrace with the cgroup thawed, and freezes it again at
//! the end, so a thaw is only safe once that CRIU is gone. A CRIU killed meanwhile leaves its
//! network lock behind, which nobody else would remove.

use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::time::Duration;

/// A `criu` process a previous berthd started, still working on a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanCriu {
    /// Its pid.
    pub pid: libc::pid_t,
    /// The container whose run directory (`<run>/containers/<name>/`: CRIU's work directory
    /// and log) it has open.
    pub container: String,
}

/// `criu` processes that are not children of the calling process and have a file open in a
/// container's run directory under `containers_dir` (`<run>/containers`).
pub fn orphan_criu(containers_dir: &Path) -> Vec<OrphanCriu> {
    // SAFETY: getpid has no failure mode.
    let me = unsafe { libc::getpid() };
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for e in rd.flatten() {
        let Some(pid) = e
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid …": comm may hold spaces and parentheses, so split at the last ')'
        let Some((head, tail)) = stat.rsplit_once(')') else {
            continue;
        };
        if !head.ends_with("(criu") {
            continue;
        }
        let ppid = tail
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<libc::pid_t>().ok());
        if ppid == Some(me) {
            continue;
        }
        if let Some(container) = container_of(pid, containers_dir) {
            found.push(OrphanCriu { pid, container });
        }
    }
    found
}

/// The container whose run directory process `pid` has a file open in.
fn container_of(pid: libc::pid_t, containers_dir: &Path) -> Option<String> {
    let rd = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    rd.flatten().find_map(|fd| {
        let target = std::fs::read_link(fd.path()).ok()?;
        let rest = target.strip_prefix(containers_dir).ok()?;
        rest.components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
    })
}

/// How an orphan CRIU ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It exited on its own (or was gone already).
    Exited,
    /// It was still running after the wait and was killed.
    Killed,
}

/// Waits up to `timeout` for process `pid` to exit, then kills it (and waits for that).
pub fn wait_or_kill(pid: libc::pid_t, timeout: Duration) -> std::io::Result<Ended> {
    let pidfd = match crate::sys::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(Ended::Exited),
        Err(e) => return Err(e),
    };
    if exited_within(pidfd.as_raw_fd(), timeout)? {
        return Ok(Ended::Exited);
    }
    crate::sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL)?;
    exited_within(pidfd.as_raw_fd(), Duration::from_secs(5))?;
    Ok(Ended::Killed)
}

/// Whether the process of `pidfd` exits within `timeout` (a pidfd polls readable then).
fn exited_within(pidfd: libc::c_int, timeout: Duration) -> std::io::Result<bool> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut p = libc::pollfd {
            fd: pidfd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe {
            libc::poll(
                &mut p,
                1,
                left.as_millis().min(i32::MAX as u128) as libc::c_int,
            )
        };
        match r {
            1.. => return Ok(true),
            0 => return Ok(false),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// CRIU's network-lock tables in `nft -j list tables` output, as (family, name, handle):
/// `CRIU-` and CRIU's run id (a UUID, or a pid for old images). The listing is the
/// container's to fill: its root may name a table anything through netlink, which `nft
/// list` prints unquoted, so a name is taken only when it is one CRIU can have made, and the
/// table is deleted by its handle (a number), never by a name `nft` would parse: a table
/// named `CRIU-1;include"/etc/shadow"` had `nft delete table` read that file as root in the
/// host's mount namespace and print it into berthd's error.
pub fn lock_tables(listing: &str) -> Vec<(String, String, u64)> {
    let v: serde_json::Value = serde_json::from_str(listing).unwrap_or_default();
    v["nftables"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| {
                    let t = i.get("table")?;
                    let family = t["family"].as_str()?;
                    let name = t["name"].as_str()?;
                    let handle = t["handle"].as_u64()?;
                    let id = name.strip_prefix("CRIU-")?;
                    (matches!(family, "inet" | "ip" | "ip6")
                        && !id.is_empty()
                        && id.len() <= 36
                        && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
                    .then(|| (family.to_string(), name.to_string(), handle))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Removes CRIU's network-lock tables from the network namespace of process `pid` (the
/// container's init) with `nft` run in that namespace. Returns the tables removed.
pub fn remove_network_locks(pid: libc::pid_t) -> Result<Vec<String>, String> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|e| format!("open the network namespace of {pid}: {e}"))?;
    let nft = |args: &[&str]| -> Result<String, String> {
        let mut cmd = std::process::Command::new(
            crate::storage::which("nft").unwrap_or_else(|| "nft".into()),
        );
        cmd.args(args).stdin(std::process::Stdio::null());
        let fd = ns.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only calls setns(2),
        // which is async-signal-safe, on an fd open in the parent.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                if libc::setns(fd, libc::CLONE_NEWNET) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output().map_err(|e| format!("run nft: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "nft {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let mut removed = Vec::new();
    let mut failed = Vec::new();
    // every one is tried: the container's root can make a table of such a name that we may
    // not delete (one it owns, NFT_TABLE_F_OWNER), and it would be listed before CRIU's
    for (family, name, handle) in lock_tables(&nft(&["-j", "list", "tables"])?) {
        match nft(&["delete", "table", &family, "handle", &handle.to_string()]) {
            Ok(_) => removed.push(format!("{family} {name}")),
            Err(e) => failed.push(e),
        }
    }
    if failed.is_empty() {
        Ok(removed)
    } else {
        Err(format!(
            "removed [{}], failed: {}",
            removed.join(", "),
            failed.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_criu_lock_tables_only() {
        let table = |family: &str, name: &str, handle: u64| serde_json::json!({"table": {"family": family, "name": name, "handle": handle}});
        let listing = serde_json::json!({"nftables": [
            {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            table("inet", "filter", 1),
            table("inet", "CRIU-4242", 2),
            table("ip", "CRIU-9b2f0c1e-5d1a-4c39-8a7e-0123456789ab", 3),
            table("inet", "CRIUX", 4),
            table("inet", "notCRIU-1", 5),
            table("bridge", "CRIU-7", 6),
            // what a container's root can name a table through netlink
            table("inet", "CRIU-1;include\"/etc/shadow\"", 7),
            table("inet", "CRIU-1\ntable inet CRIU-2", 8),
            table("inet", "CRIU-", 9),
        ]})
        .to_string();
        let found: Vec<_> = lock_tables(&listing)
            .into_iter()
            .map(|(f, n, h)| format!("{f} {n} {h}"))
            .collect();
        assert_eq!(
            found,
            [
                "inet CRIU-4242 2",
                "ip CRIU-9b2f0c1e-5d1a-4c39-8a7e-0123456789ab 3"
            ]
        );
        assert!(lock_tables("").is_empty());
        assert!(lock_tables("table inet CRIU-1").is_empty());
    }

    #[test]
    fn a_process_that_exits_is_waited_for_and_one_that_does_not_is_killed() {
        let mut quick = std::process::Command::new("sleep")
            .arg("0.05")
            .spawn()
            .unwrap();
        // (a child of ours: reap it in the background so that its pidfd turns readable)
        let pid = quick.id() as libc::pid_t;
        let reaper = std::thread::spawn(move || quick.wait());
        assert_eq!(
            wait_or_kill(pid, Duration::from_secs(10)).unwrap(),
            Ended::Exited
        );
        reaper.join().unwrap().unwrap();
        let mut slow = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let pid = slow.id() as libc::pid_t;
        let t = std::time::Instant::now();
        let reaper = std::thread::spawn(move || slow.wait());
        assert_eq!(
            wait_or_kill(pid, Duration::from_millis(100)).unwrap(),
            Ended::Killed
        );
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(!reaper.join().unwrap().unwrap().success());
        assert_eq!(
            wait_or_kill(pid, Duration::from_millis(10)).unwrap(),
            Ended::Exited,
            "gone already"
        );
    }
}
