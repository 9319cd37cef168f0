//! The image store on disk: importing archives (kept byte for byte under
//! `<state>/images/<fingerprint>/`, unpacked once into the pool), exporting them, and rendering
//! their templates into containers.
//!
//! Fingerprints are computed as LXD and Incus do: the sha256 of the unified tarball, or of the
//! metadata tarball followed by the rootfs file for a split image.

use super::claim::{self, Claim};
use super::format::Payload;
use super::helper::{self, Job};
use super::template;
use super::{Metadata, Template};
use crate::error::{Context, Error, Result};
use crate::idmap::IdMap;
use crate::storage::Pool;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// File names of a kept image.
const UNIFIED: &str = "image";
const META: &str = "meta";
const ROOTFS: &str = "rootfs";

/// Creates the store's directory (`<state>/images`) root-only, or makes an existing one so:
/// the kept archives hold every image's files, setuid-root programs included, readable by
/// anyone who reaches them. Idempotent; berthd calls it at start for directories made before.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .step(|| format!("create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .step(|| format!("chmod {}", dir.display()))
}

/// Where the store lives and how it unpacks.
#[derive(Debug, Clone)]
pub struct Store<'a> {
    /// `<state>/images`.
    pub dir: PathBuf,
    /// The pool holding unpacked bases.
    pub pool: &'a Pool,
    /// The berth-helper binary.
    pub helper: &'a Path,
    /// The mapping images are unpacked as.
    pub ids: IdMap,
}

/// An imported image.
#[derive(Debug)]
pub struct Imported {
    /// Fingerprint.
    pub fingerprint: String,
    /// Its metadata (None when it was already known and nothing was unpacked).
    pub metadata: Option<Metadata>,
    /// Size of the kept file(s).
    pub size: u64,
    /// Whether it is a split image.
    pub split: bool,
    /// It was already in the store: nothing changed.
    pub known: bool,
    /// The claim on the fingerprint (see [`claim`]): hold it until the image is registered,
    /// so that a concurrent import of the same bytes finds it registered.
    pub claim: Option<Claim>,
}

/// Progress of an import: (bytes done, bytes expected when known).
pub type Progress<'p> = &'p mut dyn FnMut(u64, Option<u64>);

