//! Container-side settings that make a systemd container checkpointable, applied when the
//! container is created (config `migration.stateful`, on by default).
//!
//! What blocks CRIU in a stock Debian bookworm container, as measured here:
//! - services with `ProtectHostname=yes` (systemd-logind, -hostnamed, -localed, -timedated)
//!   run in nested UTS namespaces, which CRIU cannot dump ("Can't dump nested uts
//!   namespace"). A drop-in for every service turns it off; the services keep their other
//!   sandboxing (nested mount namespaces CRIU handles).
//! - systemd watches the symlink `/etc/localtime` with inotify. CRIU records a watch by path
//!   only when the path's inode is the watched one, and opening a symlink's path follows it;
//!   without a path it keeps a file handle, which names the btrfs subvolume the container ran
//!   on and cannot resolve on the copy a restore runs on. `/etc/localtime` becomes a regular
//!   copy of its zone file (glibc and systemd read either the same way).
//!
//! The rootfs is the container's, so it is hostile: every path is resolved inside it
//! (openat2 with RESOLVE_IN_ROOT) and nothing is followed out of it.

use crate::error::{Context, Result};
use crate::image::extract::open_in_root;
use crate::init::{InitKind, detect};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// The drop-in berth writes, relative to the rootfs.
pub const DROPIN: &str = "etc/systemd/system/service.d/zz-berth-checkpoint.conf";

const DROPIN_TEXT: &str = "\
# Written by berth (config migration.stateful=true): services in nested UTS namespaces
# cannot be checkpointed by CRIU. Set migration.stateful=false to keep ProtectHostname.
[Service]
ProtectHostname=no
";

/// Applies the settings to `rootfs` (owned by `owner` on the host) when it boots systemd;
/// returns what it changed.
pub fn apply(rootfs: &Path, owner: (u32, u32)) -> Result<Vec<String>> {
    if detect(rootfs) != InitKind::Systemd {
        return Ok(Vec::new());
    }
    let root = std::fs::File::open(rootfs).step(|| format!("open {}", rootfs.display()))?;
    let mut changed = Vec::new();
    let dir = mkdir_p(&root, "etc/systemd/system/service.d", owner)?;
    let fd = open_in_root(
        dir.as_raw_fd(),
        b"zz-berth-checkpoint.conf",
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NOFOLLOW,
        0o644,
    )
    .step(|| format!("write {DROPIN}"))?;
    let mut f = std::fs::File::from(fd);
    f.write_all(DROPIN_TEXT.as_bytes())
        .step(|| format!("write {DROPIN}"))?;
    chown(&f, owner);
    changed.push(format!("/{DROPIN}"));
    if localtime_to_file(&root, owner)? {
        changed.push("/etc/localtime (now a regular file)".into());
    }
    Ok(changed)
}

/// Creates `rel` and its parents inside `root` (each owned by `owner` when new).
fn mkdir_p(root: &std::fs::File, rel: &str, owner: (u32, u32)) -> Result<OwnedFd> {
    let mut cur = open_in_root(root.as_raw_fd(), b".", libc::O_PATH | libc::O_DIRECTORY, 0)
        .step(|| "open the rootfs")?;
    for part in rel.split('/') {
        let c = std::ffi::CString::new(part)
            .map_err(|_| crate::Error::Invalid(format!("bad path {rel}")))?;
        // SAFETY: mkdirat with a valid dirfd and C string.
        let r = unsafe { libc::mkdirat(cur.as_raw_fd(), c.as_ptr(), 0o755) };
        let created = r == 0;
        if !created && std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
            return Err(crate::Error::os(
                format!("create /{rel}"),
                std::io::Error::last_os_error(),
            ));
        }
        let next = open_in_root(
            cur.as_raw_fd(),
            part.as_bytes(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )
        .step(|| format!("open /{rel}"))?;
        if created {
            // SAFETY: fchownat on an O_PATH fd with AT_EMPTY_PATH.
            unsafe {
                libc::fchownat(
                    next.as_raw_fd(),
                    c"".as_ptr(),
                    owner.0,
                    owner.1,
                    libc::AT_EMPTY_PATH,
                )
            };
        }
        cur = next;
    }
    Ok(cur)
}

fn chown(f: &std::fs::File, owner: (u32, u32)) {
    // SAFETY: fchown on our fd.
    unsafe { libc::fchown(f.as_raw_fd(), owner.0, owner.1) };
}

