//! Container config keys: which exist, what values they take, and who may set them.
//!
//! Keys follow LXD's namespaces. `volatile.*` keys belong to berth and cannot be set by users;
//! `user.*`, `environment.*` and `image.*` are free-form.

use crate::error::{Error, Result};
use berth_runtime::cgroup::ProcessLimit;
use std::collections::BTreeMap;

/// One checked key.
struct Key {
    name: &'static str,
    check: fn(&str) -> Result<(), String>,
    help: &'static str,
}

const KEYS: &[Key] = &[
    Key {
        name: "boot.autostart",
        check: check_bool,
        help: "start the container when berth starts after a host boot",
    },
    Key {
        name: "boot.autostart.delay",
        check: check_seconds,
        help: "seconds to wait after starting this container at boot before starting the next",
    },
    Key {
        name: "boot.autostart.priority",
        check: check_priority,
        help: "order of starts at boot, highest first (integer, default 0); stops at host shutdown go the other way",
    },
    Key {
        name: "boot.host_shutdown_timeout",
        check: check_seconds,
        help: "seconds a stop at host shutdown waits for the container before killing it (default 30)",
    },
    Key {
        name: "boot.stop_signal",
        check: check_signal,
        help: "signal asking init to power off (default: by init)",
    },
    Key {
        name: "boot.stop_timeout",
        check: check_seconds,
        help: "seconds a graceful stop waits before killing",
    },
    Key {
        name: "limits.disk",
        check: check_disk,
        help: "root disk size, e.g. 10GiB (at least 16MiB; btrfs pools: a qgroup limit on the bytes the root refers to)",
    },
    Key {
        name: "limits.memory",
        check: check_memory,
        help: "memory limit, e.g. 512MiB (at least 4MiB)",
    },
    Key {
        name: "limits.processes",
        check: check_count,
        help: "maximum number of processes",
    },
    Key {
        name: "migration.stateful",
        check: check_bool,
        help: "make a systemd container checkpointable when it is created (default true)",
    },
];

/// Processes a container may have when `limits.processes` does not say (its `pids.max`):
/// enough for any system a container runs (a busy Debian with systemd has a few hundred), few
/// enough that a fork bomb in one container leaves the host's pid space (kernel.pid_max,
/// 4194304 here) and the other containers alone. LXD sets none; systemd gives a service 15%
/// of the host's pids (`DefaultTasksMax`).
pub const DEFAULT_PROCESSES: u64 = 10_000;

/// The cgroup limits `config` asks for: the memory limit in bytes, and the process limit
/// (`limits.processes`, else [`DEFAULT_PROCESSES`]).
pub fn limits(config: &BTreeMap<String, String>) -> (Option<u64>, ProcessLimit) {
    let memory = config.get("limits.memory").and_then(|v| parse_size(v));
    let processes = match config.get("limits.processes").and_then(|v| v.parse().ok()) {
        Some(n) => ProcessLimit::Set(n),
        None => ProcessLimit::Default(DEFAULT_PROCESSES),
    };
    (memory, processes)
}

/// The root disk limit `config` asks for (`limits.disk`), in bytes.
pub fn disk_limit(config: &BTreeMap<String, String>) -> Option<u64> {
    config.get("limits.disk").and_then(|v| parse_size(v))
}

/// Free-form namespaces.
const FREE: &[&str] = &["user.", "environment.", "image."];

/// Keys a container's config may have.
pub const MAX_KEYS: usize = 1024;
/// Bytes of keys and values a container's config may hold: it is kept in memory, in every
/// `Config` read and in the database row.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// Checks user-supplied config (keys and values, and their number and size); `volatile.*`
/// is refused.
pub fn validate_user_config(config: &BTreeMap<String, String>) -> Result<()> {
    if config.len() > MAX_KEYS {
        return Err(Error::InvalidConfig(format!(
            "{} config keys; a container may have at most {MAX_KEYS}",
            config.len()
        )));
    }
    let bytes: usize = config.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_CONFIG_BYTES {
        return Err(Error::InvalidConfig(format!(
            "the config holds {bytes} bytes; at most {MAX_CONFIG_BYTES} are allowed"
        )));
    }
    for (k, v) in config {
        validate_key(k, v)?;
    }
    Ok(())
}

/// Checks one user-supplied key and value.
pub fn validate_key(key: &str, value: &str) -> Result<()> {
    let invalid = |m: String| Err(Error::InvalidConfig(m));
    if key.is_empty() || key.len() > 256 || key.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return invalid(format!("invalid config key {key:?}"));
    }
    if value.len() > 64 * 1024 {
        return invalid(format!("config value of {key:?} is longer than 64 KiB"));
    }
    if key.starts_with("volatile.") {
        return invalid(format!(
            "config key {key:?} is managed by berth and cannot be set"
        ));
    }
    if let Some(prefix) = FREE.iter().find(|p| key.starts_with(**p)) {
        if key.len() == prefix.len() {
            return invalid(format!("config key {key:?} needs a name after {prefix:?}"));
        }
        if *prefix == "environment."
            && !key[prefix.len()..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return invalid(format!(
                "environment variable name in {key:?} must be [A-Za-z0-9_]"
            ));
        }
        return Ok(());
    }
    match KEYS.iter().find(|k| k.name == key) {
        Some(k) => (k.check)(value)
            .map_err(|why| Error::InvalidConfig(format!("{key}={value:?}: {why} ({})", k.help))),
        None => invalid(format!(
            "unknown config key {key:?} (known: {}, and user.*, environment.*)",
            KEYS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
        )),
    }
}