impl Store<'_> {
    fn image_dir(&self, fp: &str) -> PathBuf {
        self.dir.join(fp)
    }

    /// Imports an image from open files (a unified tarball, or a split image's metadata and
    /// rootfs). `known` holds the fingerprints already registered: importing one of them again
    /// changes nothing. On any failure nothing is left behind.
    pub fn import(
        &self,
        archive: std::fs::File,
        rootfs: Option<std::fs::File>,
        known: &HashSet<String>,
        progress: Progress<'_>,
        cancel: &AtomicBool,
    ) -> Result<Imported> {
        ensure_dir(&self.dir)?;
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!(
            ".import-{}-{}-{seq}",
            std::process::id(),
            crate::monitor::proto::now_us()
        ));
        std::fs::create_dir(&tmp).step(|| format!("create {}", tmp.display()))?;
        let r = self.import_in(&tmp, archive, rootfs, known, progress, cancel);
        let _ = std::fs::remove_dir_all(&tmp);
        r
    }

    fn import_in(
        &self,
        tmp: &Path,
        archive: std::fs::File,
        rootfs: Option<std::fs::File>,
        known: &HashSet<String>,
        progress: Progress<'_>,
        cancel: &AtomicBool,
    ) -> Result<Imported> {
        let split = rootfs.is_some();
        // progress counts every input byte twice: once kept, once unpacked
        let total = file_size(&archive).and_then(|a| match &rootfs {
            Some(r) => file_size(r).map(|b| 2 * (a + b)),
            None => Some(2 * a),
        });
        // 1. keep the bytes as received, hashing them on the way, no more than can be unpacked
        let mut hasher = Sha256::new();
        let mut done = 0u64;
        let mut room = self.room_for_archives(tmp);
        let first = tmp.join(if split { META } else { UNIFIED });
        let size_a = keep(
            archive,
            &first,
            &mut hasher,
            &mut done,
            total,
            progress,
            cancel,
            &mut room,
        )?;
        let mut size = size_a;
        if let Some(r) = rootfs {
            size += keep(
                r,
                &tmp.join(ROOTFS),
                &mut hasher,
                &mut done,
                total,
                progress,
                cancel,
                &mut room,
            )?;
        }
        let fp: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if known.contains(&fp) {
            return Ok(Imported {
                fingerprint: fp,
                metadata: None,
                size,
                split,
                known: true,
                claim: None,
            });
        }
        // one job at a time stores a fingerprint
        let claim = claim::claim(&self.dir, &fp, cancel)?;
        if self.is_stored(&fp) {
            // a concurrent import of the same bytes stored it, and its caller registered it
            // before releasing the claim
            return Ok(Imported {
                fingerprint: fp,
                metadata: None,
                size,
                split,
                known: true,
                claim: Some(claim),
            });
        }
        // leftovers of an interrupted import of the same image (the claim keeps anyone else
        // from writing them)
        let _ = self.pool.delete_image(&fp);
        let _ = std::fs::remove_dir_all(self.image_dir(&fp));

        // 2. unpack once into the pool, as the container's mapped root
        let staging = self.pool.stage_image(&fp)?;
        let unpacked = (|| -> Result<Metadata> {
            let max_bytes = free_bytes(&self.pool.config().path).saturating_sub(64 << 20);
            let rootfs_path = tmp.join(ROOTFS);
            let job = Job {
                helper: self.helper,
                staging: &staging,
                archive: &first,
                rootfs: split.then_some(rootfs_path.as_path()),
                ids: self.ids,
                max_bytes,
            };
            let base = done;
            helper::run(
                &job,
                &mut |n| progress(base.saturating_add(n), total),
                cancel,
            )?;
            let text = std::fs::read(staging.join("metadata.yaml"))
                .map_err(|_| Error::InvalidImage("the archive has no metadata.yaml".into()))?;
            let meta = Metadata::parse(&text)?;
            check_templates(&staging, &meta)?;
            if !staging.join("rootfs").is_dir() {
                return Err(Error::InvalidImage("the image has no rootfs".into()));
            }
            Ok(meta)
        })();
        let meta = match unpacked {
            Ok(m) => m,
            Err(e) => {
                let _ = self.pool.delete_volume(&staging);
                return Err(e);
            }
        };
        if cancel.load(Ordering::Relaxed) {
            let _ = self.pool.delete_volume(&staging);
            return Err(Error::Cancelled);
        }
        crate::crash::point("berthd.import.staged");
        // 3. commit: files, then the volume; the caller records the row last
        let dest = self.image_dir(&fp);
        std::fs::create_dir(&dest).step(|| format!("create {}", dest.display()))?;
        for name in [UNIFIED, META, ROOTFS] {
            let src = tmp.join(name);
            if src.exists() {
                std::fs::rename(&src, dest.join(name)).step(|| format!("keep {name}"))?;
            }
        }
        if let Err(e) = self.pool.commit_image(&staging, &fp) {
            let _ = self.pool.delete_volume(&staging);
            let _ = std::fs::remove_dir_all(&dest);
            return Err(e);
        }
        Ok(Imported {
            fingerprint: fp,
            metadata: Some(meta),
            size,
            split,
            known: false,
            claim: Some(claim),
        })
    }

    /// How many bytes of archives an import may keep in `tmp`. An archive unpacks to at least
    /// about its own size (compression only shrinks), so more than the pool has free cannot
    /// become an image; and the archives must leave the file system they are kept on its
    /// reserve (the host's root file system, usually). Where the pool shares that file system
    /// (a `dir` pool), the archives and their unpacked copy share its free space. This bounds
    /// an import from an endless source (a pipe, `/dev/zero`) to what could have worked.
    fn room_for_archives(&self, tmp: &Path) -> u64 {
        let pool = &self.pool.config().path;
        // btrfs counts the space of deleted files as used until its transaction commits
        // (up to 30 s later): what was just deleted to make room must count as free
        if let Ok(dir) = std::fs::File::open(pool) {
            // SAFETY: syncfs on an fd we own.
            unsafe { libc::syncfs(dir.as_raw_fd()) };
        }
        let here = free_bytes(tmp).saturating_sub(reserve_of(tmp));
        let pool_free = free_bytes(pool).saturating_sub(64 << 20);
        if same_filesystem(tmp, pool) {
            here / 2
        } else {
            here.min(pool_free)
        }
    }

    /// Whether an image is completely stored: its volume, committed last, is in the pool.
    fn is_stored(&self, fp: &str) -> bool {
        self.image_dir(fp).is_dir() && self.pool.image_volume(fp).is_dir()
    }

    /// Whether a stored image is split (two files).
    pub fn is_split(&self, fp: &str) -> bool {
        self.image_dir(fp).join(META).exists()
    }

    /// The kept files of an image with the names Incus gives them on export:
    /// `<fp>.tar.xz`, or `meta-<fp>.tar.xz` and `<fp>.squashfs`.
    pub fn files(&self, fp: &str) -> Result<Vec<(PathBuf, String)>> {
        let dir = self.image_dir(fp);
        let name = |p: &Path, prefix: &str| -> Result<String> {
            let mut head = [0u8; 1024];
            let f = std::fs::File::open(p).step(|| format!("open {}", p.display()))?;
            let n = std::os::unix::fs::FileExt::read_at(&f, &mut head, 0)
                .step(|| format!("read {}", p.display()))?;
            Ok(format!(
                "{prefix}{fp}.{}",
                Payload::sniff(&head[..n])?.extension()
            ))
        };
        if dir.join(META).exists() {
            let (m, r) = (dir.join(META), dir.join(ROOTFS));
            let (mn, rn) = (name(&m, "meta-")?, name(&r, "")?);
            Ok(vec![(m, mn), (r, rn)])
        } else {
            let u = dir.join(UNIFIED);
            let un = name(&u, "")?;
            Ok(vec![(u, un)])
        }
    }

    /// Writes an image's kept files, byte for byte, to `out` (and a split image's rootfs to
    /// `rootfs_out`), reporting bytes to `progress` and stopping when `cancel` is set.
    pub fn export(
        &self,
        fp: &str,
        out: &mut std::fs::File,
        rootfs_out: Option<&mut std::fs::File>,
        progress: Progress<'_>,
        cancel: &AtomicBool,
    ) -> Result<u64> {
        let files = self.files(fp)?;
        if files.len() == 2 && rootfs_out.is_none() {
            return Err(Error::Invalid(
                "this is a split image: pass a second file descriptor for its rootfs".into(),
            ));
        }
        let total: u64 = files
            .iter()
            .filter_map(|(p, _)| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        let mut done = 0u64;
        copy_file(&files[0].0, out, &mut done, total, progress, cancel)?;
        if let (Some((p, _)), Some(r)) = (files.get(1), rootfs_out) {
            copy_file(p, r, &mut done, total, progress, cancel)?;
        }
        Ok(done)
    }

    /// Removes an image's kept files and its base volume. Idempotent.
    pub fn remove(&self, fp: &str) -> Result<()> {
        self.pool.delete_image(fp)?;
        match std::fs::remove_dir_all(self.image_dir(fp)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::os(
                format!("remove {}", self.image_dir(fp).display()),
                e,
            )),
        }
    }

    /// Removes images on disk that are not registered (an import interrupted by a crash);
    /// returns what it did, for the log.
    pub fn remove_orphans(&self, known: &HashSet<String>) -> Vec<String> {
        let mut notes = Vec::new();
        for dir in [self.dir.clone(), self.pool.config().path.join("images")] {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let orphan = name.starts_with(".import-")
                    || name.starts_with(".staging-")
                    || name.starts_with(".build-")
                    || (name.len() == 64
                        && name.bytes().all(|b| b.is_ascii_hexdigit())
                        && !known.contains(&name));
                if orphan {
                    let p = e.path();
                    let r = if p.parent() == Some(dir.as_path()) && dir == self.dir {
                        if p.is_dir() {
                            // a build killed with the daemon may have left mounts inside
                            super::debian::remove_build_dir(&p)
                        } else {
                            std::fs::remove_file(&p).map_err(|e| Error::os("remove", e))
                        }
                    } else {
                        self.pool.delete_volume(&p)
                    };
                    notes.push(match r {
                        Ok(()) => format!("removed orphaned image files {}", p.display()),
                        Err(e) => {
                            format!("could not remove orphaned image files {}: {e}", p.display())
                        }
                    });
                }
            }
        }
        notes
    }
}

