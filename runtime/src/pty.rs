//! Pseudo-terminals: the container console (a host pty whose master the monitor holds) and
//! ptys for `exec` with a terminal.

use crate::error::{Context, Result};
use crate::sys;
use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

/// A console pty: the master for the monitor, the slave for the container.
#[derive(Debug)]
pub struct Console {
    /// Master side (read by the monitor).
    pub master: OwnedFd,
    /// Slave side (init's stdio, bind-mounted on /dev/console).
    pub slave: OwnedFd,
    /// Host path of the slave, e.g. /dev/pts/3.
    pub slave_path: PathBuf,
}

/// Opens a pty from `ptmx` ("/dev/ptmx" for the host's devpts) and returns master, slave and
/// the slave's path.
pub fn open_pty(ptmx: &CStr) -> std::io::Result<(OwnedFd, OwnedFd, PathBuf)> {
    // SAFETY: valid C string; returns a fresh fd or -1.
    let m = sys::cvt(unsafe {
        libc::open(
            ptmx.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fresh fd owned by us.
    let master = unsafe { OwnedFd::from_raw_fd(m) };
    // SAFETY: master is a ptmx fd.
    sys::cvt(unsafe { libc::unlockpt(master.as_raw_fd()) })?;
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: buffer and length are valid.
    let r = unsafe { libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) };
    if r != 0 {
        return Err(std::io::Error::from_raw_os_error(r));
    }
    // SAFETY: ptsname_r NUL-terminated the buffer.
    let path = unsafe { CStr::from_ptr(name.as_ptr()) };
    // SAFETY: valid C string.
    let s = sys::cvt(unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fresh fd.
    let slave = unsafe { OwnedFd::from_raw_fd(s) };
    Ok((
        master,
        slave,
        PathBuf::from(path.to_string_lossy().into_owned()),
    ))
}

/// The console of a new container: a host pty whose slave belongs to the container's root.
pub fn open_console(uid: u32, gid: u32) -> Result<Console> {
    let (master, slave, slave_path) = open_pty(c"/dev/ptmx").step(|| "open the console pty")?;
    // SAFETY: fchown/fchmod on an fd we own.
    sys::cvt(unsafe { libc::fchown(slave.as_raw_fd(), uid, gid) }).step(|| "chown the console")?;
    // SAFETY: as above.
    sys::cvt(unsafe { libc::fchmod(slave.as_raw_fd(), 0o620) }).step(|| "chmod the console")?;
    Ok(Console {
        master,
        slave,
        slave_path,
    })
}

/// Sets a terminal's window size.
pub fn set_winsize(fd: RawFd, rows: u16, cols: u16) -> std::io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ with a valid winsize.
    sys::cvt(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) }).map(drop)
}
