//! Where a container's cgroups go on a host that systemd manages: unit names, escaped as
//! systemd escapes them, and the cgroup paths systemd gives those units. Pure logic; talking to
//! systemd (D-Bus) is berthd's business.
//!
//! A container `web` of a berthd whose cgroup parent is `berth` runs in the transient scope
//! `berth-web.scope` in `berth.slice`, whose cgroup is `/berth.slice/berth-web.scope` (as
//! machined's `machine-web.scope` is in `machine.slice`). Names are escaped as
//! `systemd-escape` does, so `my-web` is `berth-my\x2dweb.scope`: a `-` in a unit name would
//! otherwise read as a level of the slice hierarchy.

use sha2::{Digest, Sha256};
use std::path::Path;

/// Longest unit name systemd accepts (`UNIT_NAME_MAX` less its NUL).
pub const UNIT_NAME_MAX: usize = 255;

/// Whether the host runs systemd as its service manager (`sd_booted()`).
pub fn booted() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Escapes `s` for use in a unit name, as systemd's `unit_name_escape()` (and
/// `systemd-escape`) does: `/` becomes `-`; a leading `.`, every `-`, `\` and every byte
/// outside `[A-Za-z0-9:_.]` becomes `\xNN`.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, b) in s.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.') => {
                out.push(b as char)
            }
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// The name of a unit's directory in the cgroup tree, as systemd's `cg_escape()` makes it:
/// prefixed with `_` when it could clash with the kernel's own files (a leading `_` or `.`,
/// `cgroup.*`, a controller's prefix such as `cpu.`).
pub fn cg_escape(name: &str) -> String {
    const KERNEL: &[&str] = &["notify_on_release", "release_agent", "tasks"];
    // systemd's controller names (cgroup_controller_to_string), v1 and v2
    const CONTROLLERS: &[&str] = &[
        "cpu",
        "cpuacct",
        "cpuset",
        "io",
        "blkio",
        "memory",
        "devices",
        "pids",
        "bpf-firewall",
        "bpf-devices",
        "bpf-foreign",
        "bpf-socket-bind",
        "bpf-restrict-network-interfaces",
    ];
    let prefix = name.is_empty()
        || name.starts_with('_')
        || name.starts_with('.')
        || KERNEL.contains(&name)
        || name.starts_with("cgroup.")
        || name
            .rsplit_once('.')
            .is_some_and(|(stem, _)| CONTROLLERS.contains(&stem));
    if prefix {
        format!("_{name}")
    } else {
        name.to_string()
    }
}

/// The cgroup path (relative to the cgroup2 mount, no leading `/`) of slice `slice`: each
/// `-` in its name is a level, so `a-b.slice` is `a.slice/a-b.slice`; `-.slice` is the root.
pub fn slice_cgroup(slice: &str) -> Option<String> {
    let stem = slice.strip_suffix(".slice")?;
    if stem == "-" {
        return Some(String::new());
    }
    if stem.is_empty() || stem.starts_with('-') || stem.ends_with('-') || stem.contains("--") {
        return None;
    }
    let mut levels = Vec::new();
    let mut at = 0;
    while let Some(i) = stem[at..].find('-') {
        at += i;
        levels.push(cg_escape(&format!("{}.slice", &stem[..at])));
        at += 1;
    }
    levels.push(cg_escape(slice));
    Some(levels.join("/"))
}

/// A container's transient scope: its unit name, slice, and cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// `berth-web.scope`.
    pub unit: String,
    /// `berth.slice`.
    pub slice: String,
    /// The scope's cgroup, relative to the cgroup2 mount: `berth.slice/berth-web.scope`.
    pub cgroup: String,
    /// `berth container web`.
    pub description: String,
}

/// The scope of container `name` under cgroup parent `parent` (`berth`): unit
/// `<parent>-<name>.scope` in `<parent>.slice`, both escaped. A name whose escaped form would
/// make the unit name too long (a 63-character name full of `-`) is shortened and given a
/// digest of the whole name after a `_`, which no escaped container name contains.
pub fn scope(parent: &str, name: &str) -> Scope {
    let p = escape(parent);
    let slice = format!("{p}.slice");
    let mut unit = format!("{p}-{}.scope", escape(name));
    if unit.len() > UNIT_NAME_MAX {
        let digest = Sha256::digest(name.as_bytes());
        let tag: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let room = UNIT_NAME_MAX - p.len() - 1 - 1 - tag.len() - ".scope".len();
        let mut e = escape(name);
        // cut on a character boundary of the escaped form (never inside a \xNN)
        while e.len() > room {
            let cut = if e.ends_with(|c: char| c.is_ascii_hexdigit())
                && e.len() >= 4
                && e.as_bytes()[e.len() - 4] == b'\\'
            {
                4
            } else {
                1
            };
            e.truncate(e.len() - cut);
        }
        unit = format!("{p}-{e}_{tag}.scope");
    }
    // the parent escapes to a name without '-', so the slice is one level below the root
    let cgroup = format!("{}/{}", cg_escape(&slice), cg_escape(&unit));
    Scope {
        description: format!("berth container {name}"),
        unit,
        slice,
        cgroup,
    }
}

