//! A blocking client of a monitor's socket (for tests, the benchmark and helpers). berthd
//! speaks the same protocol asynchronously.

use super::proto::{self, Reply, Request};
use crate::error::{Context, Error, Result};
use crate::{fdpass, sys};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// One connection to a monitor.
#[derive(Debug)]
pub struct Conn {
    fd: OwnedFd,
}

impl Conn {
    /// Connects to the monitor socket at `path`.
    pub fn connect(path: &Path) -> Result<Conn> {
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: plain syscall.
        let fd = sys::cvt(unsafe {
            libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0)
        })
        .step(|| "create a socket")?;
        // SAFETY: fresh fd.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let (addr, len) = super::sockaddr_un(path.as_os_str().as_bytes())?;
        // SAFETY: valid sockaddr_un.
        sys::cvt(unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                len,
            )
        })
        .step(|| format!("connect to {}", path.display()))?;
        Ok(Conn { fd })
    }

    /// Sends a request with `fds` attached.
    pub fn send(&self, req: &Request, fds: &[RawFd]) -> Result<()> {
        fdpass::send(self.fd.as_fd(), &proto::encode(req), fds).step(|| "send to the monitor")
    }

    /// Receives the next reply; `Err(NotRunning)`-like protocol error at end of stream.
    pub fn recv(&self) -> Result<Reply> {
        let mut buf = vec![0u8; proto::MAX_MESSAGE];
        let (n, _) = fdpass::recv(self.fd.as_fd(), &mut buf).step(|| "receive from the monitor")?;
        if n == 0 {
            return Err(Error::Protocol("the monitor closed the connection".into()));
        }
        proto::decode(&buf[..n])
    }

    /// Sends a request and returns the first reply.
    pub fn call(&self, req: &Request) -> Result<Reply> {
        self.send(req, &[])?;
        self.recv()
    }

    /// The raw socket (for polling).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
