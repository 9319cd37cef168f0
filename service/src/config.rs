//! berthd's command line.

use std::path::PathBuf;

/// Usage text.
pub const USAGE: &str = "\
usage: berthd [--bus ADDRESS] [--state-dir DIR] [--run-dir DIR] [--cgroup-parent NAME] [--busybox PATH]
              [--monitor PATH] [--no-idmapped-mounts] [--bridge NAME|none] [--favordynmods]
              [--idle-timeout SECONDS] [--no-autostart] [--no-scopes]
       berthd init [--storage btrfs|dir] [--size BYTES] [--state-dir DIR]
       berthd shutdown [--bus ADDRESS] [the daemon's options]
       berthd recover [--state-dir DIR]
       berthd --version

  --bus ADDRESS        D-Bus address to serve on (default: the activating bus, else
                       $DBUS_SYSTEM_BUS_ADDRESS, else the system bus)
  --state-dir DIR      database, images and the storage pool (default /var/lib/berth)
  --run-dir DIR        sockets and runtime files (default /run/berth)
  --cgroup-parent NAME cgroup under which containers live (default berth)
  --busybox PATH       static busybox for the `busybox` image recipe (default /bin/busybox)
  --monitor PATH       the berth-monitor binary (default: next to berthd, or ../libexec/berth/)
  --no-idmapped-mounts shift new containers' root filesystems with a one-time chown instead of
                       idmapped mounts (used automatically where the pool refuses them)
  --bridge NAME|none   host bridge for the containers' eth0 (default berthbr0; created with a
                       10.x.y.0/20 that clashes with no host route); none: only loopback
  --favordynmods       turn on the kernel's favordynmods option of the cgroup mounts (a
                       host-wide setting, so only when asked): without it each start waits
                       5-20 ms for an RCU grace period (see docs/performance.md)
  --idle-timeout SECS  exit after SECS without a call, an operation or a pending
                       authorization; the next call activates berthd again (default 60,
                       0: never)
  --no-autostart       do not start the boot.autostart containers, even after a host boot
  --no-scopes          keep running containers in berth's own cgroup tree (<parent>/NAME at
                       the top) also where systemd manages a pure cgroup v2 tree; by default
                       each gets a transient scope there, <parent>-NAME.scope in
                       <parent>.slice
  init                 create the default storage pool: btrfs (on a loop file when the state
                       directory is not on btrfs) when btrfs-progs is installed, else dir
  shutdown             stop every running container through berthd, lowest
                       boot.autostart.priority first, each within its
                       boot.host_shutdown_timeout (host shutdown runs this). When no
                       berthd serves (it exited idle, and the bus activates none once the
                       host shuts down), runs one for the while, with the daemon's options
                       given
  recover              with berthd stopped: rebuild the database's rows from the pools
                       (each container volume's backup.yaml, each kept image's), keeping
                       the rows it has; creates the database when it is missing. Refuses
                       while a berthd runs (use `berth admin recover` then) and leaves a
                       damaged database untouched (move it aside first)";

/// Daemon settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bus address override.
    pub bus: Option<String>,
    /// State directory.
    pub state_dir: PathBuf,
    /// Runtime directory.
    pub run_dir: PathBuf,
    /// cgroup parent name.
    pub cgroup_parent: String,
    /// busybox for the recipe.
    pub busybox: PathBuf,
    /// The berth-monitor binary (None = look next to berthd).
    pub monitor: Option<PathBuf>,
    /// Shift rootfs ownership instead of idmapped mounts.
    pub no_idmapped_mounts: bool,
    /// Host bridge for containers' eth0 (None: no network).
    pub bridge: Option<String>,
    /// Turn on `favordynmods` on the cgroup mounts (opt-in: a host-wide setting).
    pub favordynmods: bool,
    /// Exit after this long idle (None: never).
    pub idle_timeout: Option<std::time::Duration>,
    /// Start no boot.autostart container, even after a host boot.
    pub no_autostart: bool,
    /// Give running containers systemd scopes where systemd manages a pure v2 tree.
    pub scopes: bool,
}