/// The cgroup (relative to the cgroup2 mount) of `berth@NAME.service`, the unit
/// `systemctl start berth@NAME` starts container NAME with, in systemd's default place for a
/// template's instances (`system-berth.slice`). A container name (letters, digits, `-`) is
/// its own instance name, as `systemctl start berth@my-web` spells it; anything else is
/// escaped.
pub fn service_cgroup(name: &str) -> String {
    let instance =
        if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            name.to_string()
        } else {
            escape(name)
        };
    format!(
        "system.slice/system-berth.slice/{}",
        cg_escape(&format!("berth@{instance}.service"))
    )
}

/// Why systemd could not give a container its scope.
#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    /// systemd's bus could not be reached or spoken to.
    #[error("cannot talk to systemd: {0}")]
    Bus(String),
    /// A unit of that name exists already (an earlier run's, not yet gone).
    #[error("unit {0} exists already")]
    Exists(String),
    /// systemd refused the request.
    #[error("systemd refused {unit}: {message}")]
    Refused {
        /// The unit.
        unit: String,
        /// systemd's error.
        message: String,
    },
    /// systemd took the request, but its job did not end `done`.
    #[error("systemd's job for {unit} ended {result}")]
    Job {
        /// The unit.
        unit: String,
        /// The job's result (`failed`, `timeout`, …).
        result: String,
    },
}

/// systemd's unit manager as berth uses it; berthd implements it over D-Bus.
pub trait UnitManager: std::fmt::Debug + Send + Sync {
    /// Starts the transient scope `scope` holding process `pid`, delegated, in its slice, and
    /// returns once systemd's job for it is done (the process is then in the scope's group).
    /// Blocking.
    fn start_scope(&self, scope: &Scope, pid: u32) -> Result<(), ScopeError>;
    /// Stops `unit` (killing what runs in it) and returns once the job is done. Blocking.
    fn stop_unit(&self, unit: &str) -> Result<(), ScopeError>;
}

/// The unit that the process `pid` belongs to and its cgroup (relative to the cgroup2 mount),
/// read from `/proc/PID/cgroup` on a pure cgroup v2 host: the deepest `*.service` or
/// `*.scope` directory of its path, e.g. (`berth@web.service`,
/// `system.slice/system-berth.slice/berth@web.service`).
pub fn unit_of_pid(pid: libc::pid_t) -> Option<(String, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    unit_of_cgroup(text.lines().find_map(|l| l.strip_prefix("0::"))?)
}

