//! End-to-end: the debian/bookworm recipe (debootstrap from the host's Debian archive) makes a
//! real image whose containers boot systemd, unprivileged, to "running", take their hostname
//! from the image's templates, and power off gracefully on SIGRTMIN+4.

use berth_tests::{Env, Storage, text, wait_for};
use std::time::Duration;

#[test]
fn debian_bookworm_builds_and_boots_systemd() {
    // SAFETY: geteuid has no failure mode.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("BERTH_E2E_ALLOW_SKIP").is_some(), "end-to-end tests need root");
        return;
    }
    let env = Env::new(Storage::Btrfs);
    let out = env.ok(&["image", "build", "debian/bookworm", "--alias", "debian/bookworm"]);
    assert!(out.contains("debian/bookworm"), "{out}");
    let info = env.ok(&["image", "info", "debian/bookworm"]);
    assert!(info.contains("os: debian") && info.contains("release: bookworm"), "{info}");
    env.ok(&["launch", "debian/bookworm", "deb"]);
    wait_for(Duration::from_secs(60), "systemd to finish booting", || {
        let o = env.berth(&["exec", "deb", "--", "systemctl", "is-system-running"]);
        let s = text(&o.stdout);
        s.trim() == "running" || s.trim() == "degraded"
    });
    let state = env.ok(&["exec", "deb", "--", "systemctl", "is-system-running"]);
    let failed = env.ok(&["exec", "deb", "--", "systemctl", "--failed", "--no-legend", "--plain"]);
    assert_eq!(state.trim(), "running", "failed units: {failed}");
    assert_eq!(env.ok(&["exec", "deb", "--", "cat", "/etc/hostname"]).trim(), "deb");
    assert!(env.ok(&["exec", "deb", "--", "cat", "/etc/hosts"]).contains("127.0.1.1\tdeb"));
    assert_eq!(env.ok(&["exec", "deb", "--", "readlink", "-f", "/sbin/init"]).trim(), "/usr/lib/systemd/systemd");
    // a graceful stop: systemd powers off on SIGRTMIN+4
    env.ok(&["stop", "--timeout", "30", "deb"]);
    let exit = std::fs::read_to_string(env.run.join("containers/deb/exit.json")).unwrap();
    assert!(exit.contains("\"reason\":\"poweroff\""), "{exit}");
}