/// Replaces the `/etc/localtime` symlink with a copy of the zone file it points to (inside
/// the rootfs). Returns whether it did.
fn localtime_to_file(root: &std::fs::File, owner: (u32, u32)) -> Result<bool> {
    let Ok(link) = open_in_root(
        root.as_raw_fd(),
        b"etc/localtime",
        libc::O_PATH | libc::O_NOFOLLOW,
        0,
    ) else {
        return Ok(false);
    };
    // SAFETY: fstat into plain data.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd.
    if unsafe { libc::fstat(link.as_raw_fd(), &mut st) } != 0
        || st.st_mode & libc::S_IFMT != libc::S_IFLNK
    {
        return Ok(false);
    }
    // the zone file, resolved inside the rootfs; anything but a small regular file is left alone
    let Ok(target) = open_in_root(root.as_raw_fd(), b"etc/localtime", libc::O_RDONLY, 0) else {
        return Ok(false);
    };
    let mut zone = std::fs::File::from(target);
    let meta = zone.metadata().step(|| "stat the zone file")?;
    if !meta.is_file() || meta.len() > 1 << 20 {
        return Ok(false);
    }
    let mut data = Vec::new();
    zone.read_to_end(&mut data).step(|| "read the zone file")?;
    let etc = open_in_root(
        root.as_raw_fd(),
        b"etc",
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
    .step(|| "open /etc")?;
    let tmp = ".localtime.berth";
    // SAFETY: unlinkat of our own temporary name.
    unsafe { libc::unlinkat(etc.as_raw_fd(), c".localtime.berth".as_ptr(), 0) };
    let fd = open_in_root(
        etc.as_raw_fd(),
        tmp.as_bytes(),
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
        0o644,
    )
    .step(|| "write /etc/.localtime.berth")?;
    let mut f = std::fs::File::from(fd);
    f.write_all(&data).step(|| "write /etc/.localtime.berth")?;
    chown(&f, owner);
    // SAFETY: renameat within one directory fd.
    let r = unsafe {
        libc::renameat(
            etc.as_raw_fd(),
            c".localtime.berth".as_ptr(),
            etc.as_raw_fd(),
            c"localtime".as_ptr(),
        )
    };
    if r != 0 {
        return Err(crate::Error::os(
            "replace /etc/localtime",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_roots_get_the_settings_and_symlinks_stay_inside() {
        let root = std::env::temp_dir().join(format!("berth-prepare-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["sbin", "lib/systemd", "etc", "usr/share/zoneinfo/Etc"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("lib/systemd/systemd"), b"").unwrap();
        std::os::unix::fs::symlink("/lib/systemd/systemd", root.join("sbin/init")).unwrap();
        std::fs::write(root.join("usr/share/zoneinfo/Etc/UTC"), b"TZif2 zone").unwrap();
        std::os::unix::fs::symlink("/usr/share/zoneinfo/Etc/UTC", root.join("etc/localtime"))
            .unwrap();
        let changed = apply(&root, (0, 0)).unwrap();
        assert_eq!(changed.len(), 2, "{changed:?}");
        assert!(
            std::fs::read_to_string(root.join(DROPIN))
                .unwrap()
                .contains("ProtectHostname=no")
        );
        let lt = std::fs::symlink_metadata(root.join("etc/localtime")).unwrap();
        assert!(lt.is_file());
        assert_eq!(
            std::fs::read(root.join("etc/localtime")).unwrap(),
            b"TZif2 zone"
        );
        // again: nothing more to do for localtime, the drop-in is rewritten
        assert_eq!(apply(&root, (0, 0)).unwrap().len(), 1);

        // a hostile link pointing at the host's files is resolved inside the root
        std::fs::remove_file(root.join("etc/localtime")).unwrap();
        std::os::unix::fs::symlink("/../../../../etc/hostname", root.join("etc/localtime"))
            .unwrap();
        let _ = apply(&root, (0, 0)).unwrap();
        assert!(
            std::fs::symlink_metadata(root.join("etc/localtime"))
                .unwrap()
                .file_type()
                .is_symlink(),
            "no host file was copied in"
        );
        // a hostile service.d that is a symlink out of the root is not followed
        std::fs::remove_dir_all(root.join("etc/systemd")).unwrap();
        std::fs::create_dir_all(root.join("etc/systemd/system")).unwrap();
        let outside =
            std::env::temp_dir().join(format!("berth-prepare-out-{}", std::process::id()));
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("etc/systemd/system/service.d")).unwrap();
        assert!(apply(&root, (0, 0)).is_err());
        assert!(
            std::fs::read_dir(&outside).unwrap().next().is_none(),
            "nothing written outside the root"
        );
        let _ = std::fs::remove_dir_all(&root);
        let _ = std::fs::remove_dir_all(&outside);
        // busybox roots are left alone
        assert!(apply(Path::new("/nonexistent"), (0, 0)).unwrap().is_empty());
    }
}