fn file_size(f: &std::fs::File) -> Option<u64> {
    f.metadata().ok().filter(|m| m.is_file()).map(|m| m.len())
}

/// Free bytes of the filesystem holding `p`.
pub fn free_bytes(p: &Path) -> u64 {
    crate::sys::fs_space(p).map_or(0, |s| s.available)
}

/// What an import leaves free on the file system at `p`: 5% of it, at most 1 GiB.
fn reserve_of(p: &Path) -> u64 {
    crate::sys::fs_space(p).map_or(0, |s| (s.total / 20).min(1 << 30))
}

/// Whether `a` and `b` are on one file system.
fn same_filesystem(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => false,
    }
}

/// Copies `src` into a new file `dst` while hashing; returns the byte count. At most `room`
/// bytes (less what was kept), then a host error: no space for the image.
#[allow(clippy::too_many_arguments)]
fn keep(
    mut src: std::fs::File,
    dst: &Path,
    hasher: &mut Sha256,
    done: &mut u64,
    total: Option<u64>,
    progress: Progress<'_>,
    cancel: &AtomicBool,
    room: &mut u64,
) -> Result<u64> {
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .step(|| format!("create {}", dst.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n_total = 0u64;
    let mut since = 0u64;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::InvalidImage(format!(
                    "reading the image failed: {e}"
                )));
            }
        };
        if n as u64 > *room {
            return Err(Error::os(
                format!(
                    "keep the image: more than {} bytes, what the storage pool and {} have room for",
                    *done + *room,
                    dst.parent().unwrap_or(dst).display()
                ),
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            ));
        }
        *room -= n as u64;
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| Error::os(format!("write {}", dst.display()), e))?;
        n_total += n as u64;
        *done += n as u64;
        since += n as u64;
        if since >= 4 << 20 {
            since = 0;
            progress(*done, total);
        }
    }
    out.sync_all().step(|| format!("sync {}", dst.display()))?;
    if n_total == 0 {
        return Err(Error::InvalidImage("the image file is empty".into()));
    }
    progress(*done, total);
    Ok(n_total)
}

