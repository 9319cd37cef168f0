//! Images in the LXD/Incus format: unified (one tarball holding `metadata.yaml`, `rootfs/` and
//! optionally `templates/`) or split (a metadata tarball and a rootfs tarball or squashfs),
//! compressed with gzip, xz, zstd, bzip2 or not at all. This module holds `metadata.yaml` and
//! the built-in `busybox` recipe; its children detect formats, extract hostile archives
//! safely, run the unpacking helper, keep the store on disk, publish containers as images and
//! render templates.

pub mod claim;
pub mod debian;
pub mod extract;
pub mod format;
pub mod helper;
pub mod publish;
pub mod store;
pub mod template;

use crate::error::{Context, Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// `metadata.yaml` of an image.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// Architecture name as LXD writes it (`x86_64`, `aarch64`…).
    pub architecture: String,
    /// Creation time, seconds since the epoch.
    pub creation_date: i64,
    /// Expiry, seconds since the epoch (0 = none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub expiry_date: i64,
    /// Free-form properties (description, os, release, variant…).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Templates keyed by the path they render to.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub templates: BTreeMap<String, Template>,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// One template entry of `metadata.yaml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Template {
    /// The template file under `templates/`.
    pub template: String,
    /// When to render: `create`, `copy`, `start`.
    #[serde(default)]
    pub when: Vec<String>,
    /// Create only when the target does not exist.
    #[serde(default)]
    pub create_only: bool,
    /// Extra template properties.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

impl Metadata {
    /// Parses and checks `metadata.yaml`.
    pub fn parse(text: &[u8]) -> Result<Metadata> {
        let m: Metadata = serde_norway::from_slice(text)
            .map_err(|e| Error::InvalidImage(format!("metadata.yaml: {e}")))?;
        if m.architecture.is_empty() {
            return Err(Error::InvalidImage(
                "metadata.yaml: architecture is empty".into(),
            ));
        }
        if m.creation_date <= 0 {
            return Err(Error::InvalidImage(
                "metadata.yaml: creation_date is missing".into(),
            ));
        }
        Ok(m)
    }

    /// Renders as YAML.
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).unwrap_or_default()
    }
}

/// The host architecture as LXD names it.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "x86_64",
        "aarch64" => "aarch64",
        "arm" => "armv7l",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// sha256 of a file, lowercase hex.
