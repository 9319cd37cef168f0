//! Starting a container: clone into new user/mount/pid/uts/ipc/net namespaces, map ids, join
//! the container's cgroups, then (in the child) build the rootfs and exec init.
//!
//! Runs in a single-threaded process (the monitor, or the benchmark's floor measurement): the
//! child is a copy of the calling thread and namespace calls refuse multi-threaded callers.
//!
//! Parent and child talk over a close-on-exec SOCK_SEQPACKET pair: the parent sends "go" with
//! the rootfs mount fd once the id maps and cgroups are in place; the child either execs (the
//! parent reads EOF) or sends the failed step and errno.

use crate::error::{Context, Error, Result};
use crate::rootfs::{self, RootfsPlan, SetupFailure};
use crate::spec::ContainerSpec;
use crate::{pty, sys};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// A container whose init has exec'd.
#[derive(Debug)]
pub struct Started {
    /// init's pid in the monitor's pid namespace.
    pub pid: libc::pid_t,
    /// A pidfd for init.
    pub pidfd: OwnedFd,
    /// The console pty master.
    pub console: OwnedFd,
    /// An open handle on the console slave, kept so reads of the master never see EIO while
    /// no process in the container has the console open.
    pub console_slave: OwnedFd,
    /// Host path of the console slave (CRIU's key for it).
    pub console_path: std::path::PathBuf,
}

/// Namespaces every container gets at clone time. The cgroup namespace is entered after the
/// child has been moved into its cgroups, so that its root is the container's own group.
const CLONE_FLAGS: libc::c_int = libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWNET;

/// Plus a time namespace of its own, owned by its user namespace, where the kernel has them:
/// the one a restore gives it anyway (CRIU restores into a new one to keep the monotonic
/// clocks), so a container is the same after a start and after a restore. In the host's, its
/// root could not `setns` back into the time namespace it runs in (zdtm's timens_nested
/// failed to start in a started container, and started in a restored one).
fn clone_flags() -> u64 {
    let time = if sys::has_time_namespaces() {
        libc::CLONE_NEWTIME
    } else {
        0
    };
    (CLONE_FLAGS | time) as u64
}

/// Starts the container described by `spec` and returns once its init has exec'd.
///
/// Must be called from a single-threaded process.
pub fn start(spec: &ContainerSpec) -> Result<Started> {
    let console = pty::open_console(spec.idmap.uid_base, spec.idmap.gid_base)?;
    let (parent_sock, child_sock) = seqpacket_pair()?;
    let target = mount_point(spec)?;

    // SAFETY: the caller is single-threaded (documented contract); the child only runs
    // `child_main`, which ends in exec or _exit.
    match unsafe { sys::clone3_fork(clone_flags()) }.step(|| "clone the container's init")? {
        sys::Forked::Child => {
            drop(parent_sock);
            child_main(
                spec,
                child_sock.as_fd(),
                &target,
                console.slave.as_raw_fd(),
                &console.slave_path,
            )
        }
        sys::Forked::Parent { pid, pidfd } => {
            drop(child_sock);
            match parent_side(spec, pid, &parent_sock) {
                Ok(()) => Ok(Started {
                    pid,
                    pidfd,
                    console: console.master,
                    console_slave: console.slave,
                    console_path: console.slave_path,
                }),
                Err(e) => {
                    // SAFETY: kill/waitpid on our own child.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    let _ = sys::waitpid_blocking(pid);
                    Err(e)
                }
            }
        }
    }
}

/// Parent: id maps, cgroups and the rootfs mount ("go"); then, while init builds its root
/// filesystem, its veths ("net"); then wait for exec or a failure report.
fn parent_side(spec: &ContainerSpec, pid: libc::pid_t, sock: &OwnedFd) -> Result<()> {
    spec.idmap.write_for(pid)?;
    if !spec.cgroups.exists() {
        spec.cgroups.create()?;
    }
    spec.cgroups.attach(pid)?;
    let mnt = rootfs_mount(&spec.rootfs, if spec.shifted { None } else { Some(pid) })?;
    send_fd(sock.as_fd(), b"go", mnt.as_fd()).step(|| "hand the rootfs mount to init")?;
    drop(mnt);
    // the two cores work at once: a veth takes 1–2 ms, as long as the mounts
    if !spec.nics.is_empty() {
        let mut nl = crate::net::Netlink::open()?;
        for nic in &spec.nics {
            nl.add_veth(nic, pid)?;
        }
    }
    // a child that failed meanwhile has closed its end: its report is read below
    let _ = crate::fdpass::send(sock.as_fd(), b"net", &[]);

    let mut buf = [0u8; 4096];
    let n = recv(sock.as_fd(), &mut buf).step(|| "wait for init to exec")?;
    if n == 0 {
        // EOF: the close-on-exec socket closed. Either init exec'd or the child died silently.
        let mut status = 0;
        // SAFETY: non-blocking wait on our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Err(Error::Setup {
                step: format!("init exited during setup (status {status:#x})"),
                errno: libc::EIO,
            });
        }
        return Ok(());
    }
    let (errno, step) = decode_failure(&buf[..n]);
    let _ = sys::waitpid_blocking(pid);
    Err(Error::Setup { step, errno })
}

