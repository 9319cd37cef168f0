//! What a dump leaves on a running container when the berthd that asked for it dies midway,
//! found and undone when berthd starts again (no dump of the new berthd's can be running then).
//!
//! Measured with CRIU 4.2.1, berthd killed 30–400 ms into a dump: `criu swrk` ignores
//! SIGPIPE, so it outlives berthd (reparented to init) and dumps on until its next
//! notification, which fails on the closed socket. It then aborts as after any error: it lets
//! the processes go and removes its network lock (the `inet CRIU-<init pid>` nftables table in
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

/// Names of CRIU's network-lock tables in `nft list tables` output (`table inet CRIU-123`).
pub fn lock_tables(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next(), w.next(), w.next()) {
                (Some("table"), Some(family), Some(name), None) if name.starts_with("CRIU-") => {
                    Some(format!("{family} {name}"))
                }
                _ => None,
            }
        })
        .collect()
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
    for table in lock_tables(&nft(&["list", "tables"])?) {
        let (family, name) = table.split_once(' ').unwrap_or(("inet", table.as_str()));
        nft(&["delete", "table", family, name])?;
        removed.push(table);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_criu_lock_tables_only() {
        let listing = "table inet filter\ntable inet CRIU-4242\ntable ip CRIU-7\ntable inet CRIUX\ntable inet notCRIU-1\n";
        assert_eq!(lock_tables(listing), ["inet CRIU-4242", "ip CRIU-7"]);
        assert!(lock_tables("").is_empty());
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
