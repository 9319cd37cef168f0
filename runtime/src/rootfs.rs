//! The container's filesystem view, built inside its new user and mount namespaces: the
//! (idmapped) rootfs, /proc, read-only /sys with its cgroup trees, /dev on tmpfs with the
//! standard nodes, devpts and the console, then pivot_root.
//!
//! Runs in the freshly cloned child only. Each step that fails is reported as
//! [`SetupFailure`] naming the step, so the daemon can say exactly what broke.

use crate::cgroup::Layout;
use crate::sys;
use std::ffi::CStr;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

/// A failed setup step: what was being done and the kernel's answer.
#[derive(Debug)]
pub struct SetupFailure {
    /// The step, e.g. "mount sysfs on /sys".
    pub step: String,
    /// The error.
    pub error: io::Error,
}

type R<T = ()> = Result<T, SetupFailure>;

trait Step<T> {
    fn at(self, step: impl FnOnce() -> String) -> R<T>;
}

impl<T> Step<T> for io::Result<T> {
    fn at(self, step: impl FnOnce() -> String) -> R<T> {
        self.map_err(|error| SetupFailure {
            step: step(),
            error,
        })
    }
}

/// Host device nodes bind-mounted into every container's /dev (a user namespace cannot mknod).
/// CRIU treats each as an external mount with the same key list.
pub const DEV_NODES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// What the child needs for its filesystem view.
#[derive(Debug)]
pub struct RootfsPlan<'a> {
    /// Host path of the rootfs directory (for messages).
    pub rootfs: &'a Path,
    /// An empty directory the container's root can reach, where the detached mount is
    /// attached; everything after works relative to the mount itself.
    pub target: &'a Path,
    /// The host's cgroup layout, mounted inside the container's cgroup namespace.
    pub cgroups: &'a Layout,
    /// Host path of the console pty's slave, bind-mounted on /dev/console.
    pub console: &'a Path,
}

const NOSUID: libc::c_ulong = libc::MS_NOSUID;
const NODEV: libc::c_ulong = libc::MS_NODEV;
const NOEXEC: libc::c_ulong = libc::MS_NOEXEC;

fn fs(name: &'static CStr) -> Option<&'static CStr> {
    Some(name)
}

/// Builds the container's mounts and pivots into them. `rootfs_mnt` is the detached
/// (idmapped) mount of the rootfs prepared by the parent.
pub fn setup(plan: &RootfsPlan<'_>, rootfs_mnt: BorrowedFd<'_>) -> R {
    // Nothing we mount may propagate back to the host.
    sys::mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_SLAVE,
        None,
    )
    .at(|| "make / a recursive slave".into())?;
    sys::move_mount_to(rootfs_mnt, plan.target).at(|| {
        format!(
            "attach the rootfs mount of {} on {}",
            plan.rootfs.display(),
            plan.target.display()
        )
    })?;
    // from here on the rootfs is the working directory: no host path is walked again
    sys::fchdir(rootfs_mnt).at(|| "enter the rootfs".into())?;
    let root = Path::new(".");

    let proc_ = ensure_dir(root, "proc")?;
    sys::mount(
        Some(Path::new("proc")),
        &proc_,
        fs(c"proc"),
        NOSUID | NODEV | NOEXEC,
        None,
    )
    .at(|| "mount proc on /proc".into())?;

    let sysfs = ensure_dir(root, "sys")?;
    sys::mount(
        Some(Path::new("sysfs")),
        &sysfs,
        fs(c"sysfs"),
        libc::MS_RDONLY | NOSUID | NODEV | NOEXEC,
        None,
    )
    .at(|| "mount sysfs on /sys (read-only)".into())?;
    mount_cgroups(&sysfs.join("fs/cgroup"), plan.cgroups)?;

    setup_dev(root, plan.console)?;

    pivot(root)
}

