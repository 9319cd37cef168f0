//! Storage pools: where image bases and container root filesystems live.
//!
//! A pool is a directory tree `images/<fingerprint>/` (an image's unpacked contents: its
//! `metadata.yaml`, `rootfs/`, `templates/`) and `containers/<name>/` (a copy of an image
//! volume, whose `rootfs/` is the container's root). The driver decides how a copy is made:
//! `btrfs` snapshots a subvolume in constant time, `dir` copies files. A `btrfs` pool may be
//! backed by a loop file (as `lxd init` does when the state directory is not on btrfs); the
//! daemon re-attaches and mounts it at start.

pub mod btrfs;
pub mod loopdev;
pub mod quota;
pub mod snapshots;

use crate::error::{Context, Error, Result};
use crate::idmap::IdMap;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// How volumes are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// Plain directories; a copy is a full copy.
    Dir,
    /// btrfs subvolumes; a copy is a snapshot.
    Btrfs,
}

impl DriverKind {
    /// The driver's name as used in config and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            DriverKind::Dir => "dir",
            DriverKind::Btrfs => "btrfs",
        }
    }

    /// Parses "dir" or "btrfs".
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "dir" => Some(DriverKind::Dir),
            "btrfs" => Some(DriverKind::Btrfs),
            _ => None,
        }
    }
}

/// A pool's persistent description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolConfig {
    /// Driver.
    pub driver: DriverKind,
    /// Mount point / root directory of the pool.
    pub path: PathBuf,
    /// The loop file behind a file-backed btrfs pool.
    pub source: Option<PathBuf>,
}

/// A usable pool.
#[derive(Debug, Clone)]
pub struct Pool {
    cfg: PoolConfig,
}

impl Pool {
    /// Wraps a configuration (nothing is touched until [`Pool::mount`]).
    pub fn new(cfg: PoolConfig) -> Pool {
        Pool { cfg }
    }

    /// The configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    /// The driver.
    pub fn driver(&self) -> DriverKind {
        self.cfg.driver
    }

    /// Initializes a new pool at `path`: `driver` if given, else btrfs when `path`'s filesystem
    /// is btrfs, else a loop-backed btrfs file of `loop_size` bytes at `loop_file` when
    /// mkfs.btrfs is available, else dir.
    pub fn init(
        path: &Path,
        driver: Option<DriverKind>,
        loop_file: &Path,
        loop_size: u64,
    ) -> Result<PoolConfig> {
        std::fs::create_dir_all(path).step(|| format!("create {}", path.display()))?;
        let on_btrfs = btrfs::is_btrfs(path);
        let have_mkfs = which("mkfs.btrfs").is_some();
        let cfg = match driver {
            Some(DriverKind::Dir) => PoolConfig {
                driver: DriverKind::Dir,
                path: path.into(),
                source: None,
            },
            Some(DriverKind::Btrfs) | None if on_btrfs => PoolConfig {
                driver: DriverKind::Btrfs,
                path: path.into(),
                source: None,
            },
            Some(DriverKind::Btrfs) | None if have_mkfs => {
                if !loop_file.exists() {
                    make_btrfs_file(loop_file, loop_size)?;
                }
                PoolConfig {
                    driver: DriverKind::Btrfs,
                    path: path.into(),
                    source: Some(loop_file.into()),
                }
            }
            Some(DriverKind::Btrfs) => {
                return Err(Error::Pool {
                    path: path.into(),
                    reason: "btrfs needs mkfs.btrfs (btrfs-progs)".into(),
                });
            }
            None => PoolConfig {
                driver: DriverKind::Dir,
                path: path.into(),
                source: None,
            },
        };
        let pool = Pool::new(cfg.clone());
        pool.mount()?;
        Ok(cfg)
    }

