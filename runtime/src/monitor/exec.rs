//! Running a process inside a running container on behalf of the monitor.
//!
//! The monitor forks a helper that joins the container's cgroups, then all of init's
//! namespaces at once through init's pidfd (its time namespace too: every container has one
//! where the kernel does), and forks the process itself so it lands in the container's pid
//! namespace. With a terminal the helper allocates a pty from the container's devpts and
//! relays between it and the caller's fds, applying `Resize` requests read from the caller's
//! connection. The helper exits with the process's status (128 + signal when killed).

use super::proto::{ExecRequest, Request};
use crate::cgroup::ContainerCgroups;
use crate::error::{Context, Result};
use crate::{fdpass, pty, sys};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

/// The helper process running one exec.
#[derive(Debug)]
pub struct ExecChild {
    /// Helper pid.
    pub pid: libc::pid_t,
    /// Helper pidfd (readable when it exits).
    pub pidfd: OwnedFd,
}

/// Default PATH inside containers.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Forks the helper for `req`. `stdio` are the caller's stdin/stdout/stderr; `conn` is the
/// caller's connection (read for `Resize` when a terminal is used).
///
/// Must be called from the single-threaded monitor.
pub fn spawn(
    init_pid: libc::pid_t,
    init_pidfd: BorrowedFd<'_>,
    cgroups: &ContainerCgroups,
    req: &ExecRequest,
    stdio: &[OwnedFd; 3],
    conn: RawFd,
) -> Result<ExecChild> {
    if req.argv.is_empty() {
        return Err(crate::Error::Invalid("exec needs a command".into()));
    }
    let mut flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWCGROUP;
    // (a kernel without time namespaces has no ns/time: nothing to join)
    if sys::has_time_namespaces() {
        let init_time =
            sys::ns_inode(Some(init_pid), "time").step(|| "inspect init's time namespace")?;
        if init_time != sys::ns_inode(None, "time").step(|| "inspect our time namespace")? {
            flags |= libc::CLONE_NEWTIME;
        }
    }
    // SAFETY: the monitor is single-threaded; the child ends in _exit.
    match unsafe { sys::clone3_fork(0) }.step(|| "fork the exec helper")? {
        sys::Forked::Child => {
            let code = helper(init_pid, init_pidfd, flags, cgroups, req, stdio, conn);
            sys::exit_now(code)
        }
        sys::Forked::Parent { pid, pidfd } => Ok(ExecChild { pid, pidfd }),
    }
}

/// The helper: returns the exit code to report.
fn helper(
    init_pid: libc::pid_t,
    init_pidfd: BorrowedFd<'_>,
    flags: libc::c_int,
    cgroups: &ContainerCgroups,
    req: &ExecRequest,
    stdio: &[OwnedFd; 3],
    conn: RawFd,
) -> i32 {
    let err_fd = stdio[2].as_raw_fd();
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        let _ = sys::write_all_fd(err_fd, format!("berth: exec: {what}: {e}\n").as_bytes());
        126
    };
    // exec'd processes get init's bounding set (what the container was started with), not
    // the monitor's full one
    let bounding = match bounding_set(init_pid) {
        Ok(b) => b,
        Err(e) => return fail("read init's capability bounding set", &e),
    };
    if let Err(e) = cgroups.attach(0) {
        return fail("join the container's cgroups", &e);
    }
    if let Err(e) = sys::setns(init_pidfd, flags) {
        return fail("join the container's namespaces", &e);
    }
    let tty = match req.tty {
        Some(size) => match pty::open_pty(c"/dev/ptmx") {
            Ok((master, slave, _)) => {
                let _ = pty::set_winsize(master.as_raw_fd(), size.rows, size.cols);
                Some((master, slave))
            }
            Err(e) => return fail("allocate a terminal", &e),
        },
        None => None,
    };
    let (report_r, report_w) = match sys::pipe_cloexec() {
        Ok(p) => p,
        Err(e) => return fail("pipe", &e),
    };
    // SAFETY: this helper is single-threaded (forked from the monitor); the child ends in
    // exec or _exit.
    let child = match unsafe { sys::clone3_fork(0) } {
        Ok(sys::Forked::Child) => {
            let e = payload(
                req,
                stdio,
                tty.as_ref().map(|(_, s)| s.as_raw_fd()),
                bounding,
            );
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            let _ = sys::write_all_fd(report_w.as_raw_fd(), &errno.to_le_bytes());
            sys::exit_now(if errno == libc::ENOENT { 127 } else { 126 })
        }
        Ok(sys::Forked::Parent { pid, pidfd }) => (pid, pidfd),
        Err(e) => return fail("fork", &e),
    };
    drop(report_w);
    if let Some((master, slave)) = tty {
        drop(slave);
        relay(
            stdio[0].as_fd(),
            stdio[1].as_fd(),
            master,
            conn,
            child.1.as_fd(),
        );
    }
    let status = match sys::waitpid_blocking(child.0) {
        Ok(s) => s,
        Err(e) => return fail("wait", &e),
    };
    let mut b = [0u8; 4];
    // SAFETY: reading into a 4-byte buffer.
    let n = unsafe { libc::read(report_r.as_raw_fd(), b.as_mut_ptr().cast(), 4) };
    if n == 4 {
        let errno = i32::from_le_bytes(b);
        let _ = sys::write_all_fd(
            err_fd,
            format!(
                "berth: exec {}: {}\n",
                req.argv[0],
                io::Error::from_raw_os_error(errno)
            )
            .as_bytes(),
        );
    }
    shell_status(status)
}

