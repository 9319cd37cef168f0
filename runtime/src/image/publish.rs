//! Publishing: a stopped container's volume (or a snapshot) becomes a unified image tarball,
//! compressed with multithreaded zstd, that is then imported like any other image.
//!
//! The container's files are the container's to shape, so the walk never follows a link: every
//! directory is opened `O_NOFOLLOW` relative to its parent's fd, symlinks are recorded as such,
//! hardlinks are kept, and anything else (devices, sockets) is skipped. Owners are written as
//! the container sees them (a shifted rootfs is unshifted). Names are written byte for byte
//! (a name need not be UTF-8), and the xattrs an import keeps (`user.*`, file capabilities)
//! go into PAX `SCHILY.xattr.*` records, a capability in its namespace-neutral (v2) form.

use super::Metadata;
use crate::error::{Context, Error, Result};
use crate::idmap::IdMap;
use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Writes `out` (zstd tarball) from `volume` (`rootfs/`, `templates/`) with `metadata`.
/// `shifted`: the rootfs is chowned into this range and must be written unshifted. `skip`:
/// paths relative to the rootfs left out (the links CRIU made in a stateful snapshot).
pub fn publish(
    volume: &Path,
    metadata: &Metadata,
    shifted: Option<IdMap>,
    skip: &[std::path::PathBuf],
    out: &Path,
    cancel: &AtomicBool,
) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .step(|| format!("create {}", out.display()))?;
    let r = (|| -> Result<()> {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let mut enc =
            zstd::stream::write::Encoder::new(std::io::BufWriter::with_capacity(1 << 20, file), 3)
                .step(|| "start zstd")?;
        enc.multithread(threads).step(|| "zstd threads")?;
        let mut b = tar::Builder::new(enc);
        b.mode(tar::HeaderMode::Complete);
        let meta = metadata.to_yaml();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(meta.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(metadata.creation_date.max(0) as u64);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, "metadata.yaml", meta.as_bytes())
            .step(|| "write metadata.yaml")?;
        let skip = skip
            .iter()
            .map(|p| {
                let mut a = b"rootfs/".to_vec();
                a.extend_from_slice(p.as_os_str().as_bytes());
                a
            })
            .collect();
        let mut w = Walker {
            b: &mut b,
            shifted,
            links: HashMap::new(),
            skip,
            cancel,
        };
        for top in ["rootfs", "templates"] {
            let p = volume.join(top);
            if std::fs::symlink_metadata(&p)
                .map(|m| m.is_dir())
                .unwrap_or(false)
            {
                let c = crate::sys::cpath(&p).map_err(|e| Error::os("path", e))?;
                // SAFETY: open a directory we name, not following a final symlink.
                let fd = unsafe {
                    libc::open(
                        c.as_ptr(),
                        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                    )
                };
                if fd < 0 {
                    return Err(Error::os(
                        format!("open {}", p.display()),
                        std::io::Error::last_os_error(),
                    ));
                }
                // SAFETY: fresh fd.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                w.dir(fd.as_raw_fd(), top.as_bytes())?;
            }
        }
        let enc = b.into_inner().step(|| "finish the tarball")?;
        let mut inner = enc.finish().step(|| "finish zstd")?;
        inner.flush().step(|| "flush the image")?;
        inner.get_ref().sync_all().step(|| "sync the image")?;
        Ok(())
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(out);
    }
    r
}

struct Walker<'a, W: Write> {
    b: &'a mut tar::Builder<W>,
    shifted: Option<IdMap>,
    links: HashMap<(u64, u64), Vec<u8>>,
    skip: std::collections::HashSet<Vec<u8>>,
    cancel: &'a AtomicBool,
}

fn os(p: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(p))
}

fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// The xattrs of `fd` that an import keeps, as PAX records (key, value).
fn xattrs(fd: RawFd) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 4096];
    // SAFETY: flistxattr into our buffer of the length given.
    let n = unsafe { libc::flistxattr(fd, names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return Vec::new();
    }
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let keep = name.starts_with(b"user.") || name == b"security.capability";
        let (Ok(text), Ok(c)) = (std::str::from_utf8(name), CString::new(name)) else {
            continue;
        };
        if !keep {
            continue;
        }
        let mut value = vec![0u8; 65536];
        // SAFETY: fgetxattr into our buffer of the length given.
        let n = unsafe { libc::fgetxattr(fd, c.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
        if n < 0 {
            continue;
        }
        value.truncate(n as usize);
        if name == b"security.capability" {
            value = neutral_capability(value);
        }
        out.push((format!("SCHILY.xattr.{text}"), value));
    }
    out
}

/// A v3 file capability names the root it belongs to (a host uid); as v2 it belongs to
/// whichever root the importing container has.
fn neutral_capability(v: Vec<u8>) -> Vec<u8> {
    const REVISION_MASK: u32 = 0xff00_0000;
    const V2: u32 = 0x0200_0000;
    const V3: u32 = 0x0300_0000;
    if v.len() != 24 {
        return v;
    }
    let magic = u32::from_le_bytes([v[0], v[1], v[2], v[3]]);
    if magic & REVISION_MASK != V3 {
        return v;
    }
    let mut out = (V2 | (magic & !REVISION_MASK)).to_le_bytes().to_vec();
    out.extend_from_slice(&v[4..20]);
    out
}

fn fstatat(dir: RawFd, name: &CStr) -> std::io::Result<libc::stat> {
    // SAFETY: stat is plain data; fstatat without following symlinks.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers.
    if unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

impl<W: Write> Walker<'_, W> {
    fn ids(&self, uid: u32, gid: u32) -> (u64, u64) {
        match self.shifted {
            Some(m) if uid >= m.uid_base && gid >= m.gid_base => {
                ((uid - m.uid_base) as u64, (gid - m.gid_base) as u64)
            }
            _ => (uid as u64, gid as u64),
        }
    }

    fn header(&self, st: &libc::stat, kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(st.st_mode & 0o7777);
        let (u, g) = self.ids(st.st_uid, st.st_gid);
        h.set_uid(u);
        h.set_gid(g);
        h.set_mtime(st.st_mtime.max(0) as u64);
        h.set_size(size);
        h
    }

    /// Writes the directory `fd` (archive path `path`) and everything below it.
    fn dir(&mut self, fd: RawFd, path: &[u8]) -> Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        // SAFETY: fstat on our fd.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer.
        unsafe { libc::fstat(fd, &mut st) };
        let mut h = self.header(&st, tar::EntryType::Directory, 0);
        let mut name = path.to_vec();
        name.push(b'/');
        self.pax(fd, path)?;
        self.b
            .append_data(&mut h, os(&name), std::io::empty())
            .step(|| format!("write {}", show(path)))?;
        // SAFETY: dup so that fdopendir owns its own fd.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        // SAFETY: fdopendir takes ownership of `dup`.
        let d = unsafe { libc::fdopendir(dup) };
        if d.is_null() {
            return Err(Error::os(
                format!("read {}", show(path)),
                std::io::Error::last_os_error(),
            ));
        }
        let mut names = Vec::new();
        loop {
            // SAFETY: readdir on our DIR*.
            let ent = unsafe { libc::readdir(d) };
            if ent.is_null() {
                break;
            }
            // SAFETY: d_name is NUL-terminated.
            let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) }.to_owned();
            if name.as_bytes() != b"." && name.as_bytes() != b".." {
                names.push(name);
            }
        }
        // SAFETY: closedir of our DIR*.
        unsafe { libc::closedir(d) };
        names.sort();
        for name in names {
            let mut child = path.to_vec();
            child.push(b'/');
            child.extend_from_slice(name.as_bytes());
            self.entry(fd, &name, &child)?;
        }
        Ok(())
    }

    /// The PAX records of the entry about to be written (its xattrs), if any.
    fn pax(&mut self, fd: RawFd, path: &[u8]) -> Result<()> {
        let x = xattrs(fd);
        if x.is_empty() {
            return Ok(());
        }
        self.b
            .append_pax_extensions(x.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .step(|| format!("write the xattrs of {}", show(path)))
    }

    fn entry(&mut self, dir: RawFd, name: &CString, path: &[u8]) -> Result<()> {
        if self.skip.contains(path) {
            return Ok(());
        }
        let st = match fstatat(dir, name) {
            Ok(s) => s,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(Error::os(format!("stat {}", show(path)), e)),
        };
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                // SAFETY: open a directory relative to its parent, never through a symlink.
                let fd = unsafe {
                    libc::openat(
                        dir,
                        name.as_ptr(),
                        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                    )
                };
                if fd < 0 {
                    return Err(Error::os(
                        format!("open {}", show(path)),
                        std::io::Error::last_os_error(),
                    ));
                }
                // SAFETY: fresh fd.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                self.dir(fd.as_raw_fd(), path)
            }
            libc::S_IFREG => {
                let key = (st.st_dev, st.st_ino);
                if st.st_nlink > 1 {
                    if let Some(first) = self.links.get(&key).cloned() {
                        let mut h = self.header(&st, tar::EntryType::Link, 0);
                        return self
                            .b
                            .append_link(&mut h, os(path), os(&first))
                            .step(|| format!("write {}", show(path)));
                    }
                    self.links.insert(key, path.to_vec());
                }
                // SAFETY: open a regular file relative to its parent, never through a symlink.
                let fd = unsafe {
                    libc::openat(
                        dir,
                        name.as_ptr(),
                        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                    )
                };
                if fd < 0 {
                    return Err(Error::os(
                        format!("open {}", show(path)),
                        std::io::Error::last_os_error(),
                    ));
                }
                // SAFETY: fresh fd.
                let f = unsafe { std::fs::File::from_raw_fd(fd) };
                self.pax(f.as_raw_fd(), path)?;
                let mut h = self.header(&st, tar::EntryType::Regular, st.st_size as u64);
                self.b
                    .append_data(&mut h, os(path), f)
                    .step(|| format!("write {}", show(path)))
            }
            libc::S_IFLNK => {
                let mut buf = vec![0u8; 4096];
                // SAFETY: readlinkat into our buffer.
                let n = unsafe {
                    libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
                };
                if n < 0 {
                    return Err(Error::os(
                        format!("readlink {}", show(path)),
                        std::io::Error::last_os_error(),
                    ));
                }
                buf.truncate(n as usize);
                let mut h = self.header(&st, tar::EntryType::Symlink, 0);
                self.b
                    .append_link(&mut h, os(path), os(&buf))
                    .step(|| format!("write {}", show(path)))
            }
            libc::S_IFIFO => {
                let mut h = self.header(&st, tar::EntryType::Fifo, 0);
                self.b
                    .append_data(&mut h, os(path), std::io::empty())
                    .step(|| format!("write {}", show(path)))
            }
            // devices and sockets cannot be part of an unprivileged image
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_lose_their_root() {
        let mut v3 = 0x0300_0001u32.to_le_bytes().to_vec();
        v3.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0]);
        v3.extend_from_slice(&1_000_000u32.to_le_bytes());
        let v2 = neutral_capability(v3);
        assert_eq!(v2.len(), 20);
        assert_eq!(
            u32::from_le_bytes([v2[0], v2[1], v2[2], v2[3]]),
            0x0200_0001,
            "effective flag kept"
        );
        assert_eq!(&v2[4..], &[1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0]);
        assert_eq!(neutral_capability(v2.clone()), v2, "v2 stays as it is");
    }
}
