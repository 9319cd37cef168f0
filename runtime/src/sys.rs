//! Thin, checked wrappers over the Linux system calls the runtime needs and libc does not wrap
//! (clone3, the new mount API, pidfds, close_range, pivot_root).
//!
//! Every wrapper returns `io::Result` with the kernel's errno; callers add context.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Turns a `-1`-on-error return value into `io::Result`.
pub fn cvt<T: Copy + PartialEq + From<i8>>(ret: T) -> io::Result<T> {
    if ret == T::from(-1) {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A path as a NUL-terminated C string; paths with interior NULs are rejected.
pub fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Size and space of a file system.
#[derive(Debug, Clone, Copy)]
pub struct FsSpace {
    /// Bytes in all.
    pub total: u64,
    /// Bytes an unprivileged writer may still use.
    pub available: u64,
}

/// statvfs(2) of the file system holding `path`.
pub fn fs_space(path: &Path) -> io::Result<FsSpace> {
    let c = cpath(path)?;
    // SAFETY: statvfs is plain data.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string and st a valid out-pointer.
    cvt(unsafe { libc::statvfs(c.as_ptr(), &mut st) })?;
    let frsize = st.f_frsize as u64;
    Ok(FsSpace {
        total: st.f_blocks as u64 * frsize,
        available: st.f_bavail as u64 * frsize,
    })
}

/// What `clone3` returned: we are the child, or the parent with the child's pid and pidfd.
#[derive(Debug)]
pub enum Forked {
    /// In the new child process.
    Child,
    /// In the parent: the child's pid (in our pid namespace) and a pidfd for it.
    Parent { pid: libc::pid_t, pidfd: OwnedFd },
}

/// `clone3` with fork semantics (no new stack) and `CLONE_PIDFD`.
///
/// # Safety
/// The caller must be single-threaded, or the child must only call async-signal-safe
/// functions until it execs: the child is a copy of the calling thread only.
pub unsafe fn clone3_fork(flags: u64) -> io::Result<Forked> {
    let mut pidfd: libc::c_int = -1;
    // SAFETY: clone_args is plain data; zeroed is a valid initial value.
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.flags = flags | libc::CLONE_PIDFD as u64;
    args.pidfd = &mut pidfd as *mut libc::c_int as u64;
    args.exit_signal = libc::SIGCHLD as u64;
    // SAFETY: args is a valid clone_args of the size passed; with stack = 0 the child runs on a
    // copy of the parent's stack, exactly like fork(2). The caller upholds the threading rule.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut libc::clone_args,
            std::mem::size_of::<libc::clone_args>(),
        )
    };
    match ret {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent {
            pid: pid as libc::pid_t,
            // SAFETY: the kernel wrote a fresh pidfd that nobody else owns.
            pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
        }),
    }
}

