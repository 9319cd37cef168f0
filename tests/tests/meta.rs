//! Invariants of the repository itself: the dependency rule between crates, the systemd
//! units passing `systemd-analyze verify`, and the CLI's tests running over both transports.

use berth_tests::{bin_dir, repo, run, text};
use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

/// Crates in the normal (non-dev, non-build) dependency tree of `package`, features resolved
/// as when building that package alone.
fn tree(package: &str) -> BTreeSet<String> {
    let out = run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "tree",
                "--offline",
                "-e",
                "normal",
                "--prefix",
                "none",
                "--format",
                "{p}",
                "-p",
                package,
            ])
            .current_dir(repo()),
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "cargo tree: {}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|n| n != package)
        .collect()
}

fn assert_none_of(package: &str, forbidden: &[&str]) {
    let deps = tree(package);
    for f in forbidden {
        assert!(
            !deps.contains(*f),
            "{package} must not depend on {f} (dependency rule, docs/architecture.md)"
        );
    }
}

#[test]
fn runtime_knows_no_async_runtime_or_wire_protocol() {
    assert_none_of(
        "berth-runtime",
        &[
            "tokio",
            "ractor",
            "zbus",
            "zlink",
            "berth-actors",
            "berth-interfaces",
            "rusqlite",
        ],
    );
}

#[test]
fn actors_know_no_wire_protocol() {
    assert_none_of(
        "berth-actors",
        &["zbus", "zlink", "zbus_polkit", "berth-interfaces"],
    );
}

#[test]
fn the_cli_is_a_client_of_the_interfaces_only() {
    assert_none_of(
        "berth-cli",
        &[
            "berth-actors",
            "berth-runtime",
            "ractor",
            "rusqlite",
            "zbus_polkit",
        ],
    );
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let Ok(which) = Command::new("systemd-analyze").arg("--version").output() else {
        panic!("systemd-analyze is missing (scripts/setup installs systemd)");
    };
    assert!(which.status.success());
    let dir = std::env::temp_dir().join(format!("berth-units-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let bins = bin_dir();
    let docs = repo();
    let mut units = Vec::new();
    for u in [
        "berthd.service",
        "berthd.socket",
        "berth@.service",
        "berth-containers.target",
        "berth-shutdown.service",
    ] {
        let src = std::fs::read_to_string(repo().join("systemd").join(u)).unwrap();
        let rendered = src
            .replace("@SBINDIR@", &bins.display().to_string())
            .replace("@BINDIR@", &bins.display().to_string())
            .replace("@DOCDIR@", &docs.display().to_string());
        // a placeholder is @UPPERCASE@ (unit names such as berth@.service may appear in comments)
        let parts: Vec<&str> = rendered.split('@').collect();
        let inner = &parts[1..parts.len().saturating_sub(1).max(1)];
        let placeholder = inner
            .iter()
            .any(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_uppercase()));
        assert!(!placeholder, "unrendered placeholder in {u}");
        std::fs::write(dir.join(u), rendered).unwrap();
        units.push(dir.join(if u == "berth@.service" {
            "berth@web.service".to_string()
        } else {
            u.to_string()
        }));
    }
    // an instance of the template, as `systemctl enable berth@web` would make
    std::fs::copy(dir.join("berth@.service"), dir.join("berth@web.service")).unwrap();
    let out = run(
        Command::new("systemd-analyze")
            .arg("verify")
            .args(&units)
            .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.display())),
        Duration::from_secs(60),
    );
    let msgs = format!("{}{}", text(&out.stdout), text(&out.stderr));
    // Lines about units berth does not ship (the host's own) are not ours to fix.
    let ours: Vec<&str> = msgs.lines().filter(|l| l.contains("berth")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify:\n{msgs}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dbus_activation_names_the_unit_that_owns_the_name() {
    // on systemd hosts dbus-daemon asks systemd to start SystemdService=: it must be a unit
    // that exists without `systemctl enable` (an Alias= only exists once enabled) and that
    // owns the bus name
    let activation =
        std::fs::read_to_string(repo().join("systemd/org.berth.Berth1.service")).unwrap();
    let field = |text: &str, key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_string())
    };
    let unit = field(&activation, "SystemdService=").expect("SystemdService=");
    let name = field(&activation, "Name=").expect("Name=");
    let path = repo().join("systemd").join(&unit);
    assert!(
        path.is_file(),
        "SystemdService={unit} is not a unit berth ships"
    );
    let service = std::fs::read_to_string(path).unwrap();
    assert_eq!(
        field(&service, "BusName=").as_deref(),
        Some(name.as_str()),
        "{unit} does not own {name}"
    );
}

/// Every test file that drives the CLI runs a second time over varlink (`make test`'s
/// `CLI_TESTS`): a new file that uses the CLI and is not listed there fails this.
#[test]
fn every_cli_test_file_runs_over_both_transports() {
    let makefile = std::fs::read_to_string(repo().join("Makefile")).unwrap();
    let listed: BTreeSet<String> = makefile
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "--test")
        .map(|w| w[1].to_string())
        .collect();
    let mut missing = Vec::new();
    for e in std::fs::read_dir(repo().join("tests/tests"))
        .unwrap()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".rs") else {
            continue;
        };
        let src = std::fs::read_to_string(e.path()).unwrap();
        // varlink.rs sets its own transport; this file only names the calls; zdtm.rs is
        // CRIU's workloads under the same few calls (exec, snapshot create and restore) that
        // the other files run over both transports, and runs ~8 minutes: once, over D-Bus
        let uses_cli = src.contains(".ok(&[") || src.contains(".berth(&[");
        if uses_cli && !["varlink", "meta", "zdtm"].contains(&stem) && !listed.contains(stem) {
            missing.push(stem.to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "test files that use the CLI but are not in the Makefile's CLI_TESTS: {missing:?}"
    );
    assert!(
        listed.contains("e2e"),
        "CLI_TESTS not found in the Makefile"
    );
}
