//! End-to-end: the debian/bookworm recipe (debootstrap from the host's Debian archive) makes a
//! real image whose containers boot systemd, unprivileged, to "running", take their hostname
//! from the image's templates, are checkpointed and restored with CRIU (stateful snapshots,
//! twice, and a stateful stop), and power off gracefully on SIGRTMIN+4.

use berth_tests::{Env, Storage, text, wait_for};
use std::time::Duration;

#[test]
fn debian_bookworm_builds_and_boots_systemd() {
    // SAFETY: geteuid has no failure mode.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("BERTH_E2E_ALLOW_SKIP").is_some(),
            "end-to-end tests need root"
        );
        return;
    }
    let env = Env::new(Storage::Btrfs);
    let out = env.ok(&[
        "image",
        "build",
        "debian/bookworm",
        "--alias",
        "debian/bookworm",
    ]);
    assert!(out.contains("debian/bookworm"), "{out}");
    let info = env.ok(&["image", "info", "debian/bookworm"]);
    assert!(
        info.contains("os: debian") && info.contains("release: bookworm"),
        "{info}"
    );
    env.ok(&["launch", "debian/bookworm", "deb"]);
    wait_for(Duration::from_secs(60), "systemd to finish booting", || {
        let o = env.berth(&["exec", "deb", "--", "systemctl", "is-system-running"]);
        let s = text(&o.stdout);
        s.trim() == "running" || s.trim() == "degraded"
    });
    let state = env.ok(&["exec", "deb", "--", "systemctl", "is-system-running"]);
    let failed = env.ok(&[
        "exec",
        "deb",
        "--",
        "systemctl",
        "--failed",
        "--no-legend",
        "--plain",
    ]);
    assert_eq!(state.trim(), "running", "failed units: {failed}");
    assert_eq!(
        env.ok(&["exec", "deb", "--", "cat", "/etc/hostname"])
            .trim(),
        "deb"
    );
    assert!(
        env.ok(&["exec", "deb", "--", "cat", "/etc/hosts"])
            .contains("127.0.1.1\tdeb")
    );
    assert_eq!(
        env.ok(&["exec", "deb", "--", "readlink", "-f", "/sbin/init"])
            .trim(),
        "/usr/lib/systemd/systemd"
    );

    // checkpointable as created (migration.stateful): the settings berth applied
    assert!(
        env.ok(&[
            "exec",
            "deb",
            "--",
            "cat",
            "/etc/systemd/system/service.d/zz-berth-checkpoint.conf"
        ])
        .contains("ProtectHostname=no")
    );
    assert!(
        env.ok(&["exec", "deb", "--", "stat", "-c", "%F", "/etc/localtime"])
            .contains("regular")
    );
    let journald = env
        .ok(&["exec", "deb", "--", "pidof", "systemd-journald"])
        .trim()
        .to_string();
    env.ok(&["exec", "deb", "--", "sh", "-c", "echo before > /root/mark"]);
    env.ok(&["snapshot", "create", "--stateful", "deb", "live"]);
    env.ok(&["exec", "deb", "--", "sh", "-c", "echo after > /root/mark"]);
    for round in 0..2 {
        env.ok(&["snapshot", "restore", "deb", "live"]);
        assert_eq!(
            env.ok(&["exec", "deb", "--", "systemctl", "is-system-running"])
                .trim(),
            "running",
            "round {round}"
        );
        assert_eq!(
            env.ok(&["exec", "deb", "--", "pidof", "systemd-journald"])
                .trim(),
            journald,
            "round {round}: the same processes"
        );
        assert_eq!(
            env.ok(&["exec", "deb", "--", "cat", "/root/mark"]).trim(),
            "before",
            "round {round}: files as at the snapshot"
        );
        env.ok(&[
            "exec",
            "deb",
            "--",
            "logger",
            "-t",
            "berth-test",
            &format!("restored {round}"),
        ]);
        let logs = env.ok(&[
            "exec",
            "deb",
            "--",
            "journalctl",
            "-t",
            "berth-test",
            "--no-pager",
        ]);
        assert!(
            logs.contains(&format!("restored {round}")),
            "journald works after the restore: {logs}"
        );
    }
    env.ok(&["stop", "--stateful", "deb"]);
    env.ok(&["start", "deb"]);
    assert_eq!(
        env.ok(&["exec", "deb", "--", "systemctl", "is-system-running"])
            .trim(),
        "running"
    );
    assert_eq!(
        env.ok(&["exec", "deb", "--", "pidof", "systemd-journald"])
            .trim(),
        journald
    );

    // without the settings, the pre-flight says precisely what stands in the way
    env.ok(&[
        "launch",
        "debian/bookworm",
        "plain",
        "-c",
        "migration.stateful=false",
    ]);
    wait_for(
        Duration::from_secs(60),
        "the second container to boot",
        || {
            let o = env.berth(&["exec", "plain", "--", "systemctl", "is-system-running"]);
            matches!(text(&o.stdout).trim(), "running" | "degraded")
        },
    );
    let out = env.berth(&["snapshot", "create", "--stateful", "plain"]);
    let err = text(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("NotSupported")
            && err.contains("nested uts namespace")
            && err.contains("ProtectHostname"),
        "{err}"
    );
    env.ok(&["delete", "--force", "plain"]);
    // a graceful stop: systemd powers off on SIGRTMIN+4
    env.ok(&["stop", "--timeout", "30", "deb"]);
    let exit = std::fs::read_to_string(env.run.join("containers/deb/exit.json")).unwrap();
    assert!(exit.contains("\"reason\":\"poweroff\""), "{exit}");
}