/// `pidfd_open(pid, 0)`.
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd owned by us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `pidfd_send_signal(pidfd, sig, NULL, 0)`.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall; a NULL siginfo is allowed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `setns(fd, nstype)`; `fd` may be a namespace fd or a pidfd (then `nstype` is a set of
/// `CLONE_NEW*` flags joined atomically).
pub fn setns(fd: BorrowedFd<'_>, nstype: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::setns(fd.as_raw_fd(), nstype) }).map(drop)
}

/// `open_tree(dirfd, path, flags)`, returning a mount fd.
pub fn open_tree(path: &Path, flags: libc::c_uint) -> io::Result<OwnedFd> {
    let p = cpath(path)?;
    // SAFETY: p is a valid C string for the duration of the call.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, p.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH | flags, attr)`.
pub fn mount_setattr(
    fd: BorrowedFd<'_>,
    flags: libc::c_uint,
    attr: &libc::mount_attr,
) -> io::Result<()> {
    let empty = c"";
    // SAFETY: attr points to a valid mount_attr of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | flags,
            attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Attaches the detached mount `fd` at `target` (`move_mount` with `F_EMPTY_PATH`).
pub fn move_mount_to(fd: BorrowedFd<'_>, target: &Path) -> io::Result<()> {
    let t = cpath(target)?;
    let empty = c"";
    // SAFETY: both strings are valid for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `fchdir(2)`.
pub fn fchdir(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    cvt(unsafe { libc::fchdir(fd.as_raw_fd()) }).map(drop)
}

/// `mount(2)` with optional source, fstype and data.
pub fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let src = source.map(cpath).transpose()?;
    let tgt = cpath(target)?;
    let data = data
        .map(|d| {
            CString::new(d)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in mount data"))
        })
        .transpose()?;
    // SAFETY: every pointer is either NULL or a valid C string that outlives the call.
    cvt(unsafe {
        libc::mount(
            src.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            tgt.as_ptr(),
            fstype.map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr().cast()),
        )
    })
    .map(drop)
}

/// `umount2(target, flags)`.
pub fn umount2(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let t = cpath(target)?;
    // SAFETY: valid C string.
    cvt(unsafe { libc::umount2(t.as_ptr(), flags) }).map(drop)
}

/// `pivot_root(new_root, put_old)`.
pub fn pivot_root(new_root: &Path, put_old: &Path) -> io::Result<()> {
    let n = cpath(new_root)?;
    let o = cpath(put_old)?;
    // SAFETY: valid C strings.
    let r = unsafe { libc::syscall(libc::SYS_pivot_root, n.as_ptr(), o.as_ptr()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Closes (or, with `CLOSE_RANGE_CLOEXEC`, marks close-on-exec) every fd from `first` up.
pub fn close_range_from(first: libc::c_uint, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall; the caller owns the fds it closes (it is about to exec or exit).
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, flags) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sets or clears `FD_CLOEXEC` on `fd`.
pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on an fd the caller owns.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    let new = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, new) }).map(drop)
}

/// `dup2(old, new)`; the new fd does not have `FD_CLOEXEC`.
pub fn dup2(old: RawFd, new: RawFd) -> io::Result<()> {
    // SAFETY: dup2 on fds the caller controls.
    cvt(unsafe { libc::dup2(old, new) }).map(drop)
}

/// Writes all of `buf` to a raw fd (used in forked children, no allocation).
pub fn write_all_fd(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Writes `contents` to an existing file at `path` (cgroup and /proc knobs).
pub fn write_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(contents)
}

/// `waitpid(pid, 0)` retried on EINTR; returns the raw wait status.
pub fn waitpid_blocking(pid: libc::pid_t) -> io::Result<libc::c_int> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r >= 0 {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Exits the current process immediately (no destructors, no atexit): for forked children.
pub fn exit_now(code: libc::c_int) -> ! {
    // SAFETY: _exit never returns and is async-signal-safe.
    unsafe { libc::_exit(code) }
}

/// Mount points at or below `dir` (canonical), from this process's mountinfo, in the order
/// they were mounted.
pub fn mounts_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(mi
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|p| p.starts_with(dir))
        .collect())
}

/// A mountinfo path: spaces, tabs, newlines and backslashes are written as `\ooo`.
pub fn unescape_mountinfo(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // three octal digits naming a byte (at most \377; the kernel escapes only space,
        // tab, newline and backslash, anything else stays as it is)
        let byte = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| {
                u8::try_from(d.iter().fold(0u16, |n, c| n * 8 + u16::from(c - b'0'))).ok()
            });
        match (b[i], byte) {
            (b'\\', Some(v)) => {
                out.push(v);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Whether the kernel has time namespaces (5.6 and later, with CONFIG_TIME_NS).
pub fn has_time_namespaces() -> bool {
    static TIME: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TIME.get_or_init(|| std::path::Path::new("/proc/self/ns/time").exists())
}

/// The inode number identifying the namespace behind `/proc/<pid>/ns/<kind>`.
pub fn ns_inode(pid: Option<libc::pid_t>, kind: &str) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let p = match pid {
        Some(p) => format!("/proc/{p}/ns/{kind}"),
        None => format!("/proc/self/ns/{kind}"),
    };
    Ok(std::fs::metadata(p)?.ino())
}

/// Gives the heap's free memory back to the kernel (glibc's `malloc_trim`). berthd calls it
/// once its start has settled: reading every record, exporting every object and reconciling
/// every container leave freed chunks in the allocator's arenas, resident while it idles.
pub fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim walks and releases only the allocator's own free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Sets the soft limit on open files to `soft` (at most the hard limit); returns the soft
/// limit now in force. berthd raises it to the hard limit (it holds a socket per running
/// container); monitors bring it back to the conventional 1024 for what runs in containers.
pub fn set_nofile_soft(soft: u64) -> io::Result<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a valid rlimit.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) })?;
    r.rlim_cur = soft.min(r.rlim_max);
    // SAFETY: setrlimit reads a valid rlimit.
    cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) })?;
    Ok(r.rlim_cur)
}

