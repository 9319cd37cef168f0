//! The varlink socket's connections: a listener that bounds how many are served at once, a
//! socket whose read half bounds a message's size and counts as berthd's activity while it is
//! open, and the polkit subject of a connection's peer.

use super::{MAX_CONNECTIONS, MAX_MESSAGE, MESSAGE_TIMEOUT};
use crate::auth::Caller;
use berth_actors::activity::{Activity, Busy};
use serde_json::Value;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use zbus_polkit::policykit1::Subject;
use zlink::connection::socket::{ReadHalf, ReadResult, Socket, UnixSocket};
use zlink::tokio::unix::Stream;

/// What an open connection holds: its slot among [`MAX_CONNECTIONS`] and berthd's activity.
#[derive(Debug)]
struct Held {
    _slot: OwnedSemaphorePermit,
    _busy: Busy,
}

/// What the listener does with new connections; berthd changes it when it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepting {
    /// Accepts them as they come.
    All,
    /// Accepts what the kernel has queued, then none (a socket berthd bound, whose path is
    /// gone: nothing new can arrive, and what is queued would die with the socket); says
    /// `Drained` once the queue is empty.
    Queued,
    /// The queue is empty and nothing more is accepted.
    Drained,
    /// Accepts none: what connects waits in the queue (a socket systemd passed, and keeps
    /// open for the next berthd).
    None,
}

/// Accepts connections, at most [`MAX_CONNECTIONS`] open at once, as `mode` says.
#[derive(Debug)]
pub struct Listener {
    inner: tokio::net::UnixListener,
    slots: Arc<Semaphore>,
    activity: Activity,
    mode: Arc<tokio::sync::watch::Sender<Accepting>>,
}

impl Listener {
    /// Wraps a listening socket.
    pub fn new(
        inner: tokio::net::UnixListener,
        slots: Arc<Semaphore>,
        activity: Activity,
        mode: Arc<tokio::sync::watch::Sender<Accepting>>,
    ) -> Self {
        Listener {
            inner,
            slots,
            activity,
            mode,
        }
    }

    /// The next queued connection, without waiting: `None` once the queue is empty (twice, 50
    /// ms apart: a connect that found the path before it went may still be on its way).
    async fn queued(&self) -> Option<std::io::Result<tokio::net::UnixStream>> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        for attempt in 0..2 {
            // SAFETY: plain syscall on our listening socket; a non-negative result is a new fd
            // we own.
            let fd = unsafe {
                libc::accept4(
                    self.inner.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                )
            };
            if fd >= 0 {
                // SAFETY: fresh fd.
                let s = std::os::unix::net::UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
                return Some(tokio::net::UnixStream::from_std(s));
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::WouldBlock {
                return Some(Err(e));
            }
            if attempt == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        None
    }
}

impl zlink::Listener for Listener {
    type Socket = Guarded;

    async fn accept(&mut self) -> zlink::Result<Option<zlink::Connection<Guarded>>> {
        loop {
            // (a connection the kernel has queued stays queued until an accept completes: a
            // change of mode that wins the race takes none)
            let mut mode = self.mode.subscribe();
            let now = *mode.borrow_and_update();
            let accepted = match now {
                Accepting::All => tokio::select! {
                    biased;
                    _ = mode.changed() => continue,
                    r = self.inner.accept() => r.map(|(s, _)| s),
                },
                Accepting::Queued => match self.queued().await {
                    Some(r) => r,
                    None => {
                        self.mode.send_replace(Accepting::Drained);
                        continue;
                    }
                },
                Accepting::Drained | Accepting::None => {
                    // (we hold a sender: the channel stays open)
                    let _ = mode.changed().await;
                    continue;
                }
            };
            let stream = match accepted {
                Ok(s) => s,
                Err(e) => {
                    // out of fds, say: the server must go on serving the connections it has
                    tracing::warn!("varlink: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                tracing::warn!(
                    "varlink: {MAX_CONNECTIONS} connections are open; closing a new one"
                );
                continue;
            };
            let stream = match Stream::try_from(stream) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("varlink: a new connection: {e}");
                    continue;
                }
            };
            let held = Held {
                _slot: slot,
                _busy: self.activity.hold(),
            };
            return Ok(Some(zlink::Connection::new(Guarded {
                stream,
                held,
                activity: self.activity.clone(),
            })));
        }
    }
}

