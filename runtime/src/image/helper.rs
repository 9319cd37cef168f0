//! `berth-helper unpack`: unpacks an image archive as the container's mapped root.
//!
//! The helper forks a child into a new user namespace mapped like a container (uid 0 → the
//! container range); the parent, still host root, makes an idmapped detached mount of the
//! staging volume through that namespace and hands it over. The child becomes root of its
//! namespace only, sets no_new_privs, chroots into the mount and extracts the archive from
//! its stdin (and a split image's rootfs from fd 3) with the checks of [`super::extract`].
//! Files land on disk owned by uid 0 — the image base stays unshifted — while nothing in the
//! extracting process had host privileges or could name a host path.
//!
//! Protocol on stdout: `progress <bytes>` lines, then one JSON [`HelperReport`].

use super::extract::{Extractor, Layout, Limits};
use super::format::{self, Payload};
use crate::error::{Context, Error, Result};
use crate::idmap::IdMap;
use crate::{fdpass, launch, sys};
use serde::{Deserialize, Serialize};
use std::io::{BufReader, Read};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The helper's last line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HelperReport {
    /// Unpacked.
    Ok {
        /// Entries written.
        entries: u64,
        /// Bytes of file data written.
        bytes: u64,
    },
    /// Failed.
    Err {
        /// Why.
        message: String,
        /// The archive is at fault (not the host).
        invalid: bool,
    },
}

/// Which archive layout the helper unpacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Split {
    /// One unified tarball on stdin.
    Unified,
    /// Metadata tarball on stdin, rootfs (tarball or squashfs) on fd 3.
    Split,
}

/// Entry point of `berth-helper unpack …`.
pub fn main(args: &[String]) -> ! {
    let parsed = (|| -> Result<(Split, IdMap, u64, PathBuf)> {
        let mut split = Split::Unified;
        let mut ids = None;
        let mut max = None;
        let mut staging = None;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--split" => split = Split::Split,
                "--ids" => {
                    let v = it
                        .next()
                        .ok_or_else(|| Error::Invalid("--ids needs BASE:COUNT".into()))?;
                    let (b, c) = v
                        .split_once(':')
                        .ok_or_else(|| Error::Invalid("--ids needs BASE:COUNT".into()))?;
                    let (b, c) = (
                        b.parse().map_err(|_| Error::Invalid("bad --ids".into()))?,
                        c.parse().map_err(|_| Error::Invalid("bad --ids".into()))?,
                    );
                    ids = Some(IdMap {
                        uid_base: b,
                        gid_base: b,
                        count: c,
                    });
                }
                "--max-bytes" => max = it.next().and_then(|v| v.parse().ok()),
                p if !p.starts_with('-') => staging = Some(PathBuf::from(p)),
                other => return Err(Error::Invalid(format!("unknown argument {other}"))),
            }
        }
        Ok((
            split,
            ids.ok_or_else(|| Error::Invalid("--ids is required".into()))?,
            max.ok_or_else(|| Error::Invalid("--max-bytes is required".into()))?,
            staging.ok_or_else(|| Error::Invalid("the staging directory is required".into()))?,
        ))
    })();
    let (split, ids, max_bytes, staging) = match parsed {
        Ok(p) => p,
        Err(e) => finish(Err(e)),
    };
    crate::crash::point("helper.unpack.started");
    finish(unpack(split, ids, max_bytes, &staging))
}

fn finish(r: Result<(u64, u64)>) -> ! {
    let report = match r {
        Ok((entries, bytes)) => HelperReport::Ok { entries, bytes },
        Err(e) => HelperReport::Err {
            invalid: matches!(e, Error::InvalidImage(_)),
            message: e.to_string(),
        },
    };
    let mut line = serde_json::to_vec(&report).unwrap_or_default();
    line.push(b'\n');
    let _ = sys::write_all_fd(1, &line);
    sys::exit_now(if matches!(report, HelperReport::Ok { .. }) {
        0
    } else {
        1
    })
}