    /// Makes the pool usable: attaches and mounts its loop file when needed, creates its
    /// top-level directories, and checks the driver matches the filesystem. Idempotent.
    pub fn mount(&self) -> Result<()> {
        let p = &self.cfg.path;
        std::fs::create_dir_all(p).step(|| format!("create {}", p.display()))?;
        if let Some(src) = &self.cfg.source {
            secure_loop_file(src)?;
        }
        if let Some(src) = &self.cfg.source
            && !is_mountpoint(p)
        {
            let (dev, _hold) = match loopdev::find(src) {
                Some(d) => (d, None),
                None => {
                    let (d, f) = loopdev::attach(src)?;
                    (d, Some(f))
                }
            };
            crate::sys::mount(Some(&dev), p, Some(c"btrfs"), 0, None)
                .step(|| format!("mount {} on {}", dev.display(), p.display()))?;
        }
        if self.cfg.driver == DriverKind::Btrfs && !btrfs::is_btrfs(p) {
            return Err(Error::Pool {
                path: p.clone(),
                reason: "not a btrfs filesystem".into(),
            });
        }
        if self.cfg.driver == DriverKind::Btrfs {
            // best effort: a pool with a stale qgroup is still usable
            let _ = quota::sweep_stale_qgroups(p);
        }
        // root only: image and container files are owned by host uid 0 on disk (the idmapped
        // mount shifts them for the container), so a setuid file in them would be a setuid-root
        // program for any host user who could reach it
        for d in ["images", "containers", "snapshots"] {
            let dir = p.join(d);
            std::fs::create_dir_all(&dir).step(|| format!("create {}", dir.display()))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .step(|| format!("chmod {}", dir.display()))?;
        }
        Ok(())
    }

    /// Unmounts a loop-backed pool (the loop device detaches itself).
    pub fn unmount(&self) -> Result<()> {
        if self.cfg.source.is_some() && is_mountpoint(&self.cfg.path) {
            crate::sys::umount2(&self.cfg.path, 0)
                .step(|| format!("unmount {}", self.cfg.path.display()))?;
        }
        Ok(())
    }

    /// An image's volume.
    pub fn image_volume(&self, fingerprint: &str) -> PathBuf {
        self.cfg.path.join("images").join(fingerprint)
    }

    /// A container's volume.
    pub fn container_volume(&self, name: &str) -> PathBuf {
        self.cfg.path.join("containers").join(name)
    }

    /// A container's root filesystem.
    pub fn rootfs(&self, name: &str) -> PathBuf {
        self.container_volume(name).join("rootfs")
    }

    /// Creates an empty staging volume for unpacking image `fingerprint`; commit it with
    /// [`Pool::commit_image`] or remove it with [`Pool::delete_volume`].
    pub fn stage_image(&self, fingerprint: &str) -> Result<PathBuf> {
        let staging = self
            .cfg
            .path
            .join("images")
            .join(format!(".staging-{fingerprint}"));
        self.delete_volume(&staging)?;
        self.create_volume(&staging)?;
        Ok(staging)
    }

    /// Moves a complete staging volume into place, makes it read-only (btrfs) and flushes the
    /// pool's filesystem. The flush makes the volume durable before its image is recorded, and
    /// pays at import time what the first btrfs snapshot of a freshly written subvolume would
    /// otherwise pay (berth-bench, 211 MB image: first launch 228 ms before, 41 ms after).
    pub fn commit_image(&self, staging: &Path, fingerprint: &str) -> Result<PathBuf> {
        let dst = self.image_volume(fingerprint);
        std::fs::rename(staging, &dst)
            .step(|| format!("rename {} to {}", staging.display(), dst.display()))?;
        if self.cfg.driver == DriverKind::Btrfs {
            btrfs::set_readonly(&dst, true)?;
        }
        sync_fs(&dst)?;
        Ok(dst)
    }

    /// Makes a container's volume from an image's volume (snapshot or copy).
    pub fn clone_image(&self, fingerprint: &str, name: &str) -> Result<PathBuf> {
        let src = self.image_volume(fingerprint);
        let dst = self.container_volume(name);
        if !src.is_dir() {
            return Err(Error::InvalidImage(format!(
                "image {fingerprint} has no volume in the pool"
            )));
        }
        if std::fs::symlink_metadata(&dst).is_ok() {
            return Err(Error::os(
                format!("create {}", dst.display()),
                std::io::Error::from_raw_os_error(libc::EEXIST),
            ));
        }
        match self.cfg.driver {
            DriverKind::Btrfs => btrfs::snapshot(&src, &dst, false)?,
            DriverKind::Dir => copy_tree(&src, &dst)?,
        }
        Ok(dst)
    }

