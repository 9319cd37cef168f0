//! Snapshot volumes and container copies.
//!
//! A snapshot of container `c` lives at `snapshots/<c>/<id>/` in the pool: `volume/` (the
//! container volume as it was: `rootfs/`, `metadata.yaml`, `templates/`; a read-only btrfs
//! snapshot, or a copy on `dir`) and, for a stateful snapshot, `state/` (CRIU images).
//! Snapshots are named on disk by an id that never changes, so renaming one is a database
//! update only. A snapshot is built under `snapshots/<c>/.staging-<id>/` and moved into place
//! by one rename when complete; anything under `snapshots/` that no database row names is
//! debris of an interrupted operation.
//!
//! The saved state of a stateful stop lives at `snapshots/<c>/.stop/` (same layout, no
//! volume).

use super::{DriverKind, Pool, btrfs, copy_tree};
use crate::error::{Context, Error, Result};
use std::path::{Path, PathBuf};

/// Where one snapshot's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPaths {
    /// The directory holding `volume/` and `state/`.
    pub dir: PathBuf,
}

impl SnapshotPaths {
    /// The volume (container files as they were).
    pub fn volume(&self) -> PathBuf {
        self.dir.join("volume")
    }

    /// CRIU images of a stateful snapshot.
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Whether it holds a running state.
    pub fn has_state(&self) -> bool {
        self.state().join("inventory.img").is_file()
    }
}

impl Pool {
    /// The directory of container `c`'s snapshots.
    pub fn snapshots_dir(&self, c: &str) -> PathBuf {
        self.cfg.path.join("snapshots").join(c)
    }

    /// The files of snapshot `id` of container `c`.
    pub fn snapshot(&self, c: &str, id: &str) -> SnapshotPaths {
        SnapshotPaths {
            dir: self.snapshots_dir(c).join(id),
        }
    }

    /// The saved state of a stateful stop of `c`.
    pub fn stop_state(&self, c: &str) -> SnapshotPaths {
        SnapshotPaths {
            dir: self.snapshots_dir(c).join(".stop"),
        }
    }

    /// Where snapshot `id` of `c` is staged.
    pub fn staged_snapshot(&self, c: &str, id: &str) -> SnapshotPaths {
        SnapshotPaths {
            dir: self.snapshots_dir(c).join(format!(".staging-{id}")),
        }
    }

    /// An empty staging directory for snapshot `id` of `c` (removing debris of an earlier try).
    pub fn stage_snapshot(&self, c: &str, id: &str) -> Result<SnapshotPaths> {
        check_id(id)?;
        let dir = self.staged_snapshot(c, id).dir;
        self.remove_snapshot_dir(&dir)?;
        std::fs::create_dir_all(&dir).step(|| format!("create {}", dir.display()))?;
        restrict(&self.cfg.path.join("snapshots"))?;
        Ok(SnapshotPaths { dir })
    }

    /// Copies container `c`'s volume into `staging` as it is now: a read-only btrfs snapshot
    /// (constant time), or a full copy on `dir`. Returns the bytes the copy holds (0 for a
    /// btrfs snapshot, which shares every extent).
    pub fn capture_volume(&self, c: &str, staging: &SnapshotPaths) -> Result<u64> {
        let src = self.container_volume(c);
        if !src.is_dir() {
            return Err(Error::Invalid(format!(
                "container {c} has no volume in the pool"
            )));
        }
        let dst = staging.volume();
        match self.cfg.driver {
            DriverKind::Btrfs => {
                btrfs::snapshot(&src, &dst, true)?;
                Ok(0)
            }
            DriverKind::Dir => {
                copy_tree(&src, &dst)?;
                Ok(disk_usage(&dst))
            }
        }
    }

    /// Moves a complete staging directory into place as snapshot `id` of `c`.
    pub fn commit_snapshot(
        &self,
        c: &str,
        id: &str,
        staging: &SnapshotPaths,
    ) -> Result<SnapshotPaths> {
        check_id(id)?;
        let dst = self.snapshot(c, id);
        std::fs::rename(&staging.dir, &dst.dir)
            .step(|| format!("rename {} to {}", staging.dir.display(), dst.dir.display()))?;
        Ok(dst)
    }

    /// Removes snapshot files (a committed snapshot, a staging directory or a saved state).
    /// Missing is fine.
    pub fn remove_snapshot_dir(&self, dir: &Path) -> Result<()> {
        if std::fs::symlink_metadata(dir).is_err() {
            return Ok(());
        }
        let volume = dir.join("volume");
        if std::fs::symlink_metadata(&volume).is_ok() {
            self.delete_volume(&volume)?;
        }
        std::fs::remove_dir_all(dir).step(|| format!("remove {}", dir.display()))
    }