/// The empty directory the child attaches its rootfs on, in its own mount namespace:
/// `<run_dir>/root`, reachable by the container's root. The rootfs itself lies in the pool,
/// whose directories are root's alone (0700: its files belong to host uid 0 on disk), so the
/// container's root could not walk the path to it.
fn mount_point(spec: &ContainerSpec) -> Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let p = spec.run_dir.join("root");
    std::fs::create_dir_all(&p).step(|| format!("create {}", p.display()))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
        .step(|| format!("chmod {}", p.display()))?;
    Ok(p)
}

/// A detached clone of `rootfs`, idmapped through the user namespace of `idmap_pid` if given.
pub fn rootfs_mount(rootfs: &Path, idmap_pid: Option<libc::pid_t>) -> Result<OwnedFd> {
    let mnt = sys::open_tree(rootfs, libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC)
        .step(|| format!("clone the mount of {}", rootfs.display()))?;
    // The clone of a shared mount (systemd makes every host mount shared) joins its peer group:
    // mounts made in the container would propagate back to the host, and pivot_root refuses a
    // shared new root. The container's root is private; systemd in the container shares it again
    // for itself.
    let private = libc::mount_attr {
        attr_set: 0,
        attr_clr: 0,
        propagation: libc::MS_PRIVATE,
        userns_fd: 0,
    };
    sys::mount_setattr(mnt.as_fd(), libc::AT_RECURSIVE as libc::c_uint, &private)
        .step(|| format!("make the mount of {} private", rootfs.display()))?;
    if let Some(pid) = idmap_pid {
        let userns = std::fs::File::open(format!("/proc/{pid}/ns/user"))
            .step(|| "open init's user namespace")?;
        let attr = libc::mount_attr {
            attr_set: libc::MOUNT_ATTR_IDMAP,
            attr_clr: 0,
            propagation: 0,
            userns_fd: userns.as_raw_fd() as u64,
        };
        sys::mount_setattr(mnt.as_fd(), 0, &attr)
            .step(|| format!("idmap the mount of {}", rootfs.display()))?;
    }
    Ok(mnt)
}

/// Child: wait for "go", become root in the new namespaces, build the rootfs, exec init.
fn child_main(
    spec: &ContainerSpec,
    sock: BorrowedFd<'_>,
    target: &Path,
    slave: RawFd,
    console: &Path,
) -> ! {
    let failure = match child_setup(spec, sock, target, slave, console) {
        Ok(never) => match never {},
        Err(f) => f,
    };
    let msg = encode_failure(&failure);
    let _ = sys::write_all_fd(sock.as_raw_fd(), &msg);
    sys::exit_now(127)
}

enum Never {}

fn child_setup(
    spec: &ContainerSpec,
    sock: BorrowedFd<'_>,
    target: &Path,
    slave: RawFd,
    console: &Path,
) -> Result<Never, SetupFailure> {
    let (n, mnt) = recv_fd(sock).map_err(|error| SetupFailure {
        step: "receive the rootfs mount".into(),
        error,
    })?;
    let mnt = match (n, mnt) {
        (2, Some(m)) => m,
        _ => {
            return Err(SetupFailure {
                step: "receive the rootfs mount".into(),
                error: io::Error::from_raw_os_error(libc::EPROTO),
            });
        }
    };
    os(become_root, "become root in the user namespace")?;
    // init dies with its monitor (as LXC's does): a container nobody reaps, watches or can
    // exec into would be running while berth records it stopped. Set after the id change,
    // which clears it; the monitor cannot have died yet, since it just sent "go".
    os(
        || {
            // SAFETY: plain syscall.
            sys::cvt(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) })
                .map(drop)
        },
        "set the parent-death signal",
    )?;
    os(
        // SAFETY: plain syscall.
        || sys::cvt(unsafe { libc::unshare(libc::CLONE_NEWCGROUP) }).map(drop),
        "unshare the cgroup namespace",
    )?;

    let plan = RootfsPlan {
        rootfs: &spec.rootfs,
        target,
        cgroups: &spec.cgroups.layout,
        console,
    };
    rootfs::setup(&plan, mnt.as_fd())?;
    drop(mnt);

    let host = CString::new(spec.name.as_bytes()).unwrap_or_default();
    os(
        // SAFETY: valid buffer and length.
        || sys::cvt(unsafe { libc::sethostname(host.as_ptr(), host.as_bytes().len()) }).map(drop),
        "set the hostname",
    )?;
    drop_bounding_caps(&spec.cap_drop)?;
    // the veths exist once the parent says "net"
    let mut net = [0u8; 8];
    match recv(sock, &mut net) {
        Ok(3) if &net[..3] == b"net" => {}
        Ok(_) => {
            return Err(SetupFailure {
                step: "wait for the network".into(),
                error: io::Error::from_raw_os_error(libc::EPROTO),
            });
        }
        Err(error) => {
            return Err(SetupFailure {
                step: "wait for the network".into(),
                error,
            });
        }
    }
    configure_network(&spec.nics).map_err(|e| SetupFailure {
        step: e.to_string(),
        error: io::Error::from_raw_os_error(e.errno().unwrap_or(libc::EIO)),
    })?;

    // init leads a new session with the console as stdio but not as its controlling tty, so
    // that a getty or shell that init starts on /dev/console can take it (as on real hardware).
    // SAFETY: plain syscalls on fds we own.
    os(|| sys::cvt(unsafe { libc::setsid() }).map(drop), "setsid")?;
    for fd in 0..3 {
        os(|| sys::dup2(slave, fd), "attach the console to stdio")?;
    }
    os(
        || sys::close_range_from(3, libc::CLOSE_RANGE_CLOEXEC as libc::c_int),
        "close inherited fds",
    )?;

    let argv: Vec<CString> = spec
        .init
        .iter()
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();
    if argv.is_empty() {
        return Err(SetupFailure {
            step: "exec init".into(),
            error: io::Error::from_raw_os_error(libc::EINVAL),
        });
    }
    let envp: Vec<CString> = spec
        .env
        .iter()
        .filter_map(|(k, v)| CString::new(format!("{k}={v}")).ok())
        .collect();
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    // last: the filter binds init and all it starts; root of the new user namespace may
    // install it without no_new_privs (see seccomp.rs)
    os(crate::seccomp::install, "install the seccomp filter")?;
    // SAFETY: argv_p and envp_p are NULL-terminated arrays of valid C strings.
    unsafe { libc::execve(argv_p[0], argv_p.as_ptr(), envp_p.as_ptr()) };
    Err(SetupFailure {
        step: format!("exec {}", spec.init[0]),
        error: io::Error::last_os_error(),
    })
}

