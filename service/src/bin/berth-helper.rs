//! berth-helper: short-lived helpers that berthd runs for work that must happen in a
//! single-threaded process or with fewer privileges than berthd's:
//!
//!   berth-helper unpack [--split] --ids BASE:COUNT --max-bytes N STAGING
//!       unpack an image (stdin; a split image's rootfs on fd 3) into STAGING as the
//!       containers' mapped root (see berth_runtime::image::helper)

fn main() {
    #[cfg(feature = "crash-points")]
    if let Err(e) = berth_runtime::crash::arm_from_env() {
        eprintln!("berth-helper: {e}");
        std::process::exit(2);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("unpack") => berth_runtime::image::helper::main(&args[1..]),
        _ => {
            eprintln!(
                "usage: berth-helper unpack [--split] --ids BASE:COUNT --max-bytes N STAGING"
            );
            std::process::exit(2);
        }
    }
}
