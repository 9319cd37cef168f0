//! What a container holds that CRIU cannot checkpoint, found before anything is frozen: nested
//! user or pid namespaces, sockets of families CRIU does not know, device files other than
//! the ones berth itself provides, and (under a cgroup v1 freezer) stopped processes. Each
//! finding is one sentence naming the process.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Namespaces CRIU checkpoints only at the root of the tree (nested mount and network
/// namespaces it handles).
const NESTED: &[&str] = &["user", "pid", "uts", "ipc", "cgroup", "time"];

/// Socket families CRIU dumps.
const KNOWN_FAMILIES: &[i32] = &[
    libc::AF_UNIX,
    libc::AF_INET,
    libc::AF_INET6,
    libc::AF_NETLINK,
    libc::AF_PACKET,
];

/// Reasons the processes `pids` (init first) cannot be checkpointed; empty when they can.
pub fn check(init: i32, pids: &[i32]) -> Vec<String> {
    let mut reasons = Vec::new();
    let ns = |pid: i32, kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok();
    let init_ns: Vec<_> = NESTED.iter().map(|k| ns(init, k)).collect();
    let mut mounts = MountSets::default();
    for &pid in pids {
        let who = describe(pid);
        let mut nested = false;
        for (i, kind) in NESTED.iter().enumerate() {
            // a process that exits meanwhile has no namespaces left to compare
            let Some(mine) = ns(pid, kind) else { continue };
            if Some(&mine) != init_ns[i].as_ref() {
                // exec'd processes share init's namespaces; anything else made its own
                reasons.push(format!(
                    "{who} runs in a nested {kind} namespace, which CRIU cannot checkpoint{}",
                    hint(kind)
                ));
                nested = true;
            }
        }
        if nested {
            continue;
        }
        check_fds(pid, pids, &who, &mut mounts, &mut reasons);
    }
    reasons.dedup();
    reasons
}

/// Processes in a job-control stop, which CRIU cannot seize inside a cgroup v1 freezer.
/// There PTRACE_SEIZE asks a stopped task to trap again and waits for it, and a frozen task
/// never runs to do so: zdtm's vdso02, or any suspended job, hung CRIU until the stall watch
/// killed it, the container frozen all along, twice. The cgroup v2 freezer stops tasks
/// another way, and CRIU dumps and restores them stopped there (tested in a VM).
pub fn stopped(pids: &[i32]) -> Vec<String> {
    pids.iter()
        .filter(|p| is_stopped(**p))
        .map(|&p| {
            let who = describe(p);
            let inner = who
                .split_once(", pid ")
                .and_then(|(_, rest)| rest.split(' ').next())
                .unwrap_or("PID")
                .to_string();
            format!(
                "{who} is stopped (SIGSTOP, or Ctrl+Z in a shell), and on a cgroup v1 host CRIU \
                 waits forever to seize a stopped process in a frozen cgroup; continue it first \
                 (kill -CONT {inner} in the container) or end it"
            )
        })
        .collect()
}

/// Whether `pid` is in a job-control stop (`T`; not `t`, a ptrace stop).
fn is_stopped(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
    })
}

/// "process 1234 (sleep, pid 7 in the container)": the host pid and the container's.
fn describe(pid: i32) -> String {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string();
    let inner = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|l| l.split_whitespace().last())
                .map(str::to_string)
        })
        .filter(|p| p != &pid.to_string());
    match inner {
        Some(p) => format!("process {pid} ({comm}, pid {p} in the container)"),
        None => format!("process {pid} ({comm})"),
    }
}

/// The mount ids of each mount namespace met, read once per namespace.
#[derive(Default)]
struct MountSets(std::collections::HashMap<u64, std::collections::HashSet<u64>>);

impl MountSets {
    /// Whether mount `id` is one of `pid`'s mount namespace (None: cannot tell).
    fn contains(&mut self, pid: i32, id: u64) -> Option<bool> {
        let ns = crate::sys::ns_inode(Some(pid), "mnt").ok()?;
        let ids = match self.0.entry(ns) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let mi = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
                e.insert(
                    mi.lines()
                        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
                        .collect(),
                )
            }
        };
        Some(ids.contains(&id))
    }
}

/// The mount an open file lives on (`mnt_id:` of its fdinfo).
fn fd_mount(pid: i32, fd: i32) -> Option<u64> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// What a systemd unit setting behind a nested namespace is called.
fn hint(kind: &str) -> &'static str {
    match kind {
        "uts" => " (a systemd unit with ProtectHostname=yes?)",
        "ipc" => " (a systemd unit with PrivateIPC=yes?)",
        "user" => " (a systemd unit with PrivateUsers=yes?)",
        _ => "",
    }
}

