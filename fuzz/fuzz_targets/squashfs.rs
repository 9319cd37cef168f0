//! A split image's squashfs rootfs, read by backhand and walked by berth's own directory-table
//! reader (hardlinks, xattrs, devices), every entry checked and written into a staging
//! directory through openat2(RESOLVE_IN_ROOT). Nothing may appear outside the staging
//! directory, and everything extracted lands under `rootfs/`.
#![no_main]

use berth_fuzz::Scratch;
use libfuzzer_sys::fuzz_target;
use std::io::{Seek, Write};
use std::os::fd::{FromRawFd, OwnedFd};

fuzz_target!(|data: &[u8]| {
    // SAFETY: a C string and flags; the fd returned is new and ours.
    let fd = unsafe { libc::memfd_create(c"berth-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    f.write_all(data).expect("fill the memfd");
    f.rewind().expect("rewind the memfd");
    let s = Scratch::new();
    let mut x = s.extractor();
    let ok = x.squashfs(f).is_ok();
    let report = x.finish();
    s.assert_nothing_escaped();
    for e in std::fs::read_dir(&s.inner).expect("list the staging directory") {
        let name = e.expect("read the staging directory").file_name();
        assert_eq!(name, "rootfs", "extraction ok: {ok}");
    }
    if let Ok(r) = report {
        assert!(r.bytes <= 4 << 20 && r.entries <= 4096, "{r:?}");
    }
});