fn copy_file(
    src: &Path,
    out: &mut std::fs::File,
    done: &mut u64,
    total: u64,
    progress: Progress<'_>,
    cancel: &AtomicBool,
) -> Result<()> {
    let mut f = std::fs::File::open(src).step(|| format!("open {}", src.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let n = f
            .read(&mut buf)
            .step(|| format!("read {}", src.display()))?;
        if n == 0 {
            return Ok(());
        }
        out.write_all(&buf[..n])
            .step(|| "write the exported image")?;
        *done += n as u64;
        progress(*done, Some(total));
    }
}

/// Every template named in metadata.yaml exists under templates/ as a regular file, and every
/// target is an absolute path.
fn check_templates(staging: &Path, meta: &Metadata) -> Result<()> {
    for (target, t) in &meta.templates {
        check_template(target, t)?;
        let p = staging.join("templates").join(&t.template);
        let ok = std::fs::symlink_metadata(&p)
            .map(|m| m.is_file())
            .unwrap_or(false);
        if !ok {
            return Err(Error::InvalidImage(format!(
                "template {} for {target} is missing from templates/",
                t.template
            )));
        }
    }
    Ok(())
}

fn check_template(target: &str, t: &Template) -> Result<()> {
    let bad_name = t.template.is_empty()
        || t.template.starts_with('/')
        || t.template.split('/').any(|c| c == ".." || c.is_empty())
        || t.template.contains('\0');
    if bad_name {
        return Err(Error::InvalidImage(format!(
            "template file name {:?} is not a plain relative path",
            t.template
        )));
    }
    if !target.starts_with('/') || target.contains('\0') || target.split('/').any(|c| c == "..") {
        return Err(Error::InvalidImage(format!(
            "template target {target:?} is not an absolute path"
        )));
    }
    for w in &t.when {
        if !["create", "copy", "start"].contains(&w.as_str()) {
            return Err(Error::InvalidImage(format!(
                "template {target}: unknown trigger {w:?}"
            )));
        }
    }
    Ok(())
}

/// Renders the templates of a container volume (`<volume>/metadata.yaml` and
/// `<volume>/templates/`) whose triggers include `ctx.trigger` into `<volume>/rootfs`. Writes go
/// through `openat2(RESOLVE_IN_ROOT)` on the rootfs, so a link planted by the container cannot
/// redirect them; new files belong to the container's root (`owner`).
pub fn apply_templates(volume: &Path, ctx: &template::Context, owner: (u32, u32)) -> Result<usize> {
    let Ok(text) = std::fs::read(volume.join("metadata.yaml")) else {
        return Ok(0);
    };
    let meta = Metadata::parse(&text)?;
    let rootfs = std::fs::File::open(volume.join("rootfs")).step(|| "open the rootfs")?;
    let mut applied = 0;
    for (target, t) in &meta.templates {
        if !t.when.contains(&ctx.trigger) {
            continue;
        }
        check_template(target, t)?;
        let src = volume.join("templates").join(&t.template);
        if !std::fs::symlink_metadata(&src)
            .map(|m| m.is_file())
            .unwrap_or(false)
        {
            continue;
        }
        let body =
            std::fs::read_to_string(&src).step(|| format!("read template {}", t.template))?;
        let mut c = ctx.clone();
        c.path = target.clone();
        c.properties = t.properties.clone();
        let out = template::render(&body, &c)
            .map_err(|e| Error::InvalidImage(format!("template {}: {e}", t.template)))?;
        let mut flags = libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW;
        if t.create_only {
            flags |= libc::O_EXCL;
        } else {
            flags |= libc::O_TRUNC;
        }
        let fd = match super::extract::open_in_root(
            rootfs.as_raw_fd(),
            target.trim_start_matches('/').as_bytes(),
            flags,
            0o644,
        ) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && t.create_only => continue,
            // a target whose directory the image does not have is skipped, as LXD does
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(Error::os(format!("write template target {target}"), e)),
        };
        let mut f = std::fs::File::from(fd);
        f.write_all(out.as_bytes())
            .step(|| format!("write {target}"))?;
        // SAFETY: fchown on our fd.
        unsafe { libc::fchown(f.as_raw_fd(), owner.0, owner.1) };
        applied += 1;
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{DriverKind, PoolConfig};

    /// A build interrupted by a crash of the daemon (or a cancel) can leave debootstrap's
    /// mounts in its directory; the startup cleanup detaches them and removes the rest.
    #[test]
    fn orphaned_build_dirs_are_removed_with_the_mounts_inside() {
        // SAFETY: geteuid has no failure mode.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let top = std::env::temp_dir().join(format!("berth-orphans-{}", std::process::id()));
        let pool = Pool::new(PoolConfig {
            driver: DriverKind::Dir,
            path: top.join("pool"),
            source: None,
        });
        std::fs::create_dir_all(top.join("pool/images")).unwrap();
        let store = Store {
            dir: top.join("images"),
            pool: &pool,
            helper: Path::new("/nonexistent"),
            ids: IdMap {
                uid_base: 1_000_000,
                gid_base: 1_000_000,
                count: 65536,
            },
        };
        let build = store.dir.join(".build-1-2/rootfs");
        std::fs::create_dir_all(build.join("proc")).unwrap();
        std::fs::create_dir_all(build.join("etc")).unwrap();
        std::fs::write(build.join("etc/hostname"), b"x").unwrap();
        crate::sys::mount(
            Some(Path::new("proc")),
            &build.join("proc"),
            Some(c"proc"),
            0,
            None,
        )
        .unwrap();
        let notes = store.remove_orphans(&HashSet::new());
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let left = mi.lines().any(|l| l.contains("berth-orphans-"));
        if left {
            let _ = crate::sys::umount2(&build.join("proc"), libc::MNT_DETACH);
        }
        let gone = !store.dir.join(".build-1-2").exists();
        let _ = std::fs::remove_dir_all(&top);
        assert!(!left, "the proc mount was detached: {notes:?}");
        assert!(gone, "the build directory was removed: {notes:?}");
    }
}
