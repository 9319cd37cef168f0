//! Container, snapshot and image names: what the checks accept, and where an accepted name
//! leads. A name that passes `validate_name` becomes exactly one directory level under the
//! pool's `containers/` and `snapshots/` and under the run directory's `containers/`, never
//! `..`, `.` or a nested path, and never one of the snapshot directory's own entries
//! (`.stop`, `.staging-*`). Every name has a valid D-Bus object path label that maps back to
//! it. `container/snapshot` sources (CopyContainer) split as the service splits them.
#![no_main]

use arbitrary::Arbitrary;
use berth_actors::manager::validate_alias;
use berth_actors::types::validate_name;
use berth_fuzz::assert_under;
use berth_interfaces::paths;
use berth_runtime::spec::RunFiles;
use berth_runtime::storage::{DriverKind, Pool, PoolConfig};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    name: &'a str,
    other: &'a str,
}

fn pool() -> Pool {
    Pool::new(PoolConfig {
        driver: DriverKind::Btrfs,
        path: "/var/lib/berth/storage/default".into(),
        source: None,
    })
}

/// Where a container name leads, checked.
fn container_paths(pool: &Pool, name: &str) {
    let root = pool.config().path.clone();
    let containers = root.join("containers");
    assert_under(&containers, &pool.container_volume(name), 1);
    assert_under(&containers, &pool.rootfs(name), 2);
    let snaps = root.join("snapshots");
    assert_under(&snaps, &pool.snapshots_dir(name), 1);
    assert_under(&snaps, &pool.stop_state(name).dir, 2);
    let run = Path::new("/run/berth");
    let files = RunFiles::new(run, name);
    assert_under(&run.join("containers"), files.dir(), 1);
    assert_under(&run.join("containers"), &files.socket(), 2);
    assert_under(&run.join("containers"), &files.exit_record(), 2);
    let object = paths::container(name);
    zbus::ObjectPath::try_from(object.as_str())
        .unwrap_or_else(|e| panic!("{name:?} has no valid object path ({object}): {e}"));
}

/// Where a snapshot name of container `c` leads, checked.
fn snapshot_paths(pool: &Pool, c: &str, s: &str) {
    let snaps = pool.snapshots_dir(c);
    let dir = pool.snapshot(c, s).dir;
    assert_under(&snaps, &dir, 1);
    assert_ne!(
        dir,
        pool.stop_state(c).dir,
        "snapshot {s:?} is the stop state"
    );
    assert!(
        !s.starts_with(".staging-"),
        "snapshot {s:?} is a staging directory"
    );
    let object = paths::snapshot(c, s);
    zbus::ObjectPath::try_from(object.as_str())
        .unwrap_or_else(|e| panic!("{c:?}/{s:?} has no valid object path ({object}): {e}"));
}

fuzz_target!(|input: Input<'_>| {
    let pool = pool();
    for s in [input.name, input.other] {
        // every string has a label that is a valid object path element and maps back to it
        let label = paths::escape_label(s);
        assert!(
            label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "label {label:?} of {s:?}"
        );
        assert_eq!(paths::unescape_label(&label).as_deref(), Some(s));
        let _ = paths::unescape_label(s);
        let image = paths::image(s);
        zbus::ObjectPath::try_from(image.as_str())
            .unwrap_or_else(|e| panic!("image {s:?} has no valid object path ({image}): {e}"));
        if validate_name(s).is_ok() {
            assert!(s.len() <= berth_actors::types::MAX_NAME_LEN);
            container_paths(&pool, s);
        }
        if validate_alias(s).is_ok() {
            assert!(!s.is_empty() && s.len() <= 255, "alias {s:?}");
            assert!(
                !s.split('/').any(|p| p.is_empty() || p == "." || p == ".."),
                "alias {s:?}"
            );
        }
    }
    // CopyContainer's source: `container` or `container/snapshot`
    let (c, snap) = match input.other.split_once('/') {
        Some((c, s)) => (c, Some(s)),
        None => (input.other, None),
    };
    if validate_name(c).is_ok() && snap.is_none_or(|s| validate_name(s).is_ok()) {
        container_paths(&pool, c);
        if let Some(s) = snap {
            snapshot_paths(&pool, c, s);
        }
    }
    if validate_name(input.name).is_ok() && validate_name(input.other).is_ok() {
        snapshot_paths(&pool, input.name, input.other);
    }
});
