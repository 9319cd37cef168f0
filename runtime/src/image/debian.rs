//! The built-in `debian/bookworm` recipe: debootstrap (minbase, systemd as init) from the
//! Debian archive the host's apt already uses, cleaned for a container, with hostname and hosts
//! templates, packed as a zstd unified image.

use super::{Metadata, Template, host_architecture};
use crate::error::{Context, Error, Result};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

/// Packages on top of minbase: systemd as init, D-Bus, and enough to be a network host.
const PACKAGES: &str = "systemd,systemd-sysv,dbus,iproute2,ifupdown,netbase,procps,ca-certificates";

/// The Debian archive the host's apt sources name (deb.debian.org when none can be read).
pub fn host_mirror() -> String {
    let mut uris = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for e in rd.flatten() {
            if e.path().extension().is_some_and(|x| x == "sources")
                && let Ok(t) = std::fs::read_to_string(e.path())
            {
                for l in t.lines() {
                    if let Some(v) = l.strip_prefix("URIs:") {
                        uris.extend(v.split_whitespace().map(str::to_string));
                    }
                }
            }
        }
    }
    if let Ok(t) = std::fs::read_to_string("/etc/apt/sources.list") {
        for l in t.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.first() == Some(&"deb")
                && let Some(u) = f.iter().skip(1).find(|w| w.contains("://"))
            {
                uris.push(u.to_string());
            }
        }
    }
    // a Debian archive (…/debian): not its security mirror, nor a third-party repository
    uris.into_iter()
        .find(|u| {
            (u.starts_with("http://") || u.starts_with("https://"))
                && !u.contains("security")
                && u.trim_end_matches('/').ends_with("/debian")
        })
        .map(|u| u.trim_end_matches('/').to_string())
        .unwrap_or_else(|| "http://deb.debian.org/debian".to_string())
}

/// Builds the image tree in `dir` (`rootfs/`, `templates/`) and returns its metadata.
/// `progress` gets debootstrap's phase as a fraction; `cancel` stops it.
pub fn build(
    dir: &Path,
    mirror: &str,
    progress: &mut dyn FnMut(u64, u64),
    cancel: &AtomicBool,
) -> Result<Metadata> {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(dir).step(|| format!("create {}", dir.display()))?;
    let debootstrap = crate::storage::which("debootstrap").ok_or_else(|| {
        Error::Invalid("debootstrap is not installed (scripts/setup installs it)".into())
    })?;
    // its own process group, so that a cancel reaches the dpkg and apt it runs, not only it
    let mut child = Command::new(debootstrap)
        .process_group(0)
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .args([
            "--variant=minbase",
            &format!("--include={PACKAGES}"),
            "--components=main",
            "bookworm",
        ])
        .arg(&rootfs)
        .arg(mirror)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                Error::Invalid("debootstrap is not installed (scripts/setup installs it)".into())
            }
            _ => Error::os("run debootstrap", e),
        })?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::Protocol("debootstrap stdout".into()))?;
    // debootstrap's phases, as progress over 100
    let phases = [
        ("Retrieving Release", 2),
        ("Retrieving Packages", 5),
        ("Resolving dependencies", 8),
        ("Retrieving ", 10),
        ("Extracting ", 45),
        ("Installing core", 55),
        ("Unpacking the base", 65),
        ("Configuring the base", 80),
        ("Configuring ", 85),
        ("Base system installed", 100),
    ];
    let mut last_line = String::new();
    let mut stopped = false;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if cancel.load(Ordering::Relaxed) {
            // SAFETY: a signal to the process group we made; its leader is our child, not yet
            // reaped, so the group id cannot have been reused.
            unsafe { libc::killpg(child.id() as libc::pid_t, libc::SIGKILL) };
            stopped = true;
            break;
        }
        if let Some((_, p)) = phases.iter().find(|(m, _)| line.contains(m)) {
            progress(*p, 100);
        }
        last_line = line;
    }
    let out = child.wait_with_output().step(|| "wait for debootstrap")?;
    if stopped || cancel.load(Ordering::Relaxed) {
        return Err(Error::Cancelled);
    }
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(3).collect();
        return Err(Error::Tool {
            tool: "debootstrap".into(),
            status: out.status.to_string(),
            stderr: format!(
                "{} {}",
                last_line,
                tail.into_iter().rev().collect::<Vec<_>>().join("; ")
            ),
        });
    }
    clean(&rootfs)?;
    templates(dir)
}

