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
use berth_interfaces::client::{ContainerProxy, ManagerProxy, error_parts};
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

/// A container over D-Bus, looked up at its first use (after `supervise` handles SIGTERM:
/// the lookup may wait for berthd's activation).
pub(crate) struct OverDbus<'a> {
    conn: &'a zbus::Connection,
    m: &'a ManagerProxy<'a>,
    name: String,
    c: Option<ContainerProxy<'a>>,
}

impl<'a> OverDbus<'a> {
    pub(crate) fn new(conn: &'a zbus::Connection, m: &'a ManagerProxy<'a>, name: &str) -> Self {
        OverDbus {
            conn,
            m,
            name: name.to_string(),
            c: None,
        }
    }

    async fn proxy(&mut self) -> R<&ContainerProxy<'a>> {
        let c = match self.c.take() {
            Some(c) => c,
            None => crate::container(self.conn, self.m, &self.name).await?,
        };
        Ok(self.c.insert(c))
    }
}

impl Berthd for OverDbus<'_> {
    async fn state(&mut self) -> R<(String, u32)> {
        let c = self.proxy().await?;
        // both calls in flight at once: one round trip
        Ok(tokio::try_join!(c.status(), c.init_pid())?)
    }

    async fn start(&mut self) -> R<()> {
        let none: HashMap<&str, Variant<'_>> = HashMap::new();
        Ok(crate::tolerate(
            self.proxy().await?.start(&none).await,
            true,
        )?)
    }

    async fn stop(&mut self) -> R<bool> {
        let none: HashMap<&str, Variant<'_>> = HashMap::new();
        match crate::tolerate(self.proxy().await?.stop(&none).await, true) {
            Err(e) if refused_for_shutdown(&e) => Ok(false),
            r => r.map(|()| true).map_err(Fail::from),
        }
    }
}

/// systemd's answer to an activation once the host shuts down.
pub(crate) fn refused_for_shutdown(e: &zbus::Error) -> bool {
    error_parts(e).is_some_and(|(n, _)| n == SHUTTING_DOWN)
}

/// Whether systemd says the host is shutting down (`SystemState` "stopping"); false where
/// there is no systemd or it cannot be asked.
pub(crate) async fn host_shuts_down() -> bool {
    let state = async {
        let conn = zbus::Connection::system().await?;
        let p = zbus::Proxy::new(
            &conn,
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
        )
        .await?;
        p.get_property::<String>("SystemState").await
    };
    state.await.is_ok_and(|s| s == "stopping")
}

/// How long a container may be without a running init before its stop counts as final: a
/// restart or a restore replaces init within this.
const SETTLE: Duration = Duration::from_secs(5);