/// The unit a cgroup path (as in `/proc/PID/cgroup`) belongs to, see [`unit_of_pid`].
pub fn unit_of_cgroup(path: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let i = parts
        .iter()
        .rposition(|p| p.ends_with(".service") || p.ends_with(".scope"))?;
    let unit = parts[i].strip_prefix('_').unwrap_or(parts[i]).to_string();
    Some((unit, parts[..=i].join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_as_systemd_escape_does() {
        // expected values from `systemd-escape` (systemd 252)
        assert_eq!(escape("web"), "web");
        assert_eq!(escape("my-web"), "my\\x2dweb");
        assert_eq!(escape("a/b"), "a-b");
        assert_eq!(escape(".hidden"), "\\x2ehidden");
        assert_eq!(escape("a.b"), "a.b");
        assert_eq!(escape("x y\\z"), "x\\x20y\\x5cz");
        assert_eq!(escape("ü"), "\\xc3\\xbc");
        assert_eq!(escape("A:b_C"), "A:b_C");
    }

    #[test]
    fn a_container_scope_is_named_and_placed_like_machined_s() {
        let s = scope("berth", "web");
        assert_eq!(s.unit, "berth-web.scope");
        assert_eq!(s.slice, "berth.slice");
        assert_eq!(s.cgroup, "berth.slice/berth-web.scope");
        assert_eq!(s.description, "berth container web");
        let s = scope("berth", "my-web-2");
        assert_eq!(s.unit, "berth-my\\x2dweb\\x2d2.scope");
        assert_eq!(s.cgroup, "berth.slice/berth-my\\x2dweb\\x2d2.scope");
        // a test daemon's parent is one slice of its own, not a level below berth.slice
        let s = scope("berth-test-1", "c1");
        assert_eq!(s.slice, "berth\\x2dtest\\x2d1.slice");
        assert_eq!(s.unit, "berth\\x2dtest\\x2d1-c1.scope");
        assert_eq!(
            s.cgroup,
            "berth\\x2dtest\\x2d1.slice/berth\\x2dtest\\x2d1-c1.scope"
        );
        assert_eq!(
            slice_cgroup(&s.slice).unwrap(),
            "berth\\x2dtest\\x2d1.slice"
        );
    }

    #[test]
    fn hostile_names_stay_one_unit_name_of_bounded_length() {
        // the longest escaped form a valid container name can have
        let long = format!("a{}b", "-".repeat(61));
        let s = scope("berth", &long);
        assert!(s.unit.len() <= UNIT_NAME_MAX, "{} bytes", s.unit.len());
        assert!(s.unit.starts_with("berth-a\\x2d") && s.unit.ends_with(".scope"));
        assert!(!s.unit.contains('/'));
        // never cut inside an escape, and told apart from its neighbours
        let stem = s.unit.strip_suffix(".scope").unwrap();
        let (head, tag) = stem.rsplit_once('_').unwrap();
        assert_eq!(tag.len(), 16);
        assert!(head.ends_with("\\x2d") || head.ends_with('a'));
        let other = scope("berth", &format!("a{}c", "-".repeat(61)));
        assert_ne!(s.unit, other.unit);
        // a name that fits is never given a digest
        let fits = "a".repeat(63);
        assert_eq!(scope("berth", &fits).unit, format!("berth-{fits}.scope"));
        // whatever the input, the result is bounded and has no path separator
        for n in [
            "",
            "/",
            "..",
            "a/../../b",
            "\u{0}",
            &"\u{10ffff}".repeat(100),
        ] {
            let s = scope("berth", n);
            assert!(
                s.unit.len() <= UNIT_NAME_MAX
                    && !s.unit.contains('/')
                    && !s.cgroup.split('/').any(|c| c == ".." || c == "."),
                "{n:?}: {s:?}"
            );
        }
    }

    #[test]
    fn the_unit_of_systemctl_start_berth_at_name() {
        assert_eq!(
            service_cgroup("web"),
            "system.slice/system-berth.slice/berth@web.service"
        );
        assert_eq!(
            service_cgroup("my-web"),
            "system.slice/system-berth.slice/berth@my-web.service"
        );
        assert_eq!(
            service_cgroup("a/b"),
            "system.slice/system-berth.slice/berth@a-b.service"
        );
        assert_eq!(
            service_cgroup("../x"),
            "system.slice/system-berth.slice/berth@\\x2e.-x.service"
        );
    }

    #[test]
    fn cgroup_names_dodge_the_kernel_s() {
        assert_eq!(cg_escape("berth.slice"), "berth.slice");
        assert_eq!(cg_escape("cpu.slice"), "_cpu.slice");
        assert_eq!(cg_escape("memory.scope"), "_memory.scope");
        assert_eq!(cg_escape("_x.scope"), "__x.scope");
        assert_eq!(cg_escape("cgroup.procs"), "_cgroup.procs");
        assert_eq!(cg_escape("tasks"), "_tasks");
        assert_eq!(cg_escape("cpux.slice"), "cpux.slice");
    }

    #[test]
    fn slices_nest_by_their_dashes() {
        assert_eq!(slice_cgroup("-.slice").unwrap(), "");
        assert_eq!(slice_cgroup("berth.slice").unwrap(), "berth.slice");
        assert_eq!(
            slice_cgroup("a-b-c.slice").unwrap(),
            "a.slice/a-b.slice/a-b-c.slice"
        );
        assert_eq!(
            slice_cgroup("system-berth.slice").unwrap(),
            "system.slice/system-berth.slice"
        );
        assert!(slice_cgroup("a--b.slice").is_none());
        assert!(slice_cgroup("a-.slice").is_none());
        assert!(slice_cgroup("a.scope").is_none());
    }

    #[test]
    fn finds_the_unit_of_a_cgroup_path() {
        let (u, cg) = unit_of_cgroup("/system.slice/system-berth.slice/berth@web.service").unwrap();
        assert_eq!(
            (u.as_str(), cg.as_str()),
            (
                "berth@web.service",
                "system.slice/system-berth.slice/berth@web.service"
            )
        );
        let (u, cg) = unit_of_cgroup("/berth.slice/berth-web.scope/payload/init.scope").unwrap();
        assert_eq!(
            (u.as_str(), cg.as_str()),
            (
                "init.scope",
                "berth.slice/berth-web.scope/payload/init.scope"
            )
        );
        let (u, _) = unit_of_cgroup("/system.slice/_cpu.service").unwrap();
        assert_eq!(u, "cpu.service");
        assert!(unit_of_cgroup("/").is_none());
        assert!(unit_of_cgroup("/berth/web").is_none());
    }
}
