//! Builds the `debian/bookworm` image with berth's own recipe and packer, without a berthd, for
//! the VM tier: the guest has no network, so its nested-systemd test imports this archive.
//! Usage: berth-vm-image OUT.tar.zst [MIRROR]   (MIRROR: the host's apt archive by default)

use berth_runtime::image::{debian, publish};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (out, mirror) = match args.as_slice() {
        [out] => (PathBuf::from(out), debian::host_mirror()),
        [out, mirror] => (PathBuf::from(out), mirror.clone()),
        _ => {
            eprintln!("usage: berth-vm-image OUT.tar.zst [MIRROR]");
            return ExitCode::from(2);
        }
    };
    let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) else {
        eprintln!("berth-vm-image: {} has no directory", out.display());
        return ExitCode::from(2);
    };
    let dir = debian::build_dir(parent);
    let cancel = AtomicBool::new(false);
    let mut last = 0;
    let res = debian::build(
        &dir,
        &mirror,
        &mut |p, t| {
            let pct = (p * 100).checked_div(t).unwrap_or(0);
            if pct >= last + 10 {
                last = pct;
                eprintln!("berth-vm-image: debootstrap {pct}%");
            }
        },
        &cancel,
    )
    .and_then(|meta| publish::publish(&dir, &meta, None, &[], &out, &cancel));
    if let Err(e) = debian::remove_build_dir(&dir) {
        eprintln!("berth-vm-image: could not remove {}: {e}", dir.display());
    }
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = std::fs::remove_file(&out);
            eprintln!("berth-vm-image: {e}");
            ExitCode::FAILURE
        }
    }
}
