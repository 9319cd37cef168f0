//! Root disk quotas on a btrfs pool: btrfs quota groups through their ioctls. Quotas are
//! enabled on the pool's filesystem the first time a limit is set (simple quotas where the
//! kernel has them, 6.7 and later; full qgroups before), and a subvolume's qgroup goes with it.

use crate::error::{Context, Result};
use crate::sys;
use std::os::fd::AsRawFd;
use std::path::Path;

// _IOW / _IOR / _IOWR / _IO (0x94, nr, size)
const fn ioc(dir: u64, nr: u64, size: u64) -> u64 {
    (dir << 30) | (size << 16) | (0x94 << 8) | nr
}
const IOC_INO_LOOKUP: u64 = ioc(3, 18, 4096);
const IOC_QUOTA_CTL: u64 = ioc(3, 40, 16);
const IOC_QGROUP_CREATE: u64 = ioc(1, 42, 16);
const IOC_QGROUP_LIMIT: u64 = ioc(2, 43, 48);
const IOC_QUOTA_RESCAN_WAIT: u64 = ioc(0, 46, 0);

const QUOTA_CTL_ENABLE: u64 = 1;
const QUOTA_CTL_ENABLE_SIMPLE: u64 = 4;
const LIMIT_MAX_RFER: u64 = 1 << 0;
/// `max_rfer` value that removes the limit.
const CLEAR_LIMIT: u64 = u64::MAX;

#[repr(C)]
struct QuotaCtlArgs {
    cmd: u64,
    status: u64,
}

#[repr(C)]
struct QgroupCreateArgs {
    create: u64,
    qgroupid: u64,
}

#[repr(C)]
struct QgroupLimitArgs {
    qgroupid: u64,
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

const _: () = assert!(std::mem::size_of::<QuotaCtlArgs>() == 16);
const _: () = assert!(std::mem::size_of::<QgroupCreateArgs>() == 16);
const _: () = assert!(std::mem::size_of::<QgroupLimitArgs>() == 48);
const _: () = assert!(std::mem::size_of::<InoLookupArgs>() == 4096);

/// Which accounting a pool's quotas use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaMode {
    /// Simple quotas (kernel 6.7+): an extent counts against the subvolume that wrote it; no
    /// backref walks, so snapshots and deletes cost what they cost without quotas.
    Simple,
    /// Full qgroups (older kernels): referenced and exclusive bytes tracked exactly, at a
    /// cost on every transaction commit.
    Full,
}

fn open_dir(p: &Path) -> Result<std::fs::File> {
    std::fs::File::open(p).step(|| format!("open {}", p.display()))
}

/// The id of the subvolume `path` is the root of (its level-0 qgroup is `0/<id>`).
pub fn subvolume_id(path: &Path) -> Result<u64> {
    let f = open_dir(path)?;
    let mut args = InoLookupArgs {
        treeid: 0,
        objectid: super::btrfs::FIRST_FREE_OBJECTID,
        name: [0; 4080],
    };
    // SAFETY: INO_LOOKUP reads and writes an InoLookupArgs of the size in the request.
    sys::cvt(unsafe { libc::ioctl(f.as_raw_fd(), IOC_INO_LOOKUP as _, &mut args) })
        .step(|| format!("look up the subvolume id of {}", path.display()))?;
    Ok(args.treeid)
}

/// Enables quotas on the filesystem of `path`: simple quotas where the kernel knows them,
/// else full qgroups (waiting for their first scan, so a limit set next counts every byte).
/// Enabling what is enabled is a no-op.
pub fn enable(path: &Path) -> Result<QuotaMode> {
    enable_as(path, QuotaMode::Simple)
}