/// Inside the new network namespace: `lo` up, then each NIC's address and routes.
pub fn configure_network(nics: &[crate::net::Nic]) -> Result<()> {
    let mut nl = crate::net::Netlink::open()?;
    nl.up("lo")?;
    for nic in nics {
        nl.configure_inside(nic)?;
    }
    Ok(())
}

fn os(f: impl FnOnce() -> io::Result<()>, step: &str) -> Result<(), SetupFailure> {
    f().map_err(|error| SetupFailure {
        step: step.to_string(),
        error,
    })
}

/// setresgid/setresuid to 0 and an empty supplementary group list.
fn become_root() -> io::Result<()> {
    // SAFETY: plain syscalls; ids 0 are mapped by the parent before "go".
    unsafe {
        sys::cvt(libc::setresgid(0, 0, 0))?;
        sys::cvt(libc::setresuid(0, 0, 0))?;
        sys::cvt(libc::setgroups(0, std::ptr::null()))?;
    }
    Ok(())
}

/// Removes `names` (e.g. "sys_time") from the bounding set.
pub fn drop_bounding_caps(names: &[String]) -> Result<(), SetupFailure> {
    for n in names {
        let cap: caps::Capability = caps::to_canonical(n).parse().map_err(|_| SetupFailure {
            step: format!("parse capability {n}"),
            error: io::Error::from_raw_os_error(libc::EINVAL),
        })?;
        caps::drop(None, caps::CapSet::Bounding, cap).map_err(|e| SetupFailure {
            step: format!("drop {n} from the bounding set: {e}"),
            error: io::Error::from_raw_os_error(libc::EPERM),
        })?;
    }
    Ok(())
}

fn encode_failure(f: &SetupFailure) -> Vec<u8> {
    let errno = f.error.raw_os_error().unwrap_or(libc::EIO);
    let mut v = errno.to_le_bytes().to_vec();
    let detail = match f.error.raw_os_error() {
        Some(_) => f.step.clone(),
        None => format!("{}: {}", f.step, f.error),
    };
    v.extend_from_slice(detail.as_bytes());
    v
}

fn decode_failure(b: &[u8]) -> (i32, String) {
    if b.len() < 4 {
        return (libc::EPROTO, "unreadable failure report".into());
    }
    let errno = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    (errno, String::from_utf8_lossy(&b[4..]).into_owned())
}

/// A close-on-exec SOCK_SEQPACKET pair.
pub fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid out array.
    sys::cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })
    .step(|| "socketpair")?;
    // SAFETY: fresh fds.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends `data` with one fd attached.
pub fn send_fd(sock: BorrowedFd<'_>, data: &[u8], fd: BorrowedFd<'_>) -> io::Result<()> {
    crate::fdpass::send(sock, data, &[fd.as_raw_fd()])
}

fn recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn recv_fd(sock: BorrowedFd<'_>) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut buf = [0u8; 16];
    let (n, mut fds) = crate::fdpass::recv(sock, &mut buf)?;
    Ok((
        n,
        if fds.is_empty() {
            None
        } else {
            Some(fds.remove(0))
        },
    ))
}