    /// Limits the bytes container `name`'s volume may refer to (its root disk size), or
    /// removes the limit (`None`). btrfs: a qgroup limit on the volume's subvolume (quotas are
    /// enabled on the pool on first use). dir: no quotas, so a limit is refused.
    pub fn set_disk_limit(&self, name: &str, bytes: Option<u64>) -> Result<()> {
        match self.cfg.driver {
            DriverKind::Btrfs => quota::set_limit(&self.container_volume(name), bytes),
            DriverKind::Dir if bytes.is_none() => Ok(()),
            DriverKind::Dir => Err(Error::NotSupported(
                "a root disk limit needs a btrfs pool: the dir driver has no quotas".into(),
            )),
        }
    }

    /// Takes container `name`'s volume out of its name (missing is fine), in one step that
    /// changes nothing when it fails: a removal that fails half way (a file that cannot go)
    /// must not leave a container that is still recorded with half its files. Returns the
    /// volume's new name, for [`Pool::delete_retired`]; what outlives that is debris that
    /// [`Pool::sweep_volume_debris`] removes.
    pub fn retire_container(&self, name: &str) -> Result<Option<PathBuf>> {
        let vol = self.container_volume(name);
        if std::fs::symlink_metadata(&vol).is_err() {
            return Ok(None);
        }
        let old = self.old_volume(name);
        std::fs::rename(&vol, &old)
            .step(|| format!("rename {} to {}", vol.display(), old.display()))?;
        Ok(Some(old))
    }

    /// Takes container `name`'s snapshot directory out of its name as
    /// [`Pool::retire_container`] does its volume; what outlives its removal is swept at the
    /// next start as the snapshots of a deleted container.
    pub fn retire_snapshots(&self, name: &str) -> Result<Option<PathBuf>> {
        let dir = self.snapshots_dir(name);
        if std::fs::symlink_metadata(&dir).is_err() {
            return Ok(None);
        }
        let old = self.old_volume(name);
        let old = dir.with_file_name(old.file_name().unwrap_or_default());
        std::fs::rename(&dir, &old)
            .step(|| format!("rename {} to {}", dir.display(), old.display()))?;
        Ok(Some(old))
    }

    /// Gives container `name` back the volume [`Pool::retire_container`] took out of its name.
    pub fn unretire_container(&self, name: &str, old: &Path) -> Result<()> {
        let vol = self.container_volume(name);
        std::fs::rename(old, &vol).step(|| format!("rename {} to {}", old.display(), vol.display()))
    }

    /// Deletes a volume [`Pool::retire_container`] retired, and the qgroups of subvolumes gone
    /// since the last sweep.
    pub fn delete_retired(&self, old: &Path) -> Result<()> {
        self.delete_volume(old)?;
        if self.cfg.driver == DriverKind::Btrfs {
            // the volume is gone whatever this says; a qgroup left holds no space
            let _ = quota::sweep_stale_qgroups(&self.cfg.path);
        }
        Ok(())
    }

    /// Deletes an image's volume. Missing is fine.
    pub fn delete_image(&self, fingerprint: &str) -> Result<()> {
        self.delete_volume(&self.image_volume(fingerprint))
    }

    fn create_volume(&self, path: &Path) -> Result<()> {
        match self.cfg.driver {
            DriverKind::Btrfs => btrfs::create(path),
            DriverKind::Dir => {
                std::fs::create_dir(path).step(|| format!("create {}", path.display()))
            }
        }
    }

    /// Deletes a volume (subvolume or directory tree). Missing is fine.
    pub fn delete_volume(&self, path: &Path) -> Result<()> {
        if std::fs::symlink_metadata(path).is_err() {
            return Ok(());
        }
        if self.cfg.driver == DriverKind::Btrfs && btrfs::is_subvolume(path) {
            return btrfs::delete(path);
        }
        std::fs::remove_dir_all(path).step(|| format!("remove {}", path.display()))
    }

    /// Whether the pool's filesystem accepts idmapped mounts (probed with a throwaway user
    /// namespace). When it does not, container roots are shifted once with [`shift_tree`].
    pub fn supports_idmap(&self) -> bool {
        probe_idmap(&self.cfg.path).is_ok()
    }
}