fn enable_as(path: &Path, prefer: QuotaMode) -> Result<QuotaMode> {
    let f = open_dir(path)?;
    let ctl = |cmd: u64| {
        let mut args = QuotaCtlArgs { cmd, status: 0 };
        // SAFETY: QUOTA_CTL reads and writes a QuotaCtlArgs.
        sys::cvt(unsafe { libc::ioctl(f.as_raw_fd(), IOC_QUOTA_CTL as _, &mut args) })
    };
    if prefer == QuotaMode::Simple {
        match ctl(QUOTA_CTL_ENABLE_SIMPLE) {
            Ok(_) => return Ok(QuotaMode::Simple),
            // a kernel before 6.7 does not know the command
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => {
                return Err(crate::Error::os(
                    format!("enable quotas on {}", path.display()),
                    e,
                ));
            }
        }
    }
    ctl(QUOTA_CTL_ENABLE).step(|| format!("enable quotas on {}", path.display()))?;
    // SAFETY: RESCAN_WAIT takes no argument.
    match sys::cvt(unsafe { libc::ioctl(f.as_raw_fd(), IOC_QUOTA_RESCAN_WAIT as _, 0) }) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {}
        Err(e) => {
            return Err(crate::Error::os(
                format!("wait for the quota scan of {}", path.display()),
                e,
            ));
        }
    }
    Ok(QuotaMode::Full)
}

fn limit_ioctl(f: &std::fs::File, max_rfer: u64) -> std::io::Result<()> {
    let args = QgroupLimitArgs {
        qgroupid: 0, // the subvolume the fd is in
        flags: LIMIT_MAX_RFER,
        max_rfer,
        max_excl: 0,
        rsv_rfer: 0,
        rsv_excl: 0,
    };
    // SAFETY: QGROUP_LIMIT reads a QgroupLimitArgs.
    sys::cvt(unsafe { libc::ioctl(f.as_raw_fd(), IOC_QGROUP_LIMIT as _, &args) }).map(drop)
}

/// Limits the bytes subvolume `path` refers to (`max_rfer`, LXD's `size`) to `bytes`, or
/// removes its limit (`None`). Quotas are enabled on first use; removing a limit where
/// quotas are off is a no-op.
pub fn set_limit(path: &Path, bytes: Option<u64>) -> Result<()> {
    let f = open_dir(path)?;
    let value = bytes.unwrap_or(CLEAR_LIMIT);
    match limit_ioctl(&f, value) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) && bytes.is_none() => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {}
        // a subvolume made before quotas were enabled has no qgroup yet under full qgroups
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) && bytes.is_none() => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            create_qgroup(path, subvolume_id(path)?)?;
        }
        Err(e) => return Err(crate::Error::os(limit_step(path), e)),
    }
    enable(path)?;
    if let Err(e) = limit_ioctl(&f, value)
        && e.raw_os_error() == Some(libc::ENOENT)
    {
        create_qgroup(path, subvolume_id(path)?)?;
    }
    limit_ioctl(&f, value).step(|| limit_step(path))
}

fn limit_step(path: &Path) -> String {
    format!("set the disk quota of {}", path.display())
}

fn qgroup_ctl(on: &Path, create: bool, id: u64) -> std::io::Result<()> {
    let f = std::fs::File::open(on)?;
    let args = QgroupCreateArgs {
        create: create.into(),
        qgroupid: id,
    };
    // SAFETY: QGROUP_CREATE reads a QgroupCreateArgs.
    sys::cvt(unsafe { libc::ioctl(f.as_raw_fd(), IOC_QGROUP_CREATE as _, &args) }).map(drop)
}

fn create_qgroup(path: &Path, id: u64) -> Result<()> {
    match qgroup_ctl(path, true, id) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(crate::Error::os(
            format!("create qgroup 0/{id} for {}", path.display()),
            e,
        )),
    }
}

/// Removes the qgroup of deleted subvolume `id`, through any directory `on` of its
/// filesystem. Quotas off, or no such qgroup, is fine. A kernel that refuses while the
/// subvolume waits for the cleaner (EBUSY, 6.8 and later) removes the qgroup itself once
/// the cleaner has dropped it; 6.1 accepts the removal at once.
pub fn remove_qgroup(on: &Path, id: u64) -> Result<()> {
    match qgroup_ctl(on, false, id) {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOTCONN) | Some(libc::ENOENT) | Some(libc::EBUSY)
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(crate::Error::os(format!("remove qgroup 0/{id}"), e)),
    }
}