pub fn fingerprint_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).step(|| format!("open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .step(|| format!("read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A freshly built image archive.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// The archive file.
    pub archive: PathBuf,
    /// sha256 of the archive.
    pub fingerprint: String,
    /// Its metadata.
    pub metadata: Metadata,
}

/// Builds the `busybox` image from a static busybox binary into `out` (a unified tarball).
/// The image has `/sbin/init` (busybox init), an inittab that runs `/etc/init.d/rcS` and a
/// shell on the console, and the usual /etc files.
pub fn build_busybox(busybox: &Path, out: &Path) -> Result<BuiltImage> {
    let version = busybox_version(busybox)?;
    let applets = busybox_applets(busybox)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(1);
    let mut metadata = Metadata {
        architecture: host_architecture().to_string(),
        creation_date: now,
        ..Default::default()
    };
    for (k, v) in [
        (
            "description",
            format!("BusyBox {version} ({}) built by berth", host_architecture()),
        ),
        ("os", "busybox".to_string()),
        ("release", version.clone()),
        ("architecture", host_architecture().to_string()),
        ("variant", "default".to_string()),
        ("name", format!("busybox-{version}-{}", host_architecture())),
    ] {
        metadata.properties.insert(k.to_string(), v);
    }

    let tmp = out.with_extension("part");
    let file = std::fs::File::create(&tmp).step(|| format!("create {}", tmp.display()))?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(file));
    b.mode(tar::HeaderMode::Deterministic);
    let mtime = now as u64;
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        h
    };
    let add_file = |b: &mut tar::Builder<_>, path: &str, mode: u32, data: &[u8]| {
        b.append_data(
            &mut header(tar::EntryType::Regular, mode, data.len() as u64),
            path,
            data,
        )
    };
    let add_dir = |b: &mut tar::Builder<_>, path: &str, mode: u32| {
        b.append_data(
            &mut header(tar::EntryType::Directory, mode, 0),
            path,
            std::io::empty(),
        )
    };
    let add_link = |b: &mut tar::Builder<_>, path: &str, target: &str| {
        b.append_link(&mut header(tar::EntryType::Symlink, 0o777, 0), path, target)
    };
    let res = (|| -> std::io::Result<()> {
        add_file(
            &mut b,
            "metadata.yaml",
            0o644,
            metadata.to_yaml().as_bytes(),
        )?;
        add_dir(&mut b, "rootfs", 0o755)?;
        add_dir(&mut b, "templates", 0o755)?;
        for (d, mode) in [
            ("bin", 0o755),
            ("sbin", 0o755),
            ("usr", 0o755),
            ("usr/bin", 0o755),
            ("usr/sbin", 0o755),
            ("etc", 0o755),
            ("etc/init.d", 0o755),
            ("dev", 0o755),
            ("proc", 0o555),
            ("sys", 0o555),
            ("tmp", 0o1777),
            ("run", 0o755),
            ("root", 0o700),
            ("home", 0o755),
            ("mnt", 0o755),
            ("var", 0o755),
            ("var/log", 0o755),
            ("var/tmp", 0o1777),
        ] {
            add_dir(&mut b, &format!("rootfs/{d}"), mode)?;
        }
        let bin = std::fs::read(busybox)?;
        add_file(&mut b, "rootfs/bin/busybox", 0o755, &bin)?;
        for applet in &applets {
            let rel = applet.trim_start_matches('/');
            if rel == "bin/busybox" || rel.is_empty() || rel.contains("..") {
                continue;
            }
            add_link(&mut b, &format!("rootfs/{rel}"), "/bin/busybox")?;
        }
        for (path, mode, text) in BUSYBOX_FILES {
            add_file(&mut b, &format!("rootfs/{path}"), *mode, text.as_bytes())?;
        }
        b.finish()
    })();
    let res = res.and_then(|_| b.into_inner().and_then(|mut w| w.flush()));
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::os(format!("write {}", tmp.display()), e));
    }
    std::fs::rename(&tmp, out).step(|| format!("rename to {}", out.display()))?;
    std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o600)).step(|| "chmod image")?;
    let fingerprint = fingerprint_file(out)?;
    Ok(BuiltImage {
        archive: out.to_path_buf(),
        fingerprint,
        metadata,
    })
}

const BUSYBOX_FILES: &[(&str, u32, &str)] = &[
    (
        "etc/inittab",
        0o644,
        "# berth busybox image\n::sysinit:/etc/init.d/rcS\nconsole::respawn:-/bin/sh\n::ctrlaltdel:/sbin/reboot\n::shutdown:/bin/sync\n",
    ),
    (
        "etc/init.d/rcS",
        0o755,
        "#!/bin/sh\n# bring up loopback; the rest of the system is already mounted by berth\nip link set lo up 2>/dev/null\nmount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run 2>/dev/null\nexit 0\n",
    ),
    (
        "etc/passwd",
        0o644,
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    ),
    (
        "etc/shadow",
        0o600,
        "root::19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n",
    ),
    (
        "etc/group",
        0o644,
        "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n",
    ),
    (
        "etc/hosts",
        0o644,
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    ),
    (
        "etc/profile",
        0o644,
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nexport PS1='\\h:\\w\\$ '\n",
    ),
    (
        "etc/os-release",
        0o644,
        "NAME=BusyBox\nID=busybox\nPRETTY_NAME=\"BusyBox (berth)\"\n",
    ),
];