/// syncfs(2) on the filesystem holding `path`.
pub fn sync_fs(path: &Path) -> Result<()> {
    let dir = std::fs::File::open(path).step(|| format!("open {}", path.display()))?;
    // SAFETY: syncfs on our fd.
    crate::sys::cvt(unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) })
        .step(|| format!("sync the filesystem of {}", path.display()))?;
    Ok(())
}

/// Whether `path` is a mount point.
pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(canon) = std::fs::canonicalize(path) else {
        return false;
    };
    let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    mi.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| Path::new(m) == canon))
}

/// A program in $PATH or the sbin directories (a daemon started by dbus-daemon may have a
/// PATH without them).
pub fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// Runs a tool, turning a failure into [`Error::Tool`] with its stderr.
pub fn run_tool(cmd: &mut Command) -> Result<()> {
    let prog = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().step(|| format!("run {prog}"))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
    Err(Error::Tool {
        tool: prog,
        status: out.status.to_string(),
        stderr: tail.into_iter().rev().collect::<Vec<_>>().join("; "),
    })
}

/// Makes a pool's loop file root's alone (0600, in a 0700 directory), also one an older
/// berth made 0644: the file is the whole filesystem, and anyone who can read it reads every
/// container's files past their modes and the pool's 0700 directories.
fn secure_loop_file(file: &Path) -> Result<()> {
    if let Some(d) = file.parent() {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
            .step(|| format!("chmod {}", d.display()))?;
    }
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
        .step(|| format!("chmod {}", file.display()))
}

fn make_btrfs_file(file: &Path, size: u64) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(d) = file.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)
            .step(|| format!("create {}", d.display()))?;
    }
    let f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(file)
        .step(|| format!("create {}", file.display()))?;
    f.set_len(size)
        .step(|| format!("size {}", file.display()))?;
    drop(f);
    let mkfs = which("mkfs.btrfs").unwrap_or_else(|| "mkfs.btrfs".into());
    if let Err(e) = run_tool(Command::new(mkfs).arg("-q").arg(file)) {
        let _ = std::fs::remove_file(file);
        return Err(e);
    }
    Ok(())
}

/// Copies a tree with everything (ownership, modes, xattrs, hardlinks, devices, sparseness,
/// reflinks where the filesystem can).
pub fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let r = run_tool(
        Command::new("cp")
            .arg("-a")
            .arg("--reflink=auto")
            .arg("--")
            .arg(src)
            .arg(dst),
    );
    if r.is_err() {
        let _ = std::fs::remove_dir_all(dst);
    }
    r
}

/// Shifts ownership of a whole tree into `map` (uid u → base + u) for filesystems that refuse
/// idmapped mounts. setuid/setgid bits, cleared by chown, are restored. Symlinks are not
/// followed.
pub fn shift_tree(root: &Path, map: &IdMap) -> Result<()> {
    fn walk(p: &Path, map: &IdMap) -> Result<()> {
        let m = std::fs::symlink_metadata(p).step(|| format!("stat {}", p.display()))?;
        let (uid, gid) = (m.uid(), m.gid());
        if uid < map.count && gid < map.count {
            let c = crate::sys::cpath(p).map_err(|e| Error::os("path", e))?;
            // SAFETY: lchown on a valid C path.
            crate::sys::cvt(unsafe {
                libc::lchown(c.as_ptr(), map.uid_base + uid, map.gid_base + gid)
            })
            .step(|| format!("chown {}", p.display()))?;
            if !m.file_type().is_symlink() && m.mode() & 0o6000 != 0 {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(m.mode() & 0o7777))
                    .step(|| format!("chmod {}", p.display()))?;
            }
        }
        if m.is_dir() {
            for e in std::fs::read_dir(p).step(|| format!("read {}", p.display()))? {
                let e = e.step(|| format!("read {}", p.display()))?;
                walk(&e.path(), map)?;
            }
        }
        Ok(())
    }
    walk(root, map)
}

/// Tries an idmapped mount of `path` through a throwaway user namespace.
pub fn probe_idmap(path: &Path) -> Result<()> {
    idmapped_tree(
        path,
        &IdMap {
            uid_base: crate::idmap::DEFAULT_BASE,
            gid_base: crate::idmap::DEFAULT_BASE,
            count: 65536,
        },
    )
    .map(drop)
}