const IOC_TREE_SEARCH: u64 = ioc(3, 17, 4096);
const ROOT_TREE: u64 = 1;
const QUOTA_TREE: u64 = 8;
const ROOT_ITEM_KEY: u32 = 132;
const QGROUP_INFO_KEY: u32 = 242;

#[repr(C)]
struct SearchArgs {
    tree_id: u64,
    min_objectid: u64,
    max_objectid: u64,
    min_offset: u64,
    max_offset: u64,
    min_transid: u64,
    max_transid: u64,
    min_type: u32,
    max_type: u32,
    nr_items: u32,
    unused: u32,
    unused1: [u64; 4],
    buf: [u8; 4096 - 104],
}

const _: () = assert!(std::mem::size_of::<SearchArgs>() == 4096);

/// (objectid, offset) of every item of `kind` in `tree`.
fn search(f: &std::fs::File, tree: u64, kind: u32) -> std::io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let (mut objectid, mut ty, mut offset) = (0u64, kind, 0u64);
    loop {
        let mut a = SearchArgs {
            tree_id: tree,
            min_objectid: objectid,
            max_objectid: u64::MAX,
            min_offset: offset,
            max_offset: u64::MAX,
            min_transid: 0,
            max_transid: u64::MAX,
            min_type: ty,
            max_type: kind,
            nr_items: 4096,
            unused: 0,
            unused1: [0; 4],
            buf: [0; 4096 - 104],
        };
        // SAFETY: TREE_SEARCH reads and writes a SearchArgs of the size in the request.
        sys::cvt(unsafe { libc::ioctl(f.as_raw_fd(), IOC_TREE_SEARCH as _, &mut a) })?;
        if a.nr_items == 0 {
            return Ok(out);
        }
        let mut at = 0usize;
        let word = |b: &[u8], i: usize| u64::from_ne_bytes(b[i..i + 8].try_into().unwrap());
        for _ in 0..a.nr_items {
            // header: transid, objectid, offset (u64), type, len (u32)
            let (oid, off) = (word(&a.buf, at + 8), word(&a.buf, at + 16));
            let t = u32::from_ne_bytes(a.buf[at + 24..at + 28].try_into().unwrap());
            let len = u32::from_ne_bytes(a.buf[at + 28..at + 32].try_into().unwrap()) as usize;
            if t == kind {
                out.push((oid, off));
            }
            (objectid, ty, offset) = (oid, t, off);
            at += 32 + len;
        }
        // go on after the last item returned: the next (objectid, type, offset) key
        if let Some(o) = offset.checked_add(1) {
            offset = o;
        } else if ty < 255 {
            (ty, offset) = (ty + 1, 0);
        } else if let Some(o) = objectid.checked_add(1) {
            (objectid, ty, offset) = (o, 0, 0);
        } else {
            return Ok(out);
        }
        if (objectid, ty) > (u64::MAX - 1, kind) {
            return Ok(out);
        }
    }
}