    /// Removes every snapshot of `c` (the container is being deleted).
    pub fn remove_snapshots(&self, c: &str) -> Result<()> {
        let dir = self.snapshots_dir(c);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        for e in rd.flatten() {
            self.remove_snapshot_dir(&e.path())?;
        }
        std::fs::remove_dir(&dir).step(|| format!("remove {}", dir.display()))
    }

    /// Removes snapshot directories of `c` that `keep` does not name (interrupted creations);
    /// returns what it removed. The saved state of a stateful stop is kept.
    pub fn sweep_snapshots(&self, c: &str, keep: &[String]) -> Vec<String> {
        let mut removed = Vec::new();
        let Ok(rd) = std::fs::read_dir(self.snapshots_dir(c)) else {
            return removed;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == ".stop" || keep.contains(&name) {
                continue;
            }
            if self.remove_snapshot_dir(&e.path()).is_ok() {
                removed.push(format!("{c}/{name}"));
            }
        }
        removed
    }

    /// Container names that have a snapshot directory.
    pub fn containers_with_snapshots(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(self.cfg.path.join("snapshots")) else {
            return Vec::new();
        };
        rd.flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Replaces container `c`'s volume with a writable copy of `src` (a snapshot's volume).
    /// The old volume is removed only once the new one is complete and in place, and in the
    /// background: a btrfs subvolume delete takes 3–6 ms, which a restore need not wait for.
    /// What an exit interrupts is debris that [`Pool::sweep_volume_debris`] removes.
    pub fn replace_volume(&self, c: &str, src: &Path) -> Result<()> {
        let dst = self.container_volume(c);
        let parent = self.cfg.path.join("containers");
        let fresh = parent.join(format!(".restore-{c}"));
        let old = self.old_volume(c);
        self.delete_volume(&fresh)?;
        self.clone_volume(src, &fresh)?;
        if std::fs::symlink_metadata(&dst).is_ok()
            && let Err(e) = std::fs::rename(&dst, &old)
        {
            let _ = self.delete_volume(&fresh);
            return Err(Error::os(
                format!("rename {} to {}", dst.display(), old.display()),
                e,
            ));
        }
        if let Err(e) = std::fs::rename(&fresh, &dst) {
            let _ = std::fs::rename(&old, &dst);
            let _ = self.delete_volume(&fresh);
            return Err(Error::os(
                format!("rename {} to {}", fresh.display(), dst.display()),
                e,
            ));
        }
        if std::fs::symlink_metadata(&old).is_ok() {
            let pool = Pool::new(self.cfg.clone());
            std::thread::spawn(move || drop(pool.delete_volume(&old)));
        }
        Ok(())
    }

    /// A name, free now, for container `c`'s volume once it is to go: debris that
    /// [`Pool::sweep_volume_debris`] removes if it outlives its removal.
    pub(super) fn old_volume(&self, c: &str) -> PathBuf {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        self.cfg
            .path
            .join("containers")
            .join(format!(".old-{c}-{stamp}"))
    }

    /// Removes what interrupted restores and deletes left among the container volumes (`.restore-*` and
    /// `.old-*`); returns what it removed. Only while no restore runs (at daemon start).
    pub fn sweep_volume_debris(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(self.cfg.path.join("containers")) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if (name.starts_with(".restore-") || name.starts_with(".old-"))
                && self.delete_volume(&e.path()).is_ok()
            {
                removed.push(name);
            }
        }
        removed
    }

    /// Makes container `c`'s volume a writable copy of `src` (another container's volume or a
    /// snapshot's): a btrfs snapshot, or a full copy.
    pub fn copy_volume(&self, src: &Path, c: &str) -> Result<PathBuf> {
        let dst = self.container_volume(c);
        if std::fs::symlink_metadata(&dst).is_ok() {
            return Err(Error::os(
                format!("create {}", dst.display()),
                std::io::Error::from_raw_os_error(libc::EEXIST),
            ));
        }
        self.clone_volume(src, &dst)?;
        Ok(dst)
    }

    fn clone_volume(&self, src: &Path, dst: &Path) -> Result<()> {
        if !src.is_dir() {
            return Err(Error::Invalid(format!("{} does not exist", src.display())));
        }
        match self.cfg.driver {
            DriverKind::Btrfs if btrfs::is_subvolume(src) => btrfs::snapshot(src, dst, false),
            _ => copy_tree(src, dst),
        }
    }
}