/// Parent side: the child in its user namespace does the work.
fn unpack(split: Split, ids: IdMap, max_bytes: u64, staging: &Path) -> Result<(u64, u64)> {
    let (parent_sock, child_sock) = launch::seqpacket_pair()?;
    // SAFETY: berth-helper is single-threaded; the child ends in _exit.
    match unsafe { sys::clone3_fork(libc::CLONE_NEWUSER as u64) }
        .step(|| "clone the unpacking process")?
    {
        sys::Forked::Child => {
            drop(parent_sock);
            let r = child(child_sock.as_fd(), split, ids, max_bytes);
            // the child reports directly on stdout
            finish(r)
        }
        sys::Forked::Parent { pid, .. } => {
            drop(child_sock);
            let r = (|| {
                ids.write_for(pid)?;
                let mnt = launch::rootfs_mount(staging, Some(pid))?;
                launch::send_fd(parent_sock.as_fd(), b"go", mnt.as_fd())
                    .step(|| "hand over the staging mount")?;
                Ok(())
            })();
            if let Err(e) = r {
                // SAFETY: killing our own child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let _ = sys::waitpid_blocking(pid);
                return Err(e);
            }
            let status = sys::waitpid_blocking(pid).step(|| "wait for the unpacking process")?;
            // the files written, the report not yet read
            crate::crash::point("helper.unpack.written");
            // the child already wrote its report; exit with its status without a second one
            sys::exit_now(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                1
            })
        }
    }
}

/// Counts bytes read and reports them every few MiB on stdout.
struct Counting<R> {
    inner: R,
    total: u64,
    reported: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.total += n as u64;
        if self.total - self.reported >= 4 << 20 {
            self.reported = self.total;
            let _ = sys::write_all_fd(1, format!("progress {}\n", self.total).as_bytes());
        }
        Ok(n)
    }
}

fn child(
    sock: std::os::fd::BorrowedFd<'_>,
    split: Split,
    ids: IdMap,
    max_bytes: u64,
) -> Result<(u64, u64)> {
    let mut buf = [0u8; 8];
    let (_, mut fds) = fdpass::recv(sock, &mut buf).step(|| "receive the staging mount")?;
    let mnt = fds
        .pop()
        .ok_or_else(|| Error::Protocol("no staging mount".into()))?;
    // SAFETY: plain syscalls; ids 0 were mapped by the parent before "go".
    unsafe {
        sys::cvt(libc::setresgid(0, 0, 0)).step(|| "become root in the user namespace")?;
        sys::cvt(libc::setresuid(0, 0, 0)).step(|| "become root in the user namespace")?;
        sys::cvt(libc::setgroups(0, std::ptr::null())).step(|| "drop supplementary groups")?;
        sys::cvt(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)).step(|| "set no_new_privs")?;
        sys::cvt(libc::fchdir(mnt.as_raw_fd())).step(|| "enter the staging mount")?;
        sys::cvt(libc::chroot(c".".as_ptr())).step(|| "chroot into the staging mount")?;
    }
    drop(mnt);
    let root = std::fs::File::open("/").step(|| "open the staging root")?;
    let limits = Limits {
        max_bytes,
        max_entries: 10_000_000,
        id_count: ids.count,
    };
    let mut x = Extractor::new(OwnedFd::from(root), limits);
    // SAFETY: fd 0 is the archive berthd passed; we own it from here on.
    let stdin = unsafe { std::fs::File::from_raw_fd(0) };
    let mut input = BufReader::with_capacity(
        1 << 20,
        Counting {
            inner: stdin,
            total: 0,
            reported: 0,
        },
    );
    let payload = Payload::sniff(&format::peek(&mut input)?)?;
    let Payload::Tar(c) = payload else {
        return Err(Error::InvalidImage(match split {
            Split::Unified => "a unified image must be a tarball, not a squashfs".into(),
            Split::Split => "a split image's metadata must be a tarball".into(),
        }));
    };
    x.tar(
        format::decoder(c, input)?,
        if split == Split::Unified {
            Layout::Unified
        } else {
            Layout::Metadata
        },
    )?;
    if split == Split::Split {
        // SAFETY: fd 3 is the rootfs file berthd passed.
        let rootfs = unsafe { std::fs::File::from_raw_fd(3) };
        let mut head = [0u8; 1024];
        let n = std::os::unix::fs::FileExt::read_at(&rootfs, &mut head, 0)
            .step(|| "read the rootfs file")?;
        match Payload::sniff(&head[..n])? {
            Payload::Squashfs => x.squashfs(rootfs)?,
            Payload::Tar(c) => {
                let r = BufReader::with_capacity(
                    1 << 20,
                    Counting {
                        inner: rootfs,
                        total: 0,
                        reported: 0,
                    },
                );
                x.tar(format::decoder(c, r)?, Layout::Rootfs)?;
            }
        }
    }
    let report = x.finish()?;
    if report.metadata.is_none() {
        return Err(Error::InvalidImage(
            "the archive has no metadata.yaml".into(),
        ));
    }
    Ok((report.entries, report.bytes))
}