/// A detached mount of `path` idmapped through `map` (a throwaway user namespace provides the
/// mapping). Safe to call from a multi-threaded process.
pub fn idmapped_tree(path: &Path, map: &IdMap) -> Result<std::os::fd::OwnedFd> {
    let (r, w) = crate::sys::pipe_cloexec().step(|| "pipe")?;
    // SAFETY: the child only blocks in read(2) and calls _exit, both async-signal-safe, so this
    // is sound even from a multi-threaded process.
    match unsafe { crate::sys::clone3_fork(libc::CLONE_NEWUSER as u64) }
        .step(|| "clone a user namespace for the id mapping")?
    {
        crate::sys::Forked::Child => {
            // Every fd but our read end goes: our copy of the write end, or the read below
            // never sees EOF, and the write ends of other threads' pipes forked at the same
            // moment, whose children would otherwise wait for ours as ours waits for theirs
            // (two concurrent calls then hang for good).
            let keep = std::os::fd::AsRawFd::as_raw_fd(&r) as libc::c_uint;
            // SAFETY: close_range and read are async-signal-safe syscalls; nothing else runs.
            unsafe {
                if keep > 0 {
                    libc::syscall(libc::SYS_close_range, 0 as libc::c_uint, keep - 1, 0);
                }
                libc::syscall(libc::SYS_close_range, keep + 1, libc::c_uint::MAX, 0);
                let mut b = [0u8; 1];
                libc::read(keep as libc::c_int, b.as_mut_ptr().cast(), 1);
            }
            crate::sys::exit_now(0)
        }
        crate::sys::Forked::Parent { pid, .. } => {
            drop(r);
            let res = (|| {
                map.write_for(pid)?;
                crate::launch::rootfs_mount(path, Some(pid))
            })();
            drop(w);
            let _ = crate::sys::waitpid_blocking(pid);
            res
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_idmapped_mounts_never_wait_for_each_other() {
        if !unsafe_is_root() {
            return;
        }
        let dir = std::env::temp_dir().join(format!("berth-idmap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        if probe_idmap(&dir).is_err() {
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }
        // each thread's child used to inherit the others' pipe ends and wait for them for good
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..4 {
            let (dir, tx) = (dir.clone(), tx.clone());
            std::thread::spawn(move || {
                for _ in 0..50 {
                    idmapped_tree(
                        &dir,
                        &IdMap {
                            uid_base: 1_000_000,
                            gid_base: 1_000_000,
                            count: 65536,
                        },
                    )
                    .unwrap();
                }
                tx.send(()).unwrap();
            });
        }
        for _ in 0..4 {
            rx.recv_timeout(std::time::Duration::from_secs(60))
                .expect("200 idmapped mounts from 4 threads within 60 s");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn shift_keeps_setuid_and_skips_unmapped_owners() {
        if unsafe_is_root() {
            let root = std::env::temp_dir().join(format!("berth-shift-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(root.join("bin")).unwrap();
            let suid = root.join("bin/su");
            std::fs::write(&suid, b"x").unwrap();
            std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
            std::os::unix::fs::symlink("su", root.join("bin/link")).unwrap();
            let map = IdMap {
                uid_base: 1_000_000,
                gid_base: 1_000_000,
                count: 65536,
            };
            shift_tree(&root, &map).unwrap();
            let m = std::fs::metadata(&suid).unwrap();
            assert_eq!(
                (m.uid(), m.gid(), m.mode() & 0o7777),
                (1_000_000, 1_000_000, 0o4755)
            );
            assert_eq!(
                std::fs::symlink_metadata(root.join("bin/link"))
                    .unwrap()
                    .uid(),
                1_000_000
            );
            // already shifted owners (outside 0..count) are left alone: shifting twice is a no-op
            shift_tree(&root, &map).unwrap();
            assert_eq!(std::fs::metadata(&suid).unwrap().uid(), 1_000_000);
            let _ = std::fs::remove_dir_all(&root);
        }
    }

    fn unsafe_is_root() -> bool {
        // SAFETY: geteuid has no failure mode.
        unsafe { libc::geteuid() == 0 }
    }
}
