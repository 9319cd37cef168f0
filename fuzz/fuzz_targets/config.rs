//! Container config keys and values (`validate_user_config`, the check every Create, Copy,
//! SetConfig and profile edit goes through), and what the engine later reads out of an
//! accepted config: an accepted config must never yield a limit, timeout or signal that the
//! kernel would refuse or misread (a memory limit under 4 MiB, a disk limit under 16 MiB, a
//! process limit of 0, a signal outside 1..=SIGRTMAX). Image properties go through their own
//! check.
#![no_main]

use arbitrary::Arbitrary;
use berth_actors::config;
use berth_actors::manager::validate_property;
use berth_runtime::cgroup::ProcessLimit;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Keys the fuzzer is likely to miss are offered by index.
    known: Vec<(u8, String)>,
    free: BTreeMap<String, String>,
}

const KEYS: &[&str] = &[
    "boot.autostart",
    "boot.autostart.delay",
    "boot.autostart.priority",
    "boot.host_shutdown_timeout",
    "boot.stop_signal",
    "boot.stop_timeout",
    "limits.disk",
    "limits.memory",
    "limits.processes",
    "migration.stateful",
    "user.x",
    "environment.PATH",
    "image.os",
    "volatile.idmap.base",
];

fuzz_target!(|input: Input| {
    let mut cfg = input.free;
    for (i, v) in input.known {
        cfg.insert(KEYS[i as usize % KEYS.len()].to_string(), v);
    }
    for (k, v) in &cfg {
        let _ = validate_property(k, v);
        let _ = config::parse_size(v);
        let _ = config::parse_bool(v);
        let _ = berth_runtime::sys::parse_signal(v);
    }
    if config::validate_user_config(&cfg).is_err() {
        return;
    }
    assert!(cfg.len() <= config::MAX_KEYS);
    assert!(cfg.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() <= config::MAX_CONFIG_BYTES);
    assert!(!cfg.keys().any(|k| k.starts_with("volatile.")), "{cfg:?}");
    let (memory, processes) = config::limits(&cfg);
    if cfg.contains_key("limits.memory") {
        assert!(
            memory.is_some_and(|m| m >= 4 << 20),
            "memory {memory:?} from {cfg:?}"
        );
    }
    match processes {
        ProcessLimit::Set(n) => assert!(n > 0),
        ProcessLimit::Default(n) => {
            assert!(!cfg.contains_key("limits.processes"), "{cfg:?}");
            assert_eq!(n, config::DEFAULT_PROCESSES);
        }
    }
    if cfg.contains_key("limits.disk") {
        let d = config::disk_limit(&cfg);
        assert!(d.is_some_and(|d| d >= 16 << 20), "disk {d:?} from {cfg:?}");
    }
    for k in [
        "boot.autostart.delay",
        "boot.host_shutdown_timeout",
        "boot.stop_timeout",
    ] {
        assert_eq!(
            config::seconds(&cfg, k).is_some(),
            cfg.contains_key(k),
            "{k} in {cfg:?}"
        );
    }
    let _ = config::autostart_priority(&cfg);
    if let Some(s) = cfg.get("boot.stop_signal") {
        let n = berth_runtime::sys::parse_signal(s);
        assert!(
            n.is_some_and(|n| (1..=libc::SIGRTMAX()).contains(&n)),
            "boot.stop_signal={s:?} was accepted as signal {n:?}"
        );
    }
    if let Some(v) = cfg.get("boot.autostart").or(cfg.get("migration.stateful")) {
        assert!(config::parse_bool(v).is_some(), "{v:?}");
    }
    for (k, _) in cfg.iter().filter(|(k, _)| k.starts_with("environment.")) {
        let var = &k["environment.".len()..];
        assert!(
            !var.is_empty() && !var.contains('=') && !var.contains('\0'),
            "{k:?}"
        );
    }
});