/// `berthd init` settings.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// State directory.
    pub state_dir: PathBuf,
    /// Requested driver.
    pub storage: Option<String>,
    /// Loop file size in bytes.
    pub size: Option<u64>,
}

/// What to do.
#[derive(Debug)]
pub enum Command {
    /// Run the daemon.
    Run(Config),
    /// Create the storage pool.
    Init(InitOptions),
    /// Stop every running container (host shutdown); the daemon's settings, for the bus
    /// address and for a berthd of its own when none serves.
    Shutdown(Config),
    /// Rebuild the database from the pools (berthd stopped); the state directory.
    Recover(PathBuf),
    /// Print usage.
    Help,
    /// Print the version.
    Version,
}

/// Parses arguments (without argv[0]).
pub fn parse(args: &[String]) -> Result<Command, String> {
    let mut cfg = Config {
        bus: None,
        state_dir: "/var/lib/berth".into(),
        run_dir: "/run/berth".into(),
        cgroup_parent: "berth".into(),
        busybox: "/bin/busybox".into(),
        monitor: None,
        no_idmapped_mounts: false,
        bridge: Some("berthbr0".into()),
        favordynmods: false,
        idle_timeout: Some(std::time::Duration::from_secs(60)),
        no_autostart: false,
        scopes: true,
    };
    let mut init: Option<InitOptions> = None;
    let mut shutdown = false;
    let mut recover = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--version" => return Ok(Command::Version),
            "shutdown" if init.is_none() && !shutdown && !recover => shutdown = true,
            "recover" if init.is_none() && !shutdown && !recover => recover = true,
            "init" if init.is_none() && !shutdown && !recover => {
                init = Some(InitOptions {
                    state_dir: cfg.state_dir.clone(),
                    storage: None,
                    size: None,
                })
            }
            "--bus" => cfg.bus = Some(val("--bus")?),
            "--state-dir" => cfg.state_dir = val("--state-dir")?.into(),
            "--run-dir" => cfg.run_dir = val("--run-dir")?.into(),
            "--busybox" => cfg.busybox = val("--busybox")?.into(),
            "--monitor" => cfg.monitor = Some(val("--monitor")?.into()),
            "--no-idmapped-mounts" => cfg.no_idmapped_mounts = true,
            "--no-autostart" => cfg.no_autostart = true,
            "--no-scopes" => cfg.scopes = false,
            "--favordynmods" => cfg.favordynmods = true,
            // the default since berthd stopped changing host-wide settings unasked
            "--no-favordynmods" => cfg.favordynmods = false,
            "--idle-timeout" => {
                let v = val("--idle-timeout")?;
                let secs: u64 =
                    v.parse()
                        .ok()
                        .filter(|n| *n <= 7 * 24 * 3600)
                        .ok_or_else(|| {
                            format!("invalid idle timeout {v:?} (seconds, at most a week)")
                        })?;
                cfg.idle_timeout = (secs > 0).then(|| std::time::Duration::from_secs(secs));
            }
            "--bridge" => {
                let v = val("--bridge")?;
                if v == "none" {
                    cfg.bridge = None;
                } else {
                    berth_runtime::net::check_ifname(&v).map_err(|e| e.to_string())?;
                    cfg.bridge = Some(v);
                }
            }
            "--cgroup-parent" => {
                let v = val("--cgroup-parent")?;
                if v.is_empty() || v.contains('/') || v.starts_with('.') || v.len() > 64 {
                    return Err(format!("invalid cgroup parent {v:?}"));
                }
                cfg.cgroup_parent = v;
            }
            "--storage" if init.is_some() => {
                let v = val("--storage")?;
                if v != "btrfs" && v != "dir" {
                    return Err(format!("unknown storage driver {v:?} (btrfs or dir)"));
                }
                if let Some(i) = init.as_mut() {
                    i.storage = Some(v);
                }
            }
            "--size" if init.is_some() => {
                let v = val("--size")?;
                let n = berth_actors::config::parse_size(&v)
                    .ok_or_else(|| format!("invalid size {v:?}"))?;
                if n < 256 << 20 {
                    return Err("a btrfs pool needs at least 256MiB".into());
                }
                if let Some(i) = init.as_mut() {
                    i.size = Some(n);
                }
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if shutdown {
        return Ok(Command::Shutdown(cfg));
    }
    if recover {
        return Ok(Command::Recover(cfg.state_dir));
    }
    Ok(match init {
        Some(mut i) => {
            i.state_dir = cfg.state_dir;
            Command::Init(i)
        }
        None => Command::Run(cfg),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(a: &[&str]) -> Result<Command, String> {
        parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn parses() {
        match p(&["--state-dir", "/x", "--cgroup-parent", "t1"]).unwrap() {
            Command::Run(c) => assert_eq!(
                (c.state_dir, c.cgroup_parent.as_str(), c.scopes),
                (PathBuf::from("/x"), "t1", true)
            ),
            other => panic!("{other:?}"),
        }
        match p(&["--no-scopes"]).unwrap() {
            Command::Run(c) => assert!(!c.scopes),
            other => panic!("{other:?}"),
        }
        match p(&["init", "--storage", "dir", "--state-dir", "/s"]).unwrap() {
            Command::Init(i) => assert_eq!(
                (i.storage.as_deref(), i.state_dir),
                (Some("dir"), PathBuf::from("/s"))
            ),
            other => panic!("{other:?}"),
        }
        assert!(p(&["--cgroup-parent", "../x"]).is_err());
        assert!(p(&["init", "--storage", "zfs"]).is_err());
        assert!(p(&["init", "--size", "1MiB"]).is_err());
        assert!(p(&["--bus"]).is_err());
        assert!(p(&["--bridge", "much-too-long-bridge"]).is_err());
        match p(&["--bridge", "none"]).unwrap() {
            Command::Run(c) => assert_eq!(c.bridge, None),
            other => panic!("{other:?}"),
        }
        assert!(p(&["--nope"]).is_err());
        match p(&["shutdown", "--bus", "unix:path=/x", "--state-dir", "/s"]).unwrap() {
            Command::Shutdown(c) => assert_eq!(
                (c.bus.as_deref(), c.state_dir),
                (Some("unix:path=/x"), PathBuf::from("/s"))
            ),
            other => panic!("{other:?}"),
        }
        match p(&["--no-autostart"]).unwrap() {
            Command::Run(c) => assert!(c.no_autostart),
            other => panic!("{other:?}"),
        }
        assert!(p(&["shutdown", "init"]).is_err());
        match p(&["recover", "--state-dir", "/s"]).unwrap() {
            Command::Recover(d) => assert_eq!(d, PathBuf::from("/s")),
            other => panic!("{other:?}"),
        }
        assert!(p(&["recover", "init"]).is_err());
        assert!(p(&["init", "recover"]).is_err());
        match p(&["--idle-timeout", "0"]).unwrap() {
            Command::Run(c) => assert_eq!((c.idle_timeout, c.favordynmods), (None, false)),
            other => panic!("{other:?}"),
        }
        match p(&["--idle-timeout", "5", "--favordynmods"]).unwrap() {
            Command::Run(c) => assert_eq!(
                (c.idle_timeout, c.favordynmods),
                (Some(std::time::Duration::from_secs(5)), true)
            ),
            other => panic!("{other:?}"),
        }
        for bad in ["-1", "x", "", "999999999"] {
            assert!(p(&["--idle-timeout", bad]).is_err(), "{bad}");
        }
    }
}