/// Exit code as a shell reports it: the code, or 128 + the signal.
pub fn shell_status(status: libc::c_int) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        255
    }
}

/// The process itself: stdio, session, ids, cwd, environment, exec. Returns only on failure.
/// The capability bounding set of process `pid` (`CapBnd:` of its status).
fn bounding_set(pid: libc::pid_t) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no CapBnd line"))
}

/// Drops from our bounding set every capability not in `keep` (a CapBnd mask).
fn limit_bounding_set(keep: u64) -> io::Result<()> {
    for cap in caps::all() {
        let bit = cap.index();
        if bit < 64
            && keep & (1u64 << bit) == 0
            && caps::has_cap(None, caps::CapSet::Bounding, cap).unwrap_or(false)
        {
            caps::drop(None, caps::CapSet::Bounding, cap)
                .map_err(|e| io::Error::other(format!("drop {cap}: {e}")))?;
        }
    }
    Ok(())
}

fn payload(
    req: &ExecRequest,
    stdio: &[OwnedFd; 3],
    tty_slave: Option<RawFd>,
    bounding: u64,
) -> io::Error {
    let r = (|| -> io::Result<()> {
        limit_bounding_set(bounding)?;
        // while still root of the container's user namespace (which seccomp needs without
        // no_new_privs): the process gets init's filter
        crate::seccomp::install()?;
        // SAFETY: plain syscalls.
        sys::cvt(unsafe { libc::setsid() })?;
        match tty_slave {
            Some(s) => {
                for fd in 0..3 {
                    sys::dup2(s, fd)?;
                }
                // SAFETY: stdin is the slave.
                sys::cvt(unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) })?;
            }
            None => {
                // Move the caller's fds out of the way first so that dup2 cannot clobber them.
                let hi: Vec<RawFd> = stdio
                    .iter()
                    .map(|f| {
                        // SAFETY: F_DUPFD_CLOEXEC on fds we own.
                        sys::cvt(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) })
                    })
                    .collect::<io::Result<_>>()?;
                for (i, fd) in hi.iter().enumerate() {
                    sys::dup2(*fd, i as RawFd)?;
                }
            }
        }
        // SAFETY: plain syscalls; ids are inside the container's mapped range.
        unsafe {
            sys::cvt(libc::setgroups(0, std::ptr::null()))?;
            sys::cvt(libc::setresgid(req.gid, req.gid, req.gid))?;
            sys::cvt(libc::setresuid(req.uid, req.uid, req.uid))?;
        }
        let home = if req.uid == 0 { "/root" } else { "/" };
        match &req.cwd {
            Some(dir) => std::env::set_current_dir(dir)?,
            None => {
                if std::env::set_current_dir(home).is_err() {
                    std::env::set_current_dir("/")?;
                }
            }
        }
        sys::close_range_from(3, libc::CLOSE_RANGE_CLOEXEC as libc::c_int)?;
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), DEFAULT_PATH.into()),
            ("HOME".into(), home.into()),
            (
                "USER".into(),
                if req.uid == 0 {
                    "root".into()
                } else {
                    req.uid.to_string()
                },
            ),
            ("LANG".into(), "C.UTF-8".into()),
            ("container".into(), "berth".into()),
        ];
        if req.tty.is_some() {
            env.push(("TERM".into(), "xterm-256color".into()));
        }
        for (k, v) in &req.env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        let argv: Vec<CString> = req
            .argv
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let envp: Vec<CString> = env
            .iter()
            .filter_map(|(k, v)| CString::new(format!("{k}={v}")).ok())
            .collect();
        let mut ap: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        ap.push(std::ptr::null());
        let mut ep: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
        ep.push(std::ptr::null());
        // The lookup uses PATH from the new environment, inside the container's filesystem.
        let path = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        exec_in_path(&argv[0], &path, &ap, &ep)
    })();
    match r {
        Ok(()) => io::Error::from_raw_os_error(libc::EIO),
        Err(e) => e,
    }
}