fn busybox_version(busybox: &Path) -> Result<String> {
    let out = std::process::Command::new(busybox)
        .output()
        .step(|| format!("run {}", busybox.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or("");
    // "BusyBox v1.35.0 (Debian 1:1.35.0-4+deb12u1+b1) multi-call binary."
    first
        .split_whitespace()
        .find_map(|w| w.strip_prefix('v'))
        .map(str::to_string)
        .ok_or_else(|| Error::Invalid(format!("{} is not busybox", busybox.display())))
}

fn busybox_applets(busybox: &Path) -> Result<Vec<String>> {
    let out = std::process::Command::new(busybox)
        .arg("--list-full")
        .output()
        .step(|| format!("run {} --list-full", busybox.display()))?;
    if !out.status.success() {
        return Err(Error::Invalid(format!(
            "{} --list-full failed",
            busybox.display()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

/// Checks that `busybox` is a statically linked ELF (a dynamic one would not run inside the
/// image, which has no libc).
pub fn check_static(busybox: &Path) -> Result<()> {
    let data = std::fs::read(busybox).step(|| format!("read {}", busybox.display()))?;
    if data.len() < 64 || &data[..4] != b"\x7fELF" {
        return Err(Error::Invalid(format!(
            "{} is not an ELF binary",
            busybox.display()
        )));
    }
    // A dynamically linked binary has a PT_INTERP program header naming its loader.
    if has_interpreter(&data)
        .ok_or_else(|| Error::Invalid(format!("{} is a malformed ELF file", busybox.display())))?
    {
        return Err(Error::Invalid(format!(
            "{} is dynamically linked; install busybox-static",
            busybox.display()
        )));
    }
    Ok(())
}

/// Whether an ELF image has a PT_INTERP program header (None if malformed).
fn has_interpreter(d: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    let le = match d.get(5)? {
        1 => true,
        2 => false,
        _ => return None,
    };
    let u16_at = |o: usize| {
        d.get(o..o + 2).map(|b| {
            if le {
                u16::from_le_bytes([b[0], b[1]])
            } else {
                u16::from_be_bytes([b[0], b[1]])
            }
        })
    };
    let u32_at = |o: usize| {
        d.get(o..o + 4).map(|b| {
            let a = [b[0], b[1], b[2], b[3]];
            if le {
                u32::from_le_bytes(a)
            } else {
                u32::from_be_bytes(a)
            }
        })
    };
    let u64_at = |o: usize| {
        d.get(o..o + 8).map(|b| {
            let a = [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
            if le {
                u64::from_le_bytes(a)
            } else {
                u64::from_be_bytes(a)
            }
        })
    };
    let (phoff, phentsize, phnum) = match d.get(4)? {
        1 => (
            u32_at(0x1c)? as usize,
            u16_at(0x2a)? as usize,
            u16_at(0x2c)? as usize,
        ),
        2 => (
            u64_at(0x20)? as usize,
            u16_at(0x36)? as usize,
            u16_at(0x38)? as usize,
        ),
        _ => return None,
    };
    for i in 0..phnum {
        let off = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(off)? == PT_INTERP {
            return Some(true);
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_static_from_dynamic() {
        // this test binary is dynamically linked
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(has_interpreter(&me), Some(true));
        assert_eq!(has_interpreter(b"\x7fELF"), None);
        if let Ok(bb) = std::fs::read("/bin/busybox") {
            assert_eq!(
                has_interpreter(&bb),
                Some(false),
                "busybox-static is static"
            );
        }
    }

    #[test]
    fn metadata_requires_architecture_and_date() {
        assert!(Metadata::parse(b"architecture: x86_64\ncreation_date: 1700000000\n").is_ok());
        assert!(Metadata::parse(b"creation_date: 1700000000\n").is_err());
        assert!(Metadata::parse(b"architecture: x86_64\n").is_err());
        assert!(Metadata::parse(b"architecture: [\n").is_err());
        let m = Metadata::parse(
            b"architecture: x86_64\ncreation_date: 1\nproperties:\n  os: debian\ntemplates:\n  /etc/hostname:\n    when: [create, copy]\n    template: hostname.tpl\n",
        )
        .unwrap();
        assert_eq!(m.properties["os"], "debian");
        assert_eq!(m.templates["/etc/hostname"].when, ["create", "copy"]);
    }
}
