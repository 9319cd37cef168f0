//! `berth supervise NAME`: the main process of `berth@NAME.service`.
//!
//! It starts the container (restoring a saved running state, as `berth start` does), tells
//! systemd READY=1 once init runs, then follows init through a pidfd: a restart or a restore
//! gives the container a new init, which it follows too; a container that stops without
//! `systemctl stop` ends it with exit status 1, so the unit fails. SIGTERM (what `systemctl
//! stop` sends) stops the container gracefully and ends it with status 0; at host shutdown,
//! when berthd has exited idle and systemd activates nothing any more, it leaves the
//! container to berth-shutdown.service, which stops after the units. The same loop runs over
//! D-Bus or varlink ([`Berthd`]).

use crate::{Fail, R};
use berth_interfaces::client::{ContainerProxy, error_parts};
use berth_interfaces::sdnotify::notify;
use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use zbus::Variant;

/// What supervising a container asks of berthd, over either transport.
pub(crate) trait Berthd {
    /// The container's status and init pid (0 when none).
    async fn state(&mut self) -> R<(String, u32)>;
    /// Starts the container; one that already runs is fine.
    async fn start(&mut self) -> R<()>;
    /// Stops it gracefully. `Ok(false)`: the host shuts down and berthd, which had exited
    /// idle, cannot be activated any more.
    async fn stop(&mut self) -> R<bool>;
}

/// A container over D-Bus.
pub(crate) struct OverDbus<'a>(pub(crate) ContainerProxy<'a>);

impl Berthd for OverDbus<'_> {
    async fn state(&mut self) -> R<(String, u32)> {
        Ok((self.0.status().await?, self.0.init_pid().await?))
    }

    async fn start(&mut self) -> R<()> {
        let none: HashMap<&str, Variant<'_>> = HashMap::new();
        Ok(crate::tolerate(self.0.start(&none).await, true)?)
    }

    async fn stop(&mut self) -> R<bool> {
        let none: HashMap<&str, Variant<'_>> = HashMap::new();
        match crate::tolerate(self.0.stop(&none).await, true) {
            Err(e) if error_parts(&e).is_some_and(|(n, _)| n == SHUTTING_DOWN) => Ok(false),
            r => r.map(|()| true).map_err(Fail::from),
        }
    }
}

/// How long a container may be without a running init before its stop counts as final: a
/// restart or a restore replaces init within this.
const SETTLE: Duration = Duration::from_secs(5);

/// systemd's answer to a bus activation once the host shuts down.
pub(crate) const SHUTTING_DOWN: &str = "org.freedesktop.systemd1.ShuttingDown";

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; a non-negative result is a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// init's pid once the container runs with an init other than `gone` (the one that just
/// ended, which berthd may not have noticed yet), waiting up to `SETTLE` for a restart or
/// restore to finish; `None` when it stays stopped.
async fn running_init(b: &mut impl Berthd, gone: u32) -> R<Option<u32>> {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let (status, pid) = b.state().await?;
        if status == "Running" && pid > 0 && pid != gone {
            return Ok(Some(pid));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `berth supervise NAME`.
pub(crate) async fn supervise(b: &mut impl Berthd, name: &str) -> R<u8> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Fail(format!("cannot handle SIGTERM: {e}"), 1))?;
    if b.state().await?.0 != "Running" {
        b.start().await?;
    }
    let mut gone = 0;
    loop {
        let Some(pid) = running_init(b, gone).await? else {
            notify(&format!("STATUS=Container {name} stopped on its own"));
            return Err(Fail(
                format!("container {name} stopped without systemctl stop"),
                1,
            ));
        };
        notify(&format!(
            "READY=1\nSTATUS=Container {name} running, init pid {pid}"
        ));
        gone = pid;
        let pidfd = match pidfd_open(pid) {
            // SAFETY: the OwnedFd stays open, and is the same fd, for the AsyncFd's whole life.
            Ok(fd) => unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
                .map_err(|e| Fail(format!("watch init: {}", e.into_parts().1), 1))?,
            // ended already: look again
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => continue,
            Err(e) => return Err(Fail(format!("watch init {pid}: {e}"), 1)),
        };
        tokio::select! {
            _ = term.recv() => {
                notify(&format!("STOPPING=1\nSTATUS=Stopping container {name}"));
                if !b.stop().await? {
                    // berthd had exited idle, and the host shuts down: systemd activates
                    // nothing now. berth-shutdown.service, which stops after this unit, runs
                    // a berthd of its own and stops the container.
                    eprintln!("berth: the host shuts down and berthd cannot be activated: berth-shutdown.service stops container {name}");
                }
                return Ok(0);
            }
            // readable: init exited
            r = pidfd.readable() => drop(r),
        }
    }
}
