//! Socket activation: the varlink socket systemd passes (`berthd.socket`,
//! `FileDescriptorName=varlink`), or `systemd-socket-activate` in tests.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// The first fd systemd passes.
const SD_LISTEN_FDS_START: RawFd = 3;

/// Takes the listening socket named `varlink` from `$LISTEN_FDS`/`$LISTEN_FDNAMES` (a single
/// unnamed fd counts as it), when they are meant for this process. Every passed fd gets
/// close-on-exec (nothing berthd starts inherits them) and the variables are removed. Call
/// before any thread starts.
pub fn take_varlink() -> Option<OwnedFd> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let n: RawFd = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let names = std::env::var("LISTEN_FDNAMES").ok();
    for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // SAFETY: called from main before the runtime or any other thread starts.
        unsafe { std::env::remove_var(v) };
    }
    if !pid_ok || n <= 0 {
        return None;
    }
    let names: Vec<String> = match &names {
        Some(s) => s.split(':').map(str::to_owned).collect(),
        None => Vec::new(),
    };
    let mut found = None;
    for i in 0..n {
        let fd = SD_LISTEN_FDS_START + i;
        // SAFETY: fcntl on an fd number systemd says it passed; failure is harmless.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        let name = names.get(i as usize).map(String::as_str);
        let ours = name == Some("varlink") || (name.is_none() && n == 1);
        if ours && found.is_none() {
            // SAFETY: systemd passed this fd to us alone; nothing else in berthd owns it.
            found = Some(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    if found.is_none() {
        eprintln!("berthd: systemd passed {n} sockets, none named varlink; binding our own");
    }
    found
}