/// What berthd asks of the helper.
#[derive(Debug)]
pub struct Job<'a> {
    /// The berth-helper binary.
    pub helper: &'a Path,
    /// The staging volume (empty, owned by root).
    pub staging: &'a Path,
    /// The unified archive, or a split image's metadata tarball.
    pub archive: &'a Path,
    /// A split image's rootfs file.
    pub rootfs: Option<&'a Path>,
    /// The mapping to unpack as.
    pub ids: IdMap,
    /// Most bytes the image may unpack to.
    pub max_bytes: u64,
}

/// Runs the helper for `job` (blocking), reporting consumed input bytes to `progress` and
/// killing it when `cancel` becomes true.
pub fn run(
    job: &Job<'_>,
    progress: &mut dyn FnMut(u64),
    cancel: &AtomicBool,
) -> Result<(u64, u64)> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let archive =
        std::fs::File::open(job.archive).step(|| format!("open {}", job.archive.display()))?;
    let rootfs = job
        .rootfs
        .map(|p| std::fs::File::open(p).step(|| format!("open {}", p.display())))
        .transpose()?;
    let mut cmd = Command::new(job.helper);
    cmd.arg("unpack")
        .arg("--ids")
        .arg(format!("{}:{}", job.ids.uid_base, job.ids.count));
    cmd.arg("--max-bytes").arg(job.max_bytes.to_string());
    if rootfs.is_some() {
        cmd.arg("--split");
    }
    cmd.arg(job.staging)
        .stdin(Stdio::from(archive))
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(r) = &rootfs {
        let fd = r.as_raw_fd();
        // SAFETY: only dup2 (async-signal-safe) runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd
        .spawn()
        .step(|| format!("run {}", job.helper.display()))?;
    drop(rootfs);
    let mut out = child
        .stdout
        .take()
        .ok_or_else(|| Error::Protocol("helper stdout".into()))?;
    let mut pending = Vec::new();
    let mut last: Option<HelperReport> = None;
    let mut buf = [0u8; 4096];
    loop {
        let mut pfd = libc::pollfd {
            fd: out.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 100) };
        if cancel.load(Ordering::Relaxed) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Cancelled);
        }
        if n <= 0 {
            continue;
        }
        let got = out.read(&mut buf).step(|| "read the helper's report")?;
        if got == 0 {
            break;
        }
        pending.extend_from_slice(&buf[..got]);
        while let Some(i) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            if let Some(n) = line.strip_prefix("progress ").and_then(|v| v.parse().ok()) {
                progress(n);
            } else if let Ok(r) = serde_json::from_str::<HelperReport>(&line) {
                last = Some(r);
            }
        }
    }
    let _ = child.wait();
    match last {
        Some(HelperReport::Ok { entries, bytes }) => Ok((entries, bytes)),
        Some(HelperReport::Err {
            message,
            invalid: true,
        }) => Err(Error::InvalidImage(strip_prefix(&message))),
        Some(HelperReport::Err { message, .. }) => Err(Error::Tool {
            tool: "berth-helper unpack".into(),
            status: "failed".into(),
            stderr: message,
        }),
        None => Err(Error::Protocol(
            "the unpacking helper died without a report".into(),
        )),
    }
}

fn strip_prefix(m: &str) -> String {
    m.strip_prefix("invalid image: ").unwrap_or(m).to_string()
}