/// Mounts the container's view of its cgroups at `/sys/fs/cgroup`: the v2 tree alone on a
/// pure-v2 host; on v1 a tmpfs with one directory per hierarchy (and `unified` for a hybrid
/// host's v2 tree), made read-only afterwards, as LXC and systemd-nspawn do.
fn mount_cgroups(at: &Path, layout: &Layout) -> R {
    let flags = NOSUID | NODEV | NOEXEC;
    if layout.version() == 2 {
        return sys::mount(Some(Path::new("cgroup2")), at, fs(c"cgroup2"), flags, None)
            .at(|| "mount cgroup2 on /sys/fs/cgroup".into());
    }
    sys::mount(
        Some(Path::new("tmpfs")),
        at,
        fs(c"tmpfs"),
        flags,
        Some("mode=755,size=64k"),
    )
    .at(|| "mount tmpfs on /sys/fs/cgroup".into())?;
    for h in &layout.hierarchies {
        let name = h.container_dir_name();
        let dir = at.join(&name);
        std::fs::create_dir_all(&dir).at(|| format!("mkdir /sys/fs/cgroup/{name}"))?;
        match &h.v1_options {
            None => sys::mount(
                Some(Path::new("cgroup2")),
                &dir,
                fs(c"cgroup2"),
                flags,
                None,
            ),
            Some(opts) => sys::mount(
                Some(Path::new("cgroup")),
                &dir,
                fs(c"cgroup"),
                flags,
                Some(opts),
            ),
        }
        .at(|| format!("mount cgroup hierarchy {name} on /sys/fs/cgroup/{name}"))?;
        // co-mounted controllers ("cpu,cpuacct") are also reachable by each name
        if name.contains(',') {
            for part in name.split(',') {
                let link = at.join(part);
                if !link.exists() {
                    std::os::unix::fs::symlink(&name, &link)
                        .at(|| format!("symlink /sys/fs/cgroup/{part}"))?;
                }
            }
        }
    }
    sys::mount(
        None,
        at,
        None,
        libc::MS_REMOUNT | libc::MS_RDONLY | flags,
        Some("mode=755,size=64k"),
    )
    .at(|| "remount /sys/fs/cgroup read-only".into())
}

/// /dev as a small tmpfs: bind-mounted host nodes, the usual symlinks, devpts with its own
/// ptmx, /dev/shm, /dev/mqueue and the console.
fn setup_dev(root: &Path, console: &Path) -> R {
    let dev = ensure_dir(root, "dev")?;
    sys::mount(
        Some(Path::new("tmpfs")),
        &dev,
        fs(c"tmpfs"),
        NOSUID | NOEXEC,
        Some("mode=755,size=65536k"),
    )
    .at(|| "mount tmpfs on /dev".into())?;
    for node in DEV_NODES.iter().copied().chain(std::iter::once("console")) {
        let target = dev.join(node);
        std::fs::File::create(&target).at(|| format!("create /dev/{node}"))?;
        let source: PathBuf = if node == "console" {
            console.to_path_buf()
        } else {
            Path::new("/dev").join(node)
        };
        sys::mount(Some(&source), &target, None, libc::MS_BIND, None)
            .at(|| format!("bind {} on /dev/{node}", source.display()))?;
    }
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        std::os::unix::fs::symlink(to, dev.join(link)).at(|| format!("symlink /dev/{link}"))?;
    }
    let pts = dev.join("pts");
    std::fs::create_dir(&pts).at(|| "mkdir /dev/pts".into())?;
    sys::mount(
        Some(Path::new("devpts")),
        &pts,
        fs(c"devpts"),
        NOSUID | NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )
    .at(|| "mount devpts on /dev/pts".into())?;
    let shm = dev.join("shm");
    std::fs::create_dir(&shm).at(|| "mkdir /dev/shm".into())?;
    sys::mount(
        Some(Path::new("shm")),
        &shm,
        fs(c"tmpfs"),
        NOSUID | NODEV,
        Some("mode=1777"),
    )
    .at(|| "mount tmpfs on /dev/shm".into())?;
    let mq = dev.join("mqueue");
    std::fs::create_dir(&mq).at(|| "mkdir /dev/mqueue".into())?;
    sys::mount(
        Some(Path::new("mqueue")),
        &mq,
        fs(c"mqueue"),
        NOSUID | NODEV | NOEXEC,
        None,
    )
    .at(|| "mount mqueue on /dev/mqueue".into())?;
    Ok(())
}

/// Makes `root` the root of our mount namespace and detaches the old root.
fn pivot(root: &Path) -> R {
    std::env::set_current_dir(root).at(|| format!("chdir {}", root.display()))?;
    // pivot_root(".", "."): the old root ends up on top of the new one; detach it.
    sys::pivot_root(Path::new("."), Path::new(".")).at(|| "pivot_root".into())?;
    sys::umount2(Path::new("."), libc::MNT_DETACH).at(|| "detach the old root".into())?;
    std::env::set_current_dir("/").at(|| "chdir /".into())
}

/// `root/name` as a directory, created when the image lacks it.
fn ensure_dir(root: &Path, name: &str) -> R<PathBuf> {
    let p = root.join(name);
    match std::fs::symlink_metadata(&p) {
        Ok(m) if m.is_dir() => Ok(p),
        Ok(_) => Err(SetupFailure {
            step: format!("check /{name}"),
            error: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("/{name} in the rootfs is not a directory"),
            ),
        }),
        Err(_) => {
            std::fs::create_dir(&p).at(|| format!("mkdir /{name}"))?;
            Ok(p)
        }
    }
}