fn check_fds(pid: i32, pids: &[i32], who: &str, mounts: &mut MountSets, reasons: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return;
    };
    let pidfd = crate::sys::pidfd_open(pid).ok();
    for e in rd.flatten() {
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        let fd: i32 = e.file_name().to_string_lossy().parse().unwrap_or(-1);
        if let Some(kind) = target.strip_prefix("anon_inode:") {
            let kind = kind.trim_matches(['[', ']']);
            if matches!(
                kind,
                "io_uring"
                    | "userfaultfd"
                    | "perf_event"
                    | "bpf-map"
                    | "bpf-prog"
                    | "bpf_link"
                    | "kvm-vm"
                    | "kvm-vcpu"
            ) {
                reasons.push(format!(
                    "{who} has an {kind} descriptor open (fd {fd}), which CRIU cannot checkpoint"
                ));
            }
        } else if target.starts_with("socket:") {
            if let Some(pidfd) = &pidfd
                && let Some((family, kind, protocol)) = socket_kind(pidfd, fd)
            {
                if !KNOWN_FAMILIES.contains(&family) {
                    reasons.push(format!("{who} has a socket of address family {family} open (fd {fd}), which CRIU cannot checkpoint"));
                } else if kind == libc::SOCK_DGRAM
                    && ((family, protocol) == (libc::AF_INET, libc::IPPROTO_ICMP)
                        || (family, protocol) == (libc::AF_INET6, libc::IPPROTO_ICMPV6))
                {
                    // CRIU makes the socket again with its own credentials, the host's root,
                    // which no container's net.ipv4.ping_group_range holds: EACCES, found only
                    // once the container is gone (zdtm's socket_icmp)
                    reasons.push(format!("{who} has a ping socket (ICMP datagram) open (fd {fd}), which CRIU cannot restore in a container: it would make it again as the host's root, outside the container's net.ipv4.ping_group_range"));
                } else if kind != libc::SOCK_RAW
                    && matches!(protocol, libc::IPPROTO_SCTP | 262 /* MPTCP */)
                {
                    // a raw socket's protocol is only the IP protocol number it receives
                    // (zdtm's socket-raw opens one per number): CRIU dumps those
                    reasons.push(format!("{who} has an SCTP or MPTCP socket open (fd {fd}), which CRIU cannot checkpoint"));
                }
            }
        } else if target.starts_with('/') && !target.starts_with("/memfd:") {
            // (a memfd's link reads "/memfd:NAME (deleted)", on the kernel's internal shm
            // mount: CRIU dumps memfds; zdtm's memfd00–05 were refused as host files)
            // a file of the host (the stdio of a `berth exec` whose process was left running
            // in the background, say): CRIU finds no mount in the container to put it on
            // (device nodes are judged below: the console is a host pty CRIU takes as external;
            // but the host's /dev/null, which an exec's stdin may be, is on no mount of the
            // container either: "Can't lookup mount=24 for fd=0 path=/dev/null", said CRIU)
            let device = std::fs::metadata(e.path()).is_ok_and(|m| {
                let ft = m.file_type();
                (ft.is_char_device() && libc::major(m.rdev()) != 1) || ft.is_block_device()
            });
            if !device
                && let Some(id) = fd_mount(pid, fd)
                && mounts.contains(pid, id) == Some(false)
                // opened before the process made a mount namespace of its own (systemd opens
                // a service's stdin before its ProtectSystem= namespace; zdtm's mntns_*):
                // a mount of any namespace of the container is one CRIU dumps
                && pids.iter().all(|&p| mounts.contains(p, id) != Some(true))
            {
                reasons.push(format!(
                    "{who} has {target} open (fd {fd}), a file outside the container, which CRIU cannot checkpoint; start it with its stdin, stdout and stderr redirected inside the container (e.g. >/dev/null 2>&1 </dev/null)"
                ));
                continue;
            }
            let Ok(m) = std::fs::metadata(e.path()) else {
                continue;
            };
            let ft = m.file_type();
            if (ft.is_char_device() || ft.is_block_device()) && !known_device(&target, m.rdev()) {
                reasons.push(format!("{who} has device {target} open (fd {fd}); berth only checkpoints the devices it provides"));
            }
        }
    }
}

/// Device files every berth container has, by number (paths of bind-mounted nodes read from
/// the host are not the container's): null, zero, full, random, urandom; tty, console, ptmx;
/// pty slaves (the console, exec terminals); tun, which CRIU handles.
fn known_device(_path: &str, rdev: u64) -> bool {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    (major == 1 && matches!(minor, 3 | 5 | 7 | 8 | 9))
        || major == 5
        || (136..=143).contains(&major)
        || (major == 10 && minor == 200)
}