/// A client's socket.
#[derive(Debug)]
pub struct Guarded {
    stream: Stream,
    held: Held,
    activity: Activity,
}

impl Socket for Guarded {
    type ReadHalf = Limited;
    type WriteHalf = <Stream as Socket>::WriteHalf;
    const CAN_TRANSFER_FDS: bool = true;

    fn split(self) -> (Limited, Self::WriteHalf) {
        let (read, write) = self.stream.split();
        (
            Limited {
                inner: read,
                pending: 0,
                deadline: None,
                _held: self.held,
                activity: self.activity,
            },
            write,
        )
    }
}

/// The read half: refuses a message longer than [`MAX_MESSAGE`] or one not complete
/// [`MESSAGE_TIMEOUT`] after its first byte came, and counts every read as activity. It lives as
/// long as the connection, and so does what it holds.
#[derive(Debug)]
pub struct Limited {
    inner: <Stream as Socket>::ReadHalf,
    /// Bytes read since the last NUL (the message being received).
    pending: usize,
    /// When the message being received must be complete (None between messages: an idle
    /// connection may wait as long as it likes). Kept here, not in the read's future: zlink
    /// drops and makes again a connection's read whenever another connection is served.
    deadline: Option<tokio::time::Instant>,
    _held: Held,
    activity: Activity,
}

impl ReadHalf for Limited {
    async fn read(&mut self, buf: &mut [u8]) -> zlink::Result<ReadResult> {
        let read = self.inner.read(buf);
        let r = match self.deadline {
            None => read.await?,
            Some(d) => match tokio::time::timeout_at(d, read).await {
                Ok(r) => r?,
                Err(_) => {
                    tracing::info!(
                        "varlink: a message unfinished {MESSAGE_TIMEOUT:?} after it began; closing its connection"
                    );
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "message not completed in time",
                    )
                    .into());
                }
            },
        };
        let n = r.bytes_read();
        let (pending, ended) = match buf[..n].iter().rposition(|b| *b == 0) {
            Some(i) => (n - i - 1, true),
            None => (self.pending + n, false),
        };
        self.pending = pending;
        if pending == 0 {
            self.deadline = None;
        } else if ended || self.deadline.is_none() {
            // a new message began: it has MESSAGE_TIMEOUT to arrive whole
            self.deadline = Some(tokio::time::Instant::now() + MESSAGE_TIMEOUT);
        }
        if self.pending > MAX_MESSAGE {
            tracing::info!("varlink: a message over {MAX_MESSAGE} bytes; closing its connection");
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("message longer than {MAX_MESSAGE} bytes"),
            )
            .into());
        }
        self.activity.touch();
        Ok(r)
    }
}

impl AsFd for Limited {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

impl UnixSocket for Limited {}

/// The polkit subject of a peer: its pidfd and uid (SO_PEERPIDFD, SO_PEERCRED), with its pid
/// and start time as the fallback for polkit before 124, built only while the pidfd shows that
/// the pid still names the peer.
pub(crate) fn caller(creds: &zlink::connection::Credentials, params: &Value) -> Caller {
    let uid = creds.unix_user_id().as_raw();
    let pid = creds.process_id().as_raw_pid();
    let interactive = params
        .get("allowInteractiveAuthentication")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let pidfd = creds.process_fd();
    let subject = pidfd.and_then(|fd| Subject::new_for_owner(fd, uid).ok());
    let fallback_subject = match pidfd {
        Some(fd) => {
            let s = Subject::new_for_pid(pid as u32, None, Some(uid)).ok();
            // the start time was read after the pidfd was taken: if the process still lives,
            // its pid was not reused in between
            s.filter(|_| alive(fd))
        }
        // a kernel before 6.5: the pid as the peer had it when it connected
        None => Subject::new_for_pid(pid as u32, None, Some(uid)).ok(),
    };
    Caller {
        subject: subject.or_else(|| {
            pidfd
                .is_none()
                .then(|| Subject::new_for_pid(pid as u32, None, Some(uid)).ok())
                .flatten()
        }),
        fallback_subject,
        bus_name: None,
        uid: Some(uid),
        interactive,
    }
}

/// Whether the process behind `pidfd` still runs (signal 0 through the pidfd).
fn alive(pidfd: BorrowedFd<'_>) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_send_signal with signal 0 only checks; the fd is borrowed and valid.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    r == 0
}