/// A pipe with both ends close-on-exec.
pub fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid out array of two ints.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: fresh fds owned by us.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Signal number from a name such as `SIGTERM`, `TERM`, `SIGRTMIN+4` or a decimal number.
pub fn parse_signal(s: &str) -> Option<libc::c_int> {
    let s = s.trim();
    if let Ok(n) = s.parse::<libc::c_int>() {
        return (1..=libc::SIGRTMAX()).contains(&n).then_some(n);
    }
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    // the offset is a small unsigned number: a sign of its own (`RTMIN+-40`) or a huge one
    // (`RTMIN+2147483647`, which wrapped) named a signal outside the real-time range
    let offset = |rest: &str, sign: char| -> Option<libc::c_int> {
        if rest.is_empty() {
            return Some(0);
        }
        let digits = rest.strip_prefix(sign)?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse::<u8>().ok().map(libc::c_int::from)
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        let n = libc::SIGRTMIN() + offset(rest, '+')?;
        return (n <= libc::SIGRTMAX()).then_some(n);
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        let n = libc::SIGRTMAX() - offset(rest, '-')?;
        return (n >= libc::SIGRTMIN()).then_some(n);
    }
    Some(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "PWR" => libc::SIGPWR,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "WINCH" => libc::SIGWINCH,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_unescape() {
        use std::os::unix::ffi::OsStringExt;
        let u = unescape_mountinfo;
        assert_eq!(u("/a\\040b/c\\134d"), PathBuf::from("/a b/c\\d"));
        assert_eq!(u("/plain"), PathBuf::from("/plain"));
        assert_eq!(u("/odd\\9"), PathBuf::from("/odd\\9"));
        // past a byte: left as it is (it overflowed a u8 before)
        assert_eq!(u("/big\\777"), PathBuf::from("/big\\777"));
        assert_eq!(
            u("/max\\377"),
            PathBuf::from(std::ffi::OsString::from_vec(b"/max\xff".to_vec()))
        );
    }

    #[test]
    fn signals_parse_by_name_and_number() {
        assert_eq!(parse_signal("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("usr2"), Some(libc::SIGUSR2));
        assert_eq!(parse_signal("SIGRTMIN+4"), Some(libc::SIGRTMIN() + 4));
        assert_eq!(parse_signal("30"), Some(30));
        assert_eq!(parse_signal("0"), None);
        assert_eq!(parse_signal("SIGNOPE"), None);
        assert_eq!(parse_signal("RTMIN+999"), None);
        assert_eq!(parse_signal("RTMIN+"), None);
        assert_eq!(parse_signal("SIGRTMAX-2"), Some(libc::SIGRTMAX() - 2));
    }

    /// Hostile `boot.stop_signal` values (the `config` fuzz target checks them): an offset that
    /// overflowed (a panic with overflow checks, a negative signal without) or carried a sign
    /// of its own was accepted as a signal outside 1..=SIGRTMAX.
    #[test]
    fn real_time_offsets_stay_in_the_real_time_range() {
        for bad in [
            "SIGRTMIN+2147483647",
            "RTMIN+4294967296",
            "RTMIN+-40",
            "RTMIN++1",
            "RTMAX--5",
            "RTMAX-+1",
            "RTMAX--2147483648",
            "RTMAX-99999999999",
        ] {
            assert_eq!(parse_signal(bad), None, "{bad}");
        }
    }
}