/// Removes the qgroups of subvolumes that are gone from the filesystem of `path` (a
/// subvolume still waiting for the cleaner keeps its qgroup until a later sweep); returns
/// their ids. Quotas off: nothing. Kernels since 6.8 remove a dropped subvolume's qgroup
/// only when nothing else holds its extents (simple quotas: a snapshot restored over it), so
/// the pool is swept at each container delete and at mount.
pub fn sweep_stale_qgroups(path: &Path) -> Result<Vec<u64>> {
    let f = open_dir(path)?;
    let qgroups = match search(&f, QUOTA_TREE, QGROUP_INFO_KEY) {
        Ok(q) => q,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTCONN)) => {
            return Ok(Vec::new());
        }
        Err(e) => {
            return Err(crate::Error::os(
                format!("list the qgroups of {}", path.display()),
                e,
            ));
        }
    };
    let live: std::collections::BTreeSet<u64> = search(&f, ROOT_TREE, ROOT_ITEM_KEY)
        .step(|| format!("list the subvolumes of {}", path.display()))?
        .into_iter()
        .map(|(oid, _)| oid)
        .collect();
    let mut removed = Vec::new();
    for (_, qgroupid) in qgroups {
        let level0 = qgroupid >> 48 == 0;
        let id = qgroupid & ((1 << 48) - 1);
        if level0 && id >= super::btrfs::FIRST_FREE_OBJECTID && !live.contains(&id) {
            match qgroup_ctl(path, false, id) {
                Ok(()) => removed.push(id),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::ENOENT)) => {}
                Err(e) => return Err(crate::Error::os(format!("remove qgroup 0/{id}"), e)),
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{DriverKind, Pool, btrfs};
    use std::io::Write;

    fn write_mib(path: &Path, mib: usize) -> std::io::Result<()> {
        let mut f = std::fs::File::create(path)?;
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..mib {
            f.write_all(&chunk)?;
        }
        f.sync_all()
    }

    /// Both accountings (full qgroups are what a 6.1 kernel has): a limit stops writes with
    /// EDQUOT, lifting it lets them through, and a deleted subvolume takes its qgroup along.
    #[test]
    fn a_limit_stops_writes_in_either_mode_and_goes_with_its_subvolume() {
        // SAFETY: geteuid has no failure mode.
        if unsafe { libc::geteuid() } != 0 || crate::storage::which("mkfs.btrfs").is_none() {
            return;
        }
        for mode in [QuotaMode::Full, QuotaMode::Simple] {
            let dir =
                std::env::temp_dir().join(format!("berth-quota-{}-{mode:?}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let pool = Pool::new(
                Pool::init(
                    &dir.join("pool"),
                    Some(DriverKind::Btrfs),
                    &dir.join("pool.img"),
                    512 << 20,
                )
                .unwrap(),
            );
            let vol = pool.container_volume("c");
            btrfs::create(&vol).unwrap();
            // no limit and quotas off: lifting is a no-op, not an error
            pool.set_disk_limit("c", None).unwrap();
            let got = enable_as(&pool.config().path, mode).unwrap();
            if got == mode {
                pool.set_disk_limit("c", Some(32 << 20)).unwrap();
                let e = write_mib(&vol.join("fill"), 64).unwrap_err();
                assert_eq!(e.raw_os_error(), Some(libc::EDQUOT), "{mode:?}: {e}");
                pool.set_disk_limit("c", Some(256 << 20)).unwrap();
                write_mib(&vol.join("fill"), 64).unwrap();
                pool.set_disk_limit("c", None).unwrap();
                write_mib(&vol.join("more"), 64).unwrap();
                let id = subvolume_id(&vol).unwrap();
                let old = pool.retire_container("c").unwrap().unwrap();
                pool.delete_retired(&old).unwrap();
                // gone now (6.1), or once btrfs's cleaner has dropped the subvolume (later
                // kernels): it runs at transaction commits, so under load that can take more
                // than one commit interval; `btrfs subvolume sync` waits until it has
                let synced = std::process::Command::new("btrfs")
                    .args(["subvolume", "sync"])
                    .arg(&pool.config().path)
                    .arg(id.to_string())
                    .status()
                    .unwrap();
                assert!(synced.success(), "btrfs subvolume sync: {synced}");
                match qgroup_ctl(&pool.config().path, false, id) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => {
                        panic!("{mode:?}: remove qgroup 0/{id} once its subvolume is gone: {e}")
                    }
                }
                let e = qgroup_ctl(&pool.config().path, false, id).unwrap_err();
                assert_eq!(
                    e.raw_os_error(),
                    Some(libc::ENOENT),
                    "{mode:?}: qgroup 0/{id} left"
                );
            }
            pool.unmount().unwrap();
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