/// execve of `prog` (looked up in `path` when it has no slash); returns the most telling error.
fn exec_in_path(
    prog: &CString,
    path: &str,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> io::Result<()> {
    let bytes = prog.as_bytes();
    if bytes.contains(&b'/') {
        // SAFETY: NULL-terminated arrays of valid C strings.
        unsafe { libc::execve(prog.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        return Err(io::Error::last_os_error());
    }
    let mut best = io::Error::from_raw_os_error(libc::ENOENT);
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let Ok(full) = CString::new(format!("{dir}/{}", String::from_utf8_lossy(bytes))) else {
            continue;
        };
        // SAFETY: as above.
        unsafe { libc::execve(full.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOENT) && e.raw_os_error() != Some(libc::ENOTDIR) {
            best = e;
        }
    }
    Err(best)
}

/// Copies caller stdin → pty master and master → caller stdout until the process is gone and
/// its output drained; applies `Resize` requests from the caller's connection.
fn relay(
    stdin: BorrowedFd<'_>,
    stdout: BorrowedFd<'_>,
    master: OwnedFd,
    conn: RawFd,
    child: BorrowedFd<'_>,
) {
    let mut stdin_open = true;
    let mut conn_open = conn >= 0;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let mut fds = vec![
            libc::pollfd {
                fd: master.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: child.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if stdin_open { stdin.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if conn_open { conn } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: fds is a valid array.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if r < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[0].revents != 0 && !copy_once(master.as_raw_fd(), stdout.as_raw_fd(), &mut buf) {
            return;
        }
        if fds[2].revents != 0 && !copy_once(stdin.as_raw_fd(), master.as_raw_fd(), &mut buf) {
            stdin_open = false;
        }
        if fds[3].revents != 0 {
            let mut m = vec![0u8; 1024];
            match fdpass::recv(
                // SAFETY: conn stays open for the helper's lifetime (inherited from the monitor).
                unsafe { BorrowedFd::borrow_raw(conn) },
                &mut m,
            ) {
                Ok((n, _)) if n > 0 => {
                    if let Ok(Request::Resize { rows, cols }) =
                        super::proto::decode::<Request>(&m[..n])
                    {
                        let _ = pty::set_winsize(master.as_raw_fd(), rows, cols);
                    }
                }
                _ => conn_open = false,
            }
        }
        if fds[1].revents != 0 {
            // The process exited: drain what it left in the pty, then stop.
            // SAFETY: make the master non-blocking for the drain.
            unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
            while copy_once(master.as_raw_fd(), stdout.as_raw_fd(), &mut buf) {}
            return;
        }
    }
}

/// One read from `from` written fully to `to`; false at EOF or error.
fn copy_once(from: RawFd, to: RawFd, buf: &mut [u8]) -> bool {
    // SAFETY: buf is valid for its length.
    let n = unsafe { libc::read(from, buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return false;
    }
    sys::write_all_fd(to, &buf[..n as usize]).is_ok()
}