/// Makes the tree fit a container: no device nodes (a container gets its own /dev), no host
/// identity (hostname, machine-id), no package caches.
fn clean(rootfs: &Path) -> Result<()> {
    let dev = rootfs.join("dev");
    if let Ok(rd) = std::fs::read_dir(&dev) {
        for e in rd.flatten() {
            let p = e.path();
            let _ = if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
    std::fs::write(rootfs.join("etc/hostname"), b"localhost\n").step(|| "write /etc/hostname")?;
    std::fs::write(rootfs.join("etc/machine-id"), b"").step(|| "empty /etc/machine-id")?;
    let _ = std::fs::remove_file(rootfs.join("var/lib/dbus/machine-id"));
    for d in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        if let Ok(rd) = std::fs::read_dir(rootfs.join(d)) {
            for e in rd.flatten() {
                if e.path().is_file() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    // lo comes up through ifupdown; the container's own interfaces are berth's business
    std::fs::write(
        rootfs.join("etc/network/interfaces"),
        b"# berth: lo only; interfaces added to the container appear in /etc/network/interfaces.d\nsource /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n",
    )
    .step(|| "write /etc/network/interfaces")?;
    Ok(())
}

fn templates(dir: &Path) -> Result<Metadata> {
    let t = dir.join("templates");
    std::fs::create_dir_all(&t).step(|| format!("create {}", t.display()))?;
    std::fs::write(t.join("hostname.tpl"), b"{{ container.name }}\n")
        .step(|| "write hostname.tpl")?;
    std::fs::write(
        t.join("hosts.tpl"),
        b"127.0.0.1\tlocalhost\n127.0.1.1\t{{ container.name }}\n\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    )
    .step(|| "write hosts.tpl")?;
    let arch = host_architecture();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(1);
    let mut meta = Metadata {
        architecture: arch.to_string(),
        creation_date: now,
        ..Default::default()
    };
    for (k, v) in [
        (
            "description",
            format!("Debian bookworm ({arch}) with systemd, built by berth"),
        ),
        ("os", "debian".to_string()),
        ("release", "bookworm".to_string()),
        ("architecture", arch.to_string()),
        ("variant", "default".to_string()),
        ("name", format!("debian-bookworm-{arch}-default")),
    ] {
        meta.properties.insert(k.to_string(), v);
    }
    let when = vec!["create".to_string(), "copy".to_string()];
    for (target, tpl) in [
        ("/etc/hostname", "hostname.tpl"),
        ("/etc/hosts", "hosts.tpl"),
    ] {
        meta.templates.insert(
            target.to_string(),
            Template {
                template: tpl.to_string(),
                when: when.clone(),
                create_only: false,
                properties: BTreeMap::new(),
            },
        );
    }
    Ok(meta)
}

/// Removes a build directory after a build, a failure or a cancel, or as an orphan at start.
/// debootstrap mounts /proc, /sys and devpts inside the tree and unmounts them only when it
/// ends on its own; killed, it leaves them. So every mount under `dir` is detached first
/// (deepest first), and if one cannot be, nothing is removed: walking into a mounted /proc or
/// a bind mount of the host would be worse than leaving files.
pub fn remove_build_dir(dir: &Path) -> Result<()> {
    let Ok(canon) = std::fs::canonicalize(dir) else {
        return Ok(());
    };
    let mut mounts = mounts_under(&canon)?;
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for m in &mounts {
        if let Err(e) = crate::sys::umount2(m, libc::MNT_DETACH)
            && e.raw_os_error() != Some(libc::EINVAL)
        {
            return Err(Error::os(format!("unmount {}", m.display()), e));
        }
    }
    if let Some(m) = mounts_under(&canon)?.first() {
        return Err(Error::Invalid(format!(
            "{} is still mounted; not removing {}",
            m.display(),
            dir.display()
        )));
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::os(format!("remove {}", dir.display()), e)),
    }
}

/// Mount points at or below `dir` (canonical), from this process's mountinfo.
fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    crate::sys::mounts_under(dir).step(|| "read /proc/self/mountinfo")
}

/// A fresh build directory under `images_dir`.
pub fn build_dir(images_dir: &Path) -> PathBuf {
    images_dir.join(format!(
        ".build-{}-{}",
        std::process::id(),
        crate::monitor::proto::now_us()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a killed debootstrap leaves: /proc, /sys and devpts mounted in the tree.
    #[test]
    fn a_build_dir_with_mounts_inside_is_unmounted_and_removed() {
        // SAFETY: geteuid has no failure mode.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let dir = std::env::temp_dir().join(format!("berth-build-test-{}", std::process::id()));
        let rootfs = dir.join("rootfs");
        for d in ["proc", "sys", "dev/pts", "usr/bin"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::write(rootfs.join("usr/bin/file"), b"x").unwrap();
        crate::sys::mount(
            Some(Path::new("proc")),
            &rootfs.join("proc"),
            Some(c"proc"),
            0,
            None,
        )
        .unwrap();
        crate::sys::mount(
            Some(Path::new("sysfs")),
            &rootfs.join("sys"),
            Some(c"sysfs"),
            libc::MS_RDONLY,
            None,
        )
        .unwrap();
        crate::sys::mount(
            Some(Path::new("tmpfs")),
            &rootfs.join("dev"),
            Some(c"tmpfs"),
            0,
            None,
        )
        .unwrap();
        std::fs::create_dir_all(rootfs.join("dev/pts")).unwrap();
        crate::sys::mount(
            Some(Path::new("devpts")),
            &rootfs.join("dev/pts"),
            Some(c"devpts"),
            0,
            Some("newinstance"),
        )
        .unwrap();
        let canon = std::fs::canonicalize(&dir).unwrap();
        assert_eq!(mounts_under(&canon).unwrap().len(), 4);
        remove_build_dir(&dir).unwrap();
        assert!(!dir.exists(), "the tree is gone");
        assert!(
            mounts_under(&canon).unwrap().is_empty(),
            "and nothing stays mounted"
        );
        // a missing directory is fine
        remove_build_dir(&dir).unwrap();
    }
}