/// (family, type, protocol) of another process's socket, read through a duplicate of it.
fn socket_kind(pidfd: &OwnedFd, fd: i32) -> Option<(i32, i32, i32)> {
    // SAFETY: pidfd_getfd with a valid pidfd; returns a fresh fd or -1.
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) } as i32;
    if dup < 0 {
        return None;
    }
    // SAFETY: fresh fd.
    let dup = unsafe { OwnedFd::from_raw_fd(dup) };
    let get = |opt: i32| -> Option<i32> {
        let mut v: i32 = 0;
        let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
        // SAFETY: getsockopt into a valid i32.
        let r = unsafe {
            libc::getsockopt(
                dup.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&mut v as *mut i32).cast(),
                &mut len,
            )
        };
        (r == 0).then_some(v)
    };
    Some((
        get(libc::SO_DOMAIN)?,
        get(libc::SO_TYPE).unwrap_or(0),
        get(libc::SO_PROTOCOL).unwrap_or(0),
    ))
}

/// On a btrfs pool: whether `pid` watches `/etc/localtime` while it is a symlink (systemd does).
/// CRIU cannot record that watch by path, and the file handle it falls back to names the
/// subvolume the container ran on, which a restore replaces.
pub fn symlink_watch(pid: i32) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let lt = std::fs::symlink_metadata(format!("/proc/{pid}/root/etc/localtime")).ok()?;
    if !lt.file_type().is_symlink() {
        return None;
    }
    let ino = lt.ino();
    let rd = std::fs::read_dir(format!("/proc/{pid}/fdinfo")).ok()?;
    for e in rd.flatten() {
        let Ok(t) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let watched = t
            .lines()
            .filter_map(|l| l.strip_prefix("inotify wd:"))
            .any(|l| {
                l.split_whitespace()
                    .find_map(|kv| kv.strip_prefix("ino:"))
                    .and_then(|h| u64::from_str_radix(h, 16).ok())
                    == Some(ino)
            });
        if watched {
            return Some(format!(
                "{} watches the symlink /etc/localtime, a watch CRIU cannot restore on a btrfs pool; make /etc/localtime a regular file (berth does when it creates a container with migration.stateful=true)",
                describe(pid)
            ));
        }
    }
    None
}

/// Processes frozen halfway through a vfork: the parent waits for a child that the freezer
/// stopped before it could exec, in a state ptrace cannot interrupt, so CRIU cannot seize it
/// (it times out after 10 s: "Unseizable non-zombie … state D").
pub fn vfork_waiters(pids: &[i32]) -> Vec<i32> {
    pids.iter()
        .copied()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/wchan"))
                .is_ok_and(|w| w.trim() == "kernel_clone")
        })
        .collect()
}

/// Processes of a cgroup directory (recursively).
pub fn cgroup_pids(dir: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    fn walk(d: &Path, out: &mut Vec<i32>) {
        if let Ok(t) = std::fs::read_to_string(d.join("cgroup.procs")) {
            out.extend(t.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
        }
    }
    walk(dir, &mut out);
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_process_is_named_and_a_running_one_is_not() {
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert!(!is_stopped(pid));
        // SAFETY: kill on our own child.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        let t = std::time::Instant::now();
        while !is_stopped(pid) {
            assert!(t.elapsed().as_secs() < 10, "the child never stopped");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let me = std::process::id() as i32;
        let reasons = stopped(&[me, pid]);
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(
            reasons
                .iter()
                .any(|r| r.starts_with(&format!("process {pid} (sleep)"))
                    && r.contains("is stopped")),
            "{reasons:?}"
        );
        // SAFETY: kill on our own child.
        unsafe { libc::kill(pid, libc::SIGCONT) };
        assert!(stopped(&[me, pid]).is_empty());
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn a_file_of_another_mount_namespace_is_named() {
        // our own files are on our own mounts
        let me = std::process::id() as i32;
        let mut sets = MountSets::default();
        let f = std::fs::File::open("/proc/self/status").unwrap();
        let id = fd_mount(me, f.as_raw_fd()).expect("fdinfo has mnt_id");
        assert_eq!(sets.contains(me, id), Some(true));
        // a mount id no namespace of ours has
        assert_eq!(sets.contains(me, u64::MAX), Some(false));
        assert!(describe(me).starts_with(&format!("process {me} (")));
    }

    #[test]
    fn an_unknown_socket_family_is_named() {
        // SAFETY: plain syscall.
        let fd =
            unsafe { libc::socket(libc::AF_ALG, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return; // no AF_ALG in this kernel
        }
        // SAFETY: fresh fd.
        let _s = unsafe { OwnedFd::from_raw_fd(fd) };
        let me = std::process::id() as i32;
        let reasons = check(me, &[me]);
        assert!(
            reasons
                .iter()
                .any(|r| r.contains(&format!("fd {fd}")) && r.contains("address family")),
            "{reasons:?}"
        );
    }
}
