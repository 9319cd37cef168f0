//! Loop devices for file-backed storage pools: find the device already backing a file, or
//! attach a free one with `LOOP_CONFIGURE` and autoclear (it detaches when unmounted).

use crate::error::{Context, Error, Result};
use crate::sys;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

/// The loop device currently backed by `file`, if any.
pub fn find(file: &Path) -> Option<PathBuf> {
    let file = std::fs::canonicalize(file).ok()?;
    for e in std::fs::read_dir("/sys/block").ok()?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file"))
            && Path::new(b.trim_end()) == file
        {
            return Some(PathBuf::from("/dev").join(name));
        }
    }
    None
}

/// Attaches `file` to a free loop device with autoclear and returns the device path and an
/// open handle. Keep the handle until the device is mounted: autoclear detaches the device
/// when its last reference goes away.
pub fn attach(file: &Path) -> Result<(PathBuf, std::fs::File)> {
    let backing = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .step(|| format!("open {}", file.display()))?;
    let ctl = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .step(|| "open /dev/loop-control")?;
    for _ in 0..16 {
        // SAFETY: GET_FREE takes no argument and returns a device number.
        let n = sys::cvt(unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) })
            .step(|| "find a free loop device")?;
        let dev = PathBuf::from(format!("/dev/loop{n}"));
        let devf = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dev)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // The node may not exist in a container's static /dev: create it.
                let c = sys::cpath(&dev).map_err(|e| Error::os("loop path", e))?;
                // SAFETY: mknod with a valid path for block device major 7.
                sys::cvt(unsafe {
                    libc::mknod(
                        c.as_ptr(),
                        libc::S_IFBLK | 0o660,
                        libc::makedev(7, n as u32),
                    )
                })
                .step(|| format!("mknod {}", dev.display()))?;
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&dev)
                    .step(|| format!("open {}", dev.display()))?
            }
            Err(e) => return Err(Error::os(format!("open {}", dev.display()), e)),
        };
        // SAFETY: plain data.
        let mut cfg: LoopConfig = unsafe { std::mem::zeroed() };
        cfg.fd = backing.as_raw_fd() as u32;
        cfg.info.flags = LO_FLAGS_AUTOCLEAR;
        let name = file.as_os_str().as_encoded_bytes();
        let l = name.len().min(63);
        cfg.info.file_name[..l].copy_from_slice(&name[..l]);
        // SAFETY: LOOP_CONFIGURE reads a LoopConfig.
        match sys::cvt(unsafe { libc::ioctl(devf.as_raw_fd(), LOOP_CONFIGURE as _, &cfg) }) {
            Ok(_) => return Ok((dev, devf)),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => continue, // raced with someone
            Err(e) => {
                return Err(Error::os(
                    format!("attach {} to {}", file.display(), dev.display()),
                    e,
                ));
            }
        }
    }
    Err(Error::os(
        "attach a loop device",
        std::io::Error::from_raw_os_error(libc::EBUSY),
    ))
}