/// Snapshot ids are berth's own (`<µs>-<hex>`); anything else is refused before it becomes a
/// path.
fn check_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(Error::Invalid(format!("invalid snapshot id {id:?}")));
    }
    Ok(())
}

/// Bytes of disk used by a tree (allocated blocks, each inode once).
pub fn disk_usage(root: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fn walk(p: &Path, seen: &mut std::collections::HashSet<(u64, u64)>, total: &mut u64) {
        let Ok(m) = std::fs::symlink_metadata(p) else {
            return;
        };
        if seen.insert((m.dev(), m.ino())) {
            *total += m.blocks() * 512;
        }
        if m.is_dir()
            && let Ok(rd) = std::fs::read_dir(p)
        {
            for e in rd.flatten() {
                walk(&e.path(), seen, total);
            }
        }
    }
    let mut total = 0;
    walk(root, &mut std::collections::HashSet::new(), &mut total);
    total
}

/// The snapshots tree holds copies of containers' files: only root may enter it.
fn restrict(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .step(|| format!("chmod {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::PoolConfig;

    fn pool() -> (tempdir::Dir, Pool) {
        let d = tempdir::Dir::new();
        std::fs::create_dir_all(d.0.join("containers/c1/rootfs/etc")).unwrap();
        std::fs::write(d.0.join("containers/c1/rootfs/etc/hostname"), "one").unwrap();
        let p = Pool::new(PoolConfig {
            driver: DriverKind::Dir,
            path: d.0.clone(),
            source: None,
        });
        (d, p)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let p = std::env::temp_dir().join(format!(
                    "berth-snap-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                let _ = std::fs::remove_dir_all(&p);
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn a_retired_volume_leaves_its_name_at_once_and_is_debris_if_left() {
        let (_d, p) = pool();
        let old = p.retire_container("c1").unwrap().expect("c1 had a volume");
        assert!(std::fs::symlink_metadata(p.container_volume("c1")).is_err());
        assert!(old.join("rootfs/etc/hostname").is_file(), "moved whole");
        let name = old.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(".old-c1-"), "{name}");
        assert_eq!(p.sweep_volume_debris(), [name]);
        assert_eq!(p.retire_container("c1").unwrap(), None, "missing is fine");
    }

    #[test]
    fn debris_of_interrupted_restores_is_swept_and_nothing_else() {
        let (_d, p) = pool();
        for debris in [".old-c1-17", ".restore-c1"] {
            std::fs::create_dir_all(p.cfg.path.join("containers").join(debris).join("rootfs"))
                .unwrap();
        }
        let mut swept = p.sweep_volume_debris();
        swept.sort();
        assert_eq!(swept, [".old-c1-17", ".restore-c1"]);
        assert!(p.rootfs("c1").join("etc/hostname").is_file());
        assert!(p.sweep_volume_debris().is_empty());
    }

    #[test]
    fn capture_commit_restore_copy_and_sweep() {
        let (_d, p) = pool();
        let st = p.stage_snapshot("c1", "100-ab").unwrap();
        assert!(p.capture_volume("c1", &st).unwrap() > 0);
        let snap = p.commit_snapshot("c1", "100-ab", &st).unwrap();
        assert!(!snap.has_state());
        // the container changes; restoring brings the old files back
        std::fs::write(p.rootfs("c1").join("etc/hostname"), "two").unwrap();
        p.replace_volume("c1", &snap.volume()).unwrap();
        assert_eq!(
            std::fs::read_to_string(p.rootfs("c1").join("etc/hostname")).unwrap(),
            "one"
        );
        // a copy from the snapshot
        p.copy_volume(&snap.volume(), "c2").unwrap();
        assert_eq!(
            std::fs::read_to_string(p.rootfs("c2").join("etc/hostname")).unwrap(),
            "one"
        );
        assert!(p.copy_volume(&snap.volume(), "c2").is_err());
        // debris is swept, named snapshots stay
        p.stage_snapshot("c1", "200-cd").unwrap();
        assert_eq!(
            p.sweep_snapshots("c1", &["100-ab".into()]),
            vec!["c1/.staging-200-cd".to_string()]
        );
        assert!(snap.volume().is_dir());
        assert!(p.stage_snapshot("c1", "../x").is_err());
        p.remove_snapshots("c1").unwrap();
        assert!(!p.snapshots_dir("c1").exists());
    }
}
