//! Image archives as berth-helper unpacks them: the first bytes tell the compression (gzip,
//! xz, zstd, bzip2, none) and tar from squashfs, then every tar header becomes an entry that
//! is checked and written into a staging directory through openat2(RESOLVE_IN_ROOT). A split
//! image's second file (the rootfs, a tarball or squashfs) follows the metadata tarball.
//! Whatever the archive holds — `..`, absolute paths, symlinks and hardlinks out of the tree,
//! devices, huge sizes — nothing may appear outside the staging directory, and the only
//! entries at its top are `metadata.yaml`, `rootfs/` and `templates/`.
//!
//! Input: one byte of flags (bit 0: a split image), then for a split image the length of the
//! metadata tarball (u32, little endian), the tarball and the rootfs file; otherwise the
//! unified tarball.
#![no_main]

use berth_fuzz::Scratch;
use berth_runtime::image::extract::{Extractor, Layout};
use berth_runtime::image::format::{self, Payload};
use libfuzzer_sys::fuzz_target;
use std::io::{BufReader, Seek, Write};
use std::os::fd::OwnedFd;

#[derive(Debug)]
struct Input<'a> {
    split: bool,
    archive: &'a [u8],
    rootfs: &'a [u8],
}

impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Option<Input<'a>> {
        let (&flags, rest) = data.split_first()?;
        if flags & 1 == 0 {
            return Some(Input {
                split: false,
                archive: rest,
                rootfs: &[],
            });
        }
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let rest = &rest[4..];
        let at = len.min(rest.len());
        Some(Input {
            split: true,
            archive: &rest[..at],
            rootfs: &rest[at..],
        })
    }
}

fn memfd(bytes: &[u8]) -> std::fs::File {
    // SAFETY: a C string and flags; the fd returned is new and ours.
    let fd = unsafe { libc::memfd_create(c"berth-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let mut f =
        std::fs::File::from(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    f.write_all(bytes).expect("fill the memfd");
    f.rewind().expect("rewind the memfd");
    f
}

fn unpack(x: &mut Extractor, input: &Input<'_>) -> berth_runtime::Result<()> {
    let mut r = BufReader::new(input.archive);
    let Payload::Tar(c) = Payload::sniff(&format::peek(&mut r)?)? else {
        return Ok(());
    };
    let layout = if input.split {
        Layout::Metadata
    } else {
        Layout::Unified
    };
    x.tar(format::decoder(c, r)?, layout)?;
    if input.split {
        let head = &input.rootfs[..input.rootfs.len().min(1024)];
        match Payload::sniff(head)? {
            Payload::Squashfs => x.squashfs(memfd(input.rootfs))?,
            Payload::Tar(c) => x.tar(format::decoder(c, input.rootfs)?, Layout::Rootfs)?,
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::new(data) else {
        return;
    };
    let s = Scratch::new();
    let mut x = s.extractor();
    let ok = unpack(&mut x, &input).is_ok();
    let report = x.finish();
    s.assert_nothing_escaped();
    for e in std::fs::read_dir(&s.inner).expect("list the staging directory") {
        let name = e.expect("read the staging directory").file_name();
        assert!(
            ["metadata.yaml", "rootfs", "templates"].contains(&name.to_str().unwrap_or("")),
            "{name:?} at the top of the staging directory (extraction ok: {ok})"
        );
    }
    if let Ok(r) = report {
        assert!(r.bytes <= 4 << 20 && r.entries <= 4096, "{r:?}");
    }
});