fn check_bool(v: &str) -> Result<(), String> {
    parse_bool(v)
        .map(drop)
        .ok_or_else(|| "expected true or false".into())
}

/// Parses LXD-style booleans.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" | "" => Some(false),
        _ => None,
    }
}

fn check_signal(v: &str) -> Result<(), String> {
    berth_runtime::sys::parse_signal(v)
        .map(drop)
        .ok_or_else(|| "expected a signal name or number".into())
}

fn check_seconds(v: &str) -> Result<(), String> {
    v.parse::<u32>()
        .map(drop)
        .map_err(|_| "expected a number of seconds".into())
}

fn check_priority(v: &str) -> Result<(), String> {
    v.parse::<i32>()
        .map(drop)
        .map_err(|_| "expected an integer".into())
}

/// Where a container stands in boot order: `boot.autostart.priority` (default 0).
pub fn autostart_priority(config: &BTreeMap<String, String>) -> i32 {
    config
        .get("boot.autostart.priority")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A whole number of seconds from `key` of `config`, if set and valid.
pub fn seconds(config: &BTreeMap<String, String>, key: &str) -> Option<std::time::Duration> {
    config
        .get(key)
        .and_then(|v| v.parse::<u32>().ok())
        .map(|s| std::time::Duration::from_secs(s.into()))
}

fn check_count(v: &str) -> Result<(), String> {
    match v.parse::<u64>() {
        Ok(n) if n > 0 => Ok(()),
        _ => Err("expected a positive integer".into()),
    }
}

/// Less than this and nothing starts: the kernel charges the container's first page tables,
/// stacks and page cache to it, and init is killed before it execs (with no word of memory).
const MIN_MEMORY: u64 = 4 << 20;

fn check_memory(v: &str) -> Result<(), String> {
    match parse_size(v) {
        Some(n) if n >= MIN_MEMORY => Ok(()),
        Some(_) => Err("a container needs at least 4MiB of memory to start".into()),
        None => Err("expected a size such as 512MiB, 2GB or a number of bytes".into()),
    }
}

/// Less than this and a container cannot write the little a start writes (its logs, its
/// runtime files) once a limit counts every byte of the root, image included.
const MIN_DISK: u64 = 16 << 20;

fn check_disk(v: &str) -> Result<(), String> {
    match parse_size(v) {
        Some(n) if n >= MIN_DISK => Ok(()),
        Some(_) => Err("a root disk needs at least 16MiB".into()),
        None => Err("expected a size such as 10GiB, 500MB or a number of bytes".into()),
    }
}

/// Parses a size with an optional unit (B, kB/MB/GB/TB, KiB/MiB/GiB/TiB).
pub fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1000,
        "MB" => 1000u64.pow(2),
        "GB" => 1000u64.pow(3),
        "TB" => 1000u64.pow(4),
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return None,
    };
    let r = n.checked_mul(mult)?;
    (r > 0).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert!(validate_key("user.note", "anything").is_ok());
        assert!(validate_key("environment.FOO_1", "x").is_ok());
        assert!(validate_key("environment.FO-O", "x").is_err());
        assert!(validate_key("user.", "x").is_err());
        assert!(validate_key("volatile.idmap.base", "1").is_err());
        assert!(validate_key("limits.memory", "512MiB").is_ok());
        assert!(validate_key("limits.memory", "lots").is_err());
        assert!(validate_key("boot.stop_signal", "SIGRTMIN+4").is_ok());
        assert!(validate_key("boot.stop_signal", "SIGFOO").is_err());
        assert!(validate_key("nope.key", "1").is_err());
        assert!(validate_key("bad key", "1").is_err());
    }

    #[test]
    fn limits_default_to_a_process_limit() {
        let mut c = BTreeMap::new();
        assert_eq!(limits(&c), (None, ProcessLimit::Default(DEFAULT_PROCESSES)));
        c.insert("limits.processes".to_string(), "50".to_string());
        c.insert("limits.memory".to_string(), "1MiB".to_string());
        assert_eq!(limits(&c), (Some(1 << 20), ProcessLimit::Set(50)));
    }

    #[test]
    fn disk_limits() {
        assert!(validate_key("limits.disk", "64MiB").is_ok());
        assert!(validate_key("limits.disk", "10GB").is_ok());
        assert!(validate_key("limits.disk", "16777216").is_ok());
        for bad in [
            "",
            "0",
            "1MiB",
            "16777215",
            "lots",
            "-5GiB",
            "1.5GiB",
            "99999999999TiB",
        ] {
            let e = validate_key("limits.disk", bad).unwrap_err();
            assert!(
                matches!(&e, Error::InvalidConfig(m) if m.contains("limits.disk")),
                "{bad:?}: {e}"
            );
        }
        let mut c = BTreeMap::new();
        assert_eq!(disk_limit(&c), None);
        c.insert("limits.disk".to_string(), "64MiB".to_string());
        assert_eq!(disk_limit(&c), Some(64 << 20));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("2GB"), Some(2_000_000_000));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("99999999999999999999TiB"), None);
        assert_eq!(parse_size("1XB"), None);
    }
}
