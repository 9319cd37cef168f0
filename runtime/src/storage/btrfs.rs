//! btrfs subvolumes through their ioctls: create, snapshot, delete (nested ones first) and the
//! read-only flag (quotas are in [`super::quota`]). A snapshot is a constant-time copy whatever the tree's size.

use crate::error::{Context, Error, Result};
use crate::sys;
use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;
/// Inode number of every subvolume's root directory.
pub(crate) const FIRST_FREE_OBJECTID: u64 = 256;
const SUBVOL_RDONLY: u64 = 1 << 1;
const PATH_NAME_MAX: usize = 4087;

// _IOW(0x94, nr, size) / _IOR(0x94, nr, size)
const fn iow(nr: u64, size: u64) -> u64 {
    (1 << 30) | (size << 16) | (0x94 << 8) | nr
}
const fn ior(nr: u64, size: u64) -> u64 {
    (2 << 30) | (size << 16) | (0x94 << 8) | nr
}
const IOC_SUBVOL_CREATE: u64 = iow(14, 4096);
const IOC_SNAP_DESTROY: u64 = iow(15, 4096);
const IOC_SNAP_CREATE_V2: u64 = iow(23, 4096);
const IOC_SUBVOL_GETFLAGS: u64 = ior(25, 8);
const IOC_SUBVOL_SETFLAGS: u64 = iow(26, 8);

#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; PATH_NAME_MAX + 1],
}

#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; 4040],
}

const _: () = assert!(std::mem::size_of::<VolArgs>() == 4096);
const _: () = assert!(std::mem::size_of::<VolArgsV2>() == 4096);

fn split(path: &Path) -> Result<(&Path, &OsStr)> {
    match (path.parent(), path.file_name()) {
        (Some(p), Some(n)) if n.len() <= 4000 => Ok((p, n)),
        _ => Err(Error::Invalid(format!(
            "not a subvolume path: {}",
            path.display()
        ))),
    }
}

fn open_dir(p: &Path) -> Result<std::fs::File> {
    std::fs::File::open(p).step(|| format!("open {}", p.display()))
}

/// Whether `path` lies on a btrfs filesystem.
pub fn is_btrfs(path: &Path) -> bool {
    let Ok(c) = sys::cpath(path) else {
        return false;
    };
    // SAFETY: statfs is plain data; c is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers.
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0) && st.f_type as i64 == BTRFS_SUPER_MAGIC
}

/// Whether `path` is the root of a btrfs subvolume.
pub fn is_subvolume(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir() && m.ino() == FIRST_FREE_OBJECTID)
        && is_btrfs(path)
}

/// Creates an empty subvolume at `path`.
pub fn create(path: &Path) -> Result<()> {
    let (parent, name) = split(path)?;
    let dir = open_dir(parent)?;
    let mut args = VolArgs {
        fd: 0,
        name: [0; PATH_NAME_MAX + 1],
    };
    args.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: the ioctl reads a VolArgs of the size encoded in the request.
    sys::cvt(unsafe { libc::ioctl(dir.as_raw_fd(), IOC_SUBVOL_CREATE as _, &args) })
        .step(|| format!("create subvolume {}", path.display()))?;
    Ok(())
}

/// Snapshots subvolume `src` to `dst` (writable unless `readonly`).
pub fn snapshot(src: &Path, dst: &Path, readonly: bool) -> Result<()> {
    let (parent, name) = split(dst)?;
    let dir = open_dir(parent)?;
    let source = open_dir(src)?;
    let mut args = VolArgsV2 {
        fd: source.as_raw_fd() as i64,
        transid: 0,
        flags: if readonly { SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: [0; 4040],
    };
    args.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: the ioctl reads a VolArgsV2 of the size encoded in the request.
    sys::cvt(unsafe { libc::ioctl(dir.as_raw_fd(), IOC_SNAP_CREATE_V2 as _, &args) })
        .step(|| format!("snapshot {} to {}", src.display(), dst.display()))?;
    Ok(())
}

/// Sets or clears the read-only flag of subvolume `path`.
pub fn set_readonly(path: &Path, ro: bool) -> Result<()> {
    let f = open_dir(path)?;
    let mut flags: u64 = 0;
    // SAFETY: GETFLAGS writes one u64.
    sys::cvt(unsafe { libc::ioctl(f.as_raw_fd(), IOC_SUBVOL_GETFLAGS as _, &mut flags) })
        .step(|| format!("read flags of {}", path.display()))?;
    flags = if ro {
        flags | SUBVOL_RDONLY
    } else {
        flags & !SUBVOL_RDONLY
    };
    // SAFETY: SETFLAGS reads one u64.
    sys::cvt(unsafe { libc::ioctl(f.as_raw_fd(), IOC_SUBVOL_SETFLAGS as _, &flags) })
        .step(|| format!("set flags of {}", path.display()))?;
    Ok(())
}

/// Deletes subvolume `path` and any subvolumes nested inside it (a container may create its
/// own, e.g. systemd's /var/lib/machines). Missing is fine.
pub fn delete(path: &Path) -> Result<()> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    let mut nested = Vec::new();
    find_nested(path, path, &mut nested);
    // deepest first
    nested.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for n in nested {
        destroy_one(&n)?;
    }
    if let Err(e) = destroy_one(path) {
        // A read-only snapshot refuses deletion on some kernels without the flag cleared.
        if set_readonly(path, false).is_ok() {
            return destroy_one(path);
        }
        return Err(e);
    }
    Ok(())
}

fn destroy_one(path: &Path) -> Result<()> {
    let (parent, name) = split(path)?;
    let dir = open_dir(parent)?;
    // its qgroup goes with it (quotas on): no stale qgroups left in the pool
    let id = super::quota::subvolume_id(path).ok();
    let mut args = VolArgs {
        fd: 0,
        name: [0; PATH_NAME_MAX + 1],
    };
    args.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: the ioctl reads a VolArgs.
    sys::cvt(unsafe { libc::ioctl(dir.as_raw_fd(), IOC_SNAP_DESTROY as _, &args) })
        .step(|| format!("delete subvolume {}", path.display()))?;
    if let Some(id) = id {
        // the subvolume is gone whatever this says; a qgroup left holds no space
        let _ = super::quota::remove_qgroup(parent, id);
    }
    Ok(())
}

fn find_nested(root: &Path, dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let dev = std::fs::symlink_metadata(root)
        .map(|m| m.dev())
        .unwrap_or(0);
    for e in rd.flatten() {
        let Ok(m) = e.metadata() else { continue };
        if !m.is_dir() {
            continue;
        }
        let p = e.path();
        // a nested subvolume has its own anonymous device number and inode 256
        if m.ino() == FIRST_FREE_OBJECTID && m.dev() != dev {
            find_nested(&p, &p, out);
            out.push(p);
        } else if m.dev() == dev {
            find_nested(root, &p, out);
        }
    }
}
