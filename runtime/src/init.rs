//! Which init a rootfs boots, and the signal that asks it to power off: busybox init
//! (SIGUSR2), systemd (SIGRTMIN+4), and SysV-style inits (SIGPWR, as LXC does).
//!
//! `/sbin/init` is resolved inside the rootfs (symlinks cannot escape it: openat2 with
//! RESOLVE_IN_ROOT), so a hostile image cannot make the host look at its own files.

use crate::sys;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The init systems berth tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitKind {
    /// busybox init.
    Busybox,
    /// systemd.
    Systemd,
    /// sysvinit or anything else.
    Other,
}

impl InitKind {
    /// The signal asking this init to power off.
    pub fn poweroff_signal(self) -> libc::c_int {
        match self {
            InitKind::Busybox => libc::SIGUSR2,
            InitKind::Systemd => libc::SIGRTMIN() + 4,
            InitKind::Other => libc::SIGPWR,
        }
    }
}

/// Opens `rel` inside `root`, following symlinks as if `root` were `/`.
pub fn open_in_root(root: &Path, rel: &str) -> std::io::Result<OwnedFd> {
    let dir = std::fs::File::open(root)?;
    let c = std::ffi::CString::new(rel.trim_start_matches('/'))
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open_how is plain data.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid dirfd, C string and open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The path `/sbin/init` finally resolves to, relative to the rootfs (e.g. `/bin/busybox`).
pub fn resolve_init(root: &Path) -> Option<PathBuf> {
    let fd = open_in_root(root, "sbin/init").ok()?;
    let host = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    let canon_root = std::fs::canonicalize(root).ok()?;
    host.strip_prefix(&canon_root)
        .ok()
        .map(|p| Path::new("/").join(p))
}

/// What `/sbin/init` in `root` is.
pub fn detect(root: &Path) -> InitKind {
    match resolve_init(root) {
        Some(p) => classify(&p),
        None => InitKind::Other,
    }
}

fn classify(p: &Path) -> InitKind {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name == "busybox" {
        InitKind::Busybox
    } else if name == "systemd" || p.to_string_lossy().contains("/systemd/") {
        InitKind::Systemd
    } else {
        InitKind::Other
    }
}

/// The stop signal for a container: `configured` (a name or number) if given, else by init.
pub fn stop_signal(root: &Path, configured: Option<&str>) -> libc::c_int {
    configured
        .and_then(sys::parse_signal)
        .unwrap_or_else(|| detect(root).poweroff_signal())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_inits_and_stays_inside_the_root() {
        let root = std::env::temp_dir().join(format!("berth-init-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["sbin", "bin", "lib/systemd"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("bin/busybox"), b"").unwrap();
        std::os::unix::fs::symlink("/bin/busybox", root.join("sbin/init")).unwrap();
        assert_eq!(detect(&root), InitKind::Busybox);
        std::fs::remove_file(root.join("sbin/init")).unwrap();
        std::fs::write(root.join("lib/systemd/systemd"), b"").unwrap();
        std::os::unix::fs::symlink("../lib/systemd/systemd", root.join("sbin/init")).unwrap();
        assert_eq!(detect(&root), InitKind::Systemd);
        assert_eq!(stop_signal(&root, None), libc::SIGRTMIN() + 4);
        assert_eq!(stop_signal(&root, Some("SIGTERM")), libc::SIGTERM);
        // a link pointing at the host's init is resolved inside the root (and is missing)
        std::fs::remove_file(root.join("sbin/init")).unwrap();
        std::os::unix::fs::symlink("/../../../../usr/sbin/nothing-here", root.join("sbin/init"))
            .unwrap();
        assert_eq!(detect(&root), InitKind::Other);
        let _ = std::fs::remove_dir_all(&root);
    }
}