/// systemd's answer to a bus activation once the host shuts down.
const SHUTTING_DOWN: &str = "org.freedesktop.systemd1.ShuttingDown";

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; a non-negative result is a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// init's pid once the container runs (or is frozen) with an init other than `gone` (the
/// one that just ended, which berthd may not have noticed yet), waiting up to `settle` for a
/// restart or restore to finish; while berthd reports a start or stop in progress the wait
/// goes on (berthd bounds those), and `settle` counts from its end. `Err` holds the status it
/// stayed in.
async fn running_init(b: &mut impl Berthd, gone: u32, settle: Duration) -> R<Result<u32, String>> {
    let mut deadline = tokio::time::Instant::now() + settle;
    loop {
        let (status, pid) = b.state().await?;
        let now = tokio::time::Instant::now();
        match status.as_str() {
            "Running" | "Frozen" if pid > 0 && pid != gone => return Ok(Ok(pid)),
            "Starting" | "Stopping" => deadline = now + settle,
            _ => {}
        }
        if now >= deadline {
            return Ok(Err(status));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `berth supervise NAME`.
pub(crate) async fn supervise(b: &mut impl Berthd, name: &str) -> R<u8> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Fail(format!("cannot handle SIGTERM: {e}"), 1))?;
    follow(b, name, SETTLE, async move {
        term.recv().await;
    })
    .await
}

/// The loop of [`supervise`]; `term` ends when SIGTERM (`systemctl stop`) comes, whenever
/// that is: during the start, while a restart or restore is awaited, or while init runs.
async fn follow(
    b: &mut impl Berthd,
    name: &str,
    settle: Duration,
    term: impl std::future::Future<Output = ()>,
) -> R<u8> {
    tokio::pin!(term);
    // no look first: a Start of one that runs (or is frozen) answers InvalidState, which
    // start() takes as done, and each round trip counts in a unit's start. A SIGTERM during
    // the start lets it finish (a Stop sent meanwhile could reach the container first and
    // find nothing to stop), then stops the container.
    let mut stopping = false;
    {
        let start = b.start();
        tokio::pin!(start);
        loop {
            tokio::select! {
                r = &mut start => break r?,
                () = &mut term, if !stopping => {
                    stopping = true;
                    notify(&format!("STATUS=Stopping container {name} once its start is done"));
                }
            }
        }
    }
    if stopping {
        return stop(b, name).await;
    }
    // a start answers once init runs: ready now, not one more round trip later (the loop
    // below names init's pid in STATUS=)
    notify("READY=1");
    let mut gone = 0;
    loop {
        let found = tokio::select! {
            r = running_init(b, gone, settle) => r?,
            () = &mut term => return stop(b, name).await,
        };
        let pid = match found {
            Ok(pid) => pid,
            Err(status) => {
                let how = match status.as_str() {
                    "Stopped" => "stopped".to_string(),
                    other => format!("ended ({other})"),
                };
                notify(&format!("STATUS=Container {name} {how} on its own"));
                return Err(Fail(
                    format!("container {name} {how} without systemctl stop"),
                    1,
                ));
            }
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
            () = &mut term => return stop(b, name).await,
            // readable: init exited
            r = pidfd.readable() => drop(r),
        }
    }
}

/// `systemctl stop`: stops the container gracefully and ends supervise with status 0.
async fn stop(b: &mut impl Berthd, name: &str) -> R<u8> {
    notify(&format!("STOPPING=1\nSTATUS=Stopping container {name}"));
    if !b.stop().await? {
        // berthd had exited idle, and the host shuts down: systemd activates nothing now.
        // berth-shutdown.service, which stops after this unit, runs a berthd of its own and
        // stops the container.
        eprintln!(
            "berth: the host shuts down and berthd cannot be activated: berth-shutdown.service stops container {name}"
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemds_shutting_down_answer_is_recognised_through_the_fdo_proxy() {
        // DBusProxy::start_service_by_name returns an fdo::Error; a name zbus does not know
        // comes as ZBus(MethodError), whose own name() is zbus's generic one
        let msg = zbus::Message::method_call("/org/freedesktop/DBus", "StartServiceByName")
            .build(&())
            .unwrap();
        let name = zbus::names::OwnedErrorName::try_from(SHUTTING_DOWN).unwrap();
        let e = zbus::fdo::Error::ZBus(zbus::Error::MethodError(name, None, msg));
        assert_ne!(zbus::DBusError::name(&e).as_str(), SHUTTING_DOWN);
        assert!(refused_for_shutdown(&zbus::Error::from(e)));
        let other = zbus::fdo::Error::ServiceUnknown("org.berth.Berth1".into());
        assert!(!refused_for_shutdown(&zbus::Error::from(other)));
    }

    /// berthd as `supervise` sees it: a container whose init (a short-lived child process)
    /// is replaced by a new one `restarts` times, as a restart would, then stays stopped.
    struct Fake {
        init: Option<std::process::Child>,
        restarts: usize,
        /// reads that answer Starting (no init yet) after each restart, as a slow restore does
        starting: usize,
        /// the status reported while init lives
        status: &'static str,
        starts: usize,
        /// how long a start takes
        start_time: Duration,
        stops: usize,
        /// the init pids the reads reported running
        seen: Vec<u32>,
        /// reads left before a restarted init appears
        pending: usize,
    }

    impl Fake {
        fn new(restarts: usize) -> Self {
            Fake {
                init: None,
                restarts,
                starting: 0,
                status: "Running",
                starts: 0,
                start_time: Duration::ZERO,
                stops: 0,
                seen: Vec::new(),
                pending: 0,
            }
        }
    }

    fn init() -> std::process::Child {
        std::process::Command::new("sleep")
            .arg("0.05")
            .spawn()
            .unwrap()
    }

    impl Berthd for Fake {
        async fn state(&mut self) -> R<(String, u32)> {
            if let Some(c) = &mut self.init
                && c.try_wait().unwrap().is_some()
            {
                self.init = None;
                if self.restarts > 0 {
                    self.restarts -= 1;
                    self.pending = self.starting + 1;
                }
            }
            if self.pending > 0 {
                self.pending -= 1;
                if self.pending > 0 {
                    return Ok(("Starting".into(), 0));
                }
                self.init = Some(init());
            }
            Ok(match &self.init {
                Some(c) => {
                    if self.seen.last() != Some(&c.id()) {
                        self.seen.push(c.id());
                    }
                    (self.status.into(), c.id())
                }
                None => ("Stopped".into(), 0),
            })
        }
        async fn start(&mut self) -> R<()> {
            // as berthd: a start of one that runs changes nothing (InvalidState, which the
            // real start() takes as done)
            tokio::time::sleep(self.start_time).await;
            if self.init.is_none() {
                self.starts += 1;
                self.init = Some(init());
            }
            Ok(())
        }
        async fn stop(&mut self) -> R<bool> {
            self.stops += 1;
            (self.restarts, self.pending) = (0, 0);
            if let Some(mut c) = self.init.take() {
                c.kill().unwrap();
                c.wait().unwrap();
            }
            Ok(true)
        }
    }

    /// `follow` with the test's settle time, and no SIGTERM
    async fn unstopped(b: &mut impl Berthd) -> R<u8> {
        follow(b, "c1", Duration::from_millis(300), std::future::pending()).await
    }

    #[tokio::test]
    async fn a_sigterm_during_the_start_stops_the_container_once_the_start_is_done() {
        let mut b = Fake::new(0);
        b.start_time = Duration::from_millis(300);
        let term = tokio::time::sleep(Duration::from_millis(20));
        let r = follow(&mut b, "c1", Duration::from_millis(300), term).await;
        assert!(matches!(r, Ok(0)), "{:?}", r.err().map(|f| f.0));
        assert_eq!((b.starts, b.stops), (1, 1));
        assert!(b.seen.is_empty(), "followed after SIGTERM: {:?}", b.seen);
    }

    #[tokio::test]
    async fn a_sigterm_while_a_restore_is_awaited_stops_the_container_at_once() {
        let mut b = Fake::new(1);
        // after the first init ends: Starting for 100 s
        b.starting = 1000;
        let term = tokio::time::sleep(Duration::from_millis(500));
        let r = follow(&mut b, "c1", Duration::from_millis(300), term).await;
        assert!(matches!(r, Ok(0)), "{:?}", r.err().map(|f| f.0));
        // (had it waited for the restore, it would have followed a second init)
        assert_eq!((b.starts, b.stops, b.seen.len()), (1, 1, 1), "{:?}", b.seen);
    }

    #[tokio::test]
    async fn a_container_that_stops_on_its_own_fails_the_unit_after_one_start() {
        let mut b = Fake::new(0);
        let r = unstopped(&mut b).await;
        assert!(matches!(r, Err(Fail(ref m, 1)) if m.contains("stopped without systemctl stop")));
        assert_eq!(b.starts, 1);
        assert_eq!(b.seen.len(), 1);
    }

    #[tokio::test]
    async fn a_running_container_is_followed_without_a_start() {
        let mut b = Fake::new(0);
        b.init = Some(init());
        let r = unstopped(&mut b).await;
        assert!(matches!(r, Err(Fail(_, 1))));
        assert_eq!(b.starts, 0);
        assert_eq!(b.seen.len(), 1);
    }

    #[tokio::test]
    async fn supervise_follows_init_across_restarts() {
        let mut b = Fake::new(2);
        let r = unstopped(&mut b).await;
        assert!(matches!(r, Err(Fail(_, 1))));
        assert_eq!(b.starts, 1);
        assert_eq!(b.seen.len(), 3, "inits followed: {:?}", b.seen);
    }

    #[tokio::test]
    async fn a_frozen_container_is_followed_as_a_running_one() {
        let mut b = Fake::new(0);
        b.status = "Frozen";
        b.init = Some(init());
        let r = unstopped(&mut b).await;
        assert!(matches!(r, Err(Fail(_, 1))));
        assert_eq!(b.starts, 0, "a frozen container runs: no start");
        assert_eq!(b.seen.len(), 1);
    }

    #[tokio::test]
    async fn a_start_longer_than_the_settle_time_is_waited_for() {
        let mut b = Fake::new(1);
        // Starting for ~0.6 s, twice the settle time
        b.starting = 6;
        let r = unstopped(&mut b).await;
        assert!(matches!(r, Err(Fail(ref m, 1)) if m.contains("stopped without")));
        assert_eq!(
            b.seen.len(),
            2,
            "the restored init was followed: {:?}",
            b.seen
        );
    }

    #[tokio::test]
    async fn an_error_is_named_in_the_failure() {
        struct Broken;
        impl Berthd for Broken {
            async fn state(&mut self) -> R<(String, u32)> {
                Ok(("Error".into(), 0))
            }
            async fn start(&mut self) -> R<()> {
                Ok(())
            }
            async fn stop(&mut self) -> R<bool> {
                unreachable!()
            }
        }
        let r = unstopped(&mut Broken).await;
        assert!(matches!(r, Err(Fail(ref m, 1)) if m.contains("ended (Error) without")));
    }
}
